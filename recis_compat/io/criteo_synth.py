"""Synthetic Criteo: rows shaped like Criteo's click logs, at any row count, for tests and benchmarks
(the command is ``recis-compat criteo-synth``, ``recis_compat/tools/criteo_synth.py``).

Every row: a label, 13 integer fields ``I1..I13`` and 26 categorical fields ``C1..C26``.

* Categorical ids of field ``i`` lie in ``[0, table_size_array[i])`` (default
  :data:`DLRM_TABLE_SIZES`, the ``table_size_array`` default of OneFlow's DLRM,
  ``RecommenderSystems/dlrm``). Their popularity is Zipf-like: the rank ``r`` of an id is drawn
  from a bounded power law ``P(r) ~ (r + 1) ** -s`` (``s`` 1.05-1.25 by field, flatter for
  tables of <= 1000 ids), and ranks map to ids by a per-field rotation ``(r + shift) % size``
  so the hot ids are not 0, 1, 2 ...
* Integers are heavy-tailed counts (``max(floor(exp(N(mu, sigma))) - 1, 0)``); ``I2`` is -1 in 5 % of rows
  as in Criteo.
* Missing values at roughly the rates of Criteo's Kaggle release (:data:`DENSE_MISSING`,
  :data:`SPARSE_MISSING`): e.g. ``I12`` 77 %, ``C22`` 76 %, ``C19`` 44 %, ``I2`` never.
* Labels: ``Bernoulli(sigmoid(bias + sum_i w_i e_i(id_i) + sum_j v_j log1p(I_j)))`` where
  ``e_i(id)`` in ``[-1, 1)`` is a fixed pseudo-random effect of each id (a multiplicative hash)
  and missing values contribute 0. ``bias`` is calibrated once per (seed, table sizes,
  ``click_rate``) on a fixed 32768-row sample so that the click rate is about ``click_rate``
  (default 0.25, Criteo Kaggle's is 0.256). A model that learns the ids' effects beats AUC 0.5.

Determinism: a row depends only on ``seed``, its index and the generator's arguments: rows are
made in chunks of :data:`CHUNK_ROWS` with ``numpy.random.default_rng([seed, chunk])``, so the
first ``n`` rows of a longer run equal a run of ``n`` rows.

Outputs: :func:`synth_batches` (numpy :class:`SynthBatch`), :meth:`SynthBatch.to_raw_arrow`
(the columns :func:`recis_compat.io.criteo.read_criteo_tsv` yields),
:func:`write_tsv` (Criteo's TSV: lowercase 8-digit hex, empty = missing) and
:func:`write_parquet` (the ``criteo-to-parquet`` layout, i.e. exactly what converting the TSV
gives).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import pyarrow as pa

from recis_compat.io.criteo import DENSE_COLUMNS, SPARSE_COLUMNS, CriteoOptions, convert_batch, write_converted

__all__ = ["DLRM_TABLE_SIZES", "DENSE_MISSING", "SPARSE_MISSING", "CHUNK_ROWS", "SynthBatch", "CriteoSynth",
           "synth_batches", "write_tsv", "write_parquet"]

DLRM_TABLE_SIZES: Tuple[int, ...] = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36)
DENSE_MISSING: Tuple[float, ...] = (0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.001, 0.04, 0.45, 0.04, 0.77, 0.22)
SPARSE_MISSING: Tuple[float, ...] = (0.0, 0.0, 0.034, 0.034, 0.0, 0.12, 0.0, 0.0, 0.0, 0.034, 0.0, 0.034, 0.0,
                                     0.0, 0.0, 0.034, 0.0, 0.0, 0.44, 0.44, 0.034, 0.76, 0.0, 0.034, 0.44, 0.44)
CHUNK_ROWS = 1 << 16
_CALIBRATION_ROWS = 1 << 15
_DENSE_MU = (0.8, 2.0, 1.5, 1.6, 6.0, 3.5, 1.5, 2.3, 3.5, 0.3, 1.0, 0.2, 1.6)
_DENSE_SIGMA = (1.2, 1.8, 1.3, 1.0, 2.0, 1.7, 1.4, 1.0, 1.3, 0.6, 0.9, 0.8, 1.1)
_DENSE_COEF = (0.25, -0.05, 0.05, -0.1, -0.05, 0.05, 0.15, 0.0, 0.05, 0.3, 0.2, 0.1, -0.05)
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@dataclass
class SynthBatch:
    """One block of synthetic rows (``n`` rows).

    label int32 ``[n]`` (0/1); dense int64 ``[n, 13]`` raw integers (0 where missing) with
    dense_valid bool ``[n, 13]``; sparse int64 ``[n, 26]`` ids in ``[0, table_size)`` (0 where
    missing) with sparse_valid bool ``[n, 26]``.
    """

    label: np.ndarray
    dense: np.ndarray
    dense_valid: np.ndarray
    sparse: np.ndarray
    sparse_valid: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def slice(self, start: int, stop: int) -> "SynthBatch":
        return SynthBatch(self.label[start:stop], self.dense[start:stop], self.dense_valid[start:stop],
                          self.sparse[start:stop], self.sparse_valid[start:stop])

    def to_raw_arrow(self) -> pa.RecordBatch:
        """Raw Criteo columns (label int64, I* int64, C* 8-digit lowercase hex strings; nulls = missing)."""
        n = len(self)
        cols = [pa.array(self.label.astype(np.int64))]
        for j in range(len(DENSE_COLUMNS)):
            cols.append(pa.array(self.dense[:, j], pa.int64(), mask=~self.dense_valid[:, j]))
        shifts = np.arange(28, -1, -4, dtype=np.uint64)
        offsets = pa.py_buffer(np.arange(0, 8 * n + 1, 8, dtype=np.int32).tobytes())
        for i in range(len(SPARSE_COLUMNS)):
            ids = self.sparse[:, i].astype(np.uint64)
            digits = _HEX_DIGITS[((ids[:, None] >> shifts) & np.uint64(15)).astype(np.intp)]
            valid = self.sparse_valid[:, i]
            bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())
            cols.append(pa.Array.from_buffers(pa.string(), n, [bitmap, offsets, pa.py_buffer(digits.tobytes())],
                                              null_count=int(n - valid.sum())))
        names = ["label"] + DENSE_COLUMNS + SPARSE_COLUMNS
        return pa.RecordBatch.from_arrays(cols, names=names)

    def converted(self, options: CriteoOptions = CriteoOptions()) -> pa.RecordBatch:
        """The ``criteo-to-parquet`` columns of these rows (same as converting their TSV)."""
        return convert_batch(self.to_raw_arrow(), options, "synthetic criteo")


class CriteoSynth:
    """The generator behind :func:`synth_batches` (module docstring); ``chunk(k)`` is chunk ``k``."""

    def __init__(self, seed: int = 0, table_size_array: Sequence[int] = DLRM_TABLE_SIZES,
                 click_rate: float = 0.25):
        sizes = [int(s) for s in table_size_array]
        if len(sizes) != len(SPARSE_COLUMNS) or min(sizes) < 1 or max(sizes) > 1 << 32:
            raise ValueError(f"table_size_array must be {len(SPARSE_COLUMNS)} sizes in [1, 2**32] "
                             f"(Criteo's C1..C26), got {list(table_size_array)}")
        if not 0.0 < click_rate < 1.0:
            raise ValueError(f"click_rate must be in (0, 1), got {click_rate}")
        self.seed, self.sizes, self.click_rate = int(seed), sizes, float(click_rate)
        self.exponent = np.array([(0.6 if s <= 1000 else 1.05 + 0.1 * (i % 3)) for i, s in enumerate(sizes)])
        # inverse CDF of the bounded power law: rank = (1 + u * top) ** inv - 1
        self._top = np.power(np.array(sizes, np.float64) + 1.0, 1.0 - self.exponent) - 1.0
        self._inv = 1.0 / (1.0 - self.exponent)
        self._wide = np.array([s > (1 << 24) for s in sizes])   # float32 cannot hold every rank
        self._sizes = np.array(sizes, dtype=np.int64)
        self._shift = np.array([(7919 * (i + 1) * 104729) % s for i, s in enumerate(sizes)], dtype=np.int64)
        self._field_salt = (np.arange(len(sizes), dtype=np.uint64) * np.uint64(0x9E3779B9)).astype(np.uint32)
        self.weight = np.array([0.25 + 0.5 * ((i * 7) % 11) / 10 for i in range(len(sizes))])
        self._sparse_missing = np.nonzero(np.array(SPARSE_MISSING) > 0)[0]
        self._dense_missing = np.nonzero(np.array(DENSE_MISSING) > 0)[0]
        self.bias = 0.0
        self.bias = self._calibrate()

    def _effect(self, ids: np.ndarray) -> np.ndarray:
        """Per-id effect in [-1, 1): a multiplicative hash of (id, field); ids int64 ``[n, 26]``."""
        with np.errstate(over="ignore"):
            h = ids.astype(np.uint32) * np.uint32(0x9E3779B1) + self._field_salt
            h ^= h >> np.uint32(15)
            h *= np.uint32(0x85EBCA77)
            h ^= h >> np.uint32(13)
        return h.astype(np.float32) * np.float32(2.0 / 4294967296.0) - np.float32(1.0)

    def _features(self, rng: np.random.Generator, n: int):
        k = len(self.sizes)
        u = rng.random((n, k), dtype=np.float32)
        rank = np.empty((n, k), dtype=np.int64)
        narrow = ~self._wide
        t32, i32 = self._top[narrow].astype(np.float32), self._inv[narrow].astype(np.float32)
        rank[:, narrow] = np.exp(np.log1p(u[:, narrow] * t32) * i32).astype(np.int64) - 1
        if self._wide.any():
            uw = u[:, self._wide].astype(np.float64)
            rank[:, self._wide] = np.exp(np.log1p(uw * self._top[self._wide]) * self._inv[self._wide]).astype(
                np.int64) - 1
        np.clip(rank, 0, self._sizes - 1, out=rank)
        # ranks -> ids: a per-field rotation of [0, size), so the hot ids are not 0, 1, 2 ...
        sparse = rank + self._shift
        sparse -= self._sizes * (sparse >= self._sizes)
        sparse_valid = np.ones((n, k), dtype=bool)
        m = self._sparse_missing
        sparse_valid[:, m] = rng.random((n, m.size), dtype=np.float32) >= np.array(SPARSE_MISSING, np.float32)[m]
        sparse *= sparse_valid
        d = len(DENSE_COLUMNS)
        z = rng.standard_normal((n, d), dtype=np.float32) * np.array(_DENSE_SIGMA, np.float32) + \
            np.array(_DENSE_MU, np.float32)
        dense = np.maximum(np.exp(np.minimum(z, np.float32(20.0))).astype(np.int64) - 1, 0)
        dense[:, 1] = np.where(rng.random(n, dtype=np.float32) < 0.05, -1, dense[:, 1])
        dense_valid = np.ones((n, d), dtype=bool)
        m = self._dense_missing
        dense_valid[:, m] = rng.random((n, m.size), dtype=np.float32) >= np.array(DENSE_MISSING, np.float32)[m]
        dense *= dense_valid
        logit = (self._effect(sparse) * sparse_valid) @ self.weight.astype(np.float32)
        logit = logit.astype(np.float64) + np.log1p(np.maximum(dense, 0)) @ np.array(_DENSE_COEF)
        return logit, dense, dense_valid, sparse, sparse_valid

    def _calibrate(self) -> float:
        rng = np.random.default_rng([self.seed, 1 << 40])
        logit = self._features(rng, _CALIBRATION_ROWS)[0]
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < self.click_rate:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def chunk(self, k: int) -> SynthBatch:
        """Rows ``[k * CHUNK_ROWS, (k + 1) * CHUNK_ROWS)``."""
        rng = np.random.default_rng([self.seed, k])
        logit, dense, dense_valid, sparse, sparse_valid = self._features(rng, CHUNK_ROWS)
        p = 1.0 / (1.0 + np.exp(-(logit + self.bias)))
        label = (rng.random(CHUNK_ROWS) < p).astype(np.int32)
        return SynthBatch(label, dense, dense_valid, sparse, sparse_valid)


def synth_batches(rows: int, seed: int = 0, table_size_array: Sequence[int] = DLRM_TABLE_SIZES, *,
                  batch_rows: int = CHUNK_ROWS, click_rate: float = 0.25) -> Iterator[SynthBatch]:
    """Yield ``rows`` synthetic rows in :class:`SynthBatch` blocks of ``batch_rows`` (the last may be
    shorter). Rows depend on ``seed`` and their index only (module docstring, "Determinism")."""
    if rows < 0 or batch_rows <= 0:
        raise ValueError(f"rows must be >= 0 and batch_rows > 0, got rows={rows}, batch_rows={batch_rows}")
    gen = CriteoSynth(seed, table_size_array, click_rate)
    pending: List[SynthBatch] = []
    have = 0
    produced = 0
    k = 0
    while produced < rows:
        while have < min(batch_rows, rows - produced):
            c = gen.chunk(k)
            k += 1
            pending.append(c)
            have += len(c)
        merged = pending[0] if len(pending) == 1 else SynthBatch(
            *(np.concatenate([getattr(p, f) for p in pending])
              for f in ("label", "dense", "dense_valid", "sparse", "sparse_valid")))
        take = min(batch_rows, rows - produced)
        yield merged.slice(0, take)
        rest = merged.slice(take, len(merged))
        pending, have = ([rest] if len(rest) else []), len(rest)
        produced += take


def write_tsv(path: str, rows: int, seed: int = 0, table_size_array: Sequence[int] = DLRM_TABLE_SIZES, *,
              click_rate: float = 0.25) -> int:
    """Write ``rows`` rows as Criteo TSV (gzip when ``path`` ends in .gz); returns the row count."""
    import pyarrow.csv as pacsv

    opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    tmp = path + ".tmp"
    sink = pa.OSFile(tmp, "wb")
    stream = pa.CompressedOutputStream(sink, "gzip") if path.endswith(".gz") else sink
    try:
        with pacsv.CSVWriter(stream, schema=_raw_schema(), write_options=opts) as w:
            for b in synth_batches(rows, seed, table_size_array, click_rate=click_rate):
                w.write_batch(b.to_raw_arrow())
        stream.close()
        os.replace(tmp, path)
    except BaseException:
        stream.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return rows


def _raw_schema() -> pa.Schema:
    return pa.schema([("label", pa.int64())] + [(c, pa.int64()) for c in DENSE_COLUMNS] +
                     [(c, pa.string()) for c in SPARSE_COLUMNS])


def write_parquet(output_dir: str, rows: int, seed: int = 0, table_size_array: Sequence[int] = DLRM_TABLE_SIZES,
                  options: CriteoOptions = CriteoOptions(), *, fmt: str = "parquet", rows_per_file: int = 1_000_000,
                  click_rate: float = 0.25, plain_scalars: bool = False) -> List[Tuple[str, int]]:
    """Write ``rows`` rows to ``output_dir/part-*.parquet`` (``fmt="orc"``: ORC) in the
    ``criteo-to-parquet`` layout with ``options``; returns [(path, rows)]."""
    batches = (b.converted(options) for b in synth_batches(rows, seed, table_size_array, click_rate=click_rate))
    return write_converted(batches, output_dir, options, fmt=fmt, rows_per_file=rows_per_file,
                           plain_scalars=plain_scalars)
