"""The ``csv-to-orc`` click command (``recis-compat csv-to-orc`` and ``python -m
recis_compat.tools.csv_to_orc``); the conversion itself is :mod:`recis_compat.tools.csv_to_orc`."""
from __future__ import annotations

import click

__all__ = ["command"]

_CSV_TO_ORC_HELP = """Convert CSV files into ORC files for OrcDataset.

INPUTS are CSV files (.gz/.bz2 decompressed) or directories (walked for *.csv, *.csv.gz,
*.tsv, ...; sorted); -i/--input adds more. Rows of all inputs, in order, go to
OUTPUT/part-00000.orc, part-00001.orc, ... (at most --rows-per-file rows each), or to one file
when OUTPUT ends in .orc. RecIS's tools/csv_to_orc.py options (--input, --output_dir,
--blocksize, --no-header) are accepted.

\b
Schema (--schema), inline or JSON (text or a file):
  "label:float,dense1:list<float>:;,sparse1:list<int64>:;,tags:list<string>:|"
  '{"label": "float", "tags": {"type": "list<string>", "sep": "|"}}'
Entries are name:type or name:list<type>:separator (separator default: --list-sep).
Types: bool, int8, int16, int32 (int), int64 (bigint, long), float (32 bit), double, string.
Columns not in the schema get a scalar type inferred from the first block (int64, double or
string) unless --drop-unlisted; without --schema all columns are inferred (as RecIS does).

\b
OrcDataset reads list columns only, so scalar columns are written as one-element lists
(read with fixedlen_feature("label", [0.0]) -> [B, 1]); --plain-scalars writes plain ORC
columns. An empty cell is a missing value: an empty list. A bad value stops the conversion
with the file, line, column and value, and removes the files written so far.

\b
Example:
  recis-compat csv-to-orc data.csv -o /data/orc \\
      --schema "label:float,uid:int64,items:list<int64>:;" --rows-per-file 500000

Exit codes: 0 ok, 1 bad data or files, 2 bad options or schema.
"""


@click.command("csv-to-orc", help=_CSV_TO_ORC_HELP, short_help="Convert CSV files to ORC for OrcDataset.")
@click.argument("inputs", nargs=-1, type=click.Path(exists=True))
@click.option("-i", "--input", "more_inputs", multiple=True, type=click.Path(exists=True),
              help="An input CSV file or directory (repeatable; same as INPUTS).")
@click.option("-o", "--output", "--output_dir", "--output-dir", "output", required=True,
              type=click.Path(), help="Output directory (part-XXXXX.orc files) or a single .orc file.")
@click.option("-s", "--schema", default=None, metavar="SCHEMA",
              help="Column types: inline 'name:type,name:list<type>:sep,...', JSON text, or a JSON file.")
@click.option("--list-sep", default=";", show_default=True,
              help="Separator of list columns whose schema entry gives none.")
@click.option("--rows-per-file", type=click.IntRange(min=0), default=None,
              help="Rows per output file; 0: one file.  [default: 1000000, 0 for a .orc output]")
@click.option("--stripe-size", default="64MiB", show_default=True,
              help="ORC stripe size (bytes, or 64MB / 64MiB); OrcDataset reads one stripe at a time.")
@click.option("--blocksize", "--block-size", "block_size", default="64MB", show_default=True,
              help="Bytes of CSV parsed at once (RecIS's --blocksize).")
@click.option("--no-header", is_flag=True,
              help="The CSV files have no header row: the schema (all columns, in order) or "
                   "0, 1, 2, ... names the columns.")
@click.option("-d", "--delimiter", default=",", show_default=True,
              help="CSV field delimiter ('\\t' or 'tab' for tabs).")
@click.option("--compression", type=click.Choice(["uncompressed", "zlib", "snappy", "lz4", "zstd"]),
              default="uncompressed", show_default=True, help="ORC compression.")
@click.option("--plain-scalars", is_flag=True,
              help="Write scalar columns as plain ORC columns instead of one-element lists "
                   "(OrcDataset cannot read them).")
@click.option("--drop-unlisted", is_flag=True, help="Drop CSV columns the schema does not list.")
@click.option("--overwrite", is_flag=True, help="Replace existing part-*.orc files (or the output file).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar over the input bytes.  [default: on a terminal]")
def command(inputs, more_inputs, output, schema, list_sep, rows_per_file, stripe_size, block_size,
               no_header, delimiter, compression, plain_scalars, drop_unlisted, overwrite, progress):
    from recis_compat.tools import csv_to_orc as conv
    paths = list(inputs) + list(more_inputs)
    if not paths:
        raise click.UsageError("no input: give CSV files or directories (INPUTS or -i/--input)")
    if delimiter in ("\\t", "tab"):
        delimiter = "\t"
    try:
        res = conv.convert(paths, output, schema, header=not no_header, delimiter=delimiter,
                           list_sep=list_sep, rows_per_file=rows_per_file, stripe_size=stripe_size,
                           block_size=block_size, compression=compression, plain_scalars=plain_scalars,
                           drop_unlisted=drop_unlisted, overwrite=overwrite, progress=progress)
    except conv.CsvConversionError as e:
        raise click.ClickException(str(e)) from None
    except (conv.SchemaError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    except OSError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"converted {res.rows} rows of {len(res.inputs)} CSV file(s) into {len(res.files)} ORC file(s) "
               f"({res.compression}, stripe size {res.stripe_size} bytes):")
    for path, n in res.files:
        click.echo(f"  {path}  {n} rows")
    click.echo("columns:")
    width = max(len(c.name) for c in res.columns)
    for c in res.columns:
        orc_type = c.type if (res.plain_scalars and not c.is_list) else f"list<{c.type}>"
        note = "  (inferred)" if c.inferred else ""
        sep = f"  sep {c.sep!r}" if c.is_list else ""
        click.echo(f"  {c.name:<{width}}  {c.type_text:<13} -> ORC {orc_type:<13}{sep}{note}".rstrip())
    click.echo(f"schema: {res.schema_text}")
