"""``id_map_rehash`` on the CPU (csrc/embedding/id_map.cpp): each thread fills its own region of
the new table without atomics and empties it just ahead of its writes; keys whose probe path
leaves a region (clusters across a region's end, the wrap-around at the table's end) are placed
by one thread afterwards. The result must be the same map -- every id found with its row, no
tombstone, every other slot empty -- for every thread count and for clustered keys."""
import numpy as np
import pytest
import torch

from recis_compat.ops import id_map as ops

LANES = ops.LANES


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (csrc/embedding/id_map.h mix64) on uint64."""
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _home(ids: torch.Tensor, buckets: int) -> np.ndarray:
    """Home buckets of int64 ids in a table of ``buckets`` buckets (multiply-shift, as the kernels)."""
    h = _mix64(ids.numpy().view(np.uint64))
    return np.array([(int(v) * buckets) >> 64 for v in h], dtype=np.int64)


def _insert(ids: torch.Tensor, capacity: int):
    table = torch.full((-(-capacity // LANES), 8), -1, dtype=torch.int64)
    meta = torch.zeros(4, dtype=torch.int64)
    free = torch.zeros(0, dtype=torch.int64)
    rows, _ = ops.find_or_insert(table, meta, free, ids)
    return table, meta, rows


def _check(table, meta, ids, rows, absent):
    """The rehashed map: every id at its row, absent ids absent, no tombstone or transient state,
    slots other than the ids' empty."""
    assert torch.equal(ops.find(table, ids), rows)
    assert bool((ops.find(table, absent) == -1).all())
    states = table.view(torch.int32)[:, 2 * LANES:3 * LANES].reshape(-1)
    assert int((states >= 0).sum()) == ids.numel() == int(meta[0])
    assert int((states == -1).sum()) == states.numel() - ids.numel()
    assert int(meta[2]) == 0
    got_ids, got_rows = ops.export(table, meta)
    order = torch.argsort(rows)
    assert torch.equal(got_ids, ids[order]) and torch.equal(got_rows, rows[order])


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_rehash_keeps_the_map_for_every_thread_count(threads):
    g = torch.Generator().manual_seed(3)
    ids = torch.unique(torch.randint(-(2 ** 63), 2 ** 63 - 1, (60_000,), generator=g, dtype=torch.int64))
    ids = ids[torch.randperm(ids.numel(), generator=g)]
    table, meta, rows = _insert(ids, 80_000)
    ops.delete(table, meta, torch.zeros(ids.numel(), dtype=torch.int64), ids[:5000])   # tombstones
    keep, keep_rows = ids[5000:], rows[5000:]
    absent = torch.cat([ids[:5000], torch.arange(-500, 500)])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        # smaller (load 0.9), same, and larger capacities; bucket counts not multiples of anything
        for cap in (int(keep.numel() / 0.9), 80_000, 123_457, 300_001):
            nt, nm = ops.rehash(table, meta, cap)
            _check(nt, nm, keep, keep_rows, absent)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_clusters_across_region_ends_and_the_wrap_around(threads):
    """Ids crowded into a few home buckets just before each half / quarter of the new table and
    at its last buckets: their probe paths cross the regions the threads fill (and wrap around
    to bucket 0), so they are placed after the regions; the map stays whole."""
    new_cap = 50_000
    nnb = -(-new_cap // LANES)
    g = torch.Generator().manual_seed(9)
    pool = torch.randint(-(2 ** 63), 2 ** 63 - 1, (400_000,), generator=g, dtype=torch.int64)
    home = _home(pool, nnb)
    picked = []
    for end in (nnb // 4, nnb // 2, 3 * nnb // 4, nnb):
        near = np.nonzero((home >= end - 3) & (home < end))[0][:60]     # 60 ids for 15 slots
        picked.append(pool[torch.from_numpy(near)])
    spread = torch.randint(-(2 ** 63), 2 ** 63 - 1, (20_000,), generator=g, dtype=torch.int64)
    ids = torch.unique(torch.cat(picked + [spread]))
    ids = ids[torch.randperm(ids.numel(), generator=g)]
    table, meta, rows = _insert(ids, 40_000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        nt, nm = ops.rehash(table, meta, new_cap)
    finally:
        torch.set_num_threads(before)
    _check(nt, nm, ids, rows, torch.arange(-100, 100) * 1_000_003 + 17)
    # the crowded ids overflowed their home buckets, the last ones wrapped around to bucket 0
    states = nt.view(torch.int32)[:, 2 * LANES:3 * LANES]
    assert bool((states[:3] >= 0).any())


def test_rehash_refuses_a_table_with_transient_states():
    table, meta, rows = _insert(torch.arange(100), 400)
    table.view(torch.int32)[0, 2 * LANES] = -7      # a pending slot, as a crashed insert leaves it
    with pytest.raises(RuntimeError, match="id_map_rehash: inconsistent state: 1 slots hold a transient"):
        ops.rehash(table, meta, 500)
