"""``examples/torchrec_native`` end to end: TorchRec's DLRM with our dynamic EBC, 1 and 2 processes.

Both runs see the same global batches (each rank its slice), so the per-step global losses
agree; the model learns the generator's click signal (held-out AUC above chance).
"""
from __future__ import annotations

import json
import os
import pathlib

import pytest

from torchrun_launch import run_launch  # tests/torchrun_launch.py

pytestmark = pytest.mark.distributed

REPO = pathlib.Path(__file__).resolve().parents[2]
RUN = REPO / "examples" / "torchrec_native" / "run.sh"
ARGS = ["--rows", "4096", "--eval-rows", "2048", "--batch-size", "256"]


def _run(world: int, metrics: pathlib.Path) -> dict:
    env = dict(os.environ, WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = run_launch(["bash", str(RUN), *ARGS, "--metrics", str(metrics)], env=env, capture_output=True,
                      text=True, timeout=240, cwd=str(metrics.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(metrics.read_text())


def test_example_one_and_two_processes(tmp_path):
    one = _run(1, tmp_path / "m1.json")
    two = _run(2, tmp_path / "m2.json")
    assert one["world"] == 1 and two["world"] == 2 and one["steps"] == two["steps"] == 16
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4, abs=1e-5)
    assert two["eval_auc"] == pytest.approx(one["eval_auc"], abs=1e-4)
    assert one["ids_stored"] == two["ids_stored"] > 1000
    assert one["eval_auc"] > 0.6
