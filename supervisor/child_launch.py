"""How a child is started: its command line, its shared memory, its channel.

One place for what the slot and the pool both do, so that a pooled child and a
fresh one are started the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

from protocol.shared_memory import create_arena

from .child_channel import ChildChannel
from .confinement import Confinement
from .process import ChildProcess

DEFAULT_SHARED_MEMORY = 256 * 2**20
"""Bytes of shared memory per direction: payloads up to this size skip the pipe."""


async def launch_child(
    python: str,
    preload: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    name: str,
    logger: logging.Logger,
    shared_memory: int = DEFAULT_SHARED_MEMORY,
    prewarm: bool = False,
    confinement: Confinement | None = None,
    mask: Callable[[str], str] | None = None,
) -> tuple[ChildProcess, ChildChannel]:
    """Spawn ``python -m child`` with no app yet or to load later, and its channel.

    ``shared_memory`` is the size of each of the two arenas (0: none, every
    byte goes through the pipe). ``prewarm``: the child pays first-use costs
    before its hello, for a pooled child that nothing waits for yet. ``mask``
    hides secret values in what the child logs and reports.
    """
    argv = [python, "-m", "child"]
    if preload:
        argv += ["--preload", ",".join(preload)]
    if prewarm:
        argv.append("--prewarm")
    fds: list[int] = []
    mappings = []
    try:
        if shared_memory > 0:
            for _ in ("to the child", "from the child"):
                fd, mapping = create_arena(shared_memory)
                fds.append(fd)
                mappings.append(mapping)
            argv += ["--shared-memory", ",".join(map(str, fds))]
        process = await ChildProcess.spawn(
            argv, env=env, cwd=cwd, name=name, pass_fds=fds, confinement=confinement
        )
    finally:
        for fd in fds:
            os.close(fd)  # the mappings keep the memory; the child has its own descriptors
    arenas = (mappings[0], mappings[1]) if mappings else None
    channel = ChildChannel(process, logger, arenas=arenas)
    process.mask = channel.mask = mask
    return process, channel
