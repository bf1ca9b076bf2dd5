"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

Training allocates and frees the same few tensor shapes every batch: (U + I) x d
propagation layers, gradients, 2048 x 2048 InfoNCE logits. Blocks above glibc's
mmap threshold are mapped fresh on each allocation and unmapped on free, so every batch
page-faults them in again; on this project's 2-core machines that was measured at
~20% of a LightGCN epoch on amazon-baby. Raising the thresholds once (32 MB, the largest
mmap threshold glibc accepts; trim only above 1 GB) lets those blocks be reused.
Peak memory is unchanged in principle (the same blocks are live at the peak); memory
freed after the peak stays with the process until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30

_done = False


def keep_freed_memory() -> bool:
    """Apply the glibc malloc settings once per process; False where they don't apply."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or no libc: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
