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
