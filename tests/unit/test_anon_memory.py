"""backend/anon_memory.py: zeroed reserves whose untouched pages take no memory, pages given
back without a copy, and the reserve-size rule."""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap

import pytest
import torch

from recis_compat.backend.anon_memory import (GROWING_RESERVE_BYTES, MAPPED_MIN_BYTES, RESERVE_FACTOR,
                                              release_pages, reserve_rows, zeroed_cpu)

PAGE = mmap.PAGESIZE


def _resident_pages(t: torch.Tensor) -> int:
    """Pages of ``t``'s bytes that are resident (``mincore``: per page, whatever mapping it lies
    in -- /proc/self/smaps would count a neighbouring anonymous mapping the kernel merged)."""
    lo = t.data_ptr() // PAGE * PAGE
    n = -(-(t.data_ptr() + t.numel() * t.element_size() - lo) // PAGE)
    vec = (ctypes.c_ubyte * n)()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    assert libc.mincore(lo, n * PAGE, vec) == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec)


@pytest.mark.parametrize("shape,dtype", [((10,), torch.int32), ((1 << 20, 4), torch.float32), ((3 << 18,), torch.int64)])
def test_zeroed_cpu_reads_zero(shape, dtype):
    t = zeroed_cpu(shape, dtype)
    assert t.shape == shape and t.dtype == dtype and t.is_contiguous()
    assert int(t.count_nonzero()) == 0
    t.view(-1)[5] = 1
    u = zeroed_cpu(shape, dtype)                     # a reserve of its own
    assert int(u.count_nonzero()) == 0 and int(t.view(-1)[5]) == 1


def test_a_large_reserve_takes_memory_only_where_written():
    t = zeroed_cpu([64 << 20], torch.uint8)          # 64 MiB of address space
    assert _resident_pages(t) == 0
    t[: 1 << 20].fill_(7)                            # 1 MiB written
    assert 256 <= _resident_pages(t) <= 256 + 2


def test_release_pages_drops_whole_pages_and_keeps_the_edges():
    t = zeroed_cpu([8 << 20], torch.uint8)
    t.fill_(9)
    view = t.narrow(0, 100, (4 << 20) + 50)          # unaligned at both ends
    freed = release_pages(view)
    lo = -(-(t.data_ptr() + 100) // PAGE) * PAGE - t.data_ptr()
    hi = (t.data_ptr() + 100 + (4 << 20) + 50) // PAGE * PAGE - t.data_ptr()
    assert freed == hi - lo and freed % PAGE == 0
    assert _resident_pages(t) == (8 << 20) // PAGE - freed // PAGE   # before any read maps the zero page
    assert bool((t[:lo] == 9).all()) and bool((t[hi:] == 9).all())   # neighbours kept (partial pages too)
    assert int(t[lo:hi].count_nonzero()) == 0                         # released pages read as zeros
    t[lo:hi].fill_(3)                                                 # usable again
    assert bool((t[lo:hi] == 3).all())


def test_release_pages_refuses_what_it_cannot_release():
    assert release_pages(torch.zeros(10)) == 0                        # no whole page inside
    with pytest.raises(ValueError, match="contiguous CPU tensor"):
        release_pages(torch.zeros(4096, 4).t())


def test_reserve_rows_rule():
    assert reserve_rows(10, 4) == RESERVE_FACTOR * 10
    big = MAPPED_MIN_BYTES // 4                                       # rows that take 1 MiB
    assert reserve_rows(big, 4) == GROWING_RESERVE_BYTES // 4         # a growing table: >= 1 GiB of address space
    assert reserve_rows(big, 4, limit_bytes=8 << 20) == (8 << 20) // 4
    assert reserve_rows(1000, 4, limit_bytes=100) == 1000             # never below the rows needed
