"""``recis-compat bench train --model dlrm --quick`` (issue 15 item 4): examples/dlrm against
``torchrec.models.dlrm.DLRM`` (FusedEmbeddingBagCollection, fused EXACT_SGD) on the same
synthetic Criteo batches, world 1 in-process (OneFlow's per-table init and a shared init) and
world 2 under torchrun. Structure, guards and positive ratios only: no timing assertions."""
import json
import math
import pathlib
import sys

import pytest
from click.testing import CliRunner

from recis_compat.benchmarks import train_bench
from recis_compat.cli import main

REPO = pathlib.Path(__file__).resolve().parents[2]


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _dlrm_modules():
    return {n for n, m in list(sys.modules.items())
            if "examples/dlrm" in str(getattr(m, "__file__", None) or "").replace("\\", "/")}


@pytest.mark.distributed
def test_bench_train_dlrm_quick_world_1_and_2(tmp_path):
    out = tmp_path / "dlrm.json"
    before = _dlrm_modules()
    res = _invoke(["bench", "train", "--model", "dlrm", "--quick", "--world-size", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert _dlrm_modules() <= before          # the example's bare module names do not leak
    assert rep["benchmark"] == "train" and rep["options"]["quick"] is True
    names = [c["name"] for c in rep["cases"]]
    assert names == ["DLRM train step (ours), world 1, oneflow init", "DLRM train step (ours), world 1, shared init",
                     "DLRM train step (ours), world 2, oneflow init"]
    for case in rep["cases"]:
        assert case["metric"] == "samples/s" and case["higher_is_better"] is True
        for key in ("value", "baseline_value", "ratio"):
            assert math.isfinite(case[key]) and case[key] > 0, (case["name"], key)
        d = case["detail"]
        assert d["target_ratio_min"] == 0.9 and d["batch_per_rank"] == 256 and d["embedding_dim"] == 16
        assert case["ratio"] == pytest.approx(d["baseline_ms_per_step"] / d["ours_ms_per_step"], rel=1e-2)
        assert "EXACT_SGD" in d["baseline_kernel"]
        assert d["model_source"] == str(REPO / "examples" / "dlrm")
    one_flow, shared, two = rep["cases"]
    # OneFlow's per-table init rule: one initializer per distinct table size, each its own physical
    # table (14 with --quick's 10k cap); a shared initializer coalesces the 26 tables into one
    distinct = len({min(s, 10_000) for s in train_bench.load_dlrm_example(train_bench.find_dlrm_example()).TABLE_SIZES})
    assert distinct == 14 and one_flow["detail"]["ours_physical_tables"] == distinct
    assert shared["detail"]["ours_physical_tables"] == 1
    assert two["detail"]["world_size"] == 2 and two["detail"]["threads_per_rank"] >= 1
    assert all(0.05 < x < 5 for x in two["detail"]["first_losses"])


def test_sane_loss_guard():
    train_bench._sane_loss("ours", 0.69)
    for bad in (float("nan"), float("inf"), 0.0, 50.0):
        with pytest.raises(RuntimeError, match="computes loss"):
            train_bench._sane_loss("ours", bad)


def test_missing_dlrm_example_is_named(tmp_path):
    res = CliRunner().invoke(main, ["bench", "train", "--model", "dlrm", "--quick", "--example-dir", str(tmp_path)])
    assert res.exit_code != 0
    assert "needs the dlrm example" in res.output and str(tmp_path) in res.output


def test_world_size_is_for_dlrm_only():
    res = CliRunner().invoke(main, ["bench", "train", "--quick", "--world-size", "2"])
    assert res.exit_code != 0 and "--model dlrm only" in res.output


def test_bottom_mlp_must_end_with_dim():
    res = CliRunner().invoke(main, ["bench", "train", "--model", "dlrm", "--quick", "--dim", "8"])
    assert res.exit_code != 0 and "--bottom-mlp must end with --dim (8)" in res.output
