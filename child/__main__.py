"""``python -m child [--preload MOD[,MOD...]] [--shared-memory IN,OUT] [--prewarm] [APP_DIR]``:
serve one app over stdio.

The order matters: die with the parent, leave this process behind as the reaper
of whatever the app starts (``child.reaper``; the runtime goes on in a fork),
then take the protocol streams away from fds 0 and 1, and only then import
anything that could run app code.
``--preload`` imports modules (numpy, torch, ...) before the handshake, so that a
pre-started child pays for them before it is needed. ``--shared-memory`` names
the inherited descriptors of the two arenas (to the child, from the child) that
large byte strings travel through (PROTOCOL.md, section 4.1). ``--prewarm`` pays
first-use costs before the handshake (``child/prewarm.py``): the pool asks for it,
since nothing waits for its children yet.

The runtime's imports and the preloads run without the cyclic garbage collector
(``_collect_from_here``): about a tenth of a child's start went to collections
that found almost nothing.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from child.parent_death import die_with_parent
from child.reaper import split_off_runtime
from child.stdio_guard import take_over_stdio


def main() -> None:
    gc.disable()  # until _collect_from_here
    die_with_parent()
    split_off_runtime()
    options, app_dir = _parse(sys.argv[1:])
    serve(options, app_dir)


def serve(options: dict[str, str], app_dir: str | None) -> None:
    """Everything after the split: guard the streams, preload, serve, exit.

    A child forked by the fork server (``child.fork_server``) comes here too,
    with its preloads already imported."""
    stdio = take_over_stdio()

    import faulthandler

    fatal = os.fdopen(stdio.fatal, "w", buffering=1)
    faulthandler.enable(file=fatal, all_threads=True)

    import anyio
    import anyio._backends._asyncio  # what anyio.run imports: while the collector is off

    from child.log_capture import PipeForwarder
    from child.outbox import Outbox
    from child.runtime import ChildRuntime, install_streams
    from protocol import BlobReader, BlobWriter, Connection
    from protocol.shared_memory import map_arena

    blobs: dict[str, Any] = {}
    if "--shared-memory" in options:
        to_child, from_child = (int(fd) for fd in options["--shared-memory"].split(","))
        blobs = {
            "blobs_in": BlobReader(map_arena(to_child)),
            "blobs_out": BlobWriter(map_arena(from_child)),
        }
    connection = Connection("child", **blobs)
    outbox = Outbox(connection, stdio.protocol_out)
    streams = install_streams(outbox)
    forwarders = tuple(
        PipeForwarder(fd, name, outbox.log, outbox.single_open_request)
        for fd, name in ((stdio.capture_stdout, "stdout"), (stdio.capture_stderr, "stderr"))
    )
    for forwarder in forwarders:
        forwarder.start()
    if "--preload" in options:
        _preload(options["--preload"])
        gc.collect()  # what the libraries left, before it is frozen
    _collect_from_here()
    if "--prewarm" in options:
        from child.prewarm import prewarm

        prewarm()
    runtime = ChildRuntime(
        connection, outbox, stdio.protocol_in, streams, forwarders, exit_now=os._exit
    )
    status = anyio.run(runtime.serve, app_dir)
    os._exit(status)


def _collect_from_here() -> None:
    """Turn the collector back on, before any app code runs.

    ``main`` turned it off: the runtime's imports (and the preloads) make objects
    that live as long as the process, and the collections during them (70 in a
    child's start) found a few dozen cycles. What they made is frozen out of the
    collector's way, as a fork server's is, and with it the few hundred cycles the
    runtime's imports left (about 150 KiB, once: classes and functions of import
    machinery): otherwise the first collection would walk all of it, during the
    app's load. A child forked by the fork server has its collector on already."""
    gc.freeze()
    gc.enable()


def _parse(args: list[str]) -> tuple[dict[str, str], str | None]:
    """Options (a flag maps to "") and the optional app directory."""
    options: dict[str, str] = {}
    while args:
        if args[0] == "--prewarm":
            options[args[0]] = ""
            args = args[1:]
        elif len(args) >= 2 and args[0] in ("--preload", "--shared-memory"):
            options[args[0]] = args[1]
            args = args[2:]
        else:
            break
    return options, args[0] if args else None


def _preload(modules: str) -> None:
    import importlib

    for name in filter(None, modules.split(",")):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing preload only costs the app its own import
            print(f"preload of {name!r} failed: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main()
