"""Giving freed memory back to the system between units of work.

Freed tensors and arrays go back to the C allocator, which keeps much of it: glibc's malloc
serves blocks below its (adaptive, up to 32 MiB) mmap threshold from its heaps and returns free
heap pages only from a heap's top. A long run's per-frame and per-step arrays then leave the
process holding hundreds of MiB it no longer uses, more the longer the video.
:func:`release_memory` asks glibc to give every free page back (``malloc_trim``); elsewhere it
does nothing.
"""

from __future__ import annotations

import ctypes
import sys


def release_memory() -> bool:
    """Return the allocator's free pages to the system (glibc ``malloc_trim(0)``); True if
    anything was released. A no-op (False) off Linux or without glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # another C library (musl has no malloc_trim)
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))
