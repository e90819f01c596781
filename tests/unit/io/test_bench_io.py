"""``recis-compat bench io --quick`` runs and prints the report structure (ORC and Parquet
cases)."""
import json
import pathlib
import subprocess
import sys


def test_bench_io_quick_json():
    exe = pathlib.Path(sys.executable).with_name("recis-compat")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "recis_compat.cli"]
    out = subprocess.run(cmd + ["bench", "io", "--quick"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    report = json.loads(out)
    assert report["benchmark"] == "io"
    names = {(c["name"], c["metric"]) for c in report["cases"]}
    assert names == {(f"{fmt} {n}", m) for fmt in ("orc", "parquet")
                     for n in ("1 thread", "2 threads") for m in ("rows/s", "MB/s")}
    for c in report["cases"]:
        base = "pyarrow parquet 1 thread" if c["name"].startswith("parquet") else "pyarrow 1 thread"
        assert c["baseline"] == base and c["higher_is_better"] is True
        assert c["value"] > 0 and c["baseline_value"] > 0 and c["ratio"] > 0
        if c["metric"] == "rows/s" and c["name"].startswith("parquet"):
            assert c["detail"]["rows"] == 2 * 5000  # the quick synthetic set, every row read
            assert c["detail"]["pyarrow_threaded_seconds_median"] > 0


def _io_bench_module():
    """This repository's benchmarks/io_bench.py (the installed ``recis_compat.benchmarks`` may
    point at another checkout)."""
    import importlib.util
    path = pathlib.Path(__file__).resolve().parents[3] / "benchmarks" / "io_bench.py"
    spec = importlib.util.spec_from_file_location("io_bench_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timed_cases_rounds_and_cpu_seconds(tmp_path):
    """Outside --quick every runner is timed at least MIN_ROUNDS times (alternating, after one
    warm-up); each case reports the process CPU seconds of ours and of the baseline."""
    from recis_compat.benchmarks.common import BenchOptions
    bench = _io_bench_module()
    data = tmp_path / "part-0.orc"
    data.write_bytes(b"x" * 1000)
    calls = []

    def base():
        calls.append("base")
        return 10

    def ours():
        calls.append("ours")
        sum(range(50000))  # some CPU time
        return 10

    runners = {"base": base, "ours 2 threads": ours}
    cases = bench._timed_cases(str(tmp_path), [str(data)], runners, "base",
                               BenchOptions(repeat=3))
    assert calls == ["base", "ours"] * (1 + bench.MIN_ROUNDS)
    rows = next(c for c in cases if c.metric == "rows/s")
    assert rows.name == "ours 2 threads" and rows.target == bench.TARGET_RATIO
    assert rows.detail["cpu_seconds_median"] > 0
    assert rows.detail["baseline_cpu_seconds_median"] >= 0
    assert len(rows.detail["seconds_all"]) == bench.MIN_ROUNDS
    calls.clear()
    bench._timed_cases(str(tmp_path), [str(data)], runners, "base",
                       BenchOptions(quick=True, repeat=2))
    assert calls == ["base", "ours"] * 3  # --quick: --repeat rounds as given
