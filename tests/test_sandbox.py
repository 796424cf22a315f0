"""Hostile tests of entropo.sandbox: each call must end within its limit, come back as an ExecResult (never raise)
and leave no process behind — every test checks /proc for live processes of the sessions (and, under the privilege
drop, the uids) of the sandbox processes it started (the autouse ``spawned`` fixture)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import time
import tracemalloc
import uuid

import pytest

from entropo.sandbox import ExecResult, PythonSandbox, SandboxLimits, SQLiteSandbox, run_many
from entropo.sandbox import _process

FAST = SandboxLimits(timeout_s=1.0, cpu_s=2)
SLACK_S = 1.5  # a call must come back within timeout_s + this


def _live(pids: set[int], uids: set[int]) -> list[str]:
    """Live (non-zombie) processes in the sessions/process groups ``pids`` or owned by one of ``uids``."""
    alive = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2:].split()
            if fields[0] in (b"Z", b"X"):
                continue
            pgrp, sid = int(fields[2]), int(fields[3])
            with open(f"/proc/{name}/status", "rb") as f:
                uid_line = next(line for line in f if line.startswith(b"Uid:"))
            uid = int(uid_line.split()[1])
        except (OSError, ValueError, StopIteration):
            continue
        if sid in pids or pgrp in pids or uid in uids:
            alive.append(f"pid {name} (sid {sid}, pgrp {pgrp}, uid {uid}, state {fields[0].decode()})")
    return alive


@pytest.fixture(autouse=True)
def spawned(monkeypatch):
    """Records the pid (= session id) and uid of every sandbox process; afterwards none of them may be alive."""
    pids: set[int] = set()
    uids: set[int] = set()
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):
        def __init__(self, args, *a, **kw):
            super().__init__(args, *a, **kw)
            pids.add(self.pid)
            config = json.loads(args[-1])
            if config.get("uid") is not None:
                uids.add(config["uid"])

    monkeypatch.setattr(_process.subprocess, "Popen", RecordingPopen)
    yield pids
    monkeypatch.undo()
    assert not _live(pids, uids), f"sandbox processes survived: {_live(pids, uids)}"


def _sandbox(limits: SandboxLimits = FAST, guards: bool = True) -> PythonSandbox:
    sb = PythonSandbox(limits)
    sb._guards = guards
    return sb


def _timed(sb: PythonSandbox, code: str, **kw) -> tuple[ExecResult, float]:
    start = time.monotonic()
    result = sb.run(code, **kw)
    elapsed = time.monotonic() - start
    assert isinstance(result, ExecResult)
    assert elapsed < sb.limits.timeout_s + SLACK_S, f"took {elapsed:.2f} s"
    return result, elapsed


# ----------------------------------------------------------------------------------------------------------------
# Python: ordinary code


def test_normal_code_ok():
    r, _ = _timed(_sandbox(), "print(12*34)")
    assert r.ok and r.exit_code == 0 and r.error is None and not r.timed_out and not r.truncated
    assert r.stdout == "408\n"
    assert r.observation() == "408\n"


def test_stdin_and_isolated_interpreter():
    r, _ = _timed(_sandbox(), "import sys; print(sys.stdin.read().upper(), sys.flags.isolated)", stdin="hello")
    assert r.ok and r.stdout == "HELLO 1\n"


def test_syntax_error_observation():
    r, _ = _timed(_sandbox(), "def f(:\n    pass")
    assert not r.ok and r.exit_code == 1
    assert "SyntaxError" in r.observation()
    assert r.error.startswith("SyntaxError")


def test_exception_last_line_and_clean_traceback():
    r, _ = _timed(_sandbox(), "print('before')\n1 / 0")
    assert not r.ok and r.error == "ZeroDivisionError: division by zero"
    obs = r.observation()
    assert obs.startswith("before\n") and obs.endswith("ZeroDivisionError: division by zero")
    assert 'File "main.py", line 2' in r.stderr and "_bootstrap" not in r.stderr


def test_nonzero_exit():
    r, _ = _timed(_sandbox(), "import sys; sys.exit(3)")
    assert not r.ok and r.exit_code == 3 and r.error == "exit code 3"


def test_workdir_is_private_and_removed():
    code = "import os; open('a.txt', 'w').write('hi'); print(os.getcwd()); print(open('a.txt').read())"
    r, _ = _timed(_sandbox(), code)
    assert r.ok, r.observation()
    cwd, content = r.stdout.splitlines()
    assert os.path.basename(cwd).startswith("entropo-sandbox-") and content == "hi"
    assert not os.path.exists(cwd)


def test_workdir_removed_after_timeout():
    r, _ = _timed(_sandbox(SandboxLimits(timeout_s=0.5)), "import os; print(os.getcwd(), flush=True)\nwhile True: pass")
    assert r.timed_out
    cwd = r.stdout.strip()
    assert cwd and not os.path.exists(cwd)


# ----------------------------------------------------------------------------------------------------------------
# Python: hostile code


def test_infinite_loop_times_out():
    r, elapsed = _timed(_sandbox(), "while True: pass")
    assert r.timed_out and not r.ok and r.error == "timeout after 1.0 s"
    assert elapsed >= 1.0


def test_hanging_tool_times_out():
    r, _ = _timed(_sandbox(SandboxLimits(timeout_s=0.5)), "import time; time.sleep(100)")
    assert r.timed_out and not r.ok and "timeout" in r.observation()


def test_cpu_limit():
    r, _ = _timed(_sandbox(SandboxLimits(timeout_s=3.0, cpu_s=1)), "while True: pass")
    assert not r.ok and not r.timed_out and r.error == "cpu time limit (1 s) exceeded"


def test_fork_bomb_refused():
    r, _ = _timed(_sandbox(), "import os\nwhile True: os.fork()")
    assert not r.ok and "PermissionError" in r.error


def test_subprocess_and_multiprocessing_refused():
    sb = _sandbox()
    r, _ = _timed(sb, "import subprocess; subprocess.run(['true'])")
    assert not r.ok and "creating processes is not allowed" in r.error
    r, _ = _timed(sb, "import multiprocessing as mp\nif __name__ == '__main__':\n    mp.Pool(2)")
    assert not r.ok and "creating processes is not allowed" in r.error


def test_fork_bomb_without_guards_stopped_by_os():
    """The OS layers on their own: RLIMIT_NPROC (effective as root only under the privilege drop) caps the bomb,
    the wall clock and the sweep kill it."""
    sb = _sandbox(SandboxLimits(timeout_s=0.7, max_processes=16), guards=False)
    if os.geteuid() == 0 and not sb.privilege_drop:
        pytest.skip("root without the privilege drop: RLIMIT_NPROC would not hold an unguarded fork bomb")
    r, _ = _timed(sb, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert not r.ok and r.timed_out


def test_background_processes_are_swept():
    """Processes the code leaves running (guards off) are killed when it exits, also ones that called setsid."""
    sb = _sandbox(guards=False)
    r, elapsed = _timed(sb, "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint('done')")
    assert r.ok and r.stdout == "done\n" and elapsed < 1.0
    if sb.privilege_drop:  # a new session escapes the process-group kill; the uid sweep still finds it
        r, _ = _timed(sb, "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('done')")
        assert r.ok and r.stdout == "done\n"


def test_memory_limit():
    r, _ = _timed(_sandbox(), "x = bytearray(4 * 2**30)")
    assert not r.ok and "MemoryError" in r.observation()
    assert r.error == "memory limit (512 MB): MemoryError"


def test_write_outside_workdir_refused():
    path = f"/tmp/escape_{uuid.uuid4().hex}.txt"
    r, _ = _timed(_sandbox(), f"open({path!r}, 'w').write('x')")
    assert not r.ok and "PermissionError" in r.error and "outside the working directory" in r.error
    assert not os.path.exists(path)
    r, _ = _timed(_sandbox(), f"import os; os.symlink('/tmp', 'link'); open('link/{os.path.basename(path)}', 'w')")
    assert not r.ok and "creating symlinks is not allowed" in r.error and not os.path.exists(path)
    r, _ = _timed(_sandbox(), "import os, posix\nfd = posix.open('/tmp', os.O_RDONLY)\n"
                              f"posix.open({os.path.basename(path)!r}, os.O_CREAT | os.O_WRONLY, dir_fd=fd)")
    assert not r.ok and "opening a directory outside" in r.error and not os.path.exists(path)


def test_write_outside_without_guards_stopped_by_privilege_drop(tmp_path):
    sb = _sandbox(guards=False)
    if not sb.privilege_drop:
        pytest.skip("no privilege drop here (not root, or setuid unavailable)")
    target = tmp_path / "escape.txt"  # a root-owned directory
    r, _ = _timed(sb, f"open({str(target)!r}, 'w').write('x')")
    assert not r.ok and "Permission denied" in r.error
    assert not target.exists()


@pytest.fixture
def listening_port():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def test_socket_refused(listening_port):
    sb = _sandbox()
    r, _ = _timed(sb, f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {listening_port}))\nprint('in')")
    assert not r.ok and "network access is not allowed" in r.error and "in" not in r.stdout
    r, _ = _timed(sb, "import socket\nsocket.create_connection(('example.com', 80), timeout=0.5)")
    assert not r.ok and "PermissionError" in r.error


def test_network_namespace_without_guards(listening_port):
    sb = _sandbox(guards=False)
    if sb.network_isolation != "netns":
        pytest.skip("no network namespace here: only the in-process guard blocks the network")
    r, _ = _timed(sb, f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {listening_port}))\nprint('in')")
    assert not r.ok and "unreachable" in r.error.lower() and "in" not in r.stdout


def test_network_allowed_when_asked(listening_port):
    sb = _sandbox(SandboxLimits(timeout_s=2.0, network=True))
    assert sb.network_isolation == "none"
    r, _ = _timed(sb, f"import socket\ns = socket.create_connection(('127.0.0.1', {listening_port}))\nprint('in')")
    assert r.ok and r.stdout == "in\n"


def test_huge_print_truncated_fast_and_bounded():
    tracemalloc.start()
    try:
        r, elapsed = _timed(_sandbox(), "print('x' * 100_000_000)")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.truncated and not r.ok and r.error.startswith("output truncated")
    assert elapsed < 3.0
    assert len(r.stdout.encode()) < 8192 + 100 and "bytes truncated" in r.stdout
    assert peak < 16 * 2**20, f"parent peak Python memory {peak / 2**20:.1f} MiB"


def test_small_overflow_keeps_head_and_tail():
    r, _ = _timed(_sandbox(), "print('A' * 10000 + 'END')")
    assert r.ok and r.truncated and r.stdout.startswith("AAAA") and r.stdout.rstrip().endswith("END")


def test_never_raises_on_broken_interpreter():
    r = PythonSandbox(FAST, python="/nonexistent/python").run("print(1)")
    assert not r.ok and r.exit_code is None and r.error.startswith("sandbox error")


# ----------------------------------------------------------------------------------------------------------------
# ExecResult / run_many


def test_observation_keeps_the_error_line():
    tb = "Traceback (most recent call last):\n" + "  frame\n" * 500 + "ValueError: boom"
    r = ExecResult(ok=False, stdout="y" * 5000, stderr=tb, exit_code=1, timed_out=False, error="ValueError: boom",
                   duration_s=0.1, truncated=False)
    obs = r.observation(300)
    assert len(obs) <= 300 and obs.startswith("yyy") and obs.endswith("ValueError: boom")
    t = ExecResult(ok=False, stdout="", stderr="", exit_code=-9, timed_out=True, error="timeout after 5.0 s",
                   duration_s=5.0, truncated=False)
    assert t.observation() == "[error: timeout after 5.0 s]"
    assert ExecResult(True, "", "", 0, False, None, 0.1, False).observation() == "(no output)"


def test_run_many_concurrent_and_ordered():
    sb = _sandbox(SandboxLimits(timeout_s=5.0))
    n, sleep_s = 4, 0.5
    start = time.monotonic()
    results = run_many(lambda i: sb.run(f"import time; time.sleep({sleep_s}); print({i})"), range(n), max_workers=n)
    elapsed = time.monotonic() - start
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(n)]
    assert all(r.ok for r in results)
    assert elapsed < n * sleep_s, f"{elapsed:.2f} s: not concurrent (serial would take > {n * sleep_s} s)"


def test_run_many_reraises_first_failure_after_all_ran():
    done = []

    def fn(i):
        time.sleep(0.01 * (3 - i))
        done.append(i)
        if i in (1, 2):
            raise ValueError(f"item {i}")
        return i

    with pytest.raises(ValueError, match="item 1"):
        run_many(fn, [0, 1, 2, 3], max_workers=2)
    assert sorted(done) == [0, 1, 2, 3]
    assert run_many(str, [], max_workers=3) == []


# ----------------------------------------------------------------------------------------------------------------
# SQLite


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "shop.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, note TEXT)")
    conn.executemany("INSERT INTO items (name, price, note) VALUES (?, ?, ?)",
                     [(f"item{i}", i * 1.5, "n" * (300 if i == 2 else 3)) for i in range(1, 251)])
    conn.commit()
    conn.close()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    yield path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, "the database file changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.db"]


def test_sqlite_select_rows(database):
    r = SQLiteSandbox(database, FAST).run("SELECT id, name, price FROM items WHERE id <= 3 ORDER BY id")
    assert r.ok, r.observation()
    assert r.stdout.splitlines() == ["id | name | price", "1 | item1 | 1.5", "2 | item2 | 3.0", "3 | item3 | 4.5",
                                     "(3 rows)"]


def test_sqlite_row_and_cell_caps(database):
    r = SQLiteSandbox(database, FAST, max_rows=10, max_cell_chars=20).run("SELECT * FROM items")
    lines = r.stdout.splitlines()
    assert r.ok and len(lines) == 1 + 10 + 1
    assert lines[-1] == "… truncated: showing the first 10 rows"
    assert lines[2].endswith("n" * 19 + "…")


@pytest.mark.parametrize("sql, refused", [
    ("INSERT INTO items (name) VALUES ('x')", "INSERT"),
    ("DROP TABLE items", "DROP"),
    ("ATTACH DATABASE '/tmp/other.db' AS other", "ATTACH"),
    ("PRAGMA writable_schema = ON", "PRAGMA"),
    ("UPDATE items SET price = 0", "UPDATE"),
    ("SELECT load_extension('/tmp/evil')", "load_extension"),
])
def test_sqlite_refuses_writes_and_escapes(database, sql, refused):
    r = SQLiteSandbox(database, FAST).run(sql)
    assert not r.ok and refused in r.error and "not allowed" in r.error
    assert r.observation().startswith("Error: ")


def test_sqlite_one_statement_per_call(database):
    r = SQLiteSandbox(database, FAST).run("SELECT 1; DELETE FROM items")
    assert not r.ok and r.error == "only one SQL statement per call is allowed"


def test_sqlite_error_message(database):
    r = SQLiteSandbox(database, FAST).run("SELECT * FROM nope")
    assert not r.ok and r.error == "no such table: nope" and r.observation() == "Error: no such table: nope"


def test_sqlite_runaway_query_aborted(database):
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    start = time.monotonic()
    r = SQLiteSandbox(database, FAST).run(sql)
    assert time.monotonic() - start < FAST.timeout_s + SLACK_S
    assert not r.ok and r.timed_out and "time limit" in r.error
