"""RecIS-style scripts that import nothing but ``recis.*`` (and torch) run unchanged here.

``scripts/recis_script.py`` exercises every behaviour of contract §6.1 and asserts it inline
(batch structure, ragged layouts, trans_int8 bytes, FeatureEngine pass-through, EmbeddingEngine
shapes and dense pass-through, filter_out_sparse_param before/after moving the model,
SparseAdamWTF, Trainer with add_hooks / LoggerHook / save_steps / add_metric, AUROC, Logger,
ArgumentParser with TrainingArguments flags, ProfilerHook, HashTableFilterHook,
dist.init_process_group under torchrun). Device selection (CPU, gloo) is the only difference
from a GPU RecIS script.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(__file__).parent / "scripts" / "recis_script.py"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters"), env.get("PYTHONPATH", "")])
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_script_uses_only_supported_recis_apis():
    from click.testing import CliRunner

    from recis_compat.cli import main
    res = CliRunner().invoke(main, ["check-script", "--json", str(SCRIPT)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["unsupported"] == 0 and len(report["apis"]) >= 20
    assert all(a["supported"] for a in report["apis"])


@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2])
def test_recis_script_runs_under_torchrun(tmp_path, world, run_multiprocess):
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ckpt"
    proc = run_multiprocess([str(torchrun), "--nproc_per_node", str(world), "--rdzv_backend", "c10d",
                           "--rdzv_endpoint", "localhost:0", str(SCRIPT), "--data_dir", str(tmp_path / "data"),
                           "--output_dir", str(out), "--train_steps", "6", "--log_steps", "2", "--save_steps", "3"],
                          fresh=[out], env=_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    for r in range(world):
        assert f"COMPAT-OK {r}" in log
    # LoggerHook lines every 2 steps with the add_metric value; checkpoints every 3 steps + end
    assert log.count("<auc=tensor(") >= 3 * world
    assert (out / "checkpoint").read_text().split() == ["ckpt_3", "ckpt_6"]
    assert {"model.pt", "extra.pt", "index"} <= set(os.listdir(out / "ckpt_6"))
    assert list(out.glob("*timeline*.json")), "ProfilerHook wrote no trace"
