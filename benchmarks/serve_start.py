"""``serve``'s start against another checkout's, alternated start by start.

Run from the repository root::

    .venv/bin/python benchmarks/serve_start.py --baseline DIR [--pairs 20]

``DIR`` is another checkout (a git worktree of the commit to compare with). Each
pair starts ``python -m supervisor serve benchmarks/apps/empty`` from this tree
and from ``DIR`` (``PYTHONPATH`` and the working directory set to each), in
turns (ABBA: the first of a pair alternates), and times each from the spawn to
its first 200 as ``http_serve.py`` does; a pause after each stop lets the last
server's processes go. Start times on these machines drift within minutes, so
only such alternated pairs show a change of a few milliseconds;
``http_serve.py --baseline`` always starts this tree's ``serve`` first in a
round. Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _common import ROOT, free_port, log, machine_info, machine_line, median, ms, write_json
from http_serve import APP, Server, first_ok, running


def serve_in(tree: Path) -> Server:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(tree)
    argv = [sys.executable, "-m", "supervisor", "serve", str(APP), "--port", "{port}"]
    return Server(str(tree), argv, "/run", cwd=tree, env=env)


def start_seconds(server: Server) -> float:
    port = free_port()
    started = time.perf_counter()
    with running(server, port) as proc:
        seconds = first_ok(port, server.path, proc, started)
    time.sleep(0.3)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout")
    parser.add_argument("--pairs", type=int, default=20)
    args = parser.parse_args()
    info = machine_info()
    print(f"# serve's start, alternated with {args.baseline}\n\n{machine_line(info)}\n")
    this, other = serve_in(ROOT), serve_in(args.baseline.resolve())
    for server in (this, other):  # compile their bytecode, untimed
        start_seconds(server)
    times: dict[str, list[float]] = {this.name: [], other.name: []}
    for pair in range(args.pairs):
        log(f"pair {pair + 1}/{args.pairs}")
        for server in (this, other) if pair % 2 == 0 else (other, this):
            times[server.name].append(start_seconds(server))
    mine, theirs = median(times[this.name]), median(times[other.name])
    print(f"this tree: {ms(mine)} ms; {args.baseline}: {ms(theirs)} ms (medians of {args.pairs})")
    print(f"this / baseline: {mine / theirs:.3f}")
    write_json("serve_start", {"machine": info, "pairs": args.pairs, "times": times})


if __name__ == "__main__":
    main()
