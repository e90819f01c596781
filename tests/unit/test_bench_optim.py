"""``recis-compat bench optim --quick`` (benchmarks/optim_bench.py) runs and prints the report
structure of docs/benchmarks.md (no timing assertions)."""
import json

import pytest
import torch
from click.testing import CliRunner

from recis_compat.benchmarks import optim_bench


@pytest.fixture(autouse=True)
def _restore_threads():
    """``--threads`` sets torch's intra-op threads process-wide; give other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _invoke(args):
    result = CliRunner().invoke(optim_bench.command, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.output)


def test_bench_optim_quick_json(tmp_path):
    out = tmp_path / "optim.json"
    report = _invoke(["--quick", "--json", str(out), "--threads", "1"])
    assert json.loads(out.read_text()) == report
    assert report["benchmark"] == "optim"
    assert {"cpu", "threads", "torch"} <= set(report["machine"])
    assert report["options"]["quick"] is True and report["options"]["repeat"] == 1
    assert report["options"]["threads"] == 1
    cases = report["cases"]
    baselines = [c["baseline"] for c in cases]
    assert len(cases) == 7          # 4 against dense / FBGEMM baselines, 3 against the physical floor
    assert baselines[6].endswith(", cached_ssd table")     # the floor again on a file-backed table
    assert baselines[0].startswith("torch.optim.AdamW(") and baselines[1].startswith("torch.optim.AdamW(")
    assert {baselines[0], baselines[1]} == {"torch.optim.AdamW(fused=True) dense table",
                                            "torch.optim.AdamW(foreach=True) dense table"}
    assert baselines[2] == "FBGEMM CPU TBE EXACT_ROWWISE_ADAGRAD fwd+bwd"
    assert baselines[3] == baselines[0]
    for c in cases[:4]:
        assert set(c) == {"name", "metric", "value", "baseline", "baseline_value", "ratio",
                          "higher_is_better", "detail"}
        assert c["name"] in ("SparseAdamW.step", "SparseAdamW.step, repeated-row buffer")
        assert c["metric"] == "rows/s"
        assert c["higher_is_better"] is True
        assert c["value"] > 0 and c["baseline_value"] > 0 and c["ratio"] > 0
        assert abs(c["ratio"] - c["value"] / c["baseline_value"]) < 1e-3 * c["ratio"] + 1e-4
        d = c["detail"]
        assert d["rows"] == report["options"]["rows"] and d["dim"] == 16
        assert 0 < d["batch_unique_rows"] <= d["rows"]
        assert d["ours_step_ms"] > 0 and d["ours_kernel_ms"] > 0 and d["ours_coalesce_ms"] >= 0
        assert d["timed_baseline"] and d["timed_ours"]
    # the first case is the faster torch variant; the chosen one is named
    first = cases[0]["detail"]
    assert first["torch_adamw_fastest"] in cases[0]["baseline"]
    assert cases[0]["baseline_value"] >= cases[1]["baseline_value"]
    assert cases[2]["detail"]["fbgemm_fwd_bwd_ms"] > 0 and cases[2]["detail"]["fbgemm_fwd_ms"] > 0
    # the repeated-row buffer really coalesces (torch.unique), the lookup's unique buffer does not
    assert [c["name"] for c in cases].count("SparseAdamW.step, repeated-row buffer") == 1
    assert cases[3]["detail"]["ours_coalesce_ms"] > 0 and "unique=False" in cases[3]["detail"]["timed_ours"]


def test_bench_optim_options_and_plot(tmp_path):
    plot = tmp_path / "optim.png"
    report = _invoke(["--quick", "--plot", str(plot)])
    assert plot.exists() and plot.stat().st_size > 0
    assert report["options"]["rows"] == optim_bench._QUICK["rows"]
    assert report["cases"][0]["detail"]["batch_unique_rows"] == optim_bench._QUICK["batch"]
    assert optim_bench.DEFAULTS == {"rows": 1_000_000, "dim": 16, "batch": 100_000}
    assert "SparseAdamW" in optim_bench.DESCRIPTION


def test_bench_optim_run_small_and_bad_batch():
    from recis_compat.benchmarks.common import BenchOptions

    cases = optim_bench.run(BenchOptions(repeat=1, extra={"rows": 3000, "dim": 8, "batch": 300}))
    assert len(cases) == 7
    assert all(c.detail["rows"] == 3000 and c.detail["dim"] == 8 for c in cases)
    result = CliRunner().invoke(optim_bench.command, ["--rows", "100", "--batch", "200", "--repeat", "1"])
    assert result.exit_code != 0
