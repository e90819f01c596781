"""The demo (make demo) end to end on small generated data: it trains and learns a signal."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_trains_and_reports(tmp_path):
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(REPO / "examples/deepfm/make_data.py"), "--out", str(data),
                    "--files", "3", "--rows", "4000", "--seed", "3"], check=True)
    plot = tmp_path / "demo.png"
    out = subprocess.run([sys.executable, str(REPO / "examples/deepfm/demo.py"), "--data", str(data),
                          "--batch-size", "256", "--epochs", "2", "--plot", str(plot)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    auc = float(re.search(r"eval AUC (\d\.\d+)", out.stdout).group(1))
    assert auc > 0.6, out.stdout
    assert re.search(r"train throughput [\d,]+ samples/s", out.stdout)
    assert plot.stat().st_size > 1000
