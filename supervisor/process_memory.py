"""Memory of a child's whole process tree: host RAM (RSS) and VRAM per device.

An app's child process may start workers of its own (data loaders,
``multiprocessing`` pools, a tokenizer server), and those hold memory on the
app's behalf. Budgets therefore apply to the tree rooted at the child, not to
the one pid the supervisor spawned.

Processes come and go while the tree is walked; one that vanishes or cannot be
read simply contributes nothing. RSS counts shared pages once per process (a
forked worker's copy-on-write pages are counted again), so the sum overstates
a tree's true footprint somewhat; it is cheap and never understates, which is
the safe side for a budget.
"""

from __future__ import annotations

from collections.abc import Iterable

import psutil

from .gpu_backend import GpuSample

__all__ = ["pids_rss", "pids_vram", "tree_pids", "tree_rss", "tree_vram"]


def tree_pids(pid: int) -> list[int]:
    """``pid`` followed by all its living descendants; ``[]`` if ``pid`` is gone."""
    try:
        root = psutil.Process(pid)
        descendants = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    except psutil.AccessDenied:
        return [pid]
    return [pid, *(child.pid for child in descendants)]


def pids_rss(pids: Iterable[int]) -> int:
    """Sum of RSS in bytes over ``pids``, skipping any that vanished."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def pids_vram(pids: Iterable[int], sample: GpuSample) -> dict[int, int]:
    """Device index -> bytes used by ``pids``, per ``sample``; devices unused are absent."""
    usage: dict[int, int] = {}
    for pid in pids:
        for index, used in sample.processes.get(pid, {}).items():
            usage[index] = usage.get(index, 0) + used
    return usage


def tree_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and its descendants; 0 if ``pid`` is gone."""
    return pids_rss(tree_pids(pid))


def tree_vram(pid: int, sample: GpuSample) -> dict[int, int]:
    """Device index -> bytes used by ``pid`` and its descendants, per ``sample``."""
    return pids_vram(tree_pids(pid), sample)
