"""One grouped exchange for all sharded lookups of an EmbeddingEngine forward (issue 15 item 4,
``recis_compat/backend/grouped_exchange.py``): a 2-rank gloo run trains the model of
``workers/grouped_exchange_worker.py`` (sum, weighted mean, tile, a ReadOnly reader, dims 4 and
8, a float64 and an int8 table; a step whose ids outgrow the id capacity) once through the
grouped exchange and once with one exchange per group, and a single process trains it over the
whole global batches.

Asserted: the grouped run's outputs, the gradient rows every table shard receives, the final
rows and optimizer slots and the dense head are bit-identical to the per-group run's and equal
(float tolerance: the sums run in another order) to the single process's; the forward issues one
id all-to-all (plus one for the excess ids, at the step that needs it) and one rows all-to-all
per dtype, the backward one per floating dtype, instead of three per group.
"""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import torch

from torchrun_launch import run_launch  # tests/torchrun_launch.py

pytestmark = pytest.mark.distributed

WORKER = pathlib.Path(__file__).parent / "workers" / "grouped_exchange_worker.py"
REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 5
EXCESS_STEP = 3          # the worker's step whose ids outgrow the capacity


def _env():
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters")] + [env.get("PYTHONPATH", "")])
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(out: pathlib.Path, exchange: str) -> list:
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    proc = run_launch([str(torchrun), "--nproc_per_node", "2", "--master_port", "0", "--rdzv_backend", "c10d",
                       "--rdzv_endpoint", "localhost:0", str(WORKER), "--out", str(out), "--steps", str(STEPS),
                       "--exchange", exchange], env=_env(), capture_output=True, text=True, timeout=180,
                      cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("grouped")
    proc = subprocess.run([sys.executable, str(WORKER), "--out", str(base / "single"), "--steps", str(STEPS)],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = torch.load(base / "single" / "rank0.pt", weights_only=False)
    return {"single": single, "grouped": _torchrun(base / "g", "grouped"),
            "per-group": _torchrun(base / "p", "per-group")}


def _assert_identical(a, b, what: str) -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), (what, a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b), (what, sorted(set(a) ^ set(b)))
        for k in a:
            _assert_identical(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{what}[{i}]")
    else:
        assert a == b, (what, a, b)


def test_grouped_exchange_is_bit_identical_to_one_exchange_per_group(runs):
    for rank, (g, p) in enumerate(zip(runs["grouped"], runs["per-group"])):
        for key in ("outputs", "grads", "tables", "head"):
            _assert_identical(g[key], p[key], f"rank {rank} {key}")


def test_grouped_exchange_equals_one_process(runs):
    single, ranks = runs["single"], runs["grouped"]
    for step in range(STEPS):
        merged = torch.cat([r["outputs"][step] for r in ranks])
        torch.testing.assert_close(merged, single["outputs"][step], rtol=1e-5, atol=1e-6)
    for name, state in single["tables"].items():
        ids = state["id"].tolist()
        got = {}
        for r in ranks:
            s = r["tables"][name]
            for n, i in enumerate(s["id"].tolist()):
                got[i] = {k: v[n] for k, v in s.items() if k != "id"}
        assert sorted(got) == sorted(ids), name
        for n, i in enumerate(ids):
            for k, v in state.items():
                if k != "id":
                    torch.testing.assert_close(got[i][k], v[n], rtol=1e-5, atol=1e-6, msg=f"{name} id {i} {k}")
    for k, v in single["head"].items():
        for r in ranks:
            torch.testing.assert_close(r["head"][k], v, rtol=1e-5, atol=1e-6)


def test_grouped_exchange_issues_three_collectives_not_three_per_group(runs):
    groups = 7               # user, hist, seq, user_ro, cate, wide, q
    for r in runs["grouped"]:
        for step, (fwd, bwd) in enumerate(zip(r["forward_a2a"], r["backward_a2a"])):
            # capacity 0 at step 0 and outgrown at EXCESS_STEP: the ids follow the counts
            ids = ["ids"] if step in (0, EXCESS_STEP) else []
            # rows: one all-to-all each for the float32, float64 and int8 tables (the
            # int8 rows, integers with split sizes, are logged as "ids")
            assert fwd == ["counts"] + ids + ["rows", "rows", "ids"], (step, fwd)
            assert bwd == ["rows", "rows"], (step, bwd)
    for r in runs["per-group"]:
        assert len(r["forward_a2a"][1]) == 2 * groups and len(r["backward_a2a"][1]) == 6
