"""Keeping a worker's resident memory near its working set.

A worker's footprint is mostly torch, the model and the frontend's tables, but glibc's allocator and oneDNN add a
long tail on top that grows with the variety of requests rather than with the load:

- glibc serves large requests (a sentence's mel and waveform tensors, tens of MB for long sentences) from its heaps
  once its dynamic mmap threshold has crept up, and a freed block in the middle of a heap is kept by the process.
  Fixing the threshold at 128 KiB sends such buffers straight to ``mmap`` (returned to the kernel on free), and
  ``malloc_trim`` after a job gives back what the heaps still hold.
- oneDNN caches one compiled primitive per distinct convolution shape, and sequence lengths make most shapes
  distinct; its default capacity (1024) keeps about 120 MB of them. The capacity is read from the environment when
  torch loads, so the worker sets it before the first ``import torch``.

Both are best effort: on a libc without these calls (musl, macOS) the functions report False and nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("tts_server.worker")

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
_MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value; fixing it stops the dynamic increase
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


def pin_mmap_threshold() -> bool:
    """Serve allocations of 128 KiB and more with mmap for the rest of the process's life."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


def release_free_memory() -> bool:
    """Give the heaps' free pages back to the kernel (a few ms; call it when idle)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True
