"""Write a small synthetic Criteo dataset for the deepfm_criteo example (train/val/test Parquet).

The same two tools a real run uses (examples/dlrm/make_data.py has the shell equivalent):
``criteo-synth`` writes Criteo TSV (train rows with ``--seed``, held-out rows with ``--seed + 1``)
and ``criteo-to-parquet`` converts it with integer dense columns (what this example buckets),
splitting the held-out rows into ``test/`` (first half) and ``val/``, and writing
``dataset_info.json`` (``num_train_samples`` ... as OneFlow's DeepFM arguments name them).
"""
from __future__ import annotations

import argparse
import os
import tempfile

from recis_compat.io.criteo_synth import DLRM_TABLE_SIZES, write_tsv
from recis_compat.io.criteo import CriteoOptions, convert


def write(out: str, rows: int, heldout_rows: int, rows_per_file: int, seed: int = 0, table_size_array=None,
          row_group_rows: int = 1000):
    sizes = list(table_size_array or DLRM_TABLE_SIZES)
    with tempfile.TemporaryDirectory(prefix="criteo-tsv-") as tmp:
        train, held = os.path.join(tmp, "train.tsv"), os.path.join(tmp, "heldout.tsv")
        write_tsv(train, rows, seed, sizes)
        write_tsv(held, heldout_rows, seed + 1, sizes)
        return convert([train], out, CriteoOptions(dense="plus1"), rows_per_file=rows_per_file,
                       row_group_rows=row_group_rows, val_inputs=[held], test_rows=heldout_rows // 2,
                       export_dataset_info=True, overwrite=True, progress=False)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=16000)
    p.add_argument("--heldout_rows", type=int, default=4000)
    p.add_argument("--rows_per_file", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table_size_array", type=str, default=None)
    a = p.parse_args()
    sizes = [int(x) for x in a.table_size_array.split(",")] if a.table_size_array else None
    res = write(a.out, a.rows, a.heldout_rows, a.rows_per_file, a.seed, sizes)
    print(dict(res.splits), "table_size_array =", ",".join(map(str, res.table_size_array)))
