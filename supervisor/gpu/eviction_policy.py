"""Which children to stop, and whether a new one fits: pure functions of figures.

The supervisor keeps warm children around after their requests finish, since
loading a model is the expensive part. Memory is what that costs, so three
questions come up again and again, and each is answered here from numbers
alone, without touching a process:

* ``over_budget``: which children exceed the VRAM or RAM budget their app
  declared (the supervisor restarts those; a leak should not take others down);
* ``pressure_evictions``: a device is running out of free memory; which idle
  children should go, least recently used first, to give it back;
* ``admission_plan``: a new app needs ``count`` GPUs with ``vram_per_gpu``
  each; does it fit now, after evicting which idle children, or not at all
  (``replica_plans``: the same for each of its replicas, all or none).

A VRAM budget is per GPU, as ``inf.yml`` declares ``resources.gpu.vram``, and
it is also a reservation: a running child may grow to its budget at any time
(a model loads lazily, an allocator caches), so admission counts the part of
each budget not yet in use as taken. A child is evicted with its reservation.

A busy child (one with a request in flight) is never chosen: evicting it would
fail a request to make room for another. All rules are greedy and
deterministic; ties are broken by documented keys so tests can pin them.

``is_cuda_oom`` (from ``protocol``, where the child's classification lives too)
is exported here as well: a CUDA out-of-memory error is the late form of memory
pressure, and the supervisor answers it with the same policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import methodcaller
from typing import Literal

from protocol import is_cuda_oom

from .allocation import format_bytes
from .sample import DeviceMemory

__all__ = [
    "AdmissionPlan",
    "BudgetViolation",
    "ChildFigures",
    "admission_plan",
    "free_threshold",
    "is_cuda_oom",
    "over_budget",
    "pressure_evictions",
    "promised_vram",
    "replica_plans",
]


@dataclass(frozen=True)
class ChildFigures:
    """What the policies need to know about one running child."""

    key: str
    pid: int
    gpus: tuple[int, ...]
    """Device indices the child is pinned to."""
    vram: int
    """Bytes of VRAM used by the child's process tree, summed over its devices."""
    rss: int
    """Bytes of host RAM (RSS) used by the child's process tree."""
    vram_budget: int | None
    """Bytes per GPU, on each of ``gpus``."""
    ram_budget: int | None
    busy: bool
    """A request is in flight: never evicted."""
    last_used: float
    """When the child last finished (or started) work; any clock, only compared."""
    vram_by_device: Mapping[int, int] = field(default_factory=dict)
    """Device index -> bytes. When empty, ``vram`` is taken as spread evenly over ``gpus``."""

    def vram_on(self, index: int) -> int:
        """Bytes this child would free on device ``index`` if it were stopped."""
        if self.vram_by_device:
            return self.vram_by_device.get(index, 0)
        if index in self.gpus:
            return self.vram // len(self.gpus)
        return 0

    def reserved_on(self, index: int) -> int:
        """Bytes of its VRAM budget on device ``index`` that it does not use yet."""
        if self.vram_budget is None or index not in self.gpus:
            return 0
        return max(0, self.vram_budget - self.vram_on(index))

    def held_on(self, index: int) -> int:
        """Bytes used or reserved on device ``index``: what evicting it gives back."""
        return self.vram_on(index) + self.reserved_on(index)


# -- budgets --------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetViolation:
    """A child using more than its app declared, for the eviction policy to act on."""

    key: str
    budget: Literal["vram", "ram"]
    used: int
    limit: int
    device: int | None = None
    """The GPU a VRAM budget was broken on; None for RAM (or VRAM on no known GPU)."""

    def __str__(self) -> str:
        where = "" if self.device is None else f" on GPU {self.device}"
        return (
            f"{self.key} uses {format_bytes(self.used)} of {self.budget.upper()}{where}, "
            f"over its budget of {format_bytes(self.limit)}"
        )


def over_budget(children: Iterable[ChildFigures]) -> list[BudgetViolation]:
    """Children using more than their budget (equal is fine), in input order.

    The VRAM budget applies to each GPU alone; the one used most is reported.
    At most one violation per child: VRAM is checked first, because VRAM is the
    scarcer resource and its report is the more useful one when both are over.
    """
    violations = []
    for child in children:
        device, used = _most_used_device(child)
        if child.vram_budget is not None and used > child.vram_budget:
            violations.append(BudgetViolation(child.key, "vram", used, child.vram_budget, device))
        elif child.ram_budget is not None and child.rss > child.ram_budget:
            violations.append(BudgetViolation(child.key, "ram", child.rss, child.ram_budget))
    return violations


def _most_used_device(child: ChildFigures) -> tuple[int | None, int]:
    devices = _devices_of(child)
    if not devices:
        return None, child.vram
    device = max(devices, key=child.vram_on)
    return device, child.vram_on(device)


# -- pressure -------------------------------------------------------------------


def free_threshold(device: DeviceMemory, min_free: int | float) -> int:
    """``min_free`` in bytes for this device.

    An ``int`` is bytes; a ``float`` in (0, 1) is a fraction of the device's
    total memory (rounded down to a byte).
    """
    if isinstance(min_free, float):
        if not 0.0 < min_free < 1.0:
            raise ValueError(f"a fractional min_free must be in (0, 1), got {min_free}")
        return int(device.total * min_free)
    if min_free < 0:
        raise ValueError(f"min_free must be >= 0 bytes, got {min_free}")
    return min_free


def _lru_order(
    children: Iterable[ChildFigures], index: int, *, held: bool = False
) -> list[ChildFigures]:
    """Idle children holding memory on ``index`` (in use, or with ``held`` also
    reserved): least recently used first, then the one freeing more there, then
    by key."""
    size = ChildFigures.held_on if held else ChildFigures.vram_on
    users = [c for c in children if not c.busy and size(c, index) > 0]
    users.sort(key=lambda c: (c.last_used, -size(c, index), c.key))
    return users


def pressure_evictions(
    devices: Sequence[DeviceMemory],
    children: Sequence[ChildFigures],
    min_free: int | float,
) -> list[str]:
    """Keys of idle children to evict so every device has ``min_free`` free.

    Devices are visited by index. For each one below its threshold (counting
    memory already freed by children chosen for earlier devices), idle children
    using it are chosen least recently used first until the freed memory
    brings it up to the threshold, and then any chosen one that the later
    choices made unnecessary is kept (see ``_enough``). If even all of them are
    not enough, all of them are chosen: partial relief still protects the busy
    children there from an out-of-memory error. Busy children and children
    holding nothing on the device are never chosen. Returns keys in eviction
    order, each once.
    """
    chosen: list[ChildFigures] = []
    for device in sorted(devices, key=lambda d: d.index):
        threshold = free_threshold(device, min_free)
        free = device.free + sum(c.vram_on(device.index) for c in chosen)
        remaining = [c for c in children if c not in chosen]
        candidates = _lru_order(remaining, device.index)
        extra, _ = _enough(candidates, methodcaller("vram_on", device.index), free, threshold)
        chosen.extend(extra)
    return [c.key for c in chosen]


def _enough(
    candidates: Sequence[ChildFigures], size: Callable[[ChildFigures], int], free: int, need: int
) -> tuple[list[ChildFigures], int]:
    """Candidates, in their order, until ``free`` reaches ``need``, and ``free`` then.

    Greedy choices can overshoot: a large child chosen last may make an earlier,
    smaller one unnecessary. Those are given back, the most recently used first
    (the last one chosen is always needed), so no child is evicted for nothing.
    All candidates are chosen when even that is not enough.
    """
    chosen: list[ChildFigures] = []
    for child in candidates:
        if free >= need:
            break
        chosen.append(child)
        free += size(child)
    if free >= need:
        for child in reversed(chosen[:-1]):
            if free - size(child) >= need:
                chosen.remove(child)
                free -= size(child)
    return chosen, free


# -- admission ------------------------------------------------------------------


@dataclass(frozen=True)
class AdmissionPlan:
    """The answer to "can this app start now, and where?"."""

    fits_now: bool
    """It fits without evicting anyone (``evict`` is empty)."""
    fits_after_eviction: bool
    """It fits, possibly after evicting ``evict``; false means it cannot fit at all."""
    devices: tuple[int, ...]
    """Device indices to pin it to, ascending; empty when it does not fit."""
    evict: tuple[str, ...]
    """Keys of idle children to stop first, in order."""
    reason: str
    """One line for logs and errors: where it goes, or what was needed and missing."""
    ever_fits: bool = True
    """False when too few devices hold that much at all, even empty: waiting is futile."""


def admission_plan(
    devices: Sequence[DeviceMemory],
    children: Sequence[ChildFigures],
    *,
    count: int,
    vram_per_gpu: int,
    min_free: int | float = 0,
    reserved: Mapping[int, int] | None = None,
) -> AdmissionPlan:
    """Place an app needing ``count`` devices with ``vram_per_gpu`` free on each.

    A device fits when its free memory, less what is promised on it, less its
    ``min_free`` threshold (see ``free_threshold``), is at least
    ``vram_per_gpu``. Promised are the children's budgets not yet in use
    (``ChildFigures.reserved_on``) and ``reserved``: bytes per device promised
    to apps that have no figures yet (starting, restarting, or admitted just
    before). Evicting an idle child gives back what it uses and what it reserves.
    Devices are picked one at a time, greedily; each time the cheapest device
    wins, where cost is

    1. the bytes of VRAM held by the idle children that would have to be
       evicted for it (chosen least recently used first on that device, no
       more than needed (see ``_enough``), and
       counting children already chosen for earlier picks as gone), then
    2. the number of those children, then
    3. fewer of our remaining children pinned to it, more free memory, lower
       index (the same preference as ``gpu_allocation.allocate_gpus``).

    So a plan evicts nothing whenever ``count`` devices fit now. If fewer than
    ``count`` devices could fit even with every idle child evicted, nothing is
    evicted and the plan says so, naming the need and each device's figures.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if vram_per_gpu < 0:
        raise ValueError(f"vram_per_gpu must be >= 0, got {vram_per_gpu}")
    if count == 0:
        return AdmissionPlan(True, True, (), (), "needs no GPU")

    need = {d.index: vram_per_gpu + free_threshold(d, min_free) for d in devices}
    promised_anywhere = promised_vram(children, reserved)
    promised = {d.index: promised_anywhere.get(d.index, 0) for d in devices}
    available = {d.index: d.free - promised[d.index] for d in devices}
    idle = [c for c in children if not c.busy]
    reclaimable = {d.index: sum(c.held_on(d.index) for c in idle) for d in devices}
    possible = [d for d in devices if available[d.index] + reclaimable[d.index] >= need[d.index]]
    if len(possible) < count:
        big_enough = sum(1 for d in devices if d.total >= need[d.index])
        return AdmissionPlan(
            False,
            False,
            (),
            (),
            _cannot_fit(devices, children, count, vram_per_gpu, need, promised),
            ever_fits=big_enough >= count,
        )

    evicted: list[ChildFigures] = []
    picked: list[int] = []
    while len(picked) < count:
        best: tuple[tuple[int, int, int, int, int], int, list[ChildFigures]] | None = None
        for device in possible:
            if device.index in picked:
                continue
            extra, free = _make_room(
                device.index, available[device.index], idle, evicted, need[device.index]
            )
            gone = evicted + extra
            sharing = sum(1 for c in children if device.index in c.gpus and c not in gone)
            held = sum(c.held_on(i) for c in extra for i in _devices_of(c))
            cost = (held, len(extra), sharing, -free, device.index)
            if best is None or cost < best[0]:
                best = (cost, device.index, extra)
        assert best is not None  # every device in `possible` can be made to fit
        picked.append(best[1])
        evicted.extend(best[2])

    chosen = tuple(sorted(picked))
    where = ",".join(str(i) for i in chosen)
    if not evicted:
        return AdmissionPlan(True, True, chosen, (), f"fits now on GPU(s) {where}")
    keys = tuple(c.key for c in evicted)
    freed = format_bytes(sum(c.held_on(i) for c in evicted for i in _devices_of(c)))
    return AdmissionPlan(
        False,
        True,
        chosen,
        keys,
        f"fits on GPU(s) {where} after evicting {', '.join(keys)} ({freed} of VRAM)",
    )


def promised_vram(
    children: Iterable[ChildFigures], reserved: Mapping[int, int] | None = None
) -> dict[int, int]:
    """Bytes per device promised and not in use yet: ``reserved`` (for apps with
    no figures yet) plus each child's unused budget (``ChildFigures.reserved_on``)."""
    promised = dict(reserved or {})
    for child in children:
        for index in child.gpus:
            promised[index] = promised.get(index, 0) + child.reserved_on(index)
    return promised


def replica_plans(
    devices: Sequence[DeviceMemory],
    children: Sequence[ChildFigures],
    *,
    replicas: int,
    count: int,
    vram_per_gpu: int,
    min_free: int | float = 0,
    reserved: Mapping[int, int] | None = None,
) -> list[AdmissionPlan]:
    """``admission_plan`` for each of an app's replicas, each in the world the
    plans before it leave: their evictions done and their VRAM promised.

    Stops at the first replica that does not fit, so the last plan says whether
    they all do; nobody should be evicted for an app unless all of it fits.
    """
    plans: list[AdmissionPlan] = []
    promised = dict(reserved or {})
    remaining = list(children)
    for _ in range(replicas):
        plan = admission_plan(
            devices,
            remaining,
            count=count,
            vram_per_gpu=vram_per_gpu,
            min_free=min_free,
            reserved=promised,
        )
        plans.append(plan)
        if not plan.fits_after_eviction:
            break
        gone = [c for c in remaining if c.key in plan.evict]
        remaining = [c for c in remaining if c not in gone]
        devices = [_without(d, gone) for d in devices]
        for index in plan.devices:
            promised[index] = promised.get(index, 0) + vram_per_gpu
    return plans


def _without(device: DeviceMemory, gone: Sequence[ChildFigures]) -> DeviceMemory:
    """The device once the ``gone`` children have let go of their memory on it."""
    freed = sum(c.vram_on(device.index) for c in gone)
    if not freed:
        return device
    return replace(device, used=max(0, device.used - freed), free=device.free + freed)


def _make_room(
    index: int,
    available: int,
    idle: Sequence[ChildFigures],
    evicted: Sequence[ChildFigures],
    need: int,
) -> tuple[list[ChildFigures], int]:
    """The further idle children to evict so device ``index`` has ``need``
    available, and what it would then have."""
    free = available + sum(c.held_on(index) for c in evicted)
    candidates = _lru_order([c for c in idle if c not in evicted], index, held=True)
    return _enough(candidates, methodcaller("held_on", index), free, need)


def _devices_of(child: ChildFigures) -> list[int]:
    return sorted(set(child.gpus) | set(child.vram_by_device))


def _cannot_fit(
    devices: Sequence[DeviceMemory],
    children: Sequence[ChildFigures],
    count: int,
    vram_per_gpu: int,
    need: Mapping[int, int],
    promised: Mapping[int, int],
) -> str:
    head = (
        f"needs {count} GPU(s) with {format_bytes(vram_per_gpu)} each, "
        "even after evicting every idle app"
    )
    if not devices:
        return f"{head}; there are no GPUs"
    parts = []
    for d in devices:
        idle = sum(c.held_on(d.index) for c in children if not c.busy)
        busy = sum(c.vram_on(d.index) for c in children if c.busy)
        part = f"GPU {d.index}: {format_bytes(d.free)} free"
        if promised[d.index]:
            part += f" ({format_bytes(promised[d.index])} of it promised to apps)"
        if idle:
            part += f" + {format_bytes(idle)} held by idle apps"
        if busy:
            part += f" ({format_bytes(busy)} held by busy apps)"
        if need[d.index] != vram_per_gpu:
            part += f", needs {format_bytes(need[d.index])} with min_free"
        parts.append(part)
    return f"{head}; {'; '.join(parts)}"
