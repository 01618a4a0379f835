"""A cgroup per child, where the host lets this process make them.

A cgroup holds every process started inside it, however it detaches, so the
kernel can kill all of them at once (cgroup v2's ``cgroup.kill``; elsewhere the
members are listed and killed until none is left), enforce a hard memory limit
(``memory.max`` / ``memory.limit_in_bytes``: the kernel's OOM killer acts inside
the group at the limit, instead of a sampler seconds later) and count the
group's memory exactly.

``CgroupHost.probe`` reads which hierarchies are mounted and where this process
sits in each, and tries to make a directory ``appvisor-<pid>-<n>`` under its own
group in each one; only those that work are used (a v2 hierarchy with
``cgroup.kill`` or a v1 freezer/pids/memory one for membership and killing, v1
``memory`` or v2 with the memory controller for the limit). Directories left by
a supervisor that died are removed on the way.

A child is moved into its groups right after it is spawned; the child's reaper
waits to see itself there (``APPVISOR_CGROUPS``) before it forks the runtime,
so nothing the app starts can be outside.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("supervisor.cgroups")

CGROUPS_ENV = "APPVISOR_CGROUPS"
"""The groups (as ``/proc/self/cgroup`` names them, ``;``-separated) the child waits to be in."""
PREFIX = "appvisor-"
_instances = itertools.count(1)
"""Each supervisor in a process has its own directories: ``appvisor-<pid>-<n>``."""
MEMBERSHIP_V1 = ("freezer", "pids", "memory")


@dataclass(frozen=True)
class Hierarchy:
    """One cgroup hierarchy this process may make groups in."""

    kind: str
    """``v2``, or the v1 controller: ``memory``, ``pids``, ``freezer``."""
    base: Path
    """This supervisor's directory in it (``.../appvisor-<pid>-<n>``)."""
    name: str
    """``base`` as ``/proc/<pid>/cgroup`` names it."""

    @property
    def can_kill(self) -> bool:
        return self.kind == "v2" and (self.base / "cgroup.kill").exists()

    @property
    def memory_file(self) -> str | None:
        if self.kind == "memory":
            return "memory.limit_in_bytes"
        if self.kind == "v2" and "memory" in _read(self.base / "cgroup.subtree_control"):
            return "memory.max"
        return None


@dataclass
class CgroupHost:
    """The cgroup hierarchies this host lets the supervisor create children's groups in."""

    hierarchies: list[Hierarchy] = field(default_factory=list)
    _made: int = 0

    @classmethod
    def probe(
        cls, mounts: str = "/proc/self/mounts", own: str = "/proc/self/cgroup"
    ) -> CgroupHost | None:
        """The hierarchies usable here, or None when there is none to hold children."""
        try:
            mount_lines = Path(mounts).read_text().splitlines()
            own_lines = Path(own).read_text().splitlines()
        except OSError:
            return None
        places: dict[str, str] = {}
        for line in own_lines:
            parts = line.split(":", 2)
            if len(parts) == 3:
                for controller in parts[1].split(",") if parts[1] else ["v2"]:
                    places[controller] = parts[2]
        host = cls()
        instance = next(_instances)
        for line in mount_lines:
            fields = line.split()
            if len(fields) < 4 or fields[2] not in ("cgroup", "cgroup2"):
                continue
            if fields[2] == "cgroup2":
                kinds = ["v2"]
            else:
                kinds = [k for k in fields[3].split(",") if k in MEMBERSHIP_V1]
            for kind in kinds:
                if kind in places and all(h.kind != kind for h in host.hierarchies):
                    hierarchy = _make_base(kind, Path(fields[1]), places[kind], instance)
                    if hierarchy is not None:
                        host.hierarchies.append(hierarchy)
        if not any(h.can_kill or h.kind in MEMBERSHIP_V1 for h in host.hierarchies):
            host.close()
            return None
        if any(h.can_kill for h in host.hierarchies):
            # The kernel kills a v2 group whole: v1 freezer and pids add nothing.
            spare = [h for h in host.hierarchies if h.kind in ("freezer", "pids")]
            CgroupHost(spare).close()
            host.hierarchies = [h for h in host.hierarchies if h not in spare]
        return host

    @property
    def memory(self) -> Hierarchy | None:
        return next((h for h in self.hierarchies if h.memory_file), None)

    def describe(self) -> str:
        kinds = [h.kind + (" (kill)" if h.can_kill else "") for h in self.hierarchies]
        limit = "with" if self.memory else "without"
        return f"a cgroup per child in {', '.join(kinds)}, {limit} a hard memory limit"

    def create(self, label: str) -> ChildCgroup:
        self._made += 1
        name = f"child-{self._made}-{''.join(c if c.isalnum() else '_' for c in label)[:40]}"
        made: list[tuple[Hierarchy, Path]] = []
        try:
            for hierarchy in self.hierarchies:
                directory = hierarchy.base / name
                directory.mkdir()
                made.append((hierarchy, directory))
        except OSError:
            ChildCgroup(made).remove()
            raise
        return ChildCgroup(made)

    def close(self) -> None:
        for hierarchy in self.hierarchies:
            _remove_tree(hierarchy.base)


class ChildCgroup:
    def __init__(self, dirs: list[tuple[Hierarchy, Path]]) -> None:
        self.dirs = dirs
        self.memory_limit: int | None = None

    @property
    def names(self) -> list[str]:
        return [f"{h.name}/{d.name}" for h, d in self.dirs]

    def add(self, pid: int) -> None:
        for _, directory in self.dirs:
            (directory / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        found: set[int] = set()
        for _, directory in self.dirs:
            found.update(int(p) for p in _read(directory / "cgroup.procs").split())
        return sorted(found)

    def limit_memory(self, limit: int) -> bool:
        """Set the hard memory limit; False where the host gives no memory controller."""
        for hierarchy, directory in self.dirs:
            if hierarchy.memory_file:
                (directory / hierarchy.memory_file).write_text(str(limit))
                self.memory_limit = limit
                return True
        return False

    def memory_usage(self) -> int | None:
        for hierarchy, directory in self.dirs:
            name = {"memory": "memory.usage_in_bytes", "v2": "memory.current"}.get(hierarchy.kind)
            if hierarchy.memory_file and name:
                text = _read(directory / name).strip()
                return int(text) if text.isdigit() else None
        return None

    def oom_kills(self) -> int | None:
        """How many processes an OOM killer took in this group, its own limit's or the
        host's; None where the group has no memory accounting to tell."""
        for hierarchy, directory in self.dirs:
            if hierarchy.memory_file:
                source = "memory.oom_control" if hierarchy.kind == "memory" else "memory.events"
                for line in _read(directory / source).splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and value.strip().isdigit():
                        return int(value)
        return None

    def kill(self) -> None:
        """SIGKILL every member: at once where the kernel offers it, else one by one."""
        for hierarchy, directory in self.dirs:
            if hierarchy.can_kill:
                with contextlib.suppress(OSError):
                    (directory / "cgroup.kill").write_text("1")
        _kill_all(self.pids())

    def remove(self, timeout: float = 2.0) -> bool:
        """Kill every member and remove the groups; False if one stayed populated."""
        deadline = time.monotonic() + timeout
        removed = True
        for _, directory in self.dirs:
            while True:
                self.kill()
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        logger.warning("cannot remove %s: it still has members", directory)
                        removed = False
                        break
                    time.sleep(0.01)
        return removed


def _make_base(kind: str, mount: Path, own: str, instance: int) -> Hierarchy | None:
    parent = mount / own.lstrip("/")
    if not parent.is_dir():
        return None
    _remove_stale(parent)
    base = parent / f"{PREFIX}{os.getpid()}-{instance}"
    try:
        base.mkdir()
        if not os.access(base / "cgroup.procs", os.W_OK):
            raise PermissionError(f"{base / 'cgroup.procs'} is not writable")
        if kind == "v2" and "memory" in _read(base / "cgroup.controllers"):
            with contextlib.suppress(OSError):
                (base / "cgroup.subtree_control").write_text("+memory")
    except OSError as exc:
        logger.debug("cgroup hierarchy %s unusable: %s", kind, exc)
        with contextlib.suppress(OSError):
            base.rmdir()
        return None
    return Hierarchy(kind, base, f"{own.rstrip('/')}/{base.name}")


def _remove_stale(parent: Path) -> None:
    """Remove the directories of supervisors that are gone (after killing what is left)."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            pid = entry.name.removeprefix(PREFIX).split("-")[0]
            if entry.name.startswith(PREFIX) and pid.isdigit() and not _alive(int(pid)):
                _remove_tree(entry)


def _remove_tree(directory: Path) -> None:
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if entry.is_dir():
                _remove_tree(entry)
    for _ in range(100):
        _kill_all(int(p) for p in _read(directory / "cgroup.procs").split())
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def _kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
