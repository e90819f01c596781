"""``recis-compat bench io --quick`` runs and prints the report structure."""
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
    assert names == {("orc 1 thread", "rows/s"), ("orc 1 thread", "MB/s"),
                     ("orc 2 threads", "rows/s"), ("orc 2 threads", "MB/s")}
    for c in report["cases"]:
        assert c["baseline"] == "pyarrow 1 thread" and c["higher_is_better"] is True
        assert c["value"] > 0 and c["baseline_value"] > 0 and c["ratio"] > 0
