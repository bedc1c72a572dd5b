"""How a training process's C heap keeps freed memory: glibc malloc settings that stop every
training step from page-faulting.

A CPU training step allocates and frees tensors of a few MB (activations, gradients, TNet's tap
products). glibc hands blocks that large to the kernel on free (mmap threshold, heap trimming), so
the next step faults their pages in again, zero-filled, every step (how many and what they cost:
docs/benchmarks.md). Keeping freed blocks in the heap for reuse removes them. The process then
holds on to its peak heap, which a training process reaches every step anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts: blocks up to 32 MB come from the heap
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before it goes back


def is_user_malloc_setting(name: str) -> bool:
    """Whether environment variable `name` tunes glibc malloc (MALLOC_* or GLIBC_TUNABLES)."""
    return name.startswith("MALLOC_") or name == "GLIBC_TUNABLES"


@functools.cache
def keep_freed_memory() -> bool:
    """Set the thresholds above for this process, once; True when they are in force. Leaves malloc
    alone (False) off glibc and where the user tunes malloc through its environment variables."""
    if (platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
            or any(map(is_user_malloc_setting, os.environ))):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
