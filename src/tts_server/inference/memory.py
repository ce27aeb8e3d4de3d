"""Keeping a worker's resident memory near its working set.

A worker's footprint is mostly torch, the model and the frontend's tables, but glibc's allocator and oneDNN add a
long tail on top that grows with the variety of requests rather than with the load:

- glibc keeps freed blocks in its heaps (a sentence's mel and waveform tensors, tens of MB for long sentences) for
  the next job. ``malloc_trim`` after warm-up and whenever the worker goes idle gives the free pages back.
  Fixing the mmap threshold at 128 KiB instead (so large tensors are unmapped on free) left the same memory after a
  job but cost ~1.7x the CPU per synthesis: every large tensor became an mmap, page faults on fresh zeroed pages
  and an munmap, where the heap would have reused warm pages (``bench/memory.py``).
- oneDNN caches one compiled primitive per distinct convolution shape, and sequence lengths make most shapes
  distinct (≈ 0.7 MiB each, ≈ 45 per sentence length). The capacity is read from the environment when torch
  loads, so the worker sets it before the first ``import torch``.

Both are best effort: on a libc without ``malloc_trim`` (musl, macOS) the call reports False and nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("tts_server.worker")

_ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


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
