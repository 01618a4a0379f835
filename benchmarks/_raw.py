"""Drive a child the way ``supervisor/core/replica.py`` does, without the Replica/App/queue layers.

This isolates the cost of the process, the protocol and the child runtime from the
supervisor's own request machinery, and lets cold_start.py timestamp each step of a
start: spawn -> interpreter up -> hello -> load -> setup -> first result.

The child is ``python -c WRAPPER`` instead of ``python -m child``: the wrapper records
``time.monotonic()`` (CLOCK_MONOTONIC, comparable across processes on Linux) into the
file named by ``BENCH_T0_FILE`` as its first statement, then runs ``child`` exactly as
``-m`` would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from protocol import Error, Load, Log, Result, Run, Setup, Unload
from supervisor.environments.environment import child_environment
from supervisor.process.child_channel import ChildChannel
from supervisor.process.child_process import ChildProcess

WRAPPER = (
    "import os, time\n"
    "_t = time.monotonic()\n"
    "_p = os.environ.get('BENCH_T0_FILE')\n"
    "if _p:\n"
    "    with open(_p, 'w') as _f:\n"
    "        _f.write(repr(_t))\n"
    "import runpy\n"
    "runpy.run_module('child', run_name='__main__', alter_sys=True)\n"
)

PROFILE_WRAPPER = (
    "import cProfile, os, runpy\n"
    "import child.runtime as _rt\n"
    "_prof = cProfile.Profile()\n"
    "_orig = getattr(_rt.ChildRuntime, '_dispatch_loop', None)\n"
    "if _orig is not None:\n"
    "    async def _profiled(self, *a, **k):\n"
    "        _prof.enable()\n"
    "        return await _orig(self, *a, **k)\n"
    "    _rt.ChildRuntime._dispatch_loop = _profiled\n"
    "_exit = os._exit\n"
    "def _dump_and_exit(status):\n"
    "    _prof.disable()\n"
    "    _prof.dump_stats(os.environ['BENCH_PROFILE_TO'])\n"
    "    _exit(status)\n"
    "os._exit = _dump_and_exit\n"
    "if _orig is None:\n"
    "    _prof.enable()\n"
    "runpy.run_module('child', run_name='__main__', alter_sys=True)\n"
)
"""Runs the child under cProfile (its main thread: the event loop), from the start of
its dispatch loop (so imports are left out), and dumps the stats to
``BENCH_PROFILE_TO`` when the runtime calls ``os._exit``."""

_ids = iter(range(1, 1 << 62))
logger = logging.getLogger("bench.raw")


def next_id() -> str:
    return f"b{next(_ids)}"


class RawChild:
    def __init__(self, process: ChildProcess, channel: ChildChannel) -> None:
        self.process = process
        self.channel = channel
        self.marks: dict[str, float] = {}
        self.logs: list[str] = []
        """Log lines the child attributed to a request (its captured stdout/stderr)."""
        self._t0_file: str | None = None

    @classmethod
    async def spawn(
        cls,
        tasks: anyio.abc.TaskGroup,
        *,
        cwd: str | Path,
        env_extra: Mapping[str, str] | None = None,
        drop_env: tuple[str, ...] = (),
        probe: bool = True,
        profile_to: str | None = None,
        preimport: tuple[str, ...] = (),
        python: str = sys.executable,
    ) -> RawChild:
        """Spawn a child with no app (it says hello at once), as the replica or pool does.

        ``probe`` records the child's first-statement time; ``profile_to`` instead runs
        it under cProfile and writes the stats there when it exits; ``preimport``
        imports modules before the child's ``main()`` runs (while its stderr is still
        the original one).
        """
        t0_file = None
        extra = dict(env_extra or {})
        if profile_to:
            probe = False
            extra["BENCH_PROFILE_TO"] = profile_to
        if probe:
            fd, t0_file = tempfile.mkstemp(prefix="bench-t0-")
            os.close(fd)
            extra["BENCH_T0_FILE"] = t0_file
        env = child_environment(extra, cuda_visible_devices="")
        for key in drop_env:
            env.pop(key, None)
        prefix = f"import {', '.join(preimport)}\n" if preimport else ""
        if profile_to:
            argv = [python, "-c", prefix + PROFILE_WRAPPER]
        elif probe or preimport:
            argv = [python, "-c", prefix + WRAPPER]
        else:
            argv = [python, "-m", "child"]
        marks: dict[str, float] = {"spawn_call": time.monotonic()}
        process = await ChildProcess.spawn(argv, env=env, cwd=str(cwd), name="bench")
        marks["spawned"] = time.monotonic()
        channel = ChildChannel(process, logger)
        tasks.start_soon(channel.read_loop)
        tasks.start_soon(process.read_stderr)
        self = cls(process, channel)
        self.marks = marks
        self._t0_file = t0_file
        hello = await channel.wait_hello()
        marks["hello"] = time.monotonic()
        if hello is None:
            raise RuntimeError(
                "the child exited before its handshake: " + "\n".join(process.stderr_tail)
            )
        return self

    def interpreter_up(self) -> float | None:
        """The child's monotonic time at its first statement (probe children only)."""
        if not self._t0_file:
            return None
        with contextlib.suppress(OSError, ValueError):
            text = Path(self._t0_file).read_text().strip()
            if text:
                return float(text)
        return None

    async def call(self, message: Load | Setup | Run) -> Any:
        with self.channel.open_inbox(message.id) as inbox:
            await self.channel.send(message)
            async for reply in inbox:
                if isinstance(reply, Result):
                    return reply.output
                if isinstance(reply, Error):
                    raise RuntimeError(f"{reply.error.type}: {reply.error.message}")
                if isinstance(reply, Log):
                    self.logs.append(reply.message)
        raise RuntimeError(
            f"the child died during {message.TYPE}: " + "\n".join(self.process.stderr_tail)
        )

    async def load(self, app_dir: str | Path) -> Any:
        out = await self.call(Load(next_id(), str(app_dir)))
        self.marks["loaded"] = time.monotonic()
        return out

    async def setup(self, config: dict[str, Any] | None = None) -> Any:
        out = await self.call(Setup(next_id(), dict(config or {}), {}))
        self.marks["set_up"] = time.monotonic()
        return out

    async def run(self, input: dict[str, Any], function: str = "run") -> Any:
        return await self.call(Run(next_id(), function, input, {}))

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self.channel.send(Unload())
            with anyio.move_on_after(5):
                await self.channel.closed.wait()
                await self.process.wait()
            if self.process.exit_status is None:
                await self.process.terminate(1.0)
            self.process.close_pipes()
            if self._t0_file:
                with contextlib.suppress(OSError):
                    os.unlink(self._t0_file)


async def start_raw(
    tasks: anyio.abc.TaskGroup,
    app_dir: str | Path,
    config: dict[str, Any] | None = None,
    **spawn_kwargs: Any,
) -> RawChild:
    """Spawn, load and set up a child the way a replica's first start does."""
    child = await RawChild.spawn(tasks, cwd=app_dir, **spawn_kwargs)
    await child.load(app_dir)
    await child.setup(config)
    return child


ECHO_CHILD = r"""
import os, struct, msgpack
r, w = 0, 1
def read_exact(n):
    parts, left = [], n
    while left:
        chunk = os.read(r, min(left, 1 << 20))
        if not chunk:
            raise SystemExit(0)
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
while True:
    (size,) = struct.unpack(">I", read_exact(4))
    message = msgpack.unpackb(read_exact(size))
    out = msgpack.packb(message)
    view = memoryview(struct.pack(">I", len(out)) + out)
    while view:
        view = view[os.write(w, view):]
"""


ASYNCIO_ECHO_CHILD = r"""
import asyncio, os, struct, msgpack
r, w = 0, 1
os.set_blocking(r, False)

async def answer(message):
    out = msgpack.packb(message)
    view = memoryview(struct.pack(">I", len(out)) + out)
    while view:
        view = view[os.write(w, view):]

async def main():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    buffer = bytearray()
    def readable():
        try:
            data = os.read(r, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(r)  # EOF stays readable: the callback would run again
            done.set_result(None)
            return
        buffer.extend(data)
        while len(buffer) >= 4:
            (size,) = struct.unpack_from(">I", buffer)
            if len(buffer) < 4 + size:
                break
            message = msgpack.unpackb(bytes(buffer[4 : 4 + size]))
            del buffer[: 4 + size]
            loop.create_task(answer(message))
    loop.add_reader(r, readable)
    await done

asyncio.run(main())
"""
"""The same echo with an event loop in the child too: a read callback that starts a
task per message, which answers. The floor for a child that, like ours, keeps reading
(cancels, pings, more requests) while a request runs."""


class AnyioEcho:
    """A ``python -c`` child echoing length-prefixed msgpack over stdin/stdout, driven
    from anyio: the floor for an async, pipe-based design (no protocol, no runtime).
    ``child_loop`` runs the asyncio echo child instead of the blocking one."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self._buffer = bytearray()

    @classmethod
    async def start(
        cls, python: str = sys.executable, pipe_size: int | None = None, child_loop: bool = False
    ) -> AnyioEcho:
        """``pipe_size``: the child first enlarges its stdin/stdout pipes with
        ``F_SETPIPE_SZ`` (Linux; the default pipe holds 64 KiB)."""
        code = ASYNCIO_ECHO_CHILD if child_loop else ECHO_CHILD
        if pipe_size:
            code = (
                "import fcntl\n"
                "for fd in (0, 1):\n"
                f"    fcntl.fcntl(fd, 1031, {int(pipe_size)})  # F_SETPIPE_SZ\n"
            ) + code
        process = await anyio.open_process([python, "-c", code], stderr=None)
        return cls(process)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    async def call(self, message: Any) -> Any:
        import struct

        import msgpack

        body = msgpack.packb(message)
        await self.process.stdin.send(struct.pack(">I", len(body)) + body)
        buffer = self._buffer
        while True:
            if len(buffer) >= 4:
                (size,) = struct.unpack(">I", buffer[:4])
                if len(buffer) >= 4 + size:
                    out = msgpack.unpackb(bytes(buffer[4 : 4 + size]))
                    del buffer[: 4 + size]
                    return out
            buffer.extend(await self.process.stdout.receive(1 << 20))

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.process.stdin.aclose()
            with anyio.move_on_after(5):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
