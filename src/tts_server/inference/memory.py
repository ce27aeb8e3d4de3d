"""Keeping a worker's resident memory near its working set.

A worker's footprint is mostly torch, the model and the frontend's tables, but glibc's allocator and oneDNN add a
long tail on top that grows with the variety of requests rather than with the load:

- glibc keeps freed blocks in its heaps (a sentence's mel and waveform tensors, tens of MB for long sentences) for
  the next job. ``malloc_trim`` after warm-up and whenever the worker goes idle gives the free pages back.
  Fixing the mmap threshold at 128 KiB instead (so large tensors are unmapped on free) left the same memory after a
  job but cost ~1.7x the CPU per synthesis: every large tensor became an mmap, page faults on fresh zeroed pages
  and an munmap, where the heap would have reused warm pages (``bench/memory.py``).
- Between two jobs of a busy worker (no idle trim) glibc's defaults still shrink the heap's top whenever more than
  twice the largest freed mmapped block lies free there, so each vocoder pass grows it again on fresh zeroed pages
  (5,000-15,000 page faults per 4 s sentence). ``keep_heap_pages`` serves blocks up to 32 MiB from the heap and
  leaves shrinking to ``malloc_trim``: no page faults from the second job on, the vocoder 1.01-1.07x faster
  (min over runs, thread CPU time, ``bench/engine.py``), the same peak RSS; the idle trim still returns the pages.
- oneDNN caches one compiled primitive per distinct convolution shape, and sequence lengths make most shapes
  distinct (≈ 0.7 MiB each, ≈ 45 per sentence length). The capacity is read from the environment when torch
  loads, so the worker sets it before the first ``import torch``.

All are best effort: on a libc without ``malloc_trim`` (musl, macOS) the call reports False and nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("tts_server.worker")

_ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The largest mmap threshold glibc accepts on 64-bit (half its heap size): the vocoder's largest per-layer buffers
#: (a few MiB) stay well below it.
HEAP_BLOCK_LIMIT = 32 << 20
#: Free bytes at the heap's top before glibc gives them back by itself: in effect never (the worker trims when idle).
_TRIM_NEVER = 1 << 30


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def limit_primitive_cache(capacity: int) -> None:
    """Cap oneDNN's primitive cache; must run before torch is imported in this process to take effect."""
    os.environ[_ONEDNN_CACHE_ENV] = str(capacity)


def release_free_memory() -> bool:
    """Give the heaps' free pages back to the kernel (a few ms; call it when idle)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


def keep_heap_pages() -> bool:
    """Serve blocks up to ``HEAP_BLOCK_LIMIT`` from the heap and keep its free pages until ``release_free_memory``,
    so that one job's buffers reuse the pages the last one faulted in (see the module docstring)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    # Setting either disables glibc's own threshold adjustment, so both are set.
    mapped = bool(libc.mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT))
    return mapped and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER))
