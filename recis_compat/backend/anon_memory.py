"""CPU memory for things that grow: reserves whose untouched pages take no memory, and pages
given back without a copy.

Used by backend/row_storage.py (slot reserves of in-RAM tables) and backend/row_cache.py (the
row cache's slabs, bookkeeping and row index of ``cached_ssd`` tables). Written by hand because
neither torch nor the standard library offers an allocation whose unused tail costs nothing or
a way to return part of a tensor's pages (``madvise``) without freeing it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import mmap
from typing import Optional, Sequence

import torch

__all__ = ["zeroed_cpu", "populate_write", "release_pages", "reserve_rows", "madvise", "MAPPED_MIN_BYTES"]

MAPPED_MIN_BYTES = 1 << 20          # reserves from this size on are anonymous mappings
RESERVE_FACTOR = 8                  # a new reserve holds this many times the rows needed ...
GROWING_BYTES = 1 << 20             # ... and once the rows needed take this much ...
GROWING_RESERVE_BYTES = 1 << 30     # ... at least this much address space
_MADV_DONTNEED = 4
_MADV_POPULATE_WRITE = 23    # Linux >= 5.14: fault pages in writable, as a write would
_PAGE = mmap.PAGESIZE
_madvise_fn: Optional[ctypes._CFuncPtr] = None


def zeroed_cpu(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of ``shape`` / ``dtype`` whose every element reads 0. From
    ``MAPPED_MIN_BYTES`` on it lives in a private anonymous mapping of its own (freed with the
    last tensor using it; copy-on-write across ``fork`` like heap memory): the kernel backs a
    page with zeroed memory only when it is first touched, so nothing is written here and
    untouched pages take no memory. Smaller: ``torch.zeros``."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes < MAPPED_MIN_BYTES:
        return torch.zeros(list(shape), dtype=dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(buf, dtype=dtype).view(list(shape))


def madvise(start: int, length: int, advice: int) -> int:
    """``madvise(2)`` on ``[start, start + length)`` (page-aligned start); returns 0 or -1."""
    global _madvise_fn
    if _madvise_fn is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        _madvise_fn = fn
    return _madvise_fn(start, length, advice)


def populate_write(t: torch.Tensor) -> None:
    """Back the pages of contiguous CPU tensor ``t`` with memory in one call (their contents
    unchanged). Rows of a zeroed reserve that were never written are mapped to the kernel's
    shared zero page when first *read*; the first write then faults again and, with several
    threads, flushes every thread's TLB -- an optimizer step reading and writing new moment rows
    ran 30x slower so. Populating them for writing up front costs what ``fill_`` costs minus
    the writes. Where ``madvise`` refuses (older kernels), the elements are written with zeros,
    so only call it on rows that must read 0."""
    if t.numel() == 0:
        return
    start = t.data_ptr() // _PAGE * _PAGE
    end = t.data_ptr() + t.numel() * t.element_size()
    if madvise(start, end - start, _MADV_POPULATE_WRITE) != 0:
        t.zero_()


def release_pages(t: torch.Tensor) -> int:
    """Give the memory of the whole pages inside contiguous CPU tensor ``t`` back to the kernel
    (``MADV_DONTNEED``): those elements read as 0 afterwards and take no memory until written
    again; the partial pages at both ends are kept (they may hold other data). For tensors that
    own their memory (a :func:`zeroed_cpu` reserve or a view of one; heap tensors work too, as
    the whole pages inside a tensor hold nothing else); returns the bytes released (0 where no
    whole page fits)."""
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("release_pages: a contiguous CPU tensor is needed")
    lo = -(-t.data_ptr() // _PAGE) * _PAGE
    hi = (t.data_ptr() + t.numel() * t.element_size()) // _PAGE * _PAGE
    if hi <= lo:
        return 0
    if madvise(lo, hi - lo, _MADV_DONTNEED) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"madvise(MADV_DONTNEED) of {hi - lo} bytes failed")
    return hi - lo


def reserve_rows(needed: int, row_bytes: int, limit_bytes: Optional[int] = None) -> int:
    """Rows of a new reserve for ``needed`` rows of ``row_bytes`` each: ``RESERVE_FACTOR`` times
    the rows needed, at least ``GROWING_RESERVE_BYTES`` of address space once the rows take
    ``GROWING_BYTES`` (a growing table then copies at most once more), at most ``limit_bytes``
    (never below ``needed``). Address space only: untouched pages of a :func:`zeroed_cpu`
    reserve take no memory."""
    needed = int(needed)
    row_bytes = max(1, int(row_bytes))
    rows = RESERVE_FACTOR * needed
    if needed * row_bytes >= GROWING_BYTES:
        rows = max(rows, GROWING_RESERVE_BYTES // row_bytes)
    if limit_bytes is not None:
        rows = min(rows, max(1, int(limit_bytes) // row_bytes))
    return max(needed, rows)
