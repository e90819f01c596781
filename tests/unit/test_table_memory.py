"""Memory per id of a dynamic table trained with SparseAdamW (issue 14 item 3): the id map stays
within 24 B/id and map + embedding + both moments within 10 % of the floor (the three rows and a
12-byte key/row entry per id) after every training step, as the table grows."""
import torch

from recis.nn import HashTable
from recis_compat.nn.modules.hashtable import filter_out_sparse_param
from recis_compat.optim import SparseAdamW

DIM = 16


def test_sparse_adamw_table_stays_within_ten_percent_of_the_floor():
    ht = HashTable([DIM], block_size=1024, name="memory_per_id")
    model = torch.nn.ModuleDict({"t": ht})
    opt = SparseAdamW(filter_out_sparse_param(model), lr=1e-2)
    impl = ht.impl
    g = torch.Generator().manual_seed(5)
    floor = 3 * DIM * 4 + 12
    seen = 0
    for step in range(24):
        # mostly new ids, some repeats of earlier ones (rows are reused, not re-allocated)
        new = torch.randint(-(2 ** 63), 2 ** 63 - 1, (12_000,), generator=g, dtype=torch.int64)
        old = impl.ids()[:2_000] if seen else new[:0]
        ht(torch.cat([new, old])).square().sum().backward()
        opt.step()
        opt.zero_grad()
        seen = len(impl)
        assert seen == 12_000 * (step + 1)
        assert sorted(impl.storage.slots) == ["embedding", "sparse_adamw_exp_avg", "sparse_adamw_exp_avg_sq"]
        map_b = impl.id_map.memory_bytes() / seen
        total_b = map_b + impl.storage.memory_bytes() / seen
        assert map_b <= 24.01, (seen, map_b)
        if seen >= 100_000:    # one block (1024 rows) is < 1 % of the rows from here on
            assert total_b <= 1.10 * floor, (seen, total_b, floor)
