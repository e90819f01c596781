"""``recis-compat bench lookup --quick`` and ``bench tile --quick`` run through the CLI and print
one JSON report each (docs/benchmarks.md). Structure only: no timing assertions."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

from recis_compat.cli import main

CASE_KEYS = {"name", "metric", "value", "baseline", "baseline_value", "ratio", "higher_is_better", "detail"}


def _run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    # the JSON object is the whole stdout (warnings go to stderr)
    return json.loads(res.stdout[res.stdout.index("{"):])


def _check_cases(rep, name, n_cases):
    assert rep["benchmark"] == name and rep["options"]["quick"] is True
    assert {"cpu", "threads", "torch", "torchrec", "fbgemm_gpu"} <= set(rep["machine"])
    assert len(rep["cases"]) == n_cases
    for case in rep["cases"]:
        assert CASE_KEYS <= set(case)
        assert case["metric"] == "ms/step" and case["higher_is_better"] is False
        for key in ("value", "baseline_value", "ratio"):
            v = case[key]
            assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (case["name"], key, v)
        # ratio is baseline / ours for times; time_ratio is its inverse
        assert case["ratio"] == pytest.approx(case["baseline_value"] / case["value"], rel=1e-2)
        assert case["detail"]["time_ratio"] == pytest.approx(case["value"] / case["baseline_value"], rel=1e-2)
        assert case["detail"]["timed_steps"] == 1


def test_bench_lookup_quick(tmp_path):
    out = tmp_path / "lookup.json"
    threads = torch.get_num_threads()
    try:
        rep = _run(["bench", "lookup", "--quick", "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)   # --threads is process-wide
    _check_cases(rep, "lookup", 4)
    assert json.loads(out.read_text()) == rep
    assert rep["options"]["threads"] == 1 and rep["machine"]["threads"] == 1
    names = [c["name"] for c in rep["cases"]]
    assert names[0] == names[1] and "one-id" in names[0]
    assert names[2] == names[3] and "sequence" in names[2]
    for case in rep["cases"]:
        d = case["detail"]
        assert 0 <= d["new_frac_of_ids"] <= 1 and 0 <= d["new_frac_of_unique"] <= 1
        assert d["ids_per_step"] >= d["unique_ids_per_step"] > 0
        assert d["table_ids_after_warmup"] > 0 and d["target_time_ratio_max"] == 1.3
    assert "TBE" in rep["cases"][0]["baseline"] and "SplitTableBatched" in rep["cases"][0]["detail"]["baseline_kernel"]


def test_bench_tile_quick():
    rep = _run(["bench", "tile", "--quick"])
    _check_cases(rep, "tile", 4)
    assert [c["detail"]["tile_len"] for c in rep["cases"]] == [20, 20, 200, 200]   # --quick's tile lengths
    assert rep["cases"][0]["detail"]["baseline_truncates_first"] is True
    assert rep["cases"][2]["detail"]["baseline_truncates_first"] is False
    for case in rep["cases"]:
        assert case["detail"]["ids_within_tile_len"] <= case["detail"]["ids_per_step"]


def test_registry_and_module_interface():
    from recis_compat.benchmarks import lookup_bench, registry, tile_bench
    assert registry.load("lookup") is lookup_bench and registry.load("tile") is tile_bench
    for mod, name in ((lookup_bench, "lookup"), (tile_bench, "tile")):
        assert callable(mod.run) and mod.command.name == name and mod.DESCRIPTION
        assert isinstance(mod.DEFAULTS, dict)
    assert lookup_bench.DEFAULTS["batch"] == 4096 and lookup_bench.DEFAULTS["features"] == 26
    assert tile_bench.DEFAULTS["tile_lens"] == "50,1000"
