"""ParquetDataset under ``torchrun`` (2 processes, gloo): the ranks' batches together are the
single-process run's rows, each rank reads the files the sharding rule gives it, and each rank
resumes exactly from its own mid-epoch IO state.

This file is also the worker: ``torchrun ... test_parquet_torchrun.py --data D --out O`` runs
:func:`_worker` on every rank (``from recis.io import ParquetDataset``, as a RecIS script would).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np
import pytest

ROWS = [11, 4, 17, 9, 6]  # five files: rank 0 reads files 0, 2, 4; rank 1 files 1, 3
BATCH = 4


def _dataset(data, rank, world, state=None):
    from recis.io import ParquetDataset
    ds = ParquetDataset(BATCH, worker_idx=rank, worker_num=world, read_threads_num=2,
                        prefetch=1, transform_fn=lambda b: b[0])
    ds.add_path(str(data))
    ds.fixedlen_feature("label", [0.0])
    ds.varlen_feature("rid")
    ds.varlen_feature("tag", hash_type="murmur", hash_bucket=1000)
    if state is not None:
        ds.load_io_state(state)
    return ds


def _rows(it, limit=None):
    """``(rid, label, tag hash)`` of every row of the next ``limit`` batches (all if None)."""
    out = []
    while limit is None or limit > 0:
        is_end, b = next(it)
        if is_end:
            break
        out.extend(zip(b["rid"].values().tolist(), b["label"].flatten().tolist(),
                       b["tag"].values().tolist()))
        limit = None if limit is None else limit - 1
    return out


def _worker(argv):
    import torch
    import torch.distributed as dist

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ds = _dataset(a.data, rank, world)
    full = _rows(iter(ds))
    it = iter(ds)
    head = _rows(it, limit=2)
    state = ds.dump_io_state()
    it.close()
    tail = _rows(iter(_dataset(a.data, rank, world, state=state)))
    gathered = [None] * world
    dist.all_gather_object(gathered, full)  # every rank sees the union over gloo
    os.makedirs(a.out, exist_ok=True)
    torch.save({"rank": rank, "world": world, "full": full, "resumed": head + tail,
                "union": sorted(r for part in gathered for r in part)},
               os.path.join(a.out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq
    root = tmp_path_factory.mktemp("parquet-dist")
    for k, n in enumerate(ROWS):
        pq.write_table(pa.table({
            "rid": pa.array(np.arange(1000 * k, 1000 * k + n, dtype=np.int64)),
            "label": pa.array((np.arange(n) % 2).astype(np.float64)),
            "tag": pa.array([f"tag-{k}-{i % 3}" for i in range(n)]),
        }), str(root / f"part-{k}.parquet"), row_group_size=5)
    return root


@pytest.mark.distributed
def test_two_ranks_union_equals_single_process(data, tmp_path):
    import torch
    from torchrun_launch import run_launch  # tests/torchrun_launch.py

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters"),
                                         env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    out = tmp_path / "out"
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "0", "--rdzv_backend",
           "c10d", "--rdzv_endpoint", "localhost:0", __file__, "--data", str(data),
           "--out", str(out)]
    proc = run_launch(cmd, env=env, capture_output=True, text=True, timeout=180,
                      cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]

    single = _rows(iter(_dataset(data, 0, 1)))
    assert len(single) == sum(ROWS)
    union = sorted(ranks[0]["full"] + ranks[1]["full"])
    assert union == sorted(single)
    assert ranks[0]["union"] == ranks[1]["union"] == union
    for r in ranks:
        files = sorted({rid // 1000 for rid, _, _ in r["full"]})
        assert files == [k for k in range(len(ROWS)) if k % 2 == r["rank"]]
        # a rank's batches are what the same shard gives in this process, in order
        assert r["full"] == _rows(iter(_dataset(data, r["rank"], 2)))
        assert r["resumed"] == r["full"]


if __name__ == "__main__":
    _worker(sys.argv[1:])
