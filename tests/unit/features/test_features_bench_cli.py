"""``recis-compat bench features --quick`` runs through the CLI and prints the JSON report."""
import json
import subprocess
import sys


def test_bench_features_quick_json():
    proc = subprocess.run([sys.executable, "-m", "recis_compat.cli", "bench", "features",
                           "--quick"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["benchmark"] == "features" and rep["options"]["quick"] is True
    assert {"cpu", "threads", "torch"} <= set(rep["machine"])
    assert len(rep["cases"]) == 2
    for case in rep["cases"]:
        assert set(case) >= {"name", "metric", "value", "baseline", "baseline_value", "ratio",
                             "higher_is_better"}
        assert case["metric"] == "samples/s" and case["higher_is_better"] is True
        assert case["value"] > 0 and case["baseline_value"] > 0 and case["ratio"] > 0


def test_bench_module_interface():
    from recis_compat.benchmarks import features_bench, registry
    assert registry.load("features") is features_bench
    assert callable(features_bench.run) and features_bench.command.name == "features"
    assert features_bench.DEFAULTS["batch"] == 4096 and features_bench.DESCRIPTION
