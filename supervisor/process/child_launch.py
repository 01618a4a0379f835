"""How a child is started: its command line, its shared memory, its channel.

One place for what the replica and the pool both do, so that a pooled child and a
fresh one are started the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from .child_channel import ChildChannel
from .child_command import DEFAULT_SHARED_MEMORY, child_argv, create_arenas
from .child_process import ChildProcess
from .confinement import Confinement

__all__ = ["DEFAULT_SHARED_MEMORY", "launch_child", "node_command"]


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
    runtime: str = "python",
) -> tuple[ChildProcess, ChildChannel]:
    """Spawn ``python -m child`` with no app yet or to load later, and its channel.

    ``shared_memory`` is the size of each of the two arenas (0: none, every
    byte goes through the pipe). ``prewarm``: the child pays first-use costs
    before its hello, for a pooled child that nothing waits for yet. ``mask``
    hides secret values in what the child logs and reports.
    ``runtime="node"``: ``python`` is a node executable, and the child is the
    JavaScript runtime (``node_command``), which takes no arenas or preloads.
    """
    if runtime == "node":
        process = await ChildProcess.spawn_with_captured_stdio(
            partial(node_command, python, None), env=env, cwd=cwd, name=name
        )
        channel = ChildChannel(process, logger, arenas=None)
        process.mask = channel.mask = mask
        return process, channel
    fds, mappings = create_arenas(shared_memory)
    argv = child_argv(python, preload, prewarm=prewarm, arena_fds=fds)
    try:
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


def node_command(
    node: str,
    app_dir: str | None,
    protocol_out: int,
    capture_stdout: int,
    capture_stderr: int,
    stderr: int,
) -> list[str]:
    """The JavaScript child's command line, for the descriptors it was given
    (``ChildProcess.spawn_with_captured_stdio``); with ``app_dir`` it loads that
    app before its hello."""
    from ..environments.node_runtime import child_runtime_dir

    fds = f"0,{protocol_out},{capture_stdout},{capture_stderr},{stderr}"
    # --preserve-symlinks: the app is imported through a link that sits next to its
    # installed packages (node_packages.app_link), and must resolve from there.
    argv = [node, "--preserve-symlinks", str(child_runtime_dir() / "main.js"), "--fds", fds]
    return argv if app_dir is None else [*argv, app_dir]
