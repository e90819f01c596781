"""Worker of test_serialize_dist: one gloo rank saving its shard of a table with recis.serialize.

Rank r holds the ids of its slice (gen_slice(r, world)) and saves them with
``Saver(shard_index=r, shard_num=world)``; rank 1 starts late, so shard 0 can only succeed by
meeting it at the barrier (its fragment-wait timeout is tiny). After ``save()`` returns, every
rank checks that the merged ``index`` exists (the second barrier)."""
import os
import time

import torch
import torch.distributed as dist


def run(rank: int, world: int, path: str, store: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        from recis_compat.backend.slices import slice_range
        from recis_compat.serialize import Saver
        from serialize_helpers import fill, make_table

        b, e = slice_range(rank, world)
        t = make_table("dist_t", slice=(b, e, 65536))
        ids = [i for i in range(0, 65536, 4099) if b <= i < e]
        fill(t, {"dist_t": ids}, seed=rank)
        torch.save(t.state_dict(), os.path.join(os.path.dirname(path), f"rank{rank}.pt"))
        if rank == 1:
            time.sleep(1.0)
        Saver(shard_index=rank, shard_num=world, parallel=2, path=path, hashtables={"t": t},
              tensors={"sc": torch.tensor([float(world)])}, timeout=0.2).save()
        assert os.path.exists(os.path.join(path, "index")), f"rank {rank}: save() returned before the merge"
    finally:
        dist.destroy_process_group()
