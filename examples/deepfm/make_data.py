"""Generate Criteo-style ORC files with the schema of RecIS's deepfm example data.

Columns (per row): ``label`` list<double> [1] (0/1), ``i1..i13`` list<double> of length 0 or 1
(missing = empty list), ``c1..c26`` list<int64> of length 0 or 1 (40-bit hashed-looking ids).
Clicks follow a logistic model over per-id effects and the numeric features, so a model can
learn a real signal (AUC well above 0.5). Deterministic for a given ``--seed``.

    python examples/deepfm/make_data.py --out examples/deepfm/data --files 8 --rows 10000
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.orc as orc

NUM_DENSE = 13
NUM_SPARSE = 26


def _list_column(values: np.ndarray, present: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """A list<value_type> column with one element where ``present`` else an empty list."""
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(present.astype(np.int32))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[present], type=value_type))


class CriteoLikeGenerator:
    """Holds the per-feature vocabularies and effects so every file draws from one model."""

    def __init__(self, seed: int, vocab_scale: int = 2000):
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        self.vocab_sizes = rng.integers(3, vocab_scale, size=NUM_SPARSE)
        # hashed-looking 40-bit ids, unique per (feature, rank)
        self.vocab_ids = [rng.integers(4 * 10**7, 1 << 40, size=v, dtype=np.int64)
                          for v in self.vocab_sizes]
        self.effects = [rng.normal(0.0, 0.8, size=v) for v in self.vocab_sizes]
        self.missing_rate = rng.choice([0.0, 0.04, 0.4], size=NUM_SPARSE, p=[0.6, 0.25, 0.15])
        self.dense_missing = rng.uniform(0.0, 0.4, size=NUM_DENSE)
        self.dense_weight = rng.normal(0.0, 0.3, size=NUM_DENSE)
        self.bias = -3.0

    def table(self, rows: int) -> pa.Table:
        rng = self.rng
        logit = np.full(rows, self.bias)
        cols = {}
        for j in range(NUM_DENSE):
            present = rng.random(rows) >= self.dense_missing[j]
            raw = rng.lognormal(1.0, 1.5, size=rows).round()
            logit += np.where(present, self.dense_weight[j] * np.log1p(raw) / 3.0, 0.0)
            cols[f"i{j + 1}"] = _list_column(raw.astype(np.float64), present, pa.float64())
        for j in range(NUM_SPARSE):
            v = self.vocab_sizes[j]
            ranks = np.minimum(rng.zipf(1.3, size=rows) - 1, v - 1)
            present = rng.random(rows) >= self.missing_rate[j]
            logit += np.where(present, self.effects[j][ranks], 0.0)
            cols[f"c{j + 1}"] = _list_column(self.vocab_ids[j][ranks], present, pa.int64())
        prob = 1.0 / (1.0 + np.exp(-logit))
        label = (rng.random(rows) < prob).astype(np.float64)
        cols["label"] = _list_column(label, np.ones(rows, dtype=bool), pa.float64())
        return pa.table(cols)


def write(out_dir: str, files: int, rows: int, seed: int = 0) -> list[str]:
    """Write ``files`` ORC files of ``rows`` rows into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    gen = CriteoLikeGenerator(seed)
    paths = []
    for i in range(files):
        path = os.path.join(out_dir, f"part-{i}.orc")
        tmp = path + ".tmp"
        orc.write_table(gen.table(rows), tmp, compression="uncompressed")
        os.replace(tmp, path)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data"))
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = write(args.out, args.files, args.rows, args.seed)
    print(f"wrote {len(paths)} files x {args.rows} rows to {args.out}")


if __name__ == "__main__":
    main()
