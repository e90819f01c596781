"""Write fake ORC data with the schema of RecIS's deepctr example.

Columns (one row = one sample):

=========================  ====================  ==============================================
column                     arrow type            content
=========================  ====================  ==============================================
``label``                  list<double> [1]      0.0 / 1.0 (about half positive)
``dense1``                 list<double> [8]      uniform [0, 1)
``dense2``                 list<double> [1]      uniform [0, 1)
``sparse1..sparse3``       list<int64> [1]       the row's index in its file
``sparse4``                list<int64> [1, N]    random ids in [0, 1e6)
``sparse5``                list<string> [1, N]   drawn from a vocabulary of random 10-character
                                                 alphanumeric strings
=========================  ====================  ==============================================

``N`` is ``--max_seq_len`` (1999 as in RecIS, so rows are longer than the 1000 ids the model
keeps). Files are ``data_{i}.orc`` in ``--out``; deterministic for a given ``--seed``.

    python make_orc_data.py --out ./fake_data --files 4 --rows 1024
"""
from __future__ import annotations

import argparse
import os
import string

import numpy as np
import pyarrow as pa
import pyarrow.orc as orc


def _fixed_list(values: np.ndarray, width: int, value_type: pa.DataType) -> pa.Array:
    """``values`` ``[rows * width]`` as a list column with ``width`` elements per row."""
    rows = len(values) // width
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(values, type=value_type))


def _var_list(values, lengths: np.ndarray, value_type: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


def make_table(rng: np.random.Generator, rows: int, max_seq_len: int, vocab: np.ndarray) -> pa.Table:
    """One file's rows (see the module docstring)."""
    label = np.floor(rng.random(rows) + 0.5)
    row_ids = np.arange(rows, dtype=np.int64)
    len4 = rng.integers(1, max_seq_len + 1, rows)
    len5 = rng.integers(1, max_seq_len + 1, rows)
    return pa.table({
        "label": _fixed_list(label, 1, pa.float64()),
        "dense1": _fixed_list(rng.random(rows * 8), 8, pa.float64()),
        "dense2": _fixed_list(rng.random(rows), 1, pa.float64()),
        "sparse1": _fixed_list(row_ids, 1, pa.int64()),
        "sparse2": _fixed_list(row_ids, 1, pa.int64()),
        "sparse3": _fixed_list(row_ids, 1, pa.int64()),
        "sparse4": _var_list(rng.integers(0, 1_000_000, int(len4.sum()), dtype=np.int64), len4, pa.int64()),
        "sparse5": _var_list(vocab[rng.integers(0, len(vocab), int(len5.sum()))], len5, pa.string()),
    })


def make_vocab(rng: np.random.Generator, size: int = 1000, width: int = 10) -> np.ndarray:
    """``size`` random alphanumeric strings of ``width`` characters (object array)."""
    chars = np.array(list(string.ascii_letters + string.digits))
    picks = chars[rng.integers(0, len(chars), (size, width))]
    return np.array(["".join(row) for row in picks], dtype=object)


def write(out_dir: str, files: int = 4, rows: int = 1024, max_seq_len: int = 1999,
          seed: int = 0) -> list:
    """Write ``files`` ORC files of ``rows`` rows; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = make_vocab(rng)
    paths = []
    for i in range(files):
        path = os.path.join(out_dir, f"data_{i}.orc")
        tmp = path + ".tmp"
        orc.write_table(make_table(rng, rows, max_seq_len, vocab), tmp, compression="uncompressed")
        os.replace(tmp, path)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="./fake_data")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--rows", type=int, default=1024, help="rows per file (RecIS: 2047)")
    ap.add_argument("--max_seq_len", type=int, default=1999, help="longest sparse4/sparse5 row")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = write(args.out, args.files, args.rows, args.max_seq_len, args.seed)
    print(f"wrote {len(paths)} files x {args.rows} rows into {args.out}")


if __name__ == "__main__":
    main()
