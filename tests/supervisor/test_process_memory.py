from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import psutil
import pytest

from supervisor.gpu.sample import GpuSample
from supervisor.process.process_memory import pids_memory, tree_memory, tree_pids

MIB = 1024 * 1024

# Each process writes 50 MiB (so the pages are resident, unlike a calloc'd
# bytearray), the child only after its grandchild has, then both wait on stdin.
HOLD = "data = b'x' * (50 * 1024 * 1024)"
GRANDCHILD = f"{HOLD}\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()\n"
CHILD = textwrap.dedent(
    f"""
    import subprocess, sys
    grandchild = subprocess.Popen(
        [sys.executable, "-c", {GRANDCHILD!r}],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert grandchild.stdout.readline() == "ready\\n"
    {HOLD}
    print(grandchild.pid, flush=True)
    sys.stdin.read()
    grandchild.stdin.close()
    grandchild.wait()
    """
)


@pytest.fixture
def family() -> Iterator[tuple[int, int]]:
    """A real child holding ~50 MiB, whose own child holds ~50 MiB: (child, grandchild)."""
    with subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            grandchild = int(proc.stdout.readline())
            yield proc.pid, grandchild
        finally:
            proc.stdin.close()  # both exit once their stdin closes
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_tree_pids_lists_child_then_descendants(family: tuple[int, int]) -> None:
    child, grandchild = family
    assert tree_pids(child) == [child, grandchild]
    assert tree_pids(grandchild) == [grandchild]


def test_tree_memory_counts_child_and_grandchild(family: tuple[int, int]) -> None:
    child, grandchild = family
    total = tree_memory(child)
    alone = psutil.Process(child).memory_full_info().pss
    below = psutil.Process(grandchild).memory_full_info().pss
    assert total >= 100 * MIB
    assert alone >= 50 * MIB and below >= 50 * MIB
    assert total > alone + 40 * MIB  # the grandchild's 50 MiB is in there
    assert abs(total - (alone + below)) < 10 * MIB
    assert pids_memory([child, grandchild]) >= 100 * MIB


def test_tree_vram_sums_over_the_tree(family: tuple[int, int]) -> None:
    child, grandchild = family
    sample = GpuSample(
        devices=(),
        processes={
            child: {0: 100 * MIB},
            grandchild: {0: 20 * MIB, 1: 5 * MIB},
            1: {0: 999 * MIB},  # someone else's
        },
        taken_at=0.0,
    )
    assert sample.vram_of(tree_pids(child)) == {0: 120 * MIB, 1: 5 * MIB}
    assert sample.vram_of(tree_pids(grandchild)) == {0: 20 * MIB, 1: 5 * MIB}


def gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_vanished_processes_count_as_nothing() -> None:
    pid = gone_pid()
    sample = GpuSample((), {pid: {0: 10}}, 0.0)
    assert tree_pids(pid) == []
    assert tree_memory(pid) == 0
    assert sample.vram_of(tree_pids(pid)) == {}
    assert pids_memory([pid]) == 0
    # vram_of trusts the pids it is given; the sample decides what they use
    assert sample.vram_of([pid]) == {0: 10}
    assert sample.vram_of([]) == {}


FORKER = textwrap.dedent(
    """
    import os, sys
    data = bytearray(os.urandom(40 * 1024 * 1024))  # resident, and copied on write by none
    pids = []
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            sys.stdin.read()
            os._exit(0)
        pids.append(pid)
    print("ready", flush=True)
    sys.stdin.read()
    for pid in pids:
        os.waitpid(pid, 0)
    """
)


def test_pages_shared_by_forked_workers_are_counted_once() -> None:
    """Six forked workers share the parent's 40 MiB: RSS would count it seven times
    (280 MiB), the tree's PSS about once."""
    with subprocess.Popen(
        [sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            assert proc.stdout.readline() == "ready\n"
            pids = tree_pids(proc.pid)
            assert len(pids) == 7
            rss = sum(psutil.Process(pid).memory_info().rss for pid in pids)
            assert rss > 250 * MIB
            assert 40 * MIB <= tree_memory(proc.pid) < 120 * MIB
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)
