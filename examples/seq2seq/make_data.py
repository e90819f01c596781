"""Write fake behaviour-sequence ORC files for the seq2seq example.

One row per user: ``user_id`` list<int64> [1] and four aligned two-level lists with one entry
per behaviour step:

* ``item_id``     list<list<int64>>:  the step's item (sometimes two items);
* ``cate_id``     list<list<int64>>:  the category of each of those items (< 2048);
* ``behavior_id`` list<list<string>>: one of ``click``, ``cart``, ``fav``, ``buy``;
* ``timestamp``   list<list<string>>: unix seconds, increasing along the sequence.

Sequence lengths are uniform in [1, ``--max_len``]; items mostly follow a per-item successor so
the next-item task has something to learn. Files are ``part-{i}.orc``; deterministic per seed.

    python make_data.py --out ./data --files 4 --rows 256 --max_len 96
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.orc as orc

BEHAVIORS = np.array(["click", "cart", "fav", "buy"], dtype=object)


def _nested(values, inner_lengths: np.ndarray, outer_lengths: np.ndarray, value_type) -> pa.Array:
    inner = np.zeros(len(inner_lengths) + 1, dtype=np.int32)
    np.cumsum(inner_lengths, out=inner[1:])
    outer = np.zeros(len(outer_lengths) + 1, dtype=np.int32)
    np.cumsum(outer_lengths, out=outer[1:])
    steps = pa.ListArray.from_arrays(pa.array(inner), pa.array(values, type=value_type))
    return pa.ListArray.from_arrays(pa.array(outer), steps)


class BehaviourGenerator:
    def __init__(self, seed: int, num_items: int = 5000, num_cates: int = 2048):
        self.rng = np.random.default_rng(seed)
        self.num_items = num_items
        self.successor = self.rng.integers(0, num_items, num_items)
        self.cate = self.rng.integers(0, num_cates, num_items)
        self.next_user = 0

    def table(self, rows: int, max_len: int) -> pa.Table:
        rng = self.rng
        seq_lens = rng.integers(1, max_len + 1, rows)
        steps = int(seq_lens.sum())
        # the first item of a step: follow the previous step's successor 70% of the time
        first = np.empty(steps, dtype=np.int64)
        starts = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(seq_lens, out=starts[1:])
        jump = rng.random(steps) < 0.3
        fresh = rng.integers(0, self.num_items, steps)
        for r in range(rows):
            prev = first[starts[r]] = fresh[starts[r]]
            for s in range(starts[r] + 1, starts[r + 1]):
                prev = first[s] = fresh[s] if jump[s] else self.successor[prev]
        per_step = 1 + (rng.random(steps) < 0.2)                 # 1 or 2 items per step
        second = rng.integers(0, self.num_items, steps)
        items = np.empty(int(per_step.sum()), dtype=np.int64)
        pos = np.zeros(steps + 1, dtype=np.int64)
        np.cumsum(per_step, out=pos[1:])
        items[pos[:-1]] = first
        two = per_step == 2
        items[pos[:-1][two] + 1] = second[two]
        behaviors = BEHAVIORS[rng.integers(0, len(BEHAVIORS), steps)]
        t0 = rng.integers(1_600_000_000, 1_700_000_000, rows)
        gaps = rng.integers(1, 3600, steps)
        times = np.repeat(t0, seq_lens) + np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts[:-1]], seq_lens)
        ones = np.ones(steps, dtype=np.int32)
        users = np.arange(self.next_user, self.next_user + rows, dtype=np.int64)
        self.next_user += rows
        return pa.table({
            "user_id": pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32)),
                                                pa.array(users, type=pa.int64())),
            "item_id": _nested(items, per_step, seq_lens, pa.int64()),
            "cate_id": _nested(self.cate[items], per_step, seq_lens, pa.int64()),
            "behavior_id": _nested(behaviors, ones, seq_lens, pa.string()),
            "timestamp": _nested(times.astype(str).astype(object), ones, seq_lens, pa.string()),
        })


def write(out_dir: str, files: int = 4, rows: int = 256, max_len: int = 96, seed: int = 0) -> list:
    """Write ``files`` ORC files of ``rows`` rows; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    gen = BehaviourGenerator(seed)
    paths = []
    for i in range(files):
        path = os.path.join(out_dir, f"part-{i}.orc")
        tmp = path + ".tmp"
        orc.write_table(gen.table(rows, max_len), tmp, compression="uncompressed")
        os.replace(tmp, path)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="./data")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--rows", type=int, default=256, help="rows (users) per file")
    ap.add_argument("--max_len", type=int, default=96, help="longest behaviour sequence")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = write(args.out, args.files, args.rows, args.max_len, args.seed)
    print(f"wrote {len(paths)} files x {args.rows} rows into {args.out}")


if __name__ == "__main__":
    main()
