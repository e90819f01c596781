"""``recis-compat bench train --quick`` and ``bench lookup --quick --world-size 2`` run through the
CLI and print one JSON report each (docs/benchmarks.md). Structure and positive ratios only: no timing
assertions. Plus: the bundled copy of the deepfm example in ``train_bench`` matches the example."""
import gc
import json
import math
import pathlib
import sys

import pytest
import torch
from click.testing import CliRunner

from recis_compat.cli import main

CASE_KEYS = {"name", "metric", "value", "baseline", "baseline_value", "ratio", "higher_is_better", "detail"}
REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout[res.stdout.index("{"):])


def _check_case(case):
    assert CASE_KEYS <= set(case)
    assert case["metric"] == "samples/s" and case["higher_is_better"] is True
    for key in ("value", "baseline_value", "ratio"):
        v = case[key]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (case["name"], key, v)
    assert case["ratio"] == pytest.approx(case["value"] / case["baseline_value"], rel=1e-2)


def _example_modules():
    return {n for n, m in list(sys.modules.items())
            if "examples/deepfm" in str(getattr(m, "__file__", None) or "").replace("\\", "/")}


def test_bench_train_quick(tmp_path):
    out = tmp_path / "train.json"
    before = _example_modules()
    rep = _run(["bench", "train", "--quick", "--json", str(out)])
    # the example's bare module names (dataset, feature_config, ...) do not leak into sys.modules
    assert _example_modules() <= before
    assert json.loads(out.read_text()) == rep
    assert rep["benchmark"] == "train" and rep["options"]["quick"] is True
    assert {"cpu", "threads", "torch", "torchrec", "fbgemm_gpu"} <= set(rep["machine"])
    assert len(rep["cases"]) == 2
    case, mode = rep["cases"]
    _check_case(case)
    d = case["detail"]
    assert d["batch"] == 200 and d["timed_steps"] == 1 and d["target_ratio_min"] == 0.9
    assert d["ours_ms_per_step"] > 0 and d["baseline_ms_per_step"] > 0
    assert case["ratio"] == pytest.approx(d["baseline_ms_per_step"] / d["ours_ms_per_step"], rel=1e-2)
    assert "EXACT_ADAGRAD" in d["baseline_kernel"]
    assert d["same_model_loss_abs_diff"] <= 1e-6
    # from a source checkout the example itself is benchmarked
    assert d["model_source"] == str(REPO / "examples" / "deepfm")
    # the CPU mode's cost: the same step with recis_compat/utils/cpu_mode.py installed vs not
    _check_case(mode)
    md = mode["detail"]
    assert "CPU mode" in mode["name"] and "without the CPU mode" in mode["baseline"]
    assert md["cpu_mode_ms_per_step"] > 0 and md["plain_ms_per_step"] > 0 and md["timed_steps"] == 1
    assert mode["ratio"] == pytest.approx(md["plain_ms_per_step"] / md["cpu_mode_ms_per_step"], rel=1e-2)
    from recis_compat.utils import cpu_mode
    assert md["mapped_calls"] == len(cpu_mode.MAPPED_CALLS)
    # the bench toggled the mode in this process and left it as it found it (not installed)
    assert not cpu_mode.installed() and torch.Tensor.to is torch._C.TensorBase.to
    assert not hasattr(torch.zeros, "__recis_compat_cpu_mode__")


def test_bundled_example_matches_the_example(tmp_path):
    """The bundled copy (used when examples/ is not installed) builds the same model: same
    parameters, the same data, the same loss and gradients on a batch from the same seed."""
    from recis_compat.benchmarks import train_bench as tb
    real = tb.load_example(REPO / "examples" / "deepfm")
    copy = tb._bundled_example()
    assert (real.NUMERIC, real.CATEGORICAL, real.EMB_DIM) == (copy.NUMERIC, copy.CATEGORICAL, copy.EMB_DIM)
    b_real = tb.read_batches(real, str(tmp_path / "real"), 64, 2)
    b_copy = tb.read_batches(copy, str(tmp_path / "copy"), 64, 2)
    for key in b_real[1]:
        a, b = b_real[1][key], b_copy[1][key]
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), key
        else:
            assert torch.equal(a.values(), b.values()) and torch.equal(a.offsets()[0], b.offsets()[0]), key
    losses, grads, params = [], [], []
    for ex, batches in ((real, b_real), (copy, b_copy)):
        torch.manual_seed(3)
        model = ex.DeepFM("cpu")
        model.train()
        loss = model(batches[1])
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        params.append({n: tuple(p.shape) for n, p in model.named_parameters()})
        del model, loss     # table names are process-wide; released when the model is collected
        gc.collect()
    assert params[0] == params[1]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-7)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n])


def test_find_example_dir(tmp_path, monkeypatch):
    from recis_compat.benchmarks import train_bench as tb
    monkeypatch.delenv(tb.ENV_EXAMPLE_DIR, raising=False)
    assert tb.find_example_dir() == REPO / "examples" / "deepfm"
    import click
    with pytest.raises(click.ClickException):
        tb.find_example_dir(str(tmp_path))
    assert "train" in __import__("recis_compat.benchmarks.registry", fromlist=["x"]).BENCHMARKS


@pytest.mark.distributed
def test_bench_lookup_world_size_2_quick(tmp_path):
    out = tmp_path / "lookup.json"
    rep = _run(["bench", "lookup", "--quick", "--world-size", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == rep
    assert rep["benchmark"] == "lookup" and rep["options"]["world_size"] == 2
    cases = rep["cases"]
    assert len(cases) == 5
    for case in cases:
        _check_case(case)
        d = case["detail"]
        assert d["timed_steps"] == 1 and d["features"] == 8 and d["batch_per_rank"] == 512
        # world 2 also times the world-1 twin (rank 0 alone, interleaved in the same launch)
        assert set(d["ms_per_step"]) == ({"ours", "ec", "ebc", "ours_w1"} if d["world_size"] == 2
                                         else {"ours", "ec", "ebc"})
        assert len(d["rank_ms_per_step"]["ours"]) == d["world_size"]
        assert d["ids_per_step"] == d["world_size"] * 8 * 512
    # ours at 2 vs ours at 1, then vs TorchRec's row-wise EC and EBC at 2, then at 1
    assert [c["detail"]["world_size"] for c in cases] == [2, 2, 2, 1, 1]
    assert "world 1" in cases[0]["baseline"] and cases[0]["detail"]["baseline_world_size"] == 1
    assert "interleaved in the world-2 launch" in cases[0]["baseline"]
    assert cases[0]["target"] == 0.9 and cases[2]["target"] == 1.9
    assert "target" not in cases[1] and "target" not in cases[3] and "target" not in cases[4]
    d0 = cases[0]["detail"]
    # the twin ran on rank 0 alone with both ranks' threads: samples/s = batch / its step time
    assert d0["baseline_threads_per_rank"] == 2 * d0["threads_per_rank"]
    assert cases[0]["baseline_value"] == pytest.approx(512 / (d0["ms_per_step"]["ours_w1"] / 1e3), rel=1e-3)
    assert d0["world1_launch_samples_per_s"] == cases[3]["value"]
    assert cases[0]["detail"]["threads_per_rank"] >= 1 and cases[0]["detail"]["baseline_threads_per_rank"] >= 1
    assert "EmbeddingCollection" in cases[1]["baseline"] and "NONE" in cases[1]["detail"]["ec_kernel"]
    assert "EmbeddingBagCollection" in cases[2]["baseline"] and "SUM" in cases[2]["detail"]["ebc_kernel"]
    # samples/s of a side = world * batch / its step time
    d = cases[0]["detail"]
    assert cases[0]["value"] == pytest.approx(2 * 512 / (d["ms_per_step"]["ours"] / 1e3), rel=1e-3)
