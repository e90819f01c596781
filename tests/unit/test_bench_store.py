"""``bench store`` (benchmarks/store_bench.py; issue 14 item 2): a cached_ssd table against the same
table in RAM on the same batches, Zipf and uniform ids; the beyond-RAM case in a fresh process at a
small size (no timing assertions)."""
import torch

from recis_compat.benchmarks import store_bench
from recis_compat.benchmarks.common import BenchOptions


def test_zipf_and_uniform_cases_compare_the_same_training(tmp_path):
    n = torch.get_num_threads()
    try:
        cases = store_bench.run(BenchOptions(quick=True, repeat=1, extra={"dir": str(tmp_path)}))
    finally:
        torch.set_num_threads(n)
    assert [c.name for c in cases] == ["DeepFM-style steps, cached_ssd, zipf ids",
                                       "DeepFM-style steps, cached_ssd, uniform ids"]
    zipf, uniform = cases
    assert zipf.target == store_bench.TARGET_ZIPF == 0.7 and uniform.target is None
    for c in cases:
        assert c.metric == "samples/s" and c.baseline == "the same table in RAM"
        assert c.value > 0 and c.baseline_value > 0
        d = c.detail
        assert d["ids_per_step"] == d["batch"] * d["fields"]
        assert d["evictions_timed"] > 0, "the quick budget is meant to be smaller than the table"
        assert d["budget_over_table"] < 1
    # Zipf ids repeat, so fewer distinct ids than uniform draws from the same universe
    assert zipf.detail["distinct_ids"] < uniform.detail["distinct_ids"]
    # the hot set (ids drawn twice or more) is counted from the batches and priced in cache bytes
    for c in cases:
        hot = c.detail["hot_set"]
        assert 0 < hot["ids"] < c.detail["distinct_ids"]
        assert hot["bytes"] > hot["ids"] * c.detail["table_row_bytes"] // c.detail["distinct_ids"]
        assert hot["cache_bytes"] == c.detail["cache_bytes"] and hot["fits"] == (hot["bytes"] <= hot["cache_bytes"])
    assert list(tmp_path.iterdir()) == []          # row files and work directory removed


def test_sampler_is_zipf_by_rank():
    s = store_bench.IdSampler(1000, 1.05, seed=0)
    ids = s.draw(200_000)
    counts = torch.bincount(((ids - 17) // 2654435761), minlength=1000).double()
    # rank 1 is drawn about 2^1.05 times as often as rank 2, and far more than rank 100
    assert 1.8 < counts[0] / counts[1] < 2.4
    assert counts[0] > 50 * counts[99]
    u = store_bench.IdSampler(1000, None, seed=0).draw(100_000)
    assert torch.unique(u).numel() == 1000


def test_beyond_ram_case_at_a_small_size(tmp_path):
    case = store_bench._beyond_ram_case({"beyond_ram_ids": 300_000, "beyond_ram_dim": 8,
                                         "beyond_ram_budget_mb": 16}, str(tmp_path))
    d = case.detail
    assert d["restored_rows_equal"] is True and d["restored_ids"] == 300_000
    assert d["disk_bytes"] >= 300_000 * 8 * 4 * 3        # embedding + two moments in the files
    assert case.metric == "GiB" and not case.higher_is_better and case.target == 1.0
    bound_gib = (d["id_map_bytes"] + d["budget_bytes"] + 2 ** 30) / 2 ** 30
    assert abs(case.baseline_value - bound_gib) < 1e-3
