"""The child's first process stays behind as the reaper of everything the app starts.

A process that detaches (``setsid`` and a double fork, ``Popen(start_new_session=
True)``) leaves the child's process group, and once its parent exits it is
re-parented to init: nothing that signals the group or walks the child's tree
finds it again. So, before any app code exists, the child marks itself a
*child subreaper* (``PR_SET_CHILD_SUBREAPER``) and forks: the forked process
becomes the runtime; this one (the pid the supervisor spawned) only waits.
Every orphan of the app is then re-parented to the reaper instead of init, so
the reaper's tree holds all of them, however they detached.

The reaper ends when the runtime ends, or when the supervisor dies (it asks
for a catchable signal then): it SIGKILLs every descendant, reaps them until
it has no child left, and exits the way the runtime did (its exit code, or
the same signal), so the supervisor sees what happened to the app. If the
reaper itself is SIGKILLed, the runtime dies with it (its parent-death
signal); the supervisor's own kill walks the reaper's tree first. It holds no
file descriptor, so it never keeps a protocol pipe open.

Where the kernel offers no subreaper (not Linux), the child runs as one
process, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PARENT_PID_ENV = "SUPERVISOR_PARENT_PID"
CGROUPS_ENV = "APPVISOR_CGROUPS"
CGROUP_WAIT = 10.0
EXIT_NO_CGROUP = 71


class _SupervisorDied(Exception):
    pass


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the running libc; find_library costs ms
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def wait_for_cgroups() -> None:
    """Wait until the supervisor has moved this process into its cgroups, if it made any.

    Before this returns nothing else runs, so nothing can start outside them.
    """
    wanted = {name for name in os.environ.pop(CGROUPS_ENV, "").split(";") if name}
    deadline = time.monotonic() + CGROUP_WAIT
    while wanted:
        with open("/proc/self/cgroup") as own:
            wanted -= {line.rstrip("\n").split(":", 2)[-1] for line in own}
        if not wanted:
            return
        if time.monotonic() > deadline:
            print(f"the supervisor did not move this child into {sorted(wanted)}", file=sys.stderr)
            os._exit(EXIT_NO_CGROUP)
        time.sleep(0.001)


def split_off_runtime() -> None:
    """Fork the runtime and stay here as its reaper; returns only in the runtime."""
    if not sys.platform.startswith("linux"):
        return
    wait_for_cgroups()
    if not _prctl(PR_SET_CHILD_SUBREAPER, 1):
        return
    reaper = os.getpid()
    runtime = os.fork()
    if runtime == 0:
        if not _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL)) or os.getppid() != reaper:
            os._exit(1)
        return
    try:
        _reap(runtime)
    finally:
        os._exit(1)


def _reap(runtime: int) -> None:
    os.closerange(0, os.sysconf("SC_OPEN_MAX"))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # the runtime handles these; we wait for it

    def supervisor_died(*_: object) -> None:
        raise _SupervisorDied

    signal.signal(signal.SIGUSR1, supervisor_died)
    status: int | None = None
    try:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGUSR1))
        expected = os.environ.get(PARENT_PID_ENV, "")
        if expected.isdigit() and os.getppid() != int(expected):
            raise _SupervisorDied
        while status is None:
            pid, waited = os.waitpid(-1, 0)
            if pid == runtime:
                status = waited
    except (_SupervisorDied, ChildProcessError):
        pass
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    kill_descendants()
    _exit_like(status)


def kill_descendants() -> None:
    """SIGKILL every descendant of this process and reap them all.

    Orphans come back to us as their parents die, so the walk repeats until no
    child is left to wait for. With no child at all there is nothing below, and
    the walk of ``/proc`` (a millisecond or more: a swap waits for it) is skipped.
    """
    root = os.getpid()
    while True:
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        for pid in descendants(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def descendants(root: int) -> list[int]:
    """Every process below ``root``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), ()):
            found.append(child)
            pending.append(child)
    return found


def _exit_like(status: int | None) -> None:
    if status is None:
        os._exit(1)
    if os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(128 + (os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0))
