"""Dynamic collections under DistributedModelParallel beside TorchRec's own EBC (gloo, CPU).

``workers/dmp_worker.py`` trains the same model once as one process over the whole global
batch and once under ``torchrun --nproc_per_node 2`` (each rank its half), each time with a
plain loop (``model.fused_optimizer`` in a ``CombinedOptimizer``) and with TorchRec's
``TrainPipelineSparseDist``. Compared: per-step global losses, eval logits, every dynamic row
and its Adam moments by id, the placement of ids by the slice rule; and the DCP checkpoint the
2-rank run wrote, loaded into an unsharded model and into a 1-rank DMP model, reproduces the
2-rank eval logits (and, under DMP, the fused optimizer's beta powers).
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from torchrun_launch import run_launch  # tests/torchrun_launch.py
from recis_compat.backend.slices import owner_ranks

pytestmark = pytest.mark.distributed

WORKER = pathlib.Path(__file__).parent / "workers" / "dmp_worker.py"
REPO = pathlib.Path(__file__).resolve().parents[2]
TOL = dict(rtol=1e-5, atol=1e-6)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters")] + [env.get("PYTHONPATH", "")])
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dmp")
    single = subprocess.run([sys.executable, str(WORKER), "--out", str(base / "w1")], env=_env(),
                            capture_output=True, text=True, timeout=180)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    two = run_launch([str(torchrun), "--nproc_per_node", "2", "--master_port", "0", "--rdzv_backend", "c10d",
                      "--rdzv_endpoint", "localhost:0", str(WORKER), "--out", str(base / "w2")],
                     env=_env(), capture_output=True, text=True, timeout=180, cwd=str(base))
    assert two.returncode == 0, two.stderr[-3000:]
    # the 2-rank checkpoint loaded by a 1-rank DMP model
    reload = subprocess.run([sys.executable, str(WORKER), "--out", str(base / "r1"), "--load", str(base / "w2" / "dcp")],
                            env=_env(), capture_output=True, text=True, timeout=180)
    assert reload.returncode == 0, reload.stderr[-3000:]
    load = lambda d, r, f="rank": torch.load(base / d / f"{f}{r}.pt", weights_only=False)  # noqa: E731
    return {"w1": load("w1", 0), "w2": [load("w2", 0), load("w2", 1)], "dcp": base / "w2" / "dcp",
            "r1": load("r1", 0, "load")}


def _by_id(states):
    """Merge per-rank ``impl.state_dict()``\\ s of one table -> {slot: tensor} sorted by id."""
    merged = {k: torch.cat([s[k] for s in states]) for k in states[0]}
    order = torch.argsort(merged["id"])
    return {k: v[order] for k, v in merged.items()}


@pytest.mark.parametrize("mode", ["loop", "pipe"])
def test_two_ranks_equal_one_process(runs, mode):
    one, two = runs["w1"], runs["w2"]
    torch.testing.assert_close(torch.tensor(two[0][f"losses_{mode}"]), torch.tensor(one[f"losses_{mode}"]), **TOL)
    assert two[0][f"losses_{mode}"] == two[1][f"losses_{mode}"]
    for table in ("user", "item", "hist"):
        ref = _by_id([one[f"rows_{mode}"][table]])
        got = _by_id([two[0][f"rows_{mode}"][table], two[1][f"rows_{mode}"][table]])
        assert torch.equal(got["id"], ref["id"]), table
        for slot in ("embedding", "sparse_adamw_exp_avg", "sparse_adamw_exp_avg_sq"):
            torch.testing.assert_close(got[slot], ref[slot], **TOL)
        for r in (0, 1):      # every rank holds exactly the ids the slice rule gives it
            ids = two[r][f"rows_{mode}"][table]["id"]
            assert bool((owner_ranks(ids, 2) == r).all()) and ids.numel() > 0


def test_loop_and_pipeline_agree_and_pipeline_prefetches_our_modules(runs):
    for run in [runs["w1"]] + runs["w2"]:
        assert run["losses_pipe"] == pytest.approx(run["losses_loop"], rel=1e-6, abs=1e-7)
        assert {"ShardedDynamicEmbeddingBagCollection", "ShardedDynamicEmbeddingCollection",
                "ShardedEmbeddingBagCollection"} <= set(run["pipelined"])
    torch.testing.assert_close(torch.cat([runs["w2"][0]["eval_loop"], runs["w2"][1]["eval_loop"]]),
                               runs["w1"]["eval_loop"], **TOL)


def test_dcp_checkpoint_of_two_ranks_loads_into_one_rank_dmp(runs):
    w2 = runs["w2"]
    torch.testing.assert_close(runs["r1"]["eval"], torch.cat([w2[0]["eval_loop"], w2[1]["eval_loop"]]), **TOL)
    assert runs["r1"]["powers"] == w2[0]["powers_loop"] == w2[1]["powers_loop"]


def test_dcp_checkpoint_of_two_ranks_loads_unsharded(runs):
    spec = importlib.util.spec_from_file_location("dmp_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    from recis_compat.torchrec.checkpoint import load_checkpoint

    net = worker.Net()
    load_checkpoint(net, str(runs["dcp"]), trusted_source=True)
    for table in ("user", "item"):
        ref = _by_id([runs["w2"][0]["rows_loop"][table], runs["w2"][1]["rows_loop"][table]])
        got = _by_id([net.dyn.tables[table].impl.state_dict()])
        assert torch.equal(got["id"], ref["id"]) and torch.equal(got["embedding"], ref["embedding"])
    net.eval()
    with torch.no_grad():
        logits = net(worker.local_batch(99, 0, 1))[1][1]
    torch.testing.assert_close(logits, torch.cat([runs["w2"][0]["eval_loop"], runs["w2"][1]["eval_loop"]]), **TOL)
