"""PythonSandbox: run model-written Python code in a fresh, limited, network-less process (one per call)."""

from __future__ import annotations

import sys

from entropo.sandbox._process import probe_layers, run_sandboxed
from entropo.sandbox.base import ExecResult, SandboxLimits


class PythonSandbox:
    """``PythonSandbox(limits, python).run(code, stdin="") -> ExecResult``.

    Each call: a fresh work directory (``tempfile.mkdtemp``, removed afterwards, also after a timeout), ``python -I
    -B -u`` in its own session with a minimal environment (PATH, HOME and TMPDIR = the work directory, LANG, one
    thread per numeric library), the code saved as ``main.py`` and run as ``__main__`` by the bootstrap after the
    isolation layers are in place (see :mod:`entropo.sandbox`). ``run`` is thread-safe and never raises: every
    failure, the sandbox's own included, comes back as a not-ok :class:`ExecResult`.

    The first call (or :attr:`network_isolation`) probes once per interpreter which OS layers work on this machine.
    """

    def __init__(self, limits: SandboxLimits = SandboxLimits(), python: str = sys.executable) -> None:
        self.limits = limits
        self.python = python
        self._guards = True  # tests turn the in-process guards off to check that the OS layers hold on their own

    @property
    def network_isolation(self) -> str:
        """``"netns"``: a private network namespace (no interfaces but a down loopback) plus the in-process socket
        guard; ``"python-guard"``: only the in-process guard (no namespace available here); ``"none"`` when
        ``limits.network`` is True."""
        if self.limits.network:
            return "none"
        return "netns" if probe_layers(self.python).netns else "python-guard"

    @property
    def privilege_drop(self) -> bool:
        """Whether calls run under a unique unprivileged uid (possible only when this process is root): the layer
        that makes RLIMIT_NPROC and the filesystem permissions apply to the code."""
        return probe_layers(self.python).uid_drop

    def run(self, code: str, stdin: str = "") -> ExecResult:
        config = {"mode": "python", "guards": self._guards}
        return run_sandboxed(self.python, self.limits, config, files={"main.py": code}, stdin=stdin)

    def __repr__(self) -> str:
        return f"PythonSandbox(limits={self.limits!r}, python={self.python!r})"
