"""``serve``'s head start: its first child, spawned before the supervisor is imported.

``python -m supervisor serve`` spends about 0.2 s importing the supervisor and the
HTTP server before it could spawn anything, and a child spends about as long
importing the runtime before it can load an app. Started first, the child does
its part on the other core meanwhile: ``begin`` spawns the pool's default child
(``python -m child --prewarm``, the default environment, the pool's arenas) with
the standard library only, and the pool ``adopt``\\s it once it runs, where the
first app start whose pool key it matches takes it. Most apps have an
environment of their own (their ``requirements.txt``): once ``serve`` has
started one, it remembers the app's interpreter and library settings in
``head-start.json`` in the environment cache (``remember``), and the next
``serve`` of that directory starts its head-start child with them. An app that
needs another key spawns as before, and the early child stays in the pool.

Only the parent's own state lives here, for the one ``serve`` a process runs:
``take`` hands the started child over (once), ``discard`` stops one that was not
taken (a usage error, ``--ray``), and at exit an untaken child is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from ..environments.env_layout import default_root
from ..environments.environment import child_environment
from .child_command import DEFAULT_SHARED_MEMORY, child_argv, create_arenas

SKIP_OPTIONS = frozenset({"-h", "--help", "--ray", "--child-user", "--version"})
"""``serve`` options under which no head start is made: nothing to serve yet, or
children that the pool starts differently (as another user)."""
DISABLE_VAR = "APPVISOR_HEAD_START"
"""``0`` turns the head start off (to measure without it)."""
RECORD_FILE = "head-start.json"
"""In the environment cache: each app directory's interpreter and library settings."""
MAX_RECORDS = 256


class EarlyChild:
    """A pool child spawned before the pool existed; ``adopt`` takes it over.

    A plain class: ``dataclasses`` imports ``inspect`` and ``ast`` (about 8 ms),
    which would come before the spawn this module exists to make early."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        python: str,
        preload: tuple[str, ...],
        import_env: tuple[tuple[str, str], ...],
        shared_memory: int,
        workdir: str,
        protocol_fds: tuple[int, int],
        stderr_fd: int,
        arenas: list[mmap.mmap] | None = None,
    ) -> None:
        self.process = process
        self.python = python
        self.preload = preload
        self.import_env = import_env
        """Library settings it was started with (part of its pool key)."""
        self.shared_memory = shared_memory
        self.workdir = workdir
        """Its working directory (empty, private); whoever ends the child removes it."""
        self.protocol_fds = protocol_fds
        """Our ends of its protocol pipes: read from it, write to it."""
        self.stderr_fd = stderr_fd
        self.arenas = arenas if arenas is not None else []

    def close(self) -> None:
        """Kill the child, wait for it, and release its pipes, arenas and directory.

        The whole group is killed, the runtime the reaper forked with it: killed
        alone, the reaper would leave the runtime to its parent-death signal, a
        moment after ``serve`` has gone."""
        if self.process.poll() is None:  # not reaped: the group's id is still its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for fd in (*self.protocol_fds, self.stderr_fd):
            os.close(fd)
        for arena in self.arenas:
            arena.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


_started: EarlyChild | None = None


def wanted(argv: Sequence[str]) -> bool:
    """Whether ``python -m supervisor`` with ``argv`` should start a child first."""
    if os.environ.get(DISABLE_VAR) == "0" or not argv or argv[0] != "serve":
        return False
    return not any(arg.split("=", 1)[0] in SKIP_OPTIONS for arg in argv[1:])


def begin(argv: Sequence[str]) -> None:
    """Spawn the head-start child for ``serve``; a failure only costs the head start."""
    global _started
    if _started is not None or not wanted(argv):
        return
    python: str = sys.executable
    import_env: tuple[tuple[str, str], ...] = ()
    app_dir = first_app_dir(argv)
    if app_dir is not None:
        python, import_env = recalled(_cache_root(argv), app_dir) or (python, import_env)
    try:
        _started = spawn_early(python, import_env=import_env)
    except OSError:
        return
    atexit.register(discard)


def first_app_dir(argv: Sequence[str]) -> str | None:
    """The first argument that names an app directory (one with ``inference.py``)."""
    for arg in argv[1:]:
        if not arg.startswith("-") and os.path.isfile(os.path.join(arg, "inference.py")):
            return os.path.realpath(arg)
    return None


def _cache_root(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--env-cache" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--env-cache="):
            return arg.split("=", 1)[1]
    return str(default_root())


def _read_records(root: str) -> dict[str, object]:
    try:
        with open(os.path.join(root, RECORD_FILE)) as file:
            records = json.load(file)
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def recalled(root: str, app_dir: str) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """The interpreter and library settings ``serve`` last started ``app_dir`` with,
    if they are still usable: the interpreter must be this one or one of the cache's
    own environments (a record never names a program to run from elsewhere)."""
    record = _read_records(root).get(app_dir)
    if not isinstance(record, dict):
        return None
    python, settings = record.get("python"), record.get("import_env")
    if not isinstance(python, str) or not isinstance(settings, list):
        return None
    if not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)
        for pair in settings
    ):
        return None
    # Not resolved: an environment's bin/python is a link to the interpreter it was made from.
    inside = os.path.normpath(python).startswith(os.path.abspath(root) + os.sep)
    if python != sys.executable and not (inside and os.path.isfile(python)):
        return None
    return python, tuple((key, value) for key, value in settings)


def remember(
    root: str | os.PathLike[str],
    app_dir: str | os.PathLike[str],
    python: str,
    import_env: Sequence[tuple[str, str]],
) -> None:
    """Keep what ``app_dir``'s children were started with, for the next head start
    (written whole and replaced atomically; a failure only costs that)."""
    root = os.fspath(root)
    records = _read_records(root)
    records.pop(os.path.realpath(app_dir), None)
    records[os.path.realpath(app_dir)] = {"python": python, "import_env": list(import_env)}
    kept = dict(list(records.items())[-MAX_RECORDS:])
    try:
        os.makedirs(root, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=root, prefix=".head-start-")
        with os.fdopen(fd, "w") as file:
            json.dump(kept, file)
        os.replace(temporary, os.path.join(root, RECORD_FILE))
    except OSError:
        return


def spawn_early(
    python: str,
    preload: Sequence[str] = (),
    shared_memory: int = DEFAULT_SHARED_MEMORY,
    import_env: Sequence[tuple[str, str]] = (),
) -> EarlyChild:
    """Spawn ``python -m child --prewarm`` exactly as the pool spawns a child for
    that key (``ChildPool._spawn``), outside any event loop."""
    workdir = tempfile.mkdtemp(prefix="supervisor-head-")
    os.chmod(workdir, 0o711)
    env = child_environment(dict(import_env), cuda_visible_devices="", python=python)
    to_child_read, to_child_write = os.pipe()
    from_child_read, from_child_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    ours = (from_child_read, to_child_write, stderr_read)
    arena_fds: list[int] = []
    arenas: list[mmap.mmap] = []
    try:
        arena_fds, arenas = create_arenas(shared_memory)
        process = subprocess.Popen(
            child_argv(python, preload, prewarm=True, arena_fds=arena_fds),
            stdin=to_child_read,
            stdout=from_child_write,
            stderr=stderr_write,
            env=env,
            cwd=workdir,
            start_new_session=True,
            pass_fds=arena_fds,
        )
    except BaseException:
        for fd in ours:
            os.close(fd)
        for arena in arenas:
            arena.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        for fd in (to_child_read, from_child_write, stderr_write, *arena_fds):
            os.close(fd)
    return EarlyChild(
        process,
        python,
        tuple(preload),
        tuple(import_env),
        shared_memory,
        workdir,
        (from_child_read, to_child_write),
        stderr_read,
        arenas,
    )


def take() -> EarlyChild | None:
    """The head-start child, handed over once (the pool owns it then)."""
    global _started
    started, _started = _started, None
    return started


def discard() -> None:
    """Stop the head-start child if nobody took it."""
    started = take()
    if started is not None:
        started.close()
