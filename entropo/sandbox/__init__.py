"""Executors for code the model writes, for tool environments in multi-turn RL rollouts.

``PythonSandbox(limits).run(code, stdin="")`` runs Python code and ``SQLiteSandbox(db, limits).run(sql)`` one
read-only SQL query; both return an :class:`ExecResult` (``ok``, capped ``stdout``/``stderr``, ``exit_code``,
``timed_out``, a short ``error``, ``duration_s``, ``truncated``) whose :meth:`ExecResult.observation` is the text to
show the model. They never raise because of what the code does: every failure is a result. :func:`run_many` runs
many calls on a bounded thread pool, keeping order.

Isolation layers, outermost first, and what each one stops
--------------------------------------------------------------

Every call is a fresh process — ``python -I -B -u`` (isolated mode: no user site-packages, no ``PYTHON*``
variables, the package not on ``sys.path``) started with ``start_new_session=True`` (its own session and process
group), cwd = a fresh ``tempfile.mkdtemp()`` directory, a minimal environment (PATH, HOME = TMPDIR = that directory,
LANG) — running ``_bootstrap.py``, which sets up the layers below before the code runs and refuses to run the code
if a layer it was asked for fails. Which OS layers are available is probed once per interpreter
(:attr:`PythonSandbox.network_isolation`, :attr:`PythonSandbox.privilege_drop`).

1. **Wall clock + process sweep (parent).** At ``timeout_s`` the parent SIGKILLs the process group, then scans
   ``/proc`` for processes of the sandbox's session/process group — and, under the privilege drop, of its uid,
   which also catches processes that called ``setsid`` — and kills them until none is left. The same sweep runs
   when the code exits normally, so nothing it started in the background outlives the call. The result comes back
   within ``timeout_s`` plus a few tens of milliseconds. ``PR_SET_PDEATHSIG`` kills the sandbox if the training
   process (more exactly: the thread that started the call) dies first; its work directory is then left behind.
2. **Bounded output (parent).** stdout and stderr are read through pipes as they are written; each keeps at most
   ``output_bytes`` (head and tail, with a "[... N bytes truncated ...]" marker). Past 1 MiB (or 16 x the cap) of
   output the process is killed: a 100 MB print costs the parent nothing and ends in well under a second.
3. **Network namespace (OS).** As root the bootstrap calls ``unshare(CLONE_NEWNET)`` (``os.unshare`` on Python
   3.12+, libc through ctypes before); as an ordinary user ``unshare(CLONE_NEWUSER | CLONE_NEWNET)`` where
   unprivileged user namespaces are enabled. The namespace has only a loopback device that is down, so nothing,
   not even ctypes or a C extension, reaches any network or the host's loopback services (a root process could
   ``setns`` back, which is one more reason for layer 4). Where neither works
   (e.g. a seccomp profile forbids unshare) ``network_isolation`` is ``"python-guard"`` and only layer 6 stops
   network access. (The ``unshare -n`` program needs the same privileges as the system call, so it is no fallback.)
4. **Privilege drop (OS, only when the parent is root).** The code runs under a unique, otherwise unused uid/gid
   (one per call) with no supplementary groups, ``no_new_privs`` and of all capabilities only
   ``CAP_DAC_READ_SEARCH`` (so the interpreter and its libraries stay readable wherever they are installed). Effects:
   ``RLIMIT_NPROC`` is enforced (Linux does not apply it to root), so a fork bomb stops at ``max_processes``
   even through ctypes; the code cannot write to any file or directory that is not writable by "other" (it *can*
   in world-writable places such as ``/tmp``, ``/var/tmp``, ``/dev/shm`` — only layer 6 refuses those), cannot
   signal or trace other processes, cannot undo the network namespace, raise its hard limits or regain
   privileges. Because of ``CAP_DAC_READ_SEARCH`` it can *read* every file the root parent could.
5. **rlimits (OS).** ``RLIMIT_AS`` = ``memory_mb`` (an oversized allocation raises ``MemoryError``),
   ``RLIMIT_CPU`` = ``cpu_s`` (SIGXCPU, then SIGKILL a second later), ``RLIMIT_FSIZE`` = ``file_size_mb``,
   ``RLIMIT_NPROC`` = ``max_processes`` (see 4: without the privilege drop, as root, it is not enforced; as an
   ordinary user it counts all of that user's processes and threads), ``RLIMIT_NOFILE`` = 64, ``RLIMIT_CORE`` = 0.
   Soft = hard, so the code cannot raise them.
6. **In-process guards (Python).** An audit hook (``sys.addaudithook``, cannot be removed) plus monkeypatches:
   process creation (``os.fork``/``forkpty``/``exec*``/``posix_spawn``/``system``, ``subprocess``,
   ``multiprocessing``) raises ``PermissionError``; so do sockets other than AF_UNIX pairs, ``connect``/``bind``,
   name lookups, ``socket.create_connection``/``getaddrinfo``; opening a file for writing, creating, removing,
   renaming, hard-linking, truncating or chmod-ing anything outside the work directory (``/dev/null`` allowed;
   paths are normalised lexically, which is sound because creating symlinks is refused and the work directory
   starts out without any; opening a *directory* outside it with ``os.open`` is refused so that no ``dir_fd``
   can point outside); ``sqlite3.connect`` to a file outside it; signalling any process but itself; raising
   rlimits; ``gc.get_objects``/``get_referrers`` and tracing hooks (ways to reach the guards themselves); and,
   through ctypes, looking up or calling a list of libc functions (``fork``, ``clone``, ``syscall``, ``exec*``,
   ``socket``, ``connect``, ``unshare``, ``open``/``openat``, ``unlink``, ``rename``, ...). The hook binds
   everything it consults into its closure, so rebinding module globals or ``os`` attributes does not loosen it.
   These guards give the model clear ``PermissionError`` messages and are the only layer left where 3/4 are
   unavailable, but **they are not a security boundary**: an audit hook runs inside the process it guards, so
   code that writes machine code into executable memory, reaches libc through a pointer it computes itself, or
   otherwise corrupts the interpreter gets past them. Only layers 1-5 hold against such code.

What is *not* isolated: reading files (the code can read whatever the parent can); the filesystem namespace (no
chroot or mount namespace); CPU share (two cores busy is possible for ``cpu_s``); kernel attack surface (no
seccomp filter). Run the training process in a container or VM if the model may attack those.

The SQLite executor uses the same process layers with a fixed program instead of model code: a read-only
connection, an authorizer that allows only reading, a progress-handler time limit and row/cell caps (see
:class:`SQLiteSandbox`).
"""

from entropo.sandbox.base import ExecResult, SandboxLimits, run_many
from entropo.sandbox.python import PythonSandbox
from entropo.sandbox.sqlite import SQLiteSandbox

__all__ = ["ExecResult", "PythonSandbox", "SQLiteSandbox", "SandboxLimits", "run_many"]
