"""The memory behind the arenas of ``blobs.py``: anonymous shared files, mapped.

The supervisor creates one arena per direction with :func:`create_arena` and
passes the two file descriptors to the child (``--shared-memory IN,OUT``, see
PROTOCOL.md), which maps them with :func:`map_arena`. Both ends close their
descriptors once mapped: the memory lives as long as a mapping does, so nothing
is left behind in ``/dev/shm`` even when a process is killed. Pages are only
allocated when first written; an arena that is never used costs no memory.
"""

from __future__ import annotations

import mmap
import os
import tempfile


def create_arena(size: int) -> tuple[int, mmap.mmap]:
    """A new zero-filled shared file of ``size`` bytes: its descriptor (to pass
    to the child with ``pass_fds``) and a mapping of it."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("appvisor-arena")
    else:  # macOS: an unlinked temporary file serves the same purpose
        fd, path = tempfile.mkstemp(prefix="appvisor-arena-")
        os.unlink(path)
    try:
        os.ftruncate(fd, size)
        return fd, mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise


def map_arena(fd: int) -> mmap.mmap:
    """Map an arena received as a descriptor, and close the descriptor, so that
    processes the app starts do not inherit it."""
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
