"""Devices and threads: one meaning of ``auto``, the CPU count, thread settings that are
restored after use, device synchronisation and peak memory.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak RSS of this process (ru_maxrss: KiB on Linux, bytes on macOS) and CUDA peak."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    out = {"peak_rss_mb": rss_bytes / 2**20}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# ---------------------------------------------------------------------------- devices
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when present, else CPU; anything else as torch reads it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class DeviceError(ValueError):
    """A device the user asked for that this machine does not have (said in words)."""


def check_device(device: str | torch.device | None, flag: str = "--device") -> torch.device:
    """``resolve_device``, refusing up front what would fail deep inside the work: a name
    torch does not know, CUDA without a visible GPU, a GPU index past the last one, MPS
    without MPS. Commands call this before loading any data."""
    try:
        dev = resolve_device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{flag} {device}: not a device torch knows; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"{flag} {device}: no CUDA GPU is visible on this machine; use --device cpu (or leave it out)"
            )
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"{flag} {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"{flag} {device}: MPS is not available on this machine")
    return dev


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for a block, then restore it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
