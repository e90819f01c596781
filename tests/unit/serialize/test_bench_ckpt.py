"""``recis-compat bench ckpt --quick`` (benchmarks/ckpt_bench.py) runs through the bench CLI
and reports a delta save against a full save of the same table (no timing assertions)."""
import json

import pytest
import torch
from click.testing import CliRunner

from recis_compat.cli import main


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_bench_ckpt_quick(tmp_path):
    res = CliRunner().invoke(main, ["bench", "ckpt", "--quick", "--threads", "1",
                                    "--dir", str(tmp_path), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, (res.output, res.exception)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["benchmark"] == "ckpt"
    (case,) = report["cases"]
    assert case["name"] == "delta save, 1% of rows touched" and case["baseline"] == "full save"
    assert case["higher_is_better"] is False and case["target"] == 20.0
    d = case["detail"]
    assert d["rows"] == 200000 and d["touched_rows"] == 2000      # --quick sizes
    assert 0 < d["delta_bytes"] < d["full_bytes"]
    assert d["step_ms_tracked"] > 0 and d["step_ms_untracked"] > 0
    assert list(tmp_path.iterdir()) == [tmp_path / "r.json"]      # the checkpoints are removed
