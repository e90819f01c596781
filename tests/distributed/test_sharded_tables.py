"""Sharded dynamic tables under torchrun (gloo, CPU) equal a single-process run.

``workers/train_tables.py`` trains the same small RecIS model (EmbeddingEngine with sum, weighted
mean, tile, a ReadOnly reader and an evicting table; SparseAdamW + Adam; HashTableFilterHook)
for a few steps, once as one process over the whole global batch and once under ``torchrun``
with 2 and 3 ranks, each rank taking its slice of every batch. Compared: the outputs of every
sample at every step, the gradient reaching every row, the evicted ids, the final rows
(embedding and optimizer slots) by id, and the dense head; plus the placement of ids on ranks
by the slice rule.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch

from torchrun_launch import run_launch  # tests/torchrun_launch.py
from recis_compat.backend.slices import owner_ranks

pytestmark = pytest.mark.distributed

WORKER = pathlib.Path(__file__).parent / "workers" / "train_tables.py"
REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 4


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters")] + [env.get("PYTHONPATH", "")])
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(nproc: int, out: pathlib.Path, *extra: str, timeout: float = 120,
              steps: int = STEPS, cwd=None, env_extra=None) -> subprocess.CompletedProcess:
    """The worker under torchrun, launched once (tests/torchrun_launch.py)."""
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", str(nproc), "--master_port", "0", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", "localhost:0", str(WORKER), "--out", str(out), "--steps", str(steps), *extra]
    env = _env()
    env.update(env_extra or {})
    kwargs = dict(env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd or out.parent)
    return run_launch(cmd, **kwargs)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    proc = subprocess.run([sys.executable, str(WORKER), "--out", str(out), "--steps", str(STEPS)],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "rank0.pt", weights_only=False)


def _load_ranks(out: pathlib.Path, world: int):
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _merged_tables(ranks) -> dict:
    """table -> {id: {slot: row}} over all ranks."""
    out = {}
    for r in ranks:
        for table, state in r["tables"].items():
            out.setdefault(table, {}).update(_rows_by_id(state))
    return out


def _rows_by_id(state: dict) -> dict:
    ids = state["id"].tolist()
    return {i: {k: v[n] for k, v in state.items() if k != "id"} for n, i in enumerate(ids)}


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharded_training_equals_single_process(world, single_run, tmp_path):
    out = tmp_path / "out"
    proc = _torchrun(world, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = _load_ranks(out, world)
    _assert_matches_single(ranks, single_run, world)


def test_cached_ssd_store_sharded_equals_in_memory_single_process(single_run, tmp_path):
    """The unchanged RecIS model with every table in files (RECIS_COMPAT_STORE_TYPE=cached_ssd)
    on 2 ranks gives what the in-memory single process gives; each rank has its own directory,
    removed at exit. (Budget trimming under training: tests/unit/test_row_store.py.)"""
    store = tmp_path / "store"
    out = tmp_path / "out"
    proc = _torchrun(2, out, env_extra={"RECIS_COMPAT_STORE_TYPE": "cached_ssd",
                                        "RECIS_COMPAT_PERSISTENT_PATH": str(store),
                                        "RECIS_COMPAT_CACHE_MEMORY_BUDGET_MB": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = _load_ranks(out, 2)
    for rank, r in enumerate(ranks):
        for table, st in r["stores"].items():
            if r["tables"][table]["embedding"].dtype.is_floating_point:
                assert st["file_backed"], f"rank {rank} table {table}: rows not in files"
                assert pathlib.Path(st["directory"]).parent == store
                assert f"-rank{rank}-" in pathlib.Path(st["directory"]).name
    assert store.is_dir() and not any(store.iterdir()), "row-store directories left behind after exit"
    _assert_matches_single(ranks, single_run, 2)


def _assert_matches_single(ranks, single_run, world):
    # the TorchRec EBC in the same model is sharded by the planner; ours by our sharder
    assert ranks[0]["ebc_type"] == "ShardedEmbeddingBagCollection"
    assert single_run["ebc_type"] == "EmbeddingBagCollection"
    ref = single_run
    for step in range(STEPS):
        # outputs: rank r holds samples [r*b, (r+1)*b) of the global batch
        got = torch.cat([r["outputs"][step] for r in ranks])
        torch.testing.assert_close(got, ref["outputs"][step], rtol=1e-5, atol=1e-6)
        # gradient reaching every row (each row lives on exactly one rank)
        for table, (ids, g) in ref["grads"][step].items():
            merged = {}
            for r in ranks:
                if table in r["grads"][step]:
                    rids, rg = r["grads"][step][table]
                    for k, i in enumerate(rids):
                        assert i not in merged, f"row of id {i} on two ranks"
                        merged[i] = rg[k]
            assert sorted(merged) == sorted(ids), f"step {step} table {table}: rows with gradients differ"
            for k, i in enumerate(ids):
                torch.testing.assert_close(merged[i], g[k], rtol=1e-5, atol=1e-7)
        # eviction removes the same ids
        for table, evicted in ref["evicted"][step].items():
            got_ev = sorted(i for r in ranks for i in r["evicted"][step][table])
            assert got_ev == evicted, f"step {step} table {table}"
    for table, state in ref["tables"].items():
        expect = _rows_by_id(state)
        merged = {}
        for rank, r in enumerate(ranks):
            part = _rows_by_id(r["tables"][table])
            # every id sits on the rank the slice rule names
            if part:
                owners = owner_ranks(torch.tensor(list(part)), world)
                assert bool((owners == rank).all()), f"table {table}: rank {rank} holds foreign ids"
            merged.update(part)
        assert sorted(merged) == sorted(expect), f"table {table}: ids differ"
        for i, slots in expect.items():
            for slot, v in slots.items():
                torch.testing.assert_close(merged[i][slot], v, rtol=1e-5, atol=1e-6,
                                           msg=lambda m: f"table {table} id {i} slot {slot}: {m}")
    for k, v in ref["head"].items():
        for r in ranks:
            torch.testing.assert_close(r["head"][k], v, rtol=1e-5, atol=1e-6)


def test_dead_rank_makes_the_others_fail_not_hang(tmp_path):
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = _torchrun(2, out, "--die-rank", "1", timeout=150)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert elapsed < 120
    # rank 0 reports the failed exchange with the table name, not a bare gloo error
    assert "all-to-all failed" in proc.stderr or "exitcode" in proc.stderr, proc.stderr[-3000:]
    assert not (out / "rank0.pt").exists()


def test_dcp_checkpoint_reshards_2_to_3_and_to_1(tmp_path):
    """Tables saved with torch.distributed.checkpoint by 2 ranks load on 3 ranks and into an
    unsharded model with every row and slot intact."""
    ckpt = tmp_path / "ckpt"
    saved = tmp_path / "saved"
    proc = _torchrun(2, saved, "--dcp-save", str(ckpt))
    assert proc.returncode == 0, proc.stderr[-4000:]
    expect = _merged_tables(_load_ranks(saved, 2))
    loaded3 = tmp_path / "loaded3"
    proc = _torchrun(3, loaded3, "--dcp-load", str(ckpt), steps=0, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded1 = tmp_path / "loaded1"
    proc1 = subprocess.run([sys.executable, str(WORKER), "--out", str(loaded1), "--steps", "0", "--dcp-load",
                            str(ckpt)], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc1.returncode == 0, proc1.stderr[-4000:]
    for got in (_merged_tables(_load_ranks(loaded3, 3)), _merged_tables(_load_ranks(loaded1, 1))):
        assert set(got) == set(expect)
        for table, rows in expect.items():
            assert sorted(got[table]) == sorted(rows), table
            for i, slots in rows.items():
                for slot, v in slots.items():
                    assert torch.equal(got[table][i][slot], v), (table, i, slot)
