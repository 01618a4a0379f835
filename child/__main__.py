"""``python -m child [APP_DIR]``: serve one app over the protocol on stdio.

The order matters: die with the parent, then take the protocol streams away
from fds 0 and 1, and only then import anything that could run app code.
"""

from __future__ import annotations

import os
import sys

from child.parent_death import die_with_parent
from child.stdio_guard import take_over_stdio


def main() -> None:
    die_with_parent()
    stdio = take_over_stdio()

    import faulthandler

    fatal = os.fdopen(stdio.fatal, "w", buffering=1)
    faulthandler.enable(file=fatal, all_threads=True)

    import anyio

    from child.log_capture import PipeForwarder
    from child.outbox import Outbox
    from child.runtime import ChildRuntime, install_streams
    from protocol import Connection

    connection = Connection("child")
    outbox = Outbox(connection, stdio.protocol_out)
    streams = install_streams(outbox)
    forwarders = tuple(
        PipeForwarder(fd, name, outbox.log, outbox.single_open_request)
        for fd, name in ((stdio.capture_stdout, "stdout"), (stdio.capture_stderr, "stderr"))
    )
    for forwarder in forwarders:
        forwarder.start()
    runtime = ChildRuntime(connection, outbox, stdio.protocol_in, streams, forwarders)
    app_dir = sys.argv[1] if len(sys.argv) > 1 else None
    status = anyio.run(runtime.serve, app_dir)
    os._exit(status)


if __name__ == "__main__":
    main()
