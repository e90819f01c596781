"""``recis-compat criteo-to-parquet``: the command over :mod:`recis_compat.io.criteo` (Criteo TSV ->
Parquet or ORC in OneFlow's DLRM layout; the schema and hashing are documented there)."""
from __future__ import annotations

import click

from recis_compat.io.criteo import DEFAULT_MOD_IDX, DENSE_MODES, CriteoFormatError, CriteoOptions, convert

__all__ = ["command"]


_HELP = """Convert Criteo TSV files (label, I1..I13, C1..C26 hex; empty = missing) into Parquet
(or ORC) files laid out as OneFlow's DLRM preprocessing describes.

\b
INPUTS are files (plain or .gz), directories (their files, sorted) or globs; rows keep their
order. Output as OneFlow's data_dir: INPUTS go to OUTPUT_DIR/train/part-00000.parquet, ...
(--rows-per-file rows each), --val inputs to val/, --test inputs to test/; --test-rows N sends
the first N rows of --val to test/ (OneFlow's day_23 split: N = 89137319).

\b
Columns: label int32; I1..I13 int32 raw+1 (missing 1) or, with --dense log, float32
log(max(raw+1, 0) + 1) (what OneFlow's DLRM computes from raw+1 in its model);
C1..C26 int64: int(hex,16) % MOD_IDX + MOD_IDX*i (i = 0..25, missing MOD_IDX*i), or with
--hash the 64-bit XXH64 chain of the value and i (Spark's xxhash64(C, lit(i)), seed 42).
--orc writes one-element list columns (readable by OrcDataset) unless --plain-scalars.

\b
--export-dataset-info writes OUTPUT_DIR/README.md (OneFlow's format: sample counts and
table_size_array) and dataset_info.json.

\b
Example:
  recis-compat criteo-to-parquet day_0 day_1 --val day_23 --test-rows 89137319 \\
      --output-dir /data/dlrm_parquet --export-dataset-info

Exit codes: 0 ok, 1 bad data or files, 2 bad options.
"""


@click.command("criteo-to-parquet", help=_HELP, short_help="Convert Criteo TSV to Parquet/ORC (OneFlow layout).")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output-dir", "--output_dir", "output_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory.")
@click.option("--orc", "orc_format", is_flag=True, help="Write ORC files instead of Parquet.")
@click.option("--mod-idx", "--mod_idx", "mod_idx", type=int, default=DEFAULT_MOD_IDX, show_default=True,
              help="Categorical ids: int(hex,16) % MOD_IDX + MOD_IDX * field index; <= 0 means --hash "
                   "(as OneFlow's --mod_idx).")
@click.option("--hash", "use_hash", is_flag=True, help="Categorical ids: 64-bit XXH64 of the value with the "
                                                      "field index (overrides --mod-idx).")
@click.option("--dense", type=click.Choice(DENSE_MODES), default="plus1", show_default=True,
              help="plus1: int32 raw+1 (missing 1); log: float32 log(max(raw+1,0)+1).")
@click.option("--val", "val_inputs", multiple=True, help="Validation split input (repeatable).")
@click.option("--test", "test_inputs", multiple=True, help="Test split input (repeatable).")
@click.option("--test-rows", type=click.IntRange(min=0), default=None,
              help="The first N rows of the --val inputs form the test split.")
@click.option("--rows-per-file", type=click.IntRange(min=0), default=1_000_000, show_default=True,
              help="Rows per output file; 0: one file per split.")
@click.option("--row-group-rows", type=click.IntRange(min=1), default=131_072, show_default=True,
              help="Rows per Parquet row group / ORC write.")
@click.option("--export-dataset-info", "--export_dataset_info", "export_info", is_flag=True,
              help="Write README.md and dataset_info.json (sample counts, table_size_array).")
@click.option("--plain-scalars", is_flag=True, help="With --orc: plain columns instead of one-element lists.")
@click.option("--overwrite", is_flag=True, help="Replace existing part-* files.")
@click.option("--progress/--no-progress", default=None, help="Progress bar.  [default: on a terminal]")
def command(inputs, output_dir, orc_format, mod_idx, use_hash, dense, val_inputs, test_inputs, test_rows,
            rows_per_file, row_group_rows, export_info, plain_scalars, overwrite, progress):
    try:
        options = CriteoOptions(mod_idx=mod_idx if mod_idx > 0 else DEFAULT_MOD_IDX,
                                hash=use_hash or mod_idx <= 0, dense=dense)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        res = convert(inputs, output_dir, options, fmt="orc" if orc_format else "parquet",
                      rows_per_file=rows_per_file, row_group_rows=row_group_rows, val_inputs=val_inputs,
                      test_inputs=test_inputs, test_rows=test_rows, export_dataset_info=export_info,
                      plain_scalars=plain_scalars, overwrite=overwrite, progress=progress)
    except (CriteoFormatError, FileNotFoundError, FileExistsError, OSError) as e:
        raise click.ClickException(str(e)) from None
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"converted {sum(res.splits.values())} rows of {len(res.inputs)} file(s):")
    for name, files in res.files.items():
        click.echo(f"  {name}: {res.splits[name]} rows in {len(files)} file(s)")
        for path, n in files:
            click.echo(f"    {path}  {n} rows")
    if res.table_size_array is not None:
        click.echo("table_size_array = " + ",".join(str(i) for i in res.table_size_array))
        for p in res.info_files:
            click.echo(f"wrote {p}")

