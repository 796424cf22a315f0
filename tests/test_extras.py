import pytest

from entropo.extras import require


def test_require_imports_an_installed_module():
    assert require("json", "core").dumps([1]) == "[1]"


def test_require_names_the_extra_when_missing():
    with pytest.raises(ImportError, match=r"the kuhn env needs no_such_pkg_x: pip install 'entropo\[games\]'"):
        require("no_such_pkg_x.sub", "games", "the kuhn env")
