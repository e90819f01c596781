"""Growth of one dynamic table past 10 million distinct ids (no capacity given by the user).

The table is a ``recis.nn.HashTable`` with ``embedding_shape=[32]`` (float32, 128 B per row) and
the EmbeddingOption default block of 10240 rows, filled by training-mode lookups of 1M-id batches.

Memory bounds asserted (``rows`` = distinct ids = rows handed out, ``needed = rows * 32 * 4``
bytes, the row storage actually needed):

* id map: ``impl.id_map.memory_bytes() <= 24 * rows + 4096`` (the IdMap docstring: 12-byte
  slots, load >= max_load / 1.5 = 0.5 once a batch is in, plus the meta/free-stack tensors);
* row storage: ``rows <= impl.storage.capacity < rows + block_size`` (whole blocks of the rows
  in use) and ``impl.storage.memory_bytes() == capacity * 128`` (the RowStorage docstring: the
  reserve beyond the capacity is never written, so not resident);
* together: ``id_map.memory_bytes() + storage.memory_bytes() <= 1.2 * needed`` (24 + 128 B per
  id plus one block: 1.19x the rows; issue 14 item 3 asks for the floor + 10 % with SparseAdamW,
  where the moments make the rows 3x larger).

Measured 10-37 s on the 2-core machine depending on other load (~5 GB peak RAM), so it is
marked ``slow`` (still part of ``make test``; skipped by ``make test-fast``).
"""
import time

import pytest
import torch

from recis.nn import HashTable
from recis.nn.initializers import ConstantInitializer

DIM = 32
BLOCK = 10240
N = 10_500_000
BATCH = 1_000_000
INIT = 0.5


def distinct_ids(n, seed=0):
    """n distinct int64 ids spread over a wide range (not 0..n-1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g).to(torch.int64) * 7919 + 123_456_789


def payload(ids):
    """Per-id values exactly representable in float32."""
    out = torch.full((ids.numel(), DIM), -1.0)
    out[:, 0] = (ids % 1_000_003).to(torch.float32)
    out[:, 1] = (ids // 1_000_003).to(torch.float32)
    return out


@pytest.mark.slow
def test_table_grows_past_ten_million_ids():
    t0 = time.time()
    ht = HashTable([DIM], block_size=BLOCK, name="growth", initializer=ConstantInitializer(init_val=INIT))
    impl = ht.impl
    ids = distinct_ids(N)
    with torch.no_grad():
        for start in range(0, N, BATCH):
            batch = ids[start:start + BATCH]
            # repeats inside a batch must not take extra rows
            out = ht(torch.cat([batch, batch[:1000]]))
            assert out.shape == (batch.numel() + 1000, DIM)
            assert len(impl) == start + batch.numel()
    insert_s = time.time() - t0

    # ------------------------------------------------------------------ every id has its own row
    assert len(impl) == N
    assert impl.id_map.num_rows_allocated() == N
    rows = impl.find_rows(ids)
    assert bool((rows >= 0).all()) and bool((rows < N).all())
    assert torch.unique(rows).numel() == N
    # rows are handed out batch by batch: batch k holds rows [k*BATCH, k*BATCH + len)
    expected_lo = (torch.arange(N) // BATCH) * BATCH
    assert bool((rows >= expected_lo).all()) and bool((rows < expected_lo + BATCH).all())
    map_ids, map_rows = ht.ids_map()
    assert map_ids.numel() == N and torch.equal(map_rows, torch.arange(N))
    assert torch.equal(torch.sort(map_ids).values, torch.sort(ids).values)

    # ------------------------------------------------------------------ memory
    map_bytes = impl.id_map.memory_bytes()
    storage_bytes = impl.storage.memory_bytes()
    capacity = impl.storage.capacity
    needed = N * DIM * 4
    assert map_bytes <= 24 * N + 4096, f"id map {map_bytes / N:.1f} B/id"
    assert N <= capacity < N + BLOCK and capacity % BLOCK == 0
    assert storage_bytes == capacity * DIM * 4
    assert map_bytes + storage_bytes <= 1.2 * needed, \
        f"map {map_bytes / N:.1f} B/id + storage {storage_bytes / N:.1f} B/id > 1.2 * {needed / N:.0f}"

    # ------------------------------------------------------------------ values
    g = torch.Generator().manual_seed(1)
    pick = torch.randperm(N, generator=g)[:300_000]
    upd, keep = ids[pick[:200_000]], ids[pick[200_000:]]
    ht.insert(upd, payload(upd))                     # upsert: no new rows
    assert len(impl) == N and impl.storage.capacity == capacity
    ht.eval()
    with torch.no_grad():
        assert torch.equal(ht(upd), payload(upd))
        assert torch.equal(ht(keep), torch.full((keep.numel(), DIM), INIT))
        unknown = torch.tensor([-7, 5, 123_456_790, 2 ** 60], dtype=torch.int64)   # never inserted
        assert torch.equal(ht(unknown), torch.zeros(4, DIM))
    assert len(impl) == N
    total_s = time.time() - t0
    assert total_s < 120, f"growth test took {total_s:.0f} s (insert {insert_s:.0f} s)"
