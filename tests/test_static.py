"""Static checks of the source tree: names that do not resolve, unused imports and locals.

An undefined module-level name (a constant deleted by an edit) only fails when its function runs; some of those
functions run only in hour-long reproduction experiments, so the suite checks every file statically instead.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = "F821,F822,F823,F401,F811,F841"  # undefined names/exports, unused imports, redefinitions, unused locals


def _ruff() -> list[str]:
    exe = Path(sys.executable).parent / "ruff"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]' (it is a test dependency)")
    return [found]


def test_source_tree_has_no_undefined_names_or_unused_imports():
    cmd = [*_ruff(), "check", "--no-cache", "--isolated", "--select", RULES, "--output-format", "concise",
           "entropo", "tests", "benchmarks"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_check_catches_an_undefined_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    return MISSING_CONSTANT\n")
    out = subprocess.run([*_ruff(), "check", "--no-cache", "--isolated", "--select", RULES, str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "F821" in out.stdout and "MISSING_CONSTANT" in out.stdout
