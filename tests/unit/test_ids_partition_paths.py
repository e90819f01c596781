"""``ids_partition`` (csrc/embedding/id_map.cpp) has two CPU paths for world > 1: the fused
single pass over a 16-byte-slot scratch table (batches up to 2**22 ids) and, beyond that,
``unique_inverse`` followed by a counting sort by owner. Both must give RecIS's grouping: the
distinct ids grouped by owner rank (``backend/slices.py``), first-occurrence order inside a
group, ``unique[inverse] == ids``. The expected result here is built from ``unique_first_seen``
and ``owner_ranks`` with plain torch ops."""
from __future__ import annotations

import pytest
import torch

from recis_compat.backend.slices import owner_ranks
from recis_compat.ops.id_map import ids_partition, unique_first_seen

SERIAL_MAX = 1 << 22   # kSerialUniqueMax in csrc/embedding/id_map.cpp


def _expected(ids: torch.Tensor, world: int):
    uniq, inverse = unique_first_seen(ids)
    owner = owner_ranks(uniq, world)
    order = torch.argsort(owner, stable=True)          # by owner, first-seen order inside
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel())
    counts = torch.bincount(owner, minlength=world)
    return uniq[order], position[inverse], counts


def _zipf_like(n: int, seed: int) -> torch.Tensor:
    """Ids with a heavy head (many repeats) and a long tail, spread over every slice."""
    g = torch.Generator().manual_seed(seed)
    ranks = (torch.rand(n, generator=g, dtype=torch.float64) ** 4 * 200_000).to(torch.int64)
    return ranks * 2654435761 + 12345


@pytest.mark.parametrize("world", [2, 3, 8])
def test_fused_path_groups_like_unique_then_owner_sort(world):
    ids = _zipf_like(106_496, seed=world)
    ids[::101] = torch.iinfo(torch.int64).min
    ids[7::103] = -1
    uniq, inverse, counts = ids_partition(ids, world)
    eu, ei, ec = _expected(ids, world)
    assert torch.equal(uniq, eu) and torch.equal(inverse, ei) and torch.equal(counts, ec)
    assert torch.equal(uniq[inverse], ids)


def test_large_batch_path_groups_the_same_way():
    """Beyond 2**22 ids the kernel dedupes with the concurrent id-map path, then sorts by owner."""
    ids = _zipf_like(SERIAL_MAX + 4096, seed=11)
    uniq, inverse, counts = ids_partition(ids, 3)
    eu, ei, ec = _expected(ids, 3)
    assert torch.equal(uniq, eu) and torch.equal(inverse, ei) and torch.equal(counts, ec)
    # the same ids cut just under the limit take the fused path: same grouping
    head = ids[:SERIAL_MAX]
    hu, hi, hc = ids_partition(head, 3)
    eu, ei, ec = _expected(head, 3)
    assert torch.equal(hu, eu) and torch.equal(hi, ei) and torch.equal(hc, ec)
