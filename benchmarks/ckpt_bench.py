"""``recis-compat bench ckpt``: a delta checkpoint against a full checkpoint of the same table.

Workload: a model holding one ``HashTable`` of ``rows`` ids (default 10M) of width ``dim`` (8),
float32, pre-populated with ``insert``, trained by ``SparseAdamW`` (so every row also has the
two Adam moment slots: 3 x ``dim`` floats per row, plus the int64 id). Before each delta, one
optimizer step updates ``touched`` (1 %) of the rows, chosen at random (untimed; the delta
writes exactly the rows that step changed).

What is timed (median of ``--repeat`` after one warm-up, each including fsyncs and the
checksum of every file):

* full: ``checkpoint_manager.Saver.save("ckpt_<n>")``: every row's id and slots in RecIS's
  layout (safetensors + index + tensorkey.json + torch-rank JSON), model.pt, extra.pt,
  checksums.json, rename into place, the ``checkpoint`` list;
* delta: ``Saver.save_delta("delta_<n>")``: the changed rows' ids and slots
  (recis_compat/serialize/delta.py), the same framework files, rename, the ``delta_checkpoint``
  list.

``detail`` also reports the cost of change tracking on the training step: the same SparseAdamW
step with the table's change log off and on (``step_ms_untracked`` / ``step_ms_tracked``).

Design target (issue 14 item 5, docs/benchmarks.md): with 1 % of a 10M-row table touched, a
delta save is >= 20x faster than a full save.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Dict, List

import click
import torch

from recis_compat.benchmarks import common
from recis_compat.benchmarks.common import BenchOptions, Case

DESCRIPTION = ("Delta checkpoint (1% of a 10M-row table touched) vs full checkpoint of the same "
               "table, Saver.save_delta vs Saver.save")
DEFAULTS: Dict[str, object] = {"rows": 10_000_000, "dim": 8, "touched": 0.01, "dir": None}
_QUICK = {"rows": 200_000}
TARGET = 20.0


class _Model(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        from recis_compat.nn.initializers import ConstantInitializer
        from recis_compat.nn.modules.hashtable import HashTable, HashtableRegister
        HashtableRegister().unregister("bench_ckpt")      # a second run in the same process
        self.table = HashTable([dim], name="bench_ckpt", initializer=ConstantInitializer(init_val=0.0))
        self.head = torch.nn.Linear(dim, 1)


def _populate(model: _Model, rows: int, dim: int) -> torch.Tensor:
    """Insert ``rows`` distinct ids with random values; returns the ids."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randperm(rows, generator=g).to(torch.int64) * 2654435761 + 17
    impl = model.table.impl
    step = 1 << 20
    for a in range(0, rows, step):
        chunk = ids[a:a + step]
        impl.insert(chunk, torch.randn(chunk.numel(), dim, generator=g))
    return ids


def _step(sparse, impl, ids: torch.Tensor, touched: int, dim: int, g: torch.Generator) -> float:
    """One SparseAdamW step over ``touched`` random rows; returns its seconds (gradient hand-over
    untimed, as the lookup's backward does it)."""
    pick = torch.randperm(ids.numel(), generator=g)[:touched]
    rows = impl.find_rows(ids.index_select(0, pick))
    sparse.zero_grad()
    impl.accept_grad(rows, torch.randn(rows.numel(), dim, generator=g), unique=True)
    t0 = time.perf_counter()
    sparse.step()
    return time.perf_counter() - t0


def run(opts: BenchOptions) -> List[Case]:
    from recis_compat.framework.checkpoint_manager import Saver
    from recis_compat.nn.modules.hashtable import filter_out_sparse_param
    from recis_compat.optim import SparseAdamW

    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in opts.extra.items() if v is not None})
    if opts.quick:
        cfg.update(_QUICK)
    rows, dim, frac = int(cfg["rows"]), int(cfg["dim"]), float(cfg["touched"])
    if not 0.0 < frac <= 1.0:
        raise click.BadParameter(f"--touched must be a fraction in (0, 1], got {frac}")
    if rows < 1 or dim < 1:
        raise click.BadParameter(f"--rows and --dim must be >= 1, got {rows}, {dim}")
    touched = max(1, int(rows * frac))
    opts.extra.update(rows=rows, dim=dim, touched=frac)
    repeat = max(1, opts.repeat)
    work = tempfile.mkdtemp(prefix="bench_ckpt_", dir=cfg["dir"])
    try:
        model = _Model(dim)
        sparse = SparseAdamW(filter_out_sparse_param(model), lr=1e-3)
        ids = _populate(model, rows, dim)
        impl = model.table.impl
        g = torch.Generator().manual_seed(1)
        untracked = [_step(sparse, impl, ids, touched, dim, g) for _ in range(repeat + 1)][1:]
        saver = Saver(model, sparse, output_dir=work, max_keep=2, concurrency=max(1, torch.get_num_threads()))
        saver.enable_change_tracking()
        step = 0
        full_s, delta_s, tracked, delta_bytes = [], [], [], 0
        for k in range(repeat + 1):
            step += 1
            t0 = time.perf_counter()
            saver.save(f"ckpt_{step}")
            if k:
                full_s.append(time.perf_counter() - t0)
            step += 1
            dt = _step(sparse, impl, ids, touched, dim, g)
            if k:
                tracked.append(dt)
            t0 = time.perf_counter()
            path = saver.save_delta(f"delta_{step}", step)
            if k:
                delta_s.append(time.perf_counter() - t0)
                delta_bytes = sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
        full_bytes = sum(os.path.getsize(os.path.join(work, f"ckpt_{step - 1}", n))
                         for n in os.listdir(os.path.join(work, f"ckpt_{step - 1}")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    t_full, t_delta = med(full_s), med(delta_s)
    detail = {"rows": rows, "dim": dim, "touched_rows": touched, "slots": ["embedding", "exp_avg", "exp_avg_sq"],
              "full_s": round(t_full, 4), "delta_s": round(t_delta, 4),
              "full_bytes": full_bytes, "delta_bytes": delta_bytes,
              "step_ms_untracked": round(med(untracked) * 1e3, 3), "step_ms_tracked": round(med(tracked) * 1e3, 3),
              "threads": torch.get_num_threads(),
              "timed_ours": "Saver.save_delta: changed rows (ids + 3 slots) + model.pt/extra.pt + checksums + rename",
              "timed_baseline": "Saver.save: every row in RecIS's layout + model.pt/extra.pt + checksums + rename"}
    return [Case(f"delta save, {frac:.0%} of rows touched", "s", round(t_delta, 5), "full save",
                 round(t_full, 5), higher_is_better=False, detail=detail, target=TARGET)]


command = common.make_command(
    "ckpt", run, help=DESCRIPTION,
    extra_options=[
        click.option("--rows", type=int, default=DEFAULTS["rows"], show_default=True,
                     help="Rows in the table (all pre-populated)."),
        click.option("--dim", type=int, default=DEFAULTS["dim"], show_default=True, help="Embedding width."),
        click.option("--touched", type=float, default=DEFAULTS["touched"], show_default=True,
                     help="Fraction of the rows one optimizer step updates before each delta."),
        click.option("--dir", default=None, help="Where the checkpoints are written (default: the temp dir)."),
    ])
