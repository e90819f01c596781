"""``--plot`` of every bench (benchmarks/common.py): ratios on a log axis from a 1.0 line, each
case's target marked, reports written before ``Case.target`` still plotted with their targets."""
import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from click.testing import CliRunner

from recis_compat.benchmarks import common
from recis_compat.benchmarks.common import Case, case_target, plot_ratios, ratio_figure


def _report(cases, name="demo"):
    opts = common.BenchOptions(quick=True, repeat=1)
    return common.report(name, cases, opts)


CASES = [
    Case("fast", "samples/s", 900.0, "slow thing", 10.0, detail={"target_ratio": 3.0}),            # 90x
    Case("near", "ms/step", 1.1, "torchrec", 1.0, higher_is_better=False,
         detail={"target_time_ratio_max": 1.3}),                                                     # 0.909x
    Case("plain", "rows/s", 105.0, "pyarrow", 100.0),                                                # 1.05x, no target
    Case("explicit", "rows/s", 50.0, "dict", 100.0, target=0.9),                                     # 0.5x
    Case("broken", "rows/s", 0.0, "dict", 100.0),                                                     # no ratio
]


def test_case_target_sources():
    assert case_target({"detail": {"target_ratio": 3.0}}) == 3.0
    assert case_target({"detail": {"target_ratio_min": 0.9}}) == 0.9
    assert case_target({"detail": {"target_time_ratio_max": 1.25}}) == pytest.approx(0.8)
    assert case_target({"baseline_value": 5.0, "detail": {"target_value": 25.0}}) == 5.0
    assert case_target({"baseline_value": 2.0, "higher_is_better": False, "detail": {"target_value": 1.0}}) == 2.0
    assert case_target({"target": 1.5, "detail": {"target_ratio": 3.0}}) == 1.5
    assert case_target({"detail": {"target_ratio": None}}) is None and case_target({}) is None


def test_report_json_has_target_only_when_set():
    rep = _report(CASES)
    assert "target" not in rep["cases"][0] and rep["cases"][3]["target"] == 0.9
    assert set(rep["cases"][0]) == {"name", "metric", "value", "baseline", "baseline_value", "ratio",
                                    "higher_is_better", "detail"}


def test_ratio_figure_log_axis_one_line_and_targets():
    fig = ratio_figure(_report(CASES))
    try:
        (ax,) = fig.axes
        assert ax.get_xscale() == "log"
        lo, hi = ax.get_xlim()
        assert lo < 0.5 and hi > 90                       # both the 0.5x and the 90x case are in view
        ones = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [1.0, 1.0]]
        assert len(ones) == 1                             # the 1.0 (baseline) line
        bars = ax.patches
        assert len(bars) == len(CASES)
        # bars start at 1.0 and end at the ratio
        ends = [b.get_x() + b.get_width() for b in bars]
        assert [b.get_x() for b in bars] == [1.0] * len(CASES)
        assert ends[:4] == pytest.approx([90.0, 1.0 / 1.1, 1.05, 0.5], rel=1e-3)
        (targets,) = ax.collections
        pts = np.asarray(targets.get_offsets())
        assert pts[:, 0].tolist() == pytest.approx([3.0, 1 / 1.3, 0.9])       # x = target ratio
        assert pts[:, 1].tolist() == [0, 1, 3]                                 # rows of those cases
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels[0] == "demo: fast vs slow thing"
        notes = [t.get_text() for t in ax.texts]
        assert notes == ["90x (target 3)", "0.909x (target 0.769)", "1.05x", "0.5x (target 0.9)", "n/a"]
        colors = [b.get_facecolor()[:3] for b in bars]
        green, red = (0.173, 0.627, 0.173), (0.839, 0.153, 0.157)
        assert [c == pytest.approx(green, abs=0.01) for c in colors] == [True, True, True, False, False]
        assert colors[3] == pytest.approx(red, abs=0.01)
    finally:
        plt.close(fig)


def test_plot_ratios_writes_png_for_old_and_all_reports(tmp_path):
    old = json.loads(json.dumps(_report(CASES[:2])))       # as read back from a --json file
    for c in old["cases"]:
        c.pop("target", None)
    path = tmp_path / "one.png"
    plot_ratios(old, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    both = {"benchmark": "all", "reports": [old, _report(CASES[2:], "other")]}
    fig = ratio_figure(both)
    try:
        assert len(fig.axes[0].patches) == len(CASES)
        assert len(fig.axes[0].collections[0].get_offsets()) == 3
    finally:
        plt.close(fig)


def test_bench_command_plot_option(tmp_path):
    cmd = common.make_command("demo", lambda opts: CASES[:3], help="demo")
    png = tmp_path / "demo.png"
    res = CliRunner().invoke(cmd, ["--quick", "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:4] == b"\x89PNG"
