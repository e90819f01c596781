"""``recis-compat bench io``: OrcDataset and ParquetDataset throughput against plain pyarrow, in
one run.

Cases (rows/s and MB/s of on-disk bytes, warm page cache):
  * ``orc 1 thread`` / ``orc 2 threads``: ``OrcDataset(batch_size=1000, read_threads_num=N,
    prefetch=1)`` with every column selected (``label`` fixedlen ``[0.0]``, the rest varlen),
    iterated to ``(True, None)``: decode, validation, float32 cast, packing into batches,
    RaggedTensor construction.
  * baseline ``pyarrow 1 thread``: for each file ``ORCFile.read()``, then per column the
    flattened values and offsets as torch tensors (floats cast to float32, the same output
    dtype as ours), sequentially.
  * ``parquet 1 thread`` / ``parquet 2 threads``: ``ParquetDataset`` likewise, on Criteo's
    natural Parquet layout (every column a scalar: ``label`` fixedlen ``[0.0]`` -> float32
    ``[B, 1]``, the rest varlen -> one-element ragged rows, nulls as empty rows).
  * baseline ``pyarrow parquet 1 thread``: for each file ``ParquetFile.read(columns,
    use_threads=False)``, then per column the same tensors: ``label`` as float32 ``[N, 1]``, the
    others as values (nulls dropped, floats cast to float32) and int32 offsets from the
    validity bitmap, sequentially. ``detail.pyarrow_threaded_seconds_median`` also times that
    baseline with pyarrow's own thread pool (``use_threads=True``).
Ours and the baseline alternate within each repetition so machine noise hits both alike; the
median of the repetitions is reported: ``--repeat`` of them, at least :data:`MIN_ROUNDS` outside
``--quick`` (a pass takes ~0.1 s, and on a machine shared with other jobs single passes move by
+-30 %, so five medians of five passes disagreed by up to 0.5 in ratio). Each case's ``detail`` also has the process CPU
seconds per pass (every thread: ``cpu_seconds_median``, ``baseline_cpu_seconds_median``), so a
ratio won by running decode in parallel with conversion can be told from one won by doing less
work; on a machine shared with other jobs the wall-clock ratios move by +-30 % between runs
while the CPU ones move by a few %.

Data: ``--data DIR`` (every ``*.orc`` below it), else ``<repo>/../shared/data/recis-deepfm``
when present, else a synthetic Criteo-like set (label, 13 float, 26 int64 columns) written to
a temporary directory. Parquet: ``--parquet-data DIR`` (every ``*.parquet`` below it), else the
same synthetic set written as scalar Parquet columns (20 % nulls in the feature columns).
"""
from __future__ import annotations

import os
import pathlib
import statistics
import tempfile
import time
import warnings
from typing import Dict, List

import click
import numpy as np
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import torch

from recis_compat.benchmarks.common import BenchOptions, Case, make_command

DESCRIPTION = ("OrcDataset and ParquetDataset rows/s and MB/s with 1 and 2 reader threads vs "
               "pyarrow read + to-torch")
DEFAULTS: Dict[str, object] = {"data": None, "parquet_data": None}
BATCH_SIZE = 1000
MIN_ROUNDS = 15
"""Fewest timed repetitions outside ``--quick`` (module docstring)."""
TARGET_RATIO = 1.0
"""Target of the ``2 threads`` cases: at least the baseline's rows/s (docs/benchmarks.md)."""

_REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = _REPO.parent / "shared" / "data" / "recis-deepfm"


def write_synthetic(directory: str, files: int, rows: int, seed: int = 0) -> List[str]:
    """Criteo-like ORC files: ``label`` list<double> len 1, ``i1..i13`` list<double> len 0/1,
    ``c1..c26`` list<int64> len 0/1."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(files):
        cols = {"label": pa.ListArray.from_arrays(np.arange(rows + 1, dtype=np.int32),
                                                  rng.integers(0, 2, rows).astype(np.float64))}
        for prefix, count, make in (("i", 13, lambda n: rng.random(n) * 100),
                                    ("c", 26, lambda n: rng.integers(0, 1 << 40, n))):
            for j in range(1, count + 1):
                lengths = (rng.random(rows) > 0.2).astype(np.int32)
                offsets = np.zeros(rows + 1, dtype=np.int32)
                np.cumsum(lengths, out=offsets[1:])
                cols[f"{prefix}{j}"] = pa.ListArray.from_arrays(offsets, make(int(offsets[-1])))
        path = os.path.join(directory, f"part-{k}.orc")
        orc.write_table(pa.table(cols), path)
        paths.append(path)
    return paths


def write_synthetic_parquet(directory: str, files: int, rows: int, seed: int = 0) -> List[str]:
    """Criteo's natural Parquet layout: ``label`` double, ``i1..i13`` double and ``c1..c26``
    int64 scalar columns, 20 % nulls in the feature columns (one row group per file)."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(files):
        cols = {"label": pa.array(rng.integers(0, 2, rows).astype(np.float64))}
        for prefix, count, make in (("i", 13, lambda n: rng.random(n) * 100),
                                    ("c", 26, lambda n: rng.integers(0, 1 << 40, n))):
            for j in range(1, count + 1):
                cols[f"{prefix}{j}"] = pa.array(make(rows), mask=rng.random(rows) < 0.2)
        path = os.path.join(directory, f"part-{k}.parquet")
        pq.write_table(pa.table(cols), path)
        paths.append(path)
    return paths


def _files(data: str) -> List[str]:
    return sorted(str(p) for p in pathlib.Path(data).rglob("*.orc"))


def baseline_pass(files: List[str]) -> int:
    """Plain pyarrow: read each file, flatten every list column into torch tensors."""
    rows = 0
    for path in files:
        table = orc.ORCFile(path).read()
        with warnings.catch_warnings():  # read-only Arrow buffers: torch warns once
            warnings.simplefilter("ignore", UserWarning)
            rows += _to_torch(table)
    return rows


def _to_torch(table: pa.Table) -> int:
    """Every list column of ``table`` as (values, offsets) tensors; returns the row count."""
    for name in table.column_names:
        arr = table.column(name).combine_chunks()
        values = torch.from_numpy(arr.flatten().to_numpy(zero_copy_only=False))
        if values.is_floating_point():
            values = values.to(torch.float32)
        torch.from_numpy(arr.offsets.to_numpy(zero_copy_only=False))
    return table.num_rows


def parquet_baseline_pass(files: List[str], columns: List[str], use_threads: bool = False) -> int:
    """Plain pyarrow: read each Parquet file, make every column the tensors ours makes."""
    rows = 0
    for path in files:
        table = pq.ParquetFile(path).read(columns=columns, use_threads=use_threads)
        with warnings.catch_warnings():  # read-only Arrow buffers: torch warns once
            warnings.simplefilter("ignore", UserWarning)
            rows += _scalars_to_torch(table)
    return rows


def _scalars_to_torch(table: pa.Table) -> int:
    """``label`` as float32 ``[N, 1]``; every other scalar column as (values without nulls,
    int32 offsets of its one-element rows); returns the row count."""
    n = table.num_rows
    for name in table.column_names:
        arr = table.column(name).combine_chunks()
        if name == "label":
            torch.from_numpy(arr.to_numpy(zero_copy_only=False)).to(torch.float32).reshape(n, 1)
            continue
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(valid, out=offsets[1:])
        values = torch.from_numpy(arr.drop_null().to_numpy(zero_copy_only=False))
        if values.is_floating_point():
            values = values.to(torch.float32)
        torch.from_numpy(offsets)
    return n


def ours_pass(data: str, columns: List[str], threads: int, parquet: bool = False) -> int:
    """Iterate an OrcDataset (ParquetDataset with ``parquet``) over ``data`` to the end;
    returns the rows seen."""
    from recis_compat.io.orc_dataset import OrcDataset
    from recis_compat.io.parquet_dataset import ParquetDataset
    cls = ParquetDataset if parquet else OrcDataset
    ds = cls(BATCH_SIZE, read_threads_num=threads, prefetch=1, transform_fn=lambda b: b[0])
    ds.add_path(data)
    for name in columns:
        if name == "label":
            ds.fixedlen_feature(name, [0.0])
        else:
            ds.varlen_feature(name)
    rows = 0
    it = iter(ds)
    while True:
        is_end, batch = next(it)
        if is_end:
            return rows
        rows += batch["label"].shape[0] if "label" in batch else next(iter(batch.values())).shape[0]


def _measure(data: str, opts: BenchOptions) -> List[Case]:
    files = _files(data)
    if not files:
        raise click.UsageError(f"no .orc files under {data}")
    columns = orc.ORCFile(files[0]).schema.names
    runners = {"pyarrow 1 thread": lambda: baseline_pass(files),
               "orc 1 thread": lambda: ours_pass(data, columns, 1),
               "orc 2 threads": lambda: ours_pass(data, columns, 2)}
    return _timed_cases(data, files, runners, "pyarrow 1 thread", opts)


def _measure_parquet(data: str, opts: BenchOptions) -> List[Case]:
    files = sorted(str(p) for p in pathlib.Path(data).rglob("*.parquet"))
    if not files:
        raise click.UsageError(f"no .parquet files under {data}")
    columns = pq.ParquetFile(files[0]).schema_arrow.names
    base = "pyarrow parquet 1 thread"
    runners = {base: lambda: parquet_baseline_pass(files, columns),
               "parquet 1 thread": lambda: ours_pass(data, columns, 1, parquet=True),
               "parquet 2 threads": lambda: ours_pass(data, columns, 2, parquet=True)}
    cases = _timed_cases(data, files, runners, base, opts)
    threaded = [time_pass(lambda: parquet_baseline_pass(files, columns, use_threads=True))
                for _ in range(max(1, opts.repeat))]
    for c in cases:
        if c.metric == "rows/s":
            c.detail["pyarrow_threaded_seconds_median"] = round(statistics.median(threaded), 5)
    return cases


def time_pass(fn) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timed_cases(data: str, files: List[str], runners: dict, base: str,
                 opts: BenchOptions) -> List[Case]:
    """Time every runner (alternating, ``opts.repeat`` times, after one warm-up each) and
    report each non-baseline runner against ``base``."""
    nbytes = sum(os.path.getsize(f) for f in files)
    times: Dict[str, List[float]] = {k: [] for k in runners}
    cpu: Dict[str, List[float]] = {k: [] for k in runners}
    rows: Dict[str, int] = {}
    for fn in runners.values():  # warm-up: page cache, extension load, allocator
        fn()
    rounds = max(1, opts.repeat) if opts.quick else max(MIN_ROUNDS, opts.repeat)
    for _ in range(rounds):
        for name, fn in runners.items():
            c0, t0 = time.process_time(), time.perf_counter()
            rows[name] = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: round(statistics.median(v), 5) for k, v in cpu.items()}
    if len(set(rows.values())) != 1:
        raise RuntimeError(f"row counts differ between readers: {rows}")
    base_rows, base_mb = rows[base] / med[base], nbytes / 1e6 / med[base]
    cases = []
    for name in (k for k in runners if k != base):
        detail = {"rows": rows[name], "files": len(files), "bytes": nbytes, "data": data,
                  "batch_size": BATCH_SIZE, "seconds_median": round(med[name], 5),
                  "baseline_seconds_median": round(med[base], 5),
                  "seconds_all": [round(t, 5) for t in times[name]],
                  "cpu_seconds_median": cpu_med[name],
                  "baseline_cpu_seconds_median": cpu_med[base]}
        target = TARGET_RATIO if name.endswith("2 threads") else None
        cases.append(Case(name=name, metric="rows/s", value=round(rows[name] / med[name], 1),
                          baseline=base, baseline_value=round(base_rows, 1), detail=detail,
                          target=target))
        cases.append(Case(name=name, metric="MB/s", value=round(nbytes / 1e6 / med[name], 2),
                          baseline=base, baseline_value=round(base_mb, 2),
                          detail={"bytes": nbytes}, target=target))
    return cases


def run(opts: BenchOptions) -> List[Case]:
    """Measure on ``--data`` / the shared deepfm data / synthetic data, then Parquet on
    ``--parquet-data`` / synthetic data (module docstring)."""
    return _run_orc(opts) + _run_parquet(opts)


def _synthetic_size(opts: BenchOptions) -> dict:
    return dict(files=2, rows=5000) if opts.quick else dict(files=8, rows=10000)


def _run_orc(opts: BenchOptions) -> List[Case]:
    data = opts.extra.get("data")
    if data:
        return _measure(str(data), opts)
    if SHARED_DATA.is_dir() and any(SHARED_DATA.glob("*.orc")):
        if not opts.quick:
            return _measure(str(SHARED_DATA), opts)
    with tempfile.TemporaryDirectory(prefix="recis-io-bench-") as tmp:
        write_synthetic(tmp, **_synthetic_size(opts))
        return _measure(tmp, opts)


def _run_parquet(opts: BenchOptions) -> List[Case]:
    data = opts.extra.get("parquet_data")
    if data:
        return _measure_parquet(str(data), opts)
    with tempfile.TemporaryDirectory(prefix="recis-io-bench-parquet-") as tmp:
        write_synthetic_parquet(tmp, **_synthetic_size(opts))
        return _measure_parquet(tmp, opts)


command = make_command(
    "io", run, DESCRIPTION,
    extra_options=[click.option("--data", type=click.Path(exists=True, file_okay=False),
                                default=None,
                                help="Directory of ORC files (default: shared deepfm data, "
                                     "else synthetic)."),
                   click.option("--parquet-data", "parquet_data",
                                type=click.Path(exists=True, file_okay=False), default=None,
                                help="Directory of Parquet files (default: synthetic, Criteo's "
                                     "scalar layout).")])
