"""A Python child's command line and its shared-memory arenas, made with the
standard library only: ``launch_child`` uses it, and so does ``serve``'s head
start (``head_start``), which runs before the rest of the supervisor is imported."""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence

from protocol.shared_memory import create_arena

DEFAULT_SHARED_MEMORY = 256 * 2**20
"""Bytes of shared memory per direction: payloads up to this size skip the pipe."""


def child_argv(
    python: str, preload: Sequence[str], *, prewarm: bool, arena_fds: Sequence[int]
) -> list[str]:
    """``python -m child`` with its preloads, first-use warm-up and arenas."""
    argv = [python, "-m", "child"]
    if preload:
        argv += ["--preload", ",".join(preload)]
    if prewarm:
        argv.append("--prewarm")
    if arena_fds:
        argv += ["--shared-memory", ",".join(map(str, arena_fds))]
    return argv


def create_arenas(size: int) -> tuple[list[int], list[mmap.mmap]]:
    """The two arenas (to the child, from it) as descriptors to pass and our
    mappings; none for ``size`` 0 (every byte goes through the pipe)."""
    fds: list[int] = []
    mappings: list[mmap.mmap] = []
    try:
        for _ in range(2 if size > 0 else 0):
            fd, mapping = create_arena(size)
            fds.append(fd)
            mappings.append(mapping)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds, mappings
