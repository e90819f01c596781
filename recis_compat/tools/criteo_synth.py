"""``recis-compat criteo-synth``: the command over :mod:`recis_compat.io.criteo_synth`
(synthetic Criteo rows)."""
from __future__ import annotations

from typing import Optional, Sequence

import click

from recis_compat.io.criteo import DEFAULT_MOD_IDX, DENSE_MODES, CriteoOptions
from recis_compat.io.criteo_synth import DLRM_TABLE_SIZES, write_parquet, write_tsv

__all__ = ["command"]


def _parse_sizes(text: Optional[str]) -> Sequence[int]:
    if not text:
        return DLRM_TABLE_SIZES
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise click.BadParameter(f"expected 26 comma-separated integers, got {text!r}",
                                 param_hint="--table-size-array") from None


@click.command("criteo-synth", short_help="Write synthetic Criteo rows (TSV, Parquet or ORC).")
@click.option("--rows", type=click.IntRange(min=0), required=True, help="Number of rows.")
@click.option("--format", "fmt", type=click.Choice(["tsv", "parquet", "orc"]), default="tsv", show_default=True)
@click.option("--out", required=True, type=click.Path(),
              help="tsv: the output file (.gz: gzip); parquet/orc: the output directory (part-*.parquet|orc).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--table-size-array", default=None, help="26 comma-separated table sizes.  [default: OneFlow DLRM's]")
@click.option("--click-rate", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.25,
              show_default=True)
@click.option("--rows-per-file", type=click.IntRange(min=0), default=1_000_000, show_default=True,
              help="parquet/orc: rows per file (0: one file).")
@click.option("--mod-idx", type=int, default=DEFAULT_MOD_IDX, show_default=True,
              help="parquet/orc: as criteo-to-parquet --mod-idx.")
@click.option("--hash", "use_hash", is_flag=True, help="parquet/orc: as criteo-to-parquet --hash.")
@click.option("--dense", type=click.Choice(DENSE_MODES), default="plus1", show_default=True,
              help="parquet/orc: as criteo-to-parquet --dense.")
def command(rows, fmt, out, seed, table_size_array, click_rate, rows_per_file, mod_idx, use_hash, dense):
    """Write synthetic Criteo rows: Zipf-like ids bounded by the table sizes, Criteo-like missing
    values, labels that depend on the features (click rate about --click-rate). TSV is Criteo's
    raw format; parquet/orc are what criteo-to-parquet makes of it."""
    sizes = _parse_sizes(table_size_array)
    try:
        if fmt == "tsv":
            write_tsv(out, rows, seed, sizes, click_rate=click_rate)
            click.echo(f"wrote {rows} rows to {out}")
            return
        options = CriteoOptions(mod_idx=mod_idx if mod_idx > 0 else DEFAULT_MOD_IDX,
                                hash=use_hash or mod_idx <= 0, dense=dense)
        files = write_parquet(out, rows, seed, sizes, options, fmt=fmt, rows_per_file=rows_per_file,
                              click_rate=click_rate)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"wrote {rows} rows to {len(files)} file(s) in {out}")
