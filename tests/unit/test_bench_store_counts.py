"""``bench store`` (benchmarks/store_bench.py) reports per cached_ssd step what moved: misses,
the misses that were new ids, evictions, write-backs, and the read/write calls and bytes of the
process (/proc/self/io). The module is loaded from this checkout's benchmarks/ directory."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from recis_compat.benchmarks.common import BenchOptions

REPO = Path(__file__).resolve().parents[2]


def _store_bench():
    spec = importlib.util.spec_from_file_location("store_bench_here", REPO / "benchmarks" / "store_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io")
def test_per_step_counts_of_rows_and_file_calls(tmp_path):
    sb = _store_bench()
    n = torch.get_num_threads()
    try:
        zipf, uniform = sb.run(BenchOptions(quick=True, repeat=1, extra={"dir": str(tmp_path)}))
    finally:
        torch.set_num_threads(n)
    for c in (zipf, uniform):
        d, p = c.detail, c.detail["per_step"]
        steps = d["timed_steps"]
        assert p["misses"] == round(d["misses_timed"] / steps, 1) > 0
        assert 0 <= p["new_id_misses"] <= p["misses"]
        assert p["evictions"] == round(d["evictions_timed"] / steps, 1)
        assert p["writebacks"] <= p["evictions"]
        # every slot of a missed row comes in one read (a row record): at most one read call per
        # missed row that is not a new id (new ids are filled or read as runs)
        assert 0 < p["read_calls"] <= p["misses"] - p["new_id_misses"] + 16
        assert p["read_bytes"] > 0
    assert uniform.detail["per_step"]["misses"] > zipf.detail["per_step"]["misses"]


def test_io_counts_are_zeros_without_proc_self_io(monkeypatch):
    """Where /proc/self/io cannot be read, the counts are zeros (the bench still runs)."""
    sb = _store_bench()
    real_open = open

    def no_proc_io(path, *a, **k):
        if str(path) == "/proc/self/io":
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", no_proc_io)
    assert sb._io() == {"syscr": 0, "syscw": 0, "rchar": 0, "wchar": 0}
    monkeypatch.undo()
    if os.path.exists("/proc/self/io"):
        assert sb._io()["rchar"] > 0
