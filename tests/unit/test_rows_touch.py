"""``rows_touch_for_write_`` (csrc/optim/rows_floor.cpp): the cached_ssd store's way of bringing a
looked-up row's pages into the process one page per row (a read fault on a shared file mapping maps
neighbours too). The values never change; on a mapped file the resident set grows by the rows'
pages, not by 16 or more times that."""
import mmap
import os

import pytest
import torch

from recis_compat.ops.optim import rows_touch_for_write_


def test_values_unchanged_for_every_dtype_and_thread_count():
    g = torch.Generator().manual_seed(0)
    slots = [torch.randn(3000, 5, generator=g), torch.randint(0, 9, (3000, 1), generator=g),
             torch.randn(3000, 2, generator=g).to(torch.bfloat16)]
    before = [s.clone() for s in slots]
    rows = torch.cat([torch.randint(0, 3000, (2000,), generator=g), torch.tensor([-1, -5])])
    prev = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rows_touch_for_write_(slots, rows)
    finally:
        torch.set_num_threads(prev)
    for s, b in zip(slots, before):
        assert torch.equal(s, b)


def _rss_file() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no RssFile in /proc/self/status")


def test_on_a_mapped_file_only_the_rows_pages_come_in(tmp_path):
    path = tmp_path / "slot.rows"
    size = 64 << 20
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        mm.madvise(mmap.MADV_RANDOM)            # as the store maps its files
        t = torch.frombuffer(mm, dtype=torch.float32).view(-1, 16)
        t.fill_(1.5)
        mm.madvise(mmap.MADV_DONTNEED, 0, size)
        rows = torch.randperm(t.shape[0])[:2000]
        base = _rss_file()
        rows_touch_for_write_([t], rows)
        grown = _rss_file() - base
        assert grown <= 2000 * 4096 + (1 << 20), f"{grown >> 20} MiB for 2000 rows"
        assert bool((t.index_select(0, rows) == 1.5).all())
        del t
        mm.close()
    finally:
        os.close(fd)


def test_errors_name_the_op_and_the_slot():
    with pytest.raises(RuntimeError, match=r"rows_touch_for_write_: row 10 is out of range for slot 1 of 4 rows"):
        rows_touch_for_write_([torch.zeros(20, 2), torch.zeros(4, 2)], torch.tensor([10]))
    with pytest.raises(RuntimeError, match="rows must be a 1-D int64 tensor"):
        rows_touch_for_write_([torch.zeros(4, 2)], torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match="contiguous"):
        rows_touch_for_write_([torch.zeros(4, 2).t()], torch.tensor([1]))


def test_opcheck():
    torch.library.opcheck(torch.ops.recis_compat.rows_touch_for_write_.default,
                          ([torch.randn(8, 3), torch.randn(8, 1)], torch.tensor([0, 3, 7])))
