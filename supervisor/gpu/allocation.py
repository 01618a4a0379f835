"""Which GPUs a new child gets: a pure function of the devices' figures.

The supervisor pins each child to its devices with ``CUDA_VISIBLE_DEVICES``
before it starts, so the choice is made once, up front, from a ``GpuSample``.
The rule is deliberately simple and deterministic so that placements can be
predicted and tested:

1. a device whose free memory is below the app's ``vram_per_gpu`` is not
   eligible;
2. with ``exclusive`` (the default), devices carrying fewer of our children
   come first, so apps spread out before they share;
3. then the device with the most free memory;
4. then the lower index.

The chosen indices are returned in ascending order, so the app's ``cuda:0`` is
the lowest-numbered of its devices, as with any ``CUDA_VISIBLE_DEVICES`` a
person would write. No I/O happens here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .sample import DeviceMemory

__all__ = [
    "AllocationError",
    "allocate_gpus",
    "check_explicit",
    "cuda_visible_devices",
    "format_bytes",
    "gpu_environment",
    "rank_devices",
]


class AllocationError(Exception):
    """The requested GPUs cannot be given; the message says what is missing."""


def rank_devices(
    devices: Sequence[DeviceMemory],
    *,
    vram_per_gpu: int | None,
    taken: Mapping[int, int],
    exclusive: bool = True,
) -> list[DeviceMemory]:
    """Eligible devices, best first, by the module's rules 1-4."""
    need = vram_per_gpu or 0
    eligible = [d for d in devices if d.free >= need]
    if exclusive:
        eligible.sort(key=lambda d: (taken.get(d.index, 0), -d.free, d.index))
    else:
        eligible.sort(key=lambda d: (-d.free, d.index))
    return eligible


def allocate_gpus(
    devices: Sequence[DeviceMemory],
    *,
    count: int,
    vram_per_gpu: int | None,
    taken: Mapping[int, int],
    exclusive: bool = True,
) -> tuple[int, ...]:
    """``count`` distinct device indices, ascending, or ``AllocationError``.

    ``taken`` maps a device index to the number of our children already on it;
    ``vram_per_gpu`` of ``None`` makes every device eligible. ``exclusive``
    only orders the preference (spread before share); it never refuses a
    device that is already taken.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        return ()
    ranked = rank_devices(devices, vram_per_gpu=vram_per_gpu, taken=taken, exclusive=exclusive)
    if len(ranked) < count:
        raise AllocationError(_shortage(devices, count, vram_per_gpu))
    return tuple(sorted(d.index for d in ranked[:count]))


def check_explicit(devices: Sequence[DeviceMemory], indices: Iterable[int]) -> tuple[int, ...]:
    """Validate indices an app asked for by number; returns them in the given order.

    Unknown or repeated indices raise ``AllocationError``. Free memory is not
    checked: an explicit placement may need evictions first, which is the
    admission policy's business.
    """
    chosen = tuple(indices)
    known = {d.index for d in devices}
    unknown = [i for i in chosen if i not in known]
    if unknown:
        have = ", ".join(str(i) for i in sorted(known)) or "none"
        raise AllocationError(
            f"unknown GPU index {', '.join(str(i) for i in unknown)} (devices present: {have})"
        )
    if len(set(chosen)) != len(chosen):
        raise AllocationError(f"GPU indices repeat: {cuda_visible_devices(chosen)}")
    return chosen


def cuda_visible_devices(indices: Iterable[int]) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value: ``"0,2"``; ``""`` hides every GPU."""
    return ",".join(str(i) for i in indices)


def gpu_environment(indices: Iterable[int]) -> dict[str, str]:
    """Environment entries that pin a child to these NVML device indices.

    CUDA numbers devices fastest-first unless told otherwise, while NVML (and
    so every index here) uses PCI bus order; ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
    makes the two agree on machines with mixed GPUs.
    """
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": cuda_visible_devices(indices),
    }


def format_bytes(n: int) -> str:
    """``"1.5 GiB"``, ``"300 MiB"``: for messages people read."""
    if abs(n) >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB"


def _shortage(devices: Sequence[DeviceMemory], count: int, vram_per_gpu: int | None) -> str:
    each = f" with {format_bytes(vram_per_gpu)} free each" if vram_per_gpu else ""
    if not devices:
        return f"needs {count} GPU(s){each}, but there are no GPUs"
    free = ", ".join(f"GPU {d.index}: {format_bytes(d.free)} free" for d in devices)
    return f"needs {count} GPU(s){each}; {free}"
