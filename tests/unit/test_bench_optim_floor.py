"""``bench optim``'s physical-floor cases (benchmarks/optim_bench.py; issue 14 item 4): SparseAdamW's
step and its kernel against ``sparse_rows_rotate_`` on the same rows and slots (no timing
assertions)."""
import torch

from recis_compat.benchmarks import optim_bench
from recis_compat.benchmarks.common import BenchOptions

FLOOR = "physical floor: sparse_rows_rotate_ (same rows and slots, no arithmetic)"


def test_floor_cases_are_reported_with_their_target():
    n = torch.get_num_threads()
    try:
        cases = optim_bench.run(BenchOptions(repeat=1, extra={"rows": 3000, "dim": 8, "batch": 300}))
    finally:
        torch.set_num_threads(n)
    floor = [c for c in cases if c.baseline == FLOOR]
    assert [c.name for c in floor] == ["SparseAdamW.step", "sparse_adam_rows_ kernel"]
    for c in floor:
        assert c.metric == "rows/s" and c.higher_is_better and c.target == optim_bench.FLOOR_TARGET == 0.8
        assert c.value > 0 and c.baseline_value > 0
        assert abs(c.ratio - c.value / c.baseline_value) < 1e-3 * c.ratio + 1e-4
        assert c.detail["floor_ms"] > 0 and c.detail["store"] == "in-RAM"
        assert "sparse_rows_rotate_" in c.detail["timed_baseline"]
    # the step case and the kernel case share the floor measurement; the kernel alone is timed
    assert floor[0].baseline_value == floor[1].baseline_value
    # the same floor on a cached_ssd table (rows and slots in mapped files)
    ssd = [c for c in cases if c.baseline == FLOOR + ", cached_ssd table"]
    assert [c.name for c in ssd] == ["SparseAdamW.step, cached_ssd table"]
    assert ssd[0].target == 0.8 and ssd[0].value > 0 and ssd[0].baseline_value > 0
    assert ssd[0].detail["store"].startswith("cached_ssd") and ssd[0].detail["floor_ms"] > 0
    # the dense AdamW comparison stays as context, without the former 10x target
    dense = [c for c in cases if c.baseline.startswith("torch.optim.AdamW(")]
    assert dense and all("target_ratio" not in c.detail and c.target is None for c in dense)
