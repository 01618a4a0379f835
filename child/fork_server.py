"""``python -m child.fork_server --socket FD [--preload MODS] [--optional MODS]
[--optional-file PATH]``: a zygote.

Started by the supervisor (``supervisor.process.fork_server``) once per environment
key: the interpreter, the preloads and the library settings read at import
time. It imports the child runtime and the heavy modules, pays the first-use
costs a pooled child pays (``child.prewarm``); ``--optional`` modules (the
``inferencesh`` SDK, which nearly every app imports) and those named in
``--optional-file`` (what apps of this environment imported: learned by the
supervisor, ``child.import_record``) are imported where they are installed and
import cleanly, silently skipped otherwise. Then it waits on one unix socket
(``SOCK_SEQPACKET``: a message is one ``send``). It initialises no CUDA, runs
no event loop and starts no Python thread, so that a fork of it is a sound
process.

The supervisor sends one message per child: a msgpack map ``{"id": N,
"cgroups": "..."}`` with, as ``SCM_RIGHTS`` descriptors, the child's stdin
(protocol in), stdout (protocol out), stderr and optionally the two shared
memory arenas. The zygote forks at once and answers ``{"forked": N, "pid":
PID}``; when a child it forked exits it answers ``{"exited": PID, "returncode":
RC}`` (negative: the signal), since only it can reap them. The supervisor is
not made a subreaper.

The forked process becomes what a spawned ``python -m child`` is: a new
session, its descriptors on 0/1/2, the child's reaper (``child.reaper``) with
the runtime forked below it, waiting to be moved into its cgroups when it has
any. Its random generators are reseeded, and then it runs the same runtime,
with no app: the ``load`` request installs the app's environment, working
directory and ``sys.path`` exactly as for a pooled child.

The zygote never outlives the supervisor: it dies with it (``PR_SET_PDEATHSIG``,
``child.parent_death``) and exits when its socket reaches end of file, killing
the children it still has; those die with it in any case (their reapers'
parent-death signal).
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
import threading
import warnings
from typing import Any, NoReturn

from child import exit_codes
from child.parent_death import PARENT_PID_ENV, die_with_parent

MAX_FDS = 5
"""stdin, stdout, stderr, and the two arenas."""
MESSAGE_SIZE = 4096
RUNTIME_MODULES = (
    "faulthandler",
    "anyio",
    "anyio._backends._asyncio",  # what ``anyio.run`` imports the first time: 50-100 ms
    "anyio.to_thread",
    "anyio.lowlevel",
    "asyncio",
    "child.log_capture",
    "child.outbox",
    "child.runtime",
    "protocol",
    "protocol.shared_memory",
)


def main() -> None:
    gc.disable()  # for the imports: collected once at their end instead
    die_with_parent()
    args = sys.argv[1:]
    options = dict(zip(args[::2], args[1::2], strict=False))
    server = socket.socket(fileno=int(options["--socket"]))
    server.setblocking(True)
    # Nothing of ours may hold the supervisor's pipes: stdin and stdout go nowhere.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)

    import importlib

    import msgpack

    import child.__main__

    for module in RUNTIME_MODULES:  # what ``child.__main__.serve`` imports
        importlib.import_module(module)
    from child.prewarm import prewarm

    # A library that asks torch whether CUDA is there while it is imported must not
    # initialise the driver in the zygote (its forks could not use CUDA): ask NVML.
    # (A forked child's load replaces the whole environment.)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    if options.get("--preload"):
        child.__main__._preload(options["--preload"])
    optional = options.get("--optional", "").split(",")
    if options.get("--optional-file"):
        with open(options["--optional-file"]) as learned:
            optional += learned.read().split()
    with warnings.catch_warnings():  # an app importing them would not show them either
        warnings.simplefilter("ignore")
        for name in filter(None, optional):
            if name in sys.modules:
                continue
            with contextlib.suppress(Exception, SystemExit):  # installed, and imports cleanly
                importlib.import_module(name)
    prewarm()
    # Objects made so far are shared with every fork: the collector must not walk
    # (and so copy) their pages in each child. Until here it was off: collections
    # during the imports cost about a tenth of them (torch and sentence_transformers:
    # 4.9 s instead of 5.3 s) and found next to nothing this one does not.
    gc.collect()
    gc.freeze()
    gc.enable()
    Zygote(server, msgpack).serve()


class Zygote:
    def __init__(self, server: socket.socket, codec: Any) -> None:
        self.server = server
        self.codec = codec
        self.children: set[int] = set()
        self._wake_read, self._wake_write = os.pipe()

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone: EOF ends us next
            self.server.send(self.codec.packb(message))

    def serve(self) -> NoReturn:
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.send(
            {
                "ready": os.getpid(),
                "python_threads": threading.active_count(),
                "threads": len(os.listdir("/proc/self/task")) if sys.platform == "linux" else 1,
                "cuda": _cuda_initialised(),
                "modules": len(sys.modules),
            }
        )
        while True:
            readable, _, _ = select.select([self.server.fileno(), self._wake_read], [], [])
            if self._wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_read, 4096)
                self._reap()
            if self.server.fileno() in readable:
                try:
                    data, fds, _, _ = socket.recv_fds(self.server, MESSAGE_SIZE, MAX_FDS)
                except OSError:
                    data, fds = b"", []
                if not data:
                    self._end()
                request = self.codec.unpackb(data)
                pid = os.fork()
                if pid == 0:
                    self._become_child(request, fds)
                for fd in fds:
                    os.close(fd)
                self.children.add(pid)
                self.send({"forked": request["id"], "pid": pid})
                self._reap()  # a SIGCHLD that came while we forked

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.send({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})

    def _end(self) -> NoReturn:
        """The supervisor closed the socket (or died): take the children along."""
        for pid in self.children:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                os._exit(0)

    def _become_child(self, request: dict[str, Any], fds: list[int]) -> NoReturn:
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.server.close()
            os.close(self._wake_read)
            os.close(self._wake_write)
            stdin, stdout, stderr, *arenas = fds
            for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
                os.dup2(fd, target)
                os.close(fd)
            # Until its load replaces them all: the parent that the reaper checks
            # is this zygote, and the cgroups it waits to be moved into.
            os.environ[PARENT_PID_ENV] = str(os.getppid())
            if request.get("cgroups"):
                from child.reaper import CGROUPS_ENV

                os.environ[CGROUPS_ENV] = request["cgroups"]
            options = {"--shared-memory": ",".join(map(str, arenas))} if arenas else {}
            sys.argv = [sys.modules["child.__main__"].__file__ or "child"]
            for option, value in options.items():
                sys.argv += [option, value]
            start_forked_child(options)
        finally:
            os._exit(exit_codes.INTERNAL_ERROR)  # never return into the zygote's loop


def start_forked_child(options: dict[str, str]) -> NoReturn:
    """What ``python -m child`` does, from a fork: die with the parent, split off
    the runtime under its reaper, reseed, serve."""
    from child.__main__ import serve
    from child.reaper import split_off_runtime

    die_with_parent()
    split_off_runtime()
    reseed()
    serve(options, None)
    os._exit(0)  # serve exits itself


def reseed() -> None:
    """Fresh seeds for the generators that a fresh interpreter seeds from the OS.

    ``random`` reseeds itself after a fork already; numpy's global generator (made
    when ``numpy.random`` is first imported) does not. torch's default generator
    starts from a fixed seed in every process, so it is left as the zygote's, which
    never drew from it: the same as a fresh one.
    """
    import random

    random.seed()
    numpy_random = sys.modules.get("numpy.random")  # imported lazily: often not yet
    if numpy_random is not None:
        with contextlib.suppress(Exception):
            numpy_random.seed()


def _cuda_initialised(device_prefix: str = "/dev/nvidia") -> bool:
    """Whether this process has touched the GPU: a CUDA context in torch, or any
    NVIDIA device file open (the driver initialised by whichever library)."""
    torch = sys.modules.get("torch")
    with contextlib.suppress(Exception):
        if torch is not None and torch.cuda.is_initialized():
            return True
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}").startswith(device_prefix):
                    return True
    return False


if __name__ == "__main__":
    main()
