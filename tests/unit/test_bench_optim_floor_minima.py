"""``bench optim``'s floor cases also report the minima of their interleaved samples
(benchmarks/optim_bench.py): a descheduled thread on a busy 2-core machine moves medians, rarely
minima. No timing assertions."""
import torch

from recis_compat.benchmarks import optim_bench
from recis_compat.benchmarks.common import BenchOptions


def test_floor_cases_carry_the_minima_of_step_kernel_and_floor():
    n = torch.get_num_threads()
    try:
        cases = optim_bench.run(BenchOptions(repeat=1, extra={"rows": 2000, "dim": 16, "batch": 200}))
    finally:
        torch.set_num_threads(n)
    floor = [c for c in cases if c.baseline.startswith("physical floor")]
    assert len(floor) == 3      # step and kernel in RAM, step on cached_ssd
    for c in floor:
        d = c.detail
        for k in ("step_min_ms", "kernel_min_ms", "floor_min_ms"):
            assert d[k] > 0, (c.name, k)
        # a minimum is never above the median of the same samples
        assert d["floor_min_ms"] <= d["floor_ms"] and d["kernel_min_ms"] <= d["ours_kernel_ms"]
        assert d["step_min_ms"] <= d["ours_step_ms"]
