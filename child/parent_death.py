"""Die with the supervisor, and take everything the app started along.

``PR_SET_PDEATHSIG`` makes the kernel send SIGKILL to this process when the
thread that spawned it exits, so a SIGKILLed supervisor leaves no child
behind. That setting races with the parent dying before it is made, which is
why the parent's pid (``SUPERVISOR_PARENT_PID``) is compared afterwards.

A SIGKILLed child cannot clean up after itself, and the processes the app
started would be re-parented and live on. So the child also forks a tiny
watchdog into its own process group before any app code exists: the watchdog
asks for a catchable signal when the child dies, and then SIGKILLs the whole
group, itself included. It holds no file descriptors, so it never keeps a pipe
of the protocol open.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "SUPERVISOR_PARENT_PID"


def _prctl_death_signal(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the running libc; find_library costs ms
        return bool(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def die_with_parent() -> None:
    if not sys.platform.startswith("linux") or not _prctl_death_signal(int(signal.SIGKILL)):
        return
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and expected.isdigit() and os.getppid() != int(expected):
        os._exit(1)


def start_group_watchdog() -> None:
    """Fork the watchdog, when this process leads its own process group."""
    if not sys.platform.startswith("linux"):
        return
    leader = os.getpid()
    if os.getpgid(0) != leader:
        return
    if os.fork() != 0:
        return
    try:
        os.closerange(0, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGUSR1, lambda *_: os.killpg(0, signal.SIGKILL))
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if _prctl_death_signal(int(signal.SIGUSR1)) and os.getppid() == leader:
            while True:
                signal.pause()
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(0)
