"""Protect the protocol streams before any app code runs.

The protocol travels on the child's original stdin and stdout. Anything else
that writes to fd 1 (``print``, a C extension calling ``write(1, ...)``, a
subprocess that inherited stdout) would corrupt it. So, first thing at start-up:

1. duplicate fds 0 and 1 onto private, non-inheritable descriptors that only
   the runtime knows about;
2. point fd 0 at ``/dev/null`` and fds 1 and 2 at the write ends of two capture
   pipes, whose read ends the runtime turns into log events;
3. keep a private duplicate of the original fd 2, so that fatal reports
   (``faulthandler`` on a segfault) still reach the supervisor after the
   runtime's log forwarding is gone.

Only ``os`` is used here: this runs before the heavier imports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class GuardedStdio:
    """The fds the runtime uses once the protocol has taken fds 0 and 1 from the app."""

    protocol_in: int
    protocol_out: int
    capture_stdout: int
    """Read end of the pipe that fd 1 now writes into."""
    capture_stderr: int
    """Read end of the pipe that fd 2 now writes into."""
    fatal: int
    """The original stderr, for reports that must outlive the runtime."""


def take_over_stdio() -> GuardedStdio:
    protocol_in = os.dup(0)
    protocol_out = os.dup(1)
    fatal = os.dup(2)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    captures = []
    for fd in (1, 2):
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        captures.append(read_end)
    for fd in (protocol_in, protocol_out):
        _widen(fd)
    return GuardedStdio(protocol_in, protocol_out, captures[0], captures[1], fatal)


PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = 1031


def _widen(fd: int) -> None:
    """Grow a protocol pipe from 64 KiB to 1 MiB: large payloads then cross in far
    fewer wake-ups. Best effort: not every fd is a pipe, nor every kernel Linux."""
    import contextlib
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
