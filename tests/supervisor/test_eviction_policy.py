from __future__ import annotations

import pytest

from supervisor.gpu.backend import DeviceMemory
from supervisor.gpu.eviction_policy import (
    AdmissionPlan,
    BudgetViolation,
    ChildFigures,
    admission_plan,
    free_threshold,
    is_cuda_oom,
    over_budget,
    pressure_evictions,
    replica_plans,
)

GIB = 1024**3


def dev(index: int, free_gib: float, total_gib: float = 80) -> DeviceMemory:
    free = int(free_gib * GIB)
    total = int(total_gib * GIB)
    return DeviceMemory(index, f"GPU {index}", total, total - free, free)


def child(
    key: str,
    on: dict[int, float] | None = None,
    *,
    busy: bool = False,
    last_used: float = 0.0,
    rss_gib: float = 0,
    vram_budget_gib: float | None = None,
    ram_budget_gib: float | None = None,
) -> ChildFigures:
    by_device = {i: int(g * GIB) for i, g in (on or {}).items()}
    return ChildFigures(
        key=key,
        pid=1000 + len(key),
        gpus=tuple(sorted(by_device)),
        vram=sum(by_device.values()),
        rss=int(rss_gib * GIB),
        vram_budget=None if vram_budget_gib is None else int(vram_budget_gib * GIB),
        ram_budget=None if ram_budget_gib is None else int(ram_budget_gib * GIB),
        busy=busy,
        last_used=last_used,
        vram_by_device=by_device,
    )


# -- budgets --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("children", "expected"),
    [
        ([child("a", {0: 50}, rss_gib=50)], []),
        ([child("a", {0: 5}, vram_budget_gib=4)], [("a", "vram", 5, 4, 0)]),
        ([child("a", {0: 4}, vram_budget_gib=4)], []),  # equal is within budget
        ([child("a", {0: 3, 1: 4}, vram_budget_gib=4)], []),  # a budget per GPU, not summed
        ([child("a", {0: 3, 1: 5, 2: 5}, vram_budget_gib=4)], [("a", "vram", 5, 4, 1)]),
        ([child("a", rss_gib=9, ram_budget_gib=8)], [("a", "ram", 9, 8, None)]),
        ([child("a", rss_gib=8, ram_budget_gib=8)], []),
        (
            [child("a", {0: 5}, rss_gib=9, vram_budget_gib=4, ram_budget_gib=8)],
            [("a", "vram", 5, 4, 0)],  # over both: VRAM reported
        ),
        (
            [child("a", {0: 3}, rss_gib=9, vram_budget_gib=4, ram_budget_gib=8)],
            [("a", "ram", 9, 8, None)],
        ),
        (
            [
                child("z", rss_gib=3, ram_budget_gib=2),
                child("m", {0: 1}, vram_budget_gib=2),
                child("a", {1: 3}, vram_budget_gib=2),
            ],
            [("z", "ram", 3, 2, None), ("a", "vram", 3, 2, 1)],  # input order
        ),
    ],
)
def test_over_budget(
    children: list[ChildFigures], expected: list[tuple[str, str, int, int, int | None]]
) -> None:
    want = [BudgetViolation(k, b, u * GIB, lim * GIB, d) for k, b, u, lim, d in expected]  # type: ignore[arg-type]
    assert over_budget(children) == want


def test_vram_budget_without_per_device_figures_is_per_gpu() -> None:
    spread = ChildFigures("a", 1, (0, 1), 8 * GIB, 0, 4 * GIB, None, False, 0.0)
    assert over_budget([spread]) == []  # 4 GiB on each
    over = ChildFigures("a", 1, (0, 1), 10 * GIB, 0, 4 * GIB, None, False, 0.0)
    assert over_budget([over]) == [BudgetViolation("a", "vram", 5 * GIB, 4 * GIB, 0)]
    nowhere = ChildFigures("a", 1, (), 5 * GIB, 0, 4 * GIB, None, False, 0.0)
    assert over_budget([nowhere]) == [BudgetViolation("a", "vram", 5 * GIB, 4 * GIB, None)]


def test_budget_violation_reads_well() -> None:
    text = str(BudgetViolation("app", "vram", 5 * GIB, 4 * GIB, 1))
    assert text == "app uses 5.0 GiB of VRAM on GPU 1, over its budget of 4.0 GiB"
    text = str(BudgetViolation("app", "ram", 5 * GIB, 4 * GIB))
    assert text == "app uses 5.0 GiB of RAM, over its budget of 4.0 GiB"


# -- thresholds -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_free", "expected"),
    [(0, 0), (10 * GIB, 10 * GIB), (0.25, 20 * GIB), (0.5, 40 * GIB), (0.001, int(0.08 * GIB))],
)
def test_free_threshold(min_free: int | float, expected: int) -> None:
    assert free_threshold(dev(0, 0, total_gib=80), min_free) == expected


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, -1])
def test_free_threshold_rejects(bad: int | float) -> None:
    with pytest.raises(ValueError):
        free_threshold(dev(0, 0), bad)


# -- pressure -------------------------------------------------------------------

TEN = 10 * GIB


@pytest.mark.parametrize(
    ("devices", "children", "min_free", "expected"),
    [
        pytest.param([dev(0, 10)], [child("a", {0: 5})], TEN, [], id="at threshold"),
        pytest.param([dev(0, 5)], [child("a", {0: 5})], 0, [], id="min_free zero"),
        pytest.param(
            [dev(0, 5)],
            [
                child("a", {0: 3}, last_used=1),
                child("b", {0: 4}, last_used=2),
                child("c", {0: 20}, busy=True, last_used=0),
            ],
            TEN,
            ["a", "b"],
            id="lru until enough, busy never",
        ),
        pytest.param(
            [dev(0, 5)],
            [child("b", {0: 4}, last_used=2), child("a", {0: 6}, last_used=1)],
            TEN,
            ["a"],
            id="stops once enough",
        ),
        pytest.param(
            [dev(0, 5)],
            [child("a", {0: 2}, last_used=1), child("b", {0: 6}, last_used=1)],
            TEN,
            ["b"],
            id="tie on last_used: larger vram first",
        ),
        pytest.param(
            [dev(0, 5)],
            [child("b", {0: 6}, last_used=1), child("a", {0: 6}, last_used=1)],
            TEN,
            ["a"],
            id="tie on last_used and vram: key",
        ),
        pytest.param(
            [dev(0, 5)],
            [child("a", {1: 50}), child("b", {0: 1}, last_used=9)],
            TEN,
            ["b"],
            id="only children on that device",
        ),
        pytest.param(
            [dev(0, 1)],
            [
                child("a", {0: 2}, last_used=1),
                child("b", {0: 3}, last_used=2),
                child("c", {0: 50}, busy=True),
            ],
            TEN,
            ["a", "b"],
            id="unreachable: every idle user for relief",
        ),
        pytest.param(
            [dev(0, 5), dev(1, 5)],
            [child("x", {0: 6, 1: 6}, last_used=1), child("y", {1: 9}, last_used=0)],
            TEN,
            ["x"],
            id="multi-gpu child counts on every device",
        ),
        pytest.param(
            [dev(1, 5), dev(0, 5)],
            [child("p", {1: 6}, last_used=0), child("q", {0: 6}, last_used=1)],
            TEN,
            ["q", "p"],
            id="devices visited by index",
        ),
        pytest.param(
            [dev(0, 5), dev(1, 5)],
            [child("s", {0: 6}, last_used=5), child("t", {1: 6}, last_used=0)],
            TEN,
            ["s", "t"],
            id="each device in turn",
        ),
        pytest.param(
            [dev(0, 15)],
            [child("a", {0: 3}, last_used=0), child("b", {0: 10}, last_used=1)],
            0.25,
            ["b"],  # 15 free, 20 needed: b alone is enough, a is kept
            id="fraction of total",
        ),
        pytest.param(
            [dev(0, 1)],
            [
                child("a", {0: 1}, last_used=0),
                child("b", {0: 2}, last_used=1),
                child("c", {0: 8}, last_used=2),
            ],
            TEN,
            ["a", "c"],  # c had to go; with it b's 2 GiB are not needed, a's 1 GiB still is
            id="an earlier choice that a later one made unnecessary is kept",
        ),
        pytest.param(
            [dev(0, 5, total_gib=16)],
            [child("a", {0: 3})],
            0.25,
            [],
            id="fraction of a small device",
        ),
        pytest.param(
            [dev(0, 0)],
            [child("a", {0: 0})],
            TEN,
            [],
            id="a child freeing nothing is not chosen",
        ),
    ],
)
def test_pressure_evictions(
    devices: list[DeviceMemory],
    children: list[ChildFigures],
    min_free: int | float,
    expected: list[str],
) -> None:
    assert pressure_evictions(devices, children, min_free) == expected


def test_vram_spread_over_gpus_without_per_device_figures() -> None:
    c = ChildFigures("a", 1, (0, 1), 8 * GIB, 0, None, None, False, 0.0)
    assert (c.vram_on(0), c.vram_on(1), c.vram_on(2)) == (4 * GIB, 4 * GIB, 0)
    assert pressure_evictions([dev(0, 7)], [c], TEN) == ["a"]
    assert pressure_evictions([dev(2, 7)], [c], TEN) == []


# -- admission ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "children", "ask", "plan"),
    [
        pytest.param(
            [dev(0, 30), dev(1, 50)],
            [],
            (1, 20, 0),
            (True, True, (1,), ()),
            id="fits now on the freest",
        ),
        pytest.param(
            [dev(0, 30), dev(1, 50)],
            [child("a", {1: 10}, busy=True)],
            (1, 20, 0),
            (True, True, (0,), ()),
            id="fits now, spread before share",
        ),
        pytest.param(
            [dev(0, 30), dev(1, 50)],
            [],
            (2, 30, 0),
            (True, True, (0, 1), ()),
            id="two devices, exactly enough",
        ),
        pytest.param(
            [dev(0, 21), dev(1, 5)],
            [child("a", {1: 70})],
            (1, 20, 0),
            (True, True, (0,), ()),
            id="no eviction when something fits",
        ),
        pytest.param(
            [dev(0, 5), dev(1, 8)],
            [
                child("a", {0: 10}, last_used=1),
                child("b", {0: 10}, last_used=0),
                child("c", {1: 15}, last_used=2),
            ],
            (1, 20, 0),
            (False, True, (1,), ("c",)),
            id="fewest bytes evicted wins over lru",
        ),
        pytest.param(
            [dev(0, 5)],
            [
                child("a", {0: 10}, last_used=1),
                child("b", {0: 10}, last_used=0),
                child("c", {0: 10}, last_used=2),
            ],
            (1, 20, 0),
            (False, True, (0,), ("b", "a")),
            id="lru on the device",
        ),
        pytest.param(
            [dev(0, 5), dev(1, 5)],
            [child("x", {0: 20, 1: 20})],
            (2, 20, 0),
            (False, True, (0, 1), ("x",)),
            id="one multi-gpu eviction frees both",
        ),
        pytest.param(
            [dev(0, 5), dev(1, 5)],
            [child("x", {0: 20}, busy=True), child("y", {1: 20}, last_used=3)],
            (1, 20, 0),
            (False, True, (1,), ("y",)),
            id="busy children stay",
        ),
        pytest.param(
            [dev(0, 25)],
            [child("a", {0: 10})],
            (1, 10, 0.25),
            (False, True, (0,), ("a",)),
            id="min_free fraction is kept free",
        ),
        pytest.param(
            [dev(0, 25)],
            [],
            (1, 10, 10 * GIB),
            (True, True, (0,), ()),
            id="min_free bytes",
        ),
        pytest.param(
            [dev(0, 5)],
            [child("a", {0: 1})],
            (0, 20, 0),
            (True, True, (), ()),
            id="no gpu needed",
        ),
    ],
)
def test_admission_plan(
    devices: list[DeviceMemory],
    children: list[ChildFigures],
    ask: tuple[int, int, int | float],
    plan: tuple[bool, bool, tuple[int, ...], tuple[str, ...]],
) -> None:
    count, vram_gib, min_free = ask
    got = admission_plan(
        devices, children, count=count, vram_per_gpu=vram_gib * GIB, min_free=min_free
    )
    assert (got.fits_now, got.fits_after_eviction, got.devices, got.evict) == plan
    assert got.reason


@pytest.mark.parametrize(
    ("devices", "children", "reserved", "need_gib", "plan"),
    [
        pytest.param(
            [dev(0, 60)],
            [child("a", {0: 5}, busy=True, vram_budget_gib=20)],
            {},
            50,
            (False, False, (), ()),
            id="a busy child's unused budget is not free",
        ),
        pytest.param(
            [dev(0, 60)],
            [child("a", {0: 5}, busy=True, vram_budget_gib=20)],
            {},
            45,
            (True, True, (0,), ()),
            id="what is left after the budget is",
        ),
        pytest.param(
            [dev(0, 60)],
            [child("a", {0: 25}, busy=True, vram_budget_gib=20)],
            {},
            60,
            (True, True, (0,), ()),
            id="a child over its budget reserves nothing more",
        ),
        pytest.param(
            [dev(0, 40)],
            [child("a", {0: 5}, vram_budget_gib=20)],
            {},
            40,
            (False, True, (0,), ("a",)),
            id="evicting gives back the use and the reservation",
        ),
        pytest.param(
            [dev(0, 30), dev(1, 30)],
            [
                child("a", {0: 10}, vram_budget_gib=10, last_used=5),
                child("b", {1: 2}, vram_budget_gib=30, last_used=0),
            ],
            {},
            35,
            (False, True, (0,), ("a",)),
            id="fewest bytes held, reserved ones included",
        ),
        pytest.param(
            [dev(0, 30), dev(1, 20)],
            [],
            {0: 20},
            15,
            (True, True, (1,), ()),
            id="promised to an app with no figures yet",
        ),
        pytest.param(
            [dev(0, 30)],
            [],
            {0: 20},
            15,
            (False, False, (), ()),
            id="nothing to evict for a promise",
        ),
    ],
)
def test_admission_counts_promised_vram(
    devices: list[DeviceMemory],
    children: list[ChildFigures],
    reserved: dict[int, int],
    need_gib: int,
    plan: tuple[bool, bool, tuple[int, ...], tuple[str, ...]],
) -> None:
    got = admission_plan(
        devices,
        children,
        count=1,
        vram_per_gpu=need_gib * GIB,
        reserved={i: g * GIB for i, g in reserved.items()},
    )
    assert (got.fits_now, got.fits_after_eviction, got.devices, got.evict) == plan
    if not got.fits_after_eviction:
        assert got.ever_fits
        assert "of it promised to apps" in got.reason


def test_admission_reasons_count_what_evicting_gives_back() -> None:
    plan = admission_plan(
        [dev(0, 40)], [child("old", {0: 5}, vram_budget_gib=20)], count=1, vram_per_gpu=40 * GIB
    )
    assert plan.reason == "fits on GPU(s) 0 after evicting old (20.0 GiB of VRAM)"
    short = admission_plan(
        [dev(0, 40)], [child("old", {0: 5}, vram_budget_gib=20)], count=1, vram_per_gpu=50 * GIB
    )
    assert "GPU 0: 40.0 GiB free (15.0 GiB of it promised to apps)" in short.reason
    assert "+ 20.0 GiB held by idle apps" in short.reason


def test_replica_plans_count_earlier_replicas_and_their_evictions() -> None:
    devices = [dev(0, 2, total_gib=8), dev(1, 8, total_gib=8)]
    old = child("old", {0: 6}, last_used=1)
    plans = replica_plans(devices, [old], replicas=2, count=1, vram_per_gpu=6 * GIB)
    assert [(p.fits_now, p.devices, p.evict) for p in plans] == [
        (True, (1,), ()),
        (False, (0,), ("old",)),  # GPU 1 is promised to the first replica
    ]
    third = replica_plans(devices, [old], replicas=3, count=1, vram_per_gpu=6 * GIB)
    assert len(third) == 3 and not third[-1].fits_after_eviction and third[-1].ever_fits
    assert "promised to apps" in third[-1].reason
    # A later replica sees the evicted child gone, and does not evict it twice.
    two = replica_plans(
        [dev(0, 0, total_gib=8)], [child("x", {0: 8})], replicas=2, count=1, vram_per_gpu=4 * GIB
    )
    assert [(p.devices, p.evict) for p in two] == [((0,), ("x",)), ((0,), ())]


def test_admission_evicts_no_more_than_it_needs() -> None:
    # 1 GiB available (8 free, 7 promised): LRU order would evict a, then b; b alone is enough.
    a = child("a", {0: 0}, vram_budget_gib=3, last_used=0)
    b = child("b", {0: 0}, vram_budget_gib=4, last_used=1)
    plan = admission_plan([dev(0, 8, total_gib=8)], [a, b], count=1, vram_per_gpu=5 * GIB)
    assert (plan.fits_after_eviction, plan.evict) == (True, ("b",))


def test_admission_reasons_name_the_plan() -> None:
    now = admission_plan([dev(0, 30), dev(2, 30)], [], count=2, vram_per_gpu=GIB)
    assert now.reason == "fits now on GPU(s) 0,2"
    later = admission_plan([dev(0, 5)], [child("old", {0: 10})], count=1, vram_per_gpu=10 * GIB)
    assert later.reason == "fits on GPU(s) 0 after evicting old (10.0 GiB of VRAM)"


@pytest.mark.parametrize(
    ("devices", "children", "ask", "fragments", "ever_fits"),
    [
        pytest.param(
            [dev(0, 5)],
            [child("a", {0: 30}, busy=True)],
            (1, 20, 0),
            [
                "needs 1 GPU(s) with 20.0 GiB each",
                "even after evicting every idle app",
                "GPU 0: 5.0 GiB free (30.0 GiB held by busy apps)",
            ],
            True,
            id="busy holder",
        ),
        pytest.param(
            [dev(0, 5), dev(1, 0)],
            [child("a", {0: 30}), child("b", {1: 70}, busy=True)],
            (2, 20, 0),
            ["needs 2 GPU(s)", "GPU 0: 5.0 GiB free + 30.0 GiB held by idle apps", "GPU 1: 0 MiB"],
            True,
            id="one device short",
        ),
        pytest.param(
            [dev(0, 80), dev(1, 80)], [], (3, 1, 0), ["needs 3 GPU(s)"], False, id="too few devices"
        ),
        pytest.param([], [], (1, 1, 0), ["there are no GPUs"], False, id="no devices"),
        pytest.param(
            [dev(0, 25)],
            [],
            (1, 10, 0.25),
            ["GPU 0: 25.0 GiB free, needs 30.0 GiB with min_free"],
            True,
            id="min_free shown",
        ),
        pytest.param(
            [dev(0, 1, total_gib=16), dev(1, 1, total_gib=24)],
            [],
            (1, 20, 0.25),
            ["needs 1 GPU(s) with 20.0 GiB each", "needs 26.0 GiB with min_free"],
            False,
            id="larger than any device with its min_free",
        ),
        pytest.param(
            [dev(0, 1, total_gib=16), dev(1, 1, total_gib=24)],
            [],
            (2, 20, 0),
            ["needs 2 GPU(s)"],
            False,
            id="one device large enough, two needed",
        ),
        pytest.param(
            [dev(0, 1, total_gib=16), dev(1, 1, total_gib=24)],
            [],
            (1, 20, 0),
            ["needs 1 GPU(s)"],
            True,
            id="one device large enough when others let go",
        ),
    ],
)
def test_admission_cannot_fit(
    devices: list[DeviceMemory],
    children: list[ChildFigures],
    ask: tuple[int, int, int | float],
    fragments: list[str],
    ever_fits: bool,
) -> None:
    count, vram_gib, min_free = ask
    plan = admission_plan(
        devices, children, count=count, vram_per_gpu=vram_gib * GIB, min_free=min_free
    )
    assert plan == AdmissionPlan(False, False, (), (), plan.reason, ever_fits=ever_fits)
    for fragment in fragments:
        assert fragment in plan.reason


@pytest.mark.parametrize(("count", "vram"), [(-1, 0), (1, -1)])
def test_admission_rejects_nonsense(count: int, vram: int) -> None:
    with pytest.raises(ValueError):
        admission_plan([dev(0, 1)], [], count=count, vram_per_gpu=vram)


# -- CUDA out of memory -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message", "expected"),
    [
        ("torch.cuda.OutOfMemoryError", "", True),
        ("torch.OutOfMemoryError", "whatever", True),
        ("OutOfMemoryError", "", True),
        ("torch.cuda.outofmemoryerror", "", True),
        (
            "builtins.RuntimeError",
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)",
            True,
        ),
        ("RuntimeError", "CUDA error: out of memory\nCUDA kernel errors might be...", True),
        (None, "cudaErrorMemoryAllocation", True),
        (None, "an error: CUDAERRORMEMORYALLOCATION", True),
        ("RuntimeError", "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate", True),
        ("builtins.MemoryError", "", False),
        ("RuntimeError", "DefaultCPUAllocator: can't allocate memory", False),
        ("ValueError", "bad input", False),
        (None, "", False),
        ("myapp.NotOutOfMemoryErrorAtAll", "", False),
    ],
)
def test_is_cuda_oom(name: str | None, message: str, expected: bool) -> None:
    assert is_cuda_oom(name, message) is expected
