"""Write a small synthetic Criteo dataset in OneFlow's DLRM Parquet layout (train/val/test).

Runs the two tools a real Criteo run uses: ``criteo-synth`` makes Criteo TSV files (train rows
with seed ``--seed``, held-out rows with ``--seed + 1``) and ``criteo-to-parquet`` converts them
(``--val`` with ``--test-rows``: the first half of the held-out rows form ``test/``, the rest
``val/``; ``--export-dataset-info`` writes ``dataset_info.json`` with the sample counts and the
table size array). The equivalent shell commands::

    recis-compat criteo-synth --rows 8000 --out train.tsv --seed 0
    recis-compat criteo-synth --rows 4000 --out heldout.tsv --seed 1
    recis-compat criteo-to-parquet train.tsv --val heldout.tsv --test-rows 2000 \\
        --rows-per-file 2000 --export-dataset-info -o DATA

``--table_size_array`` bounds the synthetic ids per field (default: OneFlow DLRM's sizes).
"""
from __future__ import annotations

import argparse
import os
import tempfile

from recis_compat.io.criteo_synth import DLRM_TABLE_SIZES, write_tsv
from recis_compat.io.criteo import DEFAULT_MOD_IDX, CriteoOptions, convert

# C<i+1> ids are ``raw % MOD_IDX + MOD_IDX * i`` (criteo-to-parquet's default layout)
MOD_IDX = DEFAULT_MOD_IDX
__all__ = ["DLRM_TABLE_SIZES", "MOD_IDX", "write"]


def write(out: str, rows: int, heldout_rows: int, rows_per_file: int, seed: int = 0, table_size_array=None,
          dense: str = "plus1", row_group_rows: int = 1000):
    """Write ``out/{train,val,test}``; returns criteo-to-parquet's ConversionResult."""
    sizes = list(table_size_array or DLRM_TABLE_SIZES)
    with tempfile.TemporaryDirectory(prefix="criteo-tsv-") as tmp:
        train, held = os.path.join(tmp, "train.tsv"), os.path.join(tmp, "heldout.tsv")
        write_tsv(train, rows, seed, sizes)
        write_tsv(held, heldout_rows, seed + 1, sizes)
        return convert([train], out, CriteoOptions(dense=dense), rows_per_file=rows_per_file,
                       row_group_rows=row_group_rows, val_inputs=[held], test_rows=heldout_rows // 2,
                       export_dataset_info=True, overwrite=True, progress=False)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--heldout_rows", type=int, default=4000)
    p.add_argument("--rows_per_file", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table_size_array", type=str, default=None)
    p.add_argument("--dense", choices=("plus1", "log"), default="plus1")
    a = p.parse_args()
    sizes = [int(x) for x in a.table_size_array.split(",")] if a.table_size_array else None
    res = write(a.out, a.rows, a.heldout_rows, a.rows_per_file, a.seed, sizes, a.dense)
    print({k: v for k, v in res.splits.items()}, "table_size_array =", ",".join(map(str, res.table_size_array)))
