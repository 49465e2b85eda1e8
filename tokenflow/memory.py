"""Giving freed memory back to the system between units of work.

Freed tensors and arrays go back to the C allocator, which keeps much of it: glibc's malloc
serves blocks below its (adaptive, up to 32 MiB) mmap threshold from its heaps and returns free
heap pages only from a heap's top. A long run's per-frame and per-step arrays then leave the
process holding hundreds of MiB it no longer uses, more the longer the video.
:func:`release_memory` asks glibc to give every free page back (``malloc_trim``); elsewhere it
does nothing. :func:`limit_arenas` caps glibc's per-thread heaps (the ``tf`` command does, for
its background writer and read-ahead threads).
"""

from __future__ import annotations

import ctypes
import os
import sys


#: ``mallopt`` parameter number of glibc's arena cap (``M_ARENA_MAX`` in malloc.h).
M_ARENA_MAX = -8


def _glibc(name: str):
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # another C library (musl has no malloc_trim/mallopt)
        return None


def limit_arenas(count: int = 2) -> bool:
    """Let glibc's malloc keep at most ``count`` arenas (heaps). By default each thread that
    allocates may get its own (up to 8 per core), and what a background thread frees stays in
    its arena: the peak memory of a run then depends on which thread happened to allocate what
    (measured: 749 against 645 MB for the same 256-frame run, docs/benchmarks.md). Nothing is
    changed when the user set ``MALLOC_ARENA_MAX`` (their choice wins) or off glibc; True if the
    cap was set. Call it early, before threads start."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, int(count)))


def release_memory() -> bool:
    """Return the allocator's free pages to the system (glibc ``malloc_trim(0)``); True if
    anything was released. A no-op (False) off Linux or without glibc."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))
