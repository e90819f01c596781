"""``recis-compat``: the command-line entry point (click).

Commands: ``doctor`` (what is installed and built), ``bench NAME`` (benchmarks, JSON out).
"""
from __future__ import annotations

import json
import sys

import click


class _LazyBenchGroup(click.Group):
    """Bench subcommands come from :mod:`recis_compat.benchmarks.registry`, imported on use."""

    def list_commands(self, ctx):
        from recis_compat.benchmarks import registry
        return sorted(registry.BENCHMARKS) + ["all"]

    def get_command(self, ctx, name):
        if name == "all":
            return _bench_all
        from recis_compat.benchmarks import registry
        if name not in registry.BENCHMARKS:
            return None
        return registry.load(name).command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recis-compat")
def main():
    """recis-compat: run RecIS scripts on TorchRec + FBGEMM."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json):
    """Versions of the stack, whether the csrc extension loaded, CUDA and CUDA-kernel status."""
    from recis_compat.doctor import collect
    info = collect()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, val in info.items():
        if isinstance(val, dict):
            click.echo(f"{key}:")
            for k, v in val.items():
                click.echo(f"  {k}: {v}")
        else:
            click.echo(f"{key}: {val}")
    if not info["extension"]["loaded"]:
        sys.exit(1)


@main.command("check-script")
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--target", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Judge for a CPU-only host (RECIS_COMPAT_DEVICE=cpu) or a GPU host; auto: this host.")
@click.option("--no-follow", is_flag=True,
              help="Check SCRIPT only, not the modules it imports from its own directory.")
def check_script(script, as_json, target, no_follow):
    """Will SCRIPT run on recis-compat? Checked statically (never run): the recis APIs it uses,
    call arguments against the real signatures, raw torch.ops.recis ops, attributes of recis
    objects, and each CUDA call with what happens on a CPU host. Exit code 1 when not runnable."""
    from recis_compat.tools.check_script import analyze_file
    report = analyze_file(script, target=target, follow_local=not no_follow)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        sys.exit(0 if report.runnable else 1)
    many = len(report.files) > 1
    for u in report.apis:
        mark = "ok " if u.supported else "NO "
        lines = ",".join(str(n) for n in u.lines)
        where = f"{u.file}, line {lines}" if many else f"line {lines}"
        click.echo(f"{mark} {u.name}  ({where})" + (f"  -- {u.reason}" if u.reason else ""))
    for f in report.findings:
        if f.kind == "cuda":
            bad = f.effect == "needs a GPU" and not f.guarded and report.target == "cpu"
            mark = "NO " if bad else "ok "
        else:
            mark = "NO "
        note = "  [only when the script selects CUDA]" if f.guarded else ""
        click.echo(f"{mark} {f.file}:{f.line}  {f.call}  -- {f.message}{note}")
    click.echo(f"{len(report.apis)} recis APIs used, {report.unsupported} unsupported")
    if report.cuda_calls:
        click.echo(f"{len(report.cuda_calls)} CUDA calls, {len(report.needs_gpu)} need a GPU "
                   f"(unguarded, not mapped by the CPU mode)")
    if not report.cpu_mode_available:
        click.echo("note: recis_compat.utils.cpu_mode is not importable: CUDA calls are judged "
                   "without the CPU mode")
    click.echo(f"verdict ({report.target} host): {report.verdict}")
    sys.exit(0 if report.runnable else 1)


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


@main.command("csv-to-orc", help=_CSV_TO_ORC_HELP, short_help="Convert CSV files to ORC for OrcDataset.")
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
def csv_to_orc(inputs, more_inputs, output, schema, list_sep, rows_per_file, stripe_size, block_size,
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


@main.group(short_help="Checkpoint tools: inspect a Trainer checkpoint.")
def ckpt():
    """Checkpoint tools (inspect) for checkpoints written by Trainer / Saver."""


@ckpt.command("inspect")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=True, dir_okay=True))
@click.option("--ckpt-id", default=None, metavar="ID",
              help="Checkpoint to inspect under a root DIR: ckpt_<step> or <step>.  [default: the latest]")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def ckpt_inspect(directory, ckpt_id, as_json):
    """Show what a checkpoint holds, without loading the model.

    \b
    DIR is a checkpoint root (the Trainer's output_dir, with a 'checkpoint' file listing
    ckpt_<step> ids; the latest is shown unless --ckpt-id) or one ckpt_<step> directory.

    \b
    Shown: every embedding table (shared_name) with its row count, embedding dim and dtype,
    its slots (id, embedding, optimizer slots such as sparse_adamw_exp_avg: shapes, dtypes)
    and the slices / shards it was saved in; the dense tensors of the sparse files (the
    sparse optimizer's scalars, with values); model.pt keys with shapes; extra.pt contents
    (global_step, dense optimizer, registered objects); io_state_<rank>.pt files (dataset
    positions) and io_state_count. Table data is not read (only the safetensors headers);
    torch files are loaded with weights_only=True.

    \b
    Examples:
      recis-compat ckpt inspect ./ckpt_out
      recis-compat ckpt inspect ./ckpt_out --ckpt-id 200 --json
      recis-compat ckpt inspect ./ckpt_out/ckpt_200

    Exit codes: 0 ok, 1 some files could not be read (listed under problems), 2 DIR is not a
    checkpoint.
    """
    from recis_compat.tools.ckpt_inspect import NotACheckpointError, format_text, inspect_checkpoint
    try:
        info = inspect_checkpoint(directory, ckpt_id)
    except NotACheckpointError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        click.echo(f"Error: {directory}: {e}", err=True)
        sys.exit(2)
    click.echo(json.dumps(info, indent=2) if as_json else format_text(info))
    if info["problems"]:
        sys.exit(1)


@main.group(cls=_LazyBenchGroup)
def bench():
    """Benchmarks: each measures ours against a baseline in the same run and prints JSON."""


@click.command(name="all")
@click.option("--quick", is_flag=True, help="A few seconds per benchmark.")
@click.option("--repeat", type=int, default=5, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None)
def _bench_all(quick, repeat, threads, json_path, plot_path):
    """Every benchmark with its default options: one JSON report and one PNG chart."""
    from recis_compat.benchmarks import common, registry
    opts_common = dict(quick=quick, repeat=1 if quick else repeat, threads=threads)
    reports = []
    for name in sorted(registry.BENCHMARKS):
        mod = registry.load(name)
        opts = common.BenchOptions(**opts_common, extra=dict(getattr(mod, "DEFAULTS", {})))
        opts.apply_threads()
        click.echo(f"running bench {name} ...", err=True)
        reports.append(common.report(name, mod.run(opts), opts))
    result = {"benchmark": "all", "machine": common.machine_info(), "reports": reports}
    click.echo(common.write_outputs(result, json_path, plot_path))


if __name__ == "__main__":
    main()
