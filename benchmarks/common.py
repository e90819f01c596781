"""Shared benchmark machinery: options, timing, cases and the JSON report (docs/benchmarks.md).

Every benchmark measures ours against a baseline *in the same run* and reports the ratio
``ours / baseline`` in the metric's own direction (``higher_is_better`` says which way is good).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch


@dataclass
class BenchOptions:
    """Flags common to every ``recis-compat bench`` command."""

    quick: bool = False          # a few seconds: proves the command runs (used by tests)
    repeat: int = 5              # timed repetitions; the median is reported
    threads: Optional[int] = None  # torch intra-op threads (None: leave as is)
    extra: Dict[str, object] = field(default_factory=dict)  # command-specific options

    def apply_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(int(self.threads))


@dataclass
class Case:
    """One measured comparison."""

    name: str
    metric: str
    value: float
    baseline: str
    baseline_value: float
    higher_is_better: bool = True
    ratio: float = 0.0
    detail: Dict[str, object] = field(default_factory=dict)
    # the ratio this case should reach (``ratio >= target`` meets it). None: the report has no
    # "target" key (as before this field existed) and :func:`case_target` reads ``detail``
    target: Optional[float] = None

    def __post_init__(self):
        if self.baseline_value and self.value:
            self.ratio = (self.value / self.baseline_value if self.higher_is_better
                          else self.baseline_value / self.value)
            self.ratio = round(self.ratio, 4)


def case_target(case: Dict[str, object]) -> Optional[float]:
    """The target ratio of a case as a JSON dict (also reports written before ``Case.target``).

    In order: ``target``; ``detail.target_ratio`` / ``detail.target_ratio_min`` (minimum ratio);
    ``detail.target_time_ratio_max`` (ours/baseline time at most x, so ratio >= 1/x);
    ``detail.target_value`` (the metric's own unit: converted through ``baseline_value``).
    None when the case states no target.
    """
    if case.get("target"):
        return float(case["target"])
    detail = case.get("detail") or {}
    for key in ("target_ratio", "target_ratio_min"):
        if detail.get(key):
            return float(detail[key])
    if detail.get("target_time_ratio_max"):
        return 1.0 / float(detail["target_time_ratio_max"])
    value, base = detail.get("target_value"), case.get("baseline_value")
    if value and base:
        return float(value) / float(base) if case.get("higher_is_better", True) else float(base) / float(value)
    return None


def machine_info() -> Dict[str, object]:
    """CPU model, thread counts and library versions for the report."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: Dict[str, object] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
    }
    for mod in ("fbgemm_gpu", "torchrec", "pyarrow"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - report what is importable
            info[mod] = None
    return info


def page_faults() -> Dict[str, int]:
    """This process's page faults so far, ``{"minor", "major"}`` (minor: pages first touched --
    new memory, temporaries served by fresh mappings; major: pages read from files): counts that
    do not depend on the CPU share."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"minor": int(r.ru_minflt), "major": int(r.ru_majflt)}


def time_fn(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _case_json(case: Case) -> Dict[str, object]:
    """``asdict(case)`` without ``target`` when it is None (the report format before that field)."""
    out = asdict(case)
    if out["target"] is None:
        del out["target"]
    return out


def report(name: str, cases: List[Case], opts: BenchOptions) -> Dict[str, object]:
    """The JSON object every bench command prints."""
    return {
        "benchmark": name,
        "machine": machine_info(),
        "options": {"quick": opts.quick, "repeat": opts.repeat, "threads": opts.threads,
                    **{k: v for k, v in opts.extra.items() if isinstance(v, (int, float, str, bool, type(None)))}},
        "cases": [_case_json(c) for c in cases],
    }


def write_outputs(result: Dict[str, object], json_path: Optional[str], plot_path: Optional[str]) -> str:
    """Serialise ``result``; optionally write it to ``json_path`` and a ratio chart to ``plot_path``."""
    text = json.dumps(result, indent=2, default=str)
    if json_path:
        tmp = json_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, json_path)
    if plot_path:
        plot_ratios(result, plot_path)
    return text


def ratio_figure(result: Dict[str, object]):
    """The ratio chart of a report (one bench or ``bench all``) as a matplotlib Figure.

    One horizontal bar per case from the 1.0 line (the baseline) to its ratio on a log axis, so
    0.9x and 1.1x are as visible as 90x; each case's target (:func:`case_target`) is a black
    diamond. Green: the target (or 1.0 without one) is met; red: not. A case with no ratio
    (a zero value) is labelled "n/a".
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    reports = result["reports"] if "reports" in result else [result]
    labels, ratios, targets = [], [], []
    for rep in reports:
        for c in rep["cases"]:
            labels.append(f"{rep['benchmark']}: {c['name']} vs {c['baseline']}")
            ratios.append(float(c.get("ratio") or 0.0))
            targets.append(case_target(c))
    fig, ax = plt.subplots(figsize=(11, 0.45 * max(3, len(labels)) + 1.2))
    ys = list(range(len(labels)))
    shown = [r for r in ratios if r > 0] + [t for t in targets if t] + [1.0]
    lo, hi = min(shown) / 1.6, max(shown) * 1.6
    colors = ["tab:green" if r >= (t or 1.0) else "tab:red" for r, t in zip(ratios, targets)]
    widths = [(r - 1.0) if r > 0 else 0.0 for r in ratios]
    ax.barh(ys, widths, left=1.0, color=colors, height=0.6)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.axvline(1.0, color="black", linewidth=1.2, label="1.0 = baseline")
    tys = [y for y, t in zip(ys, targets) if t]
    if tys:
        ax.scatter([t for t in targets if t], tys, marker="D", s=36, color="black", zorder=3, label="target")
    for y, r, t in zip(ys, ratios, targets):     # a column right of the plot: "ratio (target t)"
        note = (f"{r:.3g}x" if r > 0 else "n/a") + (f" (target {t:.3g})" if t else "")
        ax.text(1.01, y, note, transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=7)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (ours / baseline, >1 is better; log scale)")
    ax.set_title("recis-compat benchmarks")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_ratios(result: Dict[str, object], path: str) -> None:
    """Write :func:`ratio_figure` of ``result`` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = ratio_figure(result)
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def common_options(f):
    """Attach the flags shared by every bench command (docs/benchmarks.md)."""
    import click
    f = click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
                     help="Write a PNG chart of the ratios.")(f)
    f = click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
                     help="Also write the JSON report to this file.")(f)
    f = click.option("--threads", type=int, default=None, help="torch intra-op threads.")(f)
    f = click.option("--repeat", type=int, default=5, show_default=True,
                     help="Timed repetitions (median reported).")(f)
    f = click.option("--quick", is_flag=True, help="A few seconds; proves the command runs.")(f)
    return f


def make_command(name: str, run: Callable[[BenchOptions], List[Case]], help: str,
                 extra_options: Optional[list] = None):
    """Build the click command ``recis-compat bench <name>`` around ``run(opts)``.

    ``extra_options`` are click decorators; their values land in ``opts.extra``.
    """
    import click

    def callback(quick, repeat, threads, json_path, plot_path, **extra):
        opts = BenchOptions(quick=quick, repeat=1 if quick else repeat, threads=threads, extra=extra)
        opts.apply_threads()
        result = report(name, run(opts), opts)
        click.echo(write_outputs(result, json_path, plot_path))

    cmd = common_options(callback)
    for opt in reversed(extra_options or []):
        cmd = opt(cmd)
    return click.command(name=name, help=help)(cmd)
