from __future__ import annotations

import pytest

from supervisor.gpu.allocation import (
    AllocationError,
    allocate_gpus,
    check_explicit,
    cuda_visible_devices,
    format_bytes,
    gpu_environment,
    rank_devices,
)
from supervisor.gpu.backend import DeviceMemory

GIB = 1024**3


def dev(index: int, free_gib: float, total_gib: float = 80) -> DeviceMemory:
    free = int(free_gib * GIB)
    total = int(total_gib * GIB)
    return DeviceMemory(index, f"GPU {index}", total, total - free, free)


FOUR = [dev(0, 10), dev(1, 40), dev(2, 40), dev(3, 70)]


@pytest.mark.parametrize(
    ("devices", "count", "vram_gib", "taken", "exclusive", "expected"),
    [
        # most free memory first, returned ascending
        (FOUR, 1, None, {}, True, (3,)),
        (FOUR, 2, None, {}, True, (1, 3)),  # 1 and 2 tie on free: the lower index wins
        (FOUR, 3, None, {}, True, (1, 2, 3)),
        (FOUR, 4, None, {}, True, (0, 1, 2, 3)),
        (FOUR, 0, None, {}, True, ()),
        (FOUR, 0, 1000, {}, True, ()),
        # not-taken devices preferred even with less free memory
        (FOUR, 1, None, {3: 1}, True, (1,)),
        (FOUR, 2, None, {3: 1, 1: 2}, True, (0, 2)),
        # fewer of our children first
        (FOUR, 1, None, {0: 1, 1: 1, 2: 1, 3: 2}, True, (1,)),
        # non-exclusive ignores taken
        (FOUR, 1, None, {3: 5}, False, (3,)),
        (FOUR, 2, None, {3: 5}, False, (1, 3)),
        # devices with too little free memory are ineligible, even untaken ones
        (FOUR, 1, 50, {3: 1}, True, (3,)),
        (FOUR, 2, 40, {}, True, (1, 3)),
        (FOUR, 2, 40, {1: 1}, True, (2, 3)),
        (FOUR, 3, 40, {}, True, (1, 2, 3)),
        (FOUR, 1, 70, {}, True, (3,)),  # exactly enough is enough
        # ties: lower index
        ([dev(5, 8), dev(2, 8), dev(9, 8)], 1, None, {}, True, (2,)),
        ([dev(5, 8), dev(2, 8), dev(9, 8)], 2, 8, {}, True, (2, 5)),
    ],
)
def test_allocate_gpus(
    devices: list[DeviceMemory],
    count: int,
    vram_gib: int | None,
    taken: dict[int, int],
    exclusive: bool,
    expected: tuple[int, ...],
) -> None:
    vram = None if vram_gib is None else vram_gib * GIB
    got = allocate_gpus(devices, count=count, vram_per_gpu=vram, taken=taken, exclusive=exclusive)
    assert got == expected


def test_tied_free_memory_breaks_on_lower_index() -> None:
    ranked = rank_devices(FOUR, vram_per_gpu=None, taken={})
    assert [d.index for d in ranked] == [3, 1, 2, 0]


@pytest.mark.parametrize(
    ("devices", "count", "vram_gib", "fragments"),
    [
        (FOUR, 5, None, ["needs 5 GPU(s)", "GPU 0: 10.0 GiB free", "GPU 3: 70.0 GiB free"]),
        (FOUR, 2, 50, ["needs 2 GPU(s) with 50.0 GiB free each", "GPU 1: 40.0 GiB free"]),
        (FOUR, 1, 71, ["with 71.0 GiB free each"]),
        ([], 1, None, ["no GPUs"]),
        ([], 1, 4, ["no GPUs", "4.0 GiB"]),
    ],
)
def test_allocate_gpus_refuses_with_a_message(
    devices: list[DeviceMemory], count: int, vram_gib: int | None, fragments: list[str]
) -> None:
    vram = None if vram_gib is None else vram_gib * GIB
    with pytest.raises(AllocationError) as info:
        allocate_gpus(devices, count=count, vram_per_gpu=vram, taken={})
    for fragment in fragments:
        assert fragment in str(info.value)


def test_allocate_gpus_rejects_negative_count() -> None:
    with pytest.raises(ValueError):
        allocate_gpus(FOUR, count=-1, vram_per_gpu=None, taken={})


@pytest.mark.parametrize(
    ("indices", "expected"),
    [([], ()), ([2], (2,)), ([3, 0], (3, 0)), ((1, 2, 3), (1, 2, 3))],
)
def test_check_explicit_accepts_known(indices: list[int], expected: tuple[int, ...]) -> None:
    assert check_explicit(FOUR, indices) == expected


@pytest.mark.parametrize(
    ("devices", "indices", "fragment"),
    [
        (FOUR, [4], "unknown GPU index 4 (devices present: 0, 1, 2, 3)"),
        (FOUR, [0, 7, 9], "unknown GPU index 7, 9"),
        ([], [0], "devices present: none"),
        (FOUR, [1, 1], "repeat: 1,1"),
    ],
)
def test_check_explicit_refuses(
    devices: list[DeviceMemory], indices: list[int], fragment: str
) -> None:
    with pytest.raises(AllocationError) as info:
        check_explicit(devices, indices)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("indices", "expected"), [((), ""), ((0,), "0"), ((0, 2), "0,2"), ([3, 1], "3,1")]
)
def test_cuda_visible_devices(indices: tuple[int, ...], expected: str) -> None:
    assert cuda_visible_devices(indices) == expected


def test_gpu_environment_pins_order_and_devices() -> None:
    assert gpu_environment((1, 3)) == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "1,3",
    }
    assert gpu_environment(())["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0 MiB"), (300 * 1024**2, "300 MiB"), (GIB, "1.0 GiB"), (int(1.5 * GIB), "1.5 GiB")],
)
def test_format_bytes(n: int, expected: str) -> None:
    assert format_bytes(n) == expected
