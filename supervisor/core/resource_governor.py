"""Acts on memory figures: budgets, device pressure and admission.

``eviction_policy`` decides from figures alone; ``gpu_monitor`` measures. This
module is the thin mechanism between them and the replicas: after every sample it
stops children that broke their budget (after letting a running request finish
for ``budget_grace`` seconds) and unloads idle children on GPUs that are short
of free memory; before an app starts, it finds GPUs with room for the VRAM the
app declared, evicting idle children if that makes room, or waiting for room up
to a deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import anyio
import anyio.abc

from .. import errors
from ..gpu.allocation import format_bytes
from ..gpu.eviction_policy import (
    BudgetViolation,
    ChildFigures,
    over_budget,
    pressure_evictions,
    promised_vram,
    replica_plans,
)
from ..gpu.monitor import ChildUsage, MonitorSnapshot, ResourceMonitor
from .replica import Replica
from .running_child import Fault, RunningChild

logger = logging.getLogger("supervisor.resources")


def policy_figures(
    usage: ChildUsage,
    *,
    gpus: tuple[int, ...],
    vram_budget: int | None,
    ram_budget: int | None,
    busy: bool,
    last_used: float,
) -> ChildFigures:
    """A child's measurements combined with the supervisor's own facts about it, as
    the eviction policy reads them."""
    return ChildFigures(
        key=usage.key,
        pid=usage.pid,
        gpus=gpus,
        vram=usage.vram,
        rss=usage.rss,
        vram_budget=vram_budget,
        ram_budget=ram_budget,
        busy=busy,
        last_used=last_used,
        vram_by_device=usage.vram_by_device,
    )


class ResourceGovernor:
    def __init__(
        self,
        replicas: Callable[[], Iterable[tuple[Replica, int | None, int | None]]],
        monitor: ResourceMonitor,
        tasks: anyio.abc.TaskGroup,
        *,
        min_free_vram: int | float | None = None,
        budget_grace: float = 5.0,
    ) -> None:
        """``replicas()`` yields every replica with its app's VRAM and RAM budgets."""
        self._replicas = replicas
        self.monitor = monitor
        self._tasks = tasks
        self.min_free_vram = min_free_vram
        self.budget_grace = budget_grace
        self._enforcing: set[int] = set()
        self._turn = anyio.Lock()
        """One admission plans, evicts and is granted at a time (see ``admit``)."""

    def track(self, replica: Replica) -> None:
        """Keep the monitor's registrations in step with the replica's child."""
        child = replica.child
        if child is not None and not child.dead:
            self.monitor.register(replica.name, child.process.pid, child.process.tree_pids)
            ram = next((ram for s, _, ram in self._replicas() if s is replica), None)
            if ram and child.process.memory_limit != ram:
                child.process.limit_memory(ram)  # hard, where the child has a cgroup
        else:
            self.monitor.unregister(replica.name)

    # -- after each sample ----------------------------------------------------

    async def on_sample(self, snapshot: MonitorSnapshot) -> None:
        figures = self._figures(snapshot)
        by_key = {f.key: (replica, child) for replica, child, f in figures}
        for violation in over_budget([f for _, _, f in figures]):
            replica, child = by_key[violation.key]
            self._enforce_budget(replica, child, violation)
        if self.min_free_vram is not None and snapshot.devices:
            for key in pressure_evictions(
                snapshot.devices, [f for _, _, f in figures], self.min_free_vram
            ):
                replica, _ = by_key[key]
                self._tasks.start_soon(replica.evict, "evicted to relieve GPU memory pressure")

    def _figures(
        self, snapshot: MonitorSnapshot
    ) -> list[tuple[Replica, RunningChild, ChildFigures]]:
        result = []
        for replica, vram_budget, ram_budget in self._replicas():
            usage = snapshot.children.get(replica.name)
            replica.memory = None if usage is None else usage.to_dict()
            child = replica.child
            if usage is None or child is None or usage.pid != child.process.pid or not usage.alive:
                continue
            figures = policy_figures(
                usage,
                gpus=replica.gpus,
                vram_budget=vram_budget,
                ram_budget=ram_budget,
                busy=bool(child.in_flight),
                last_used=child.last_used,
            )
            result.append((replica, child, figures))
        return result

    def _enforce_budget(
        self, replica: Replica, child: RunningChild, violation: BudgetViolation
    ) -> None:
        if id(child) in self._enforcing or child.killed is not None:
            return
        self._enforcing.add(id(child))
        where = "" if violation.device is None else f" on GPU {violation.device}"
        error = errors.BudgetExceededError(
            f"{replica.name} used {format_bytes(violation.used)} of "
            f"{'VRAM' if violation.budget == 'vram' else 'RAM'}{where}, over its budget of "
            f"{format_bytes(violation.limit)}",
            budget=violation.budget,
            used=violation.used,
            limit=violation.limit,
            at=time.time(),
            **({} if violation.device is None else {"device": violation.device}),
        )
        logger.warning("%s; stopping pid %d", error.message, child.process.pid)

        async def stop_after_grace() -> None:
            try:
                with anyio.move_on_after(self.budget_grace):
                    await child.wait_idle()
                child.kill(error, Fault.LIMITS)
            finally:
                self._enforcing.discard(id(child))

        self._tasks.start_soon(stop_after_grace)

    def promised(self, snapshot: MonitorSnapshot) -> dict[int, int]:
        """VRAM per GPU that apps' budgets reserve and their children do not use yet."""
        figures = self._figures(snapshot)
        unmeasured = self._promised_without_figures({id(replica) for replica, _, _ in figures})
        return promised_vram([f for _, _, f in figures], unmeasured)

    @staticmethod
    def _grant(
        placements: list[tuple[int, ...]],
        on_admitted: Callable[[list[tuple[int, ...]]], object] | None,
    ) -> list[tuple[int, ...]]:
        if on_admitted is not None:
            on_admitted(placements)
        return placements

    def _promised_without_figures(self, measured: set[int]) -> dict[int, int]:
        """Whole VRAM budgets of replicas holding a reservation with no child measured
        yet (a child starting, restarting or not sampled yet), per GPU."""
        promised: dict[int, int] = {}
        for replica, vram_budget, _ in self._replicas():
            if vram_budget and replica.holds_vram_reservation and id(replica) not in measured:
                for index in replica.gpus:
                    promised[index] = promised.get(index, 0) + vram_budget
        return promised

    # -- before a start ---------------------------------------------------------

    async def admit(
        self,
        *,
        count: int,
        vram_per_gpu: int,
        timeout: float,
        replicas: int = 1,
        only: tuple[int, ...] | None = None,
        unmeasured_ok: bool = False,
        on_admitted: Callable[[list[tuple[int, ...]]], object] | None = None,
        who: str = "a new app",
    ) -> list[tuple[int, ...]]:
        """GPUs for each replica of a new app, evicting idle children or waiting for room.

        One admission plans (and evicts) at a time, and ``on_admitted(placements)``
        runs before the next one may: it must make the VRAM just granted count as
        promised (create the replicas), or two apps could be granted the same room.
        The waits between tries are outside that turn, so an app waiting for one
        GPU does not hold up another that fits elsewhere.

        ``who`` names the app in logs and eviction reasons. ``only`` restricts
        the choice to these GPUs, all of which must fit (an explicit placement);
        with ``unmeasured_ok`` they are granted as they are when there are no GPU
        figures (a restart on GPUs the app already had should not wait for NVML).
        Each replica counts the VRAM of those placed before it, and idle children
        are evicted only once all replicas fit. The budgets of running apps count
        as promised too, in full where their child has no figures yet (see
        ``eviction_policy``).
        """
        deadline = time.monotonic() + timeout
        if only is not None:
            count = len(only)
        while True:
            async with self._turn:
                snapshot = await self.monitor.refresh(host_memory=False)
                devices = [d for d in snapshot.devices if only is None or d.index in only]
                if not devices and unmeasured_ok and only:
                    logger.warning(
                        "admission: no GPU figures (%s); GPU(s) %s granted unchecked",
                        snapshot.gpu_error or "no GPU",
                        ",".join(map(str, only)),
                    )
                    return self._grant([only] * replicas, on_admitted)
                if not devices:
                    raise errors.AdmissionError(
                        f"needs {count} GPU(s) with {format_bytes(vram_per_gpu)} free, "
                        f"but no GPU figures are available ({snapshot.gpu_error or 'no GPU'})"
                    )
                figures = self._figures(snapshot)
                unmeasured = self._promised_without_figures(
                    {id(replica) for replica, _, _ in figures}
                )
                plans = replica_plans(
                    devices,
                    [f for _, _, f in figures],
                    replicas=replicas,
                    count=count,
                    vram_per_gpu=vram_per_gpu,
                    min_free=self.min_free_vram or 0,
                    reserved=unmeasured,
                )
                plan = plans[-1]
                if not plan.ever_fits:
                    raise errors.AdmissionError(
                        f"can never fit: {plan.reason}",
                        needed_vram=vram_per_gpu,
                        needed_gpus=count,
                        total={d.index: d.total for d in devices},
                    )
                if plan.fits_after_eviction and all(p.fits_now for p in plans):
                    return self._grant([p.devices for p in plans], on_admitted)
                if plan.fits_after_eviction:
                    for p in plans:
                        if p.evict:
                            logger.info("admission of %s: %s", who, p.reason)
                    by_name = {replica.name: replica for replica, _, _ in self._replicas()}
                    for key in dict.fromkeys(k for p in plans for k in p.evict):
                        await by_name[key].evict(f"evicted to make room for {who}")
            if time.monotonic() >= deadline:
                earlier: dict[int, int] = {}
                for p in plans[:-1]:
                    for index in p.devices:
                        earlier[index] = earlier.get(index, 0) + vram_per_gpu
                note = ", ".join(f"GPU {i}: {format_bytes(b)}" for i, b in sorted(earlier.items()))
                if note:
                    note = f" (free memory counts what earlier replicas will use: {note})"
                promised = promised_vram([f for _, _, f in figures], unmeasured)
                raise errors.AdmissionError(
                    f"no room after waiting {timeout:g} s: {plan.reason}{note}",
                    needed_vram=vram_per_gpu,
                    needed_gpus=count,
                    free={d.index: d.free for d in devices},
                    promised={i: promised[i] for i in sorted(promised) if promised[i]},
                    **({"promised_to_earlier_replicas": earlier} if earlier else {}),
                )
            if not plan.fits_after_eviction:
                await anyio.sleep(min(self.monitor.interval, max(0.0, deadline - time.monotonic())))
