"""Round trips of several servers, measured side by side.

This machine's speed drifts by tens of percent within minutes, more than the
differences between the servers that ``http_serve.py`` and ``http_split.py``
compare. So all of them are up at once and ``rotate`` asks them in blocks, in a
rotating order: each block ``UNTIMED`` calls, then the timed ones, so that the
drift falls on all of them alike. A target is an HTTP server (``HttpTarget``,
the standard library's ``http.client`` over one keep-alive connection) or the
library's own call in a thread of this process (``LibraryTarget``), and each
block also reports the CPU that its calls took in the server, its children and
this client.
"""

from __future__ import annotations

import http.client
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

UNTIMED = 20
BODY = '{"input": {"x": 0}}'
HEADERS = {"content-type": "application/json"}


@dataclass
class Calls:
    """Timed calls to one target: the seconds of those answered 200, how many were
    not, and the CPU seconds (server, its children, this client) they took."""

    lat: list[float] = field(default_factory=list)
    failed: int = 0
    cpu: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def add(self, other: Calls) -> None:
        self.lat += other.lat
        self.failed += other.failed
        self.cpu = [a + b for a, b in zip(self.cpu, other.cpu, strict=True)]


def cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


class Target:
    name: str

    def warm_up(self, calls: int) -> None:
        raise NotImplementedError

    def block(self, calls: int) -> Calls:
        raise NotImplementedError


class HttpTarget(Target):
    """A server on ``port``: ``POST path`` of a no-op input."""

    def __init__(self, name: str, port: int, path: str, pid: int) -> None:
        self.name, self.path = name, path
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.process = psutil.Process(pid)
        self.children: list[psutil.Process] = []

    def call(self) -> int:
        self.conn.request("POST", self.path, BODY, HEADERS)
        response = self.conn.getresponse()
        response.read()
        return response.status

    def warm_up(self, calls: int) -> None:
        self.children = self.process.children(recursive=True)  # the pool's, by now
        for _ in range(calls):
            self.call()

    def block(self, calls: int) -> Calls:
        for _ in range(UNTIMED):
            self.call()
        done = Calls()
        before = self._cpu()
        for _ in range(calls):
            started = time.perf_counter()
            status = self.call()
            elapsed = time.perf_counter() - started
            if status == 200:
                done.lat.append(elapsed)
            else:
                done.failed += 1
        done.cpu = [b - a for a, b in zip(before, self._cpu(), strict=True)]
        return done

    def _cpu(self) -> list[float]:
        return [
            cpu_seconds(self.process),
            sum(map(cpu_seconds, self.children)),
            time.process_time(),
        ]


class LibraryTarget(Target):
    """The library's no-op call on ``app_dir`` (``app.<method>(...)``), on uvloop in a
    thread of this process that waits for blocks. ``start``: the seconds from
    ``Supervisor(**options)`` to the first result."""

    def __init__(self, name: str, app_dir: Path, method: str, options: dict[str, Any]) -> None:
        self.name, self.app_dir, self.method, self.options = name, app_dir, method, options
        self.start = 0.0
        self.asked: queue.Queue[int | None] = queue.Queue()
        self.answers: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self._answer()  # started

    def warm_up(self, calls: int) -> None:
        self.asked.put(-calls)
        self._answer()

    def block(self, calls: int) -> Calls:
        self.asked.put(calls)
        done: Calls = self._answer()
        return done

    def close(self) -> None:
        self.asked.put(None)
        self.thread.join(30)

    def _answer(self) -> Any:
        answer = self.answers.get()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _serve(self) -> None:
        import anyio.to_thread
        import uvloop
        from _common import make_supervisor

        async def go() -> None:
            started = time.perf_counter()
            async with make_supervisor(**self.options) as sup:
                app = await sup.start(self.app_dir)
                call = getattr(app, self.method)
                await call({"x": 0})
                self.start = time.perf_counter() - started
                children = psutil.Process().children(recursive=True)
                self.answers.put("started")
                while (asked := await anyio.to_thread.run_sync(self.asked.get)) is not None:
                    if asked < 0:  # a warm-up
                        for _ in range(-asked):
                            await call({"x": 0})
                        self.answers.put("warm")
                        continue
                    for _ in range(UNTIMED):
                        await call({"x": 0})
                    done = Calls()
                    before = (time.thread_time(), sum(map(cpu_seconds, children)))
                    for _ in range(asked):
                        t = time.perf_counter()
                        await call({"x": 0})
                        done.lat.append(time.perf_counter() - t)
                    after = (time.thread_time(), sum(map(cpu_seconds, children)))
                    own, child = (b - a for a, b in zip(before, after, strict=True))
                    done.cpu = [own, child, 0.0]
                    self.answers.put(done)

        try:
            uvloop.run(go())
        except BaseException as exc:  # the waiting main thread raises it
            self.answers.put(exc)


def rotate(targets: Sequence[Target], blocks: int, calls: int) -> dict[str, Calls]:
    """``blocks`` blocks of ``calls`` timed calls to each target, in a rotating order."""
    done = {target.name: Calls() for target in targets}
    for number in range(blocks):
        shift = number % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            done[target.name].add(target.block(calls))
    return done
