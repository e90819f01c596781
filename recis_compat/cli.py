"""``recis-compat``: the command-line entry point (click).

Commands: ``doctor`` (what is installed and built), ``bench NAME`` (benchmarks, JSON out),
``criteo-to-parquet`` / ``criteo-synth`` (Criteo data, recis_compat/tools/criteo_*.py).
"""
from __future__ import annotations

import json
import sys

import importlib

import click

from recis_compat.tools.csv_to_orc_cli import command as csv_to_orc_command

# tool commands whose modules import numpy / pyarrow: loaded when invoked or listed in help
_LAZY_COMMANDS = {"criteo-to-parquet": "recis_compat.tools.criteo_to_parquet",
                  "criteo-synth": "recis_compat.tools.criteo_synth"}


class _LazyMain(click.Group):
    """The top-level group; the commands of ``_LAZY_COMMANDS`` are imported on use, so
    ``recis-compat doctor`` and friends do not pay for pyarrow."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(_LAZY_COMMANDS))

    def get_command(self, ctx, name):
        if name in _LAZY_COMMANDS:
            return importlib.import_module(_LAZY_COMMANDS[name]).command
        return super().get_command(ctx, name)


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


@click.group(cls=_LazyMain, context_settings={"help_option_names": ["-h", "--help"]})
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


main.add_command(csv_to_orc_command, "csv-to-orc")


@main.group(short_help="Checkpoint tools: inspect a Trainer checkpoint.")
def ckpt():
    """Checkpoint tools (inspect) for checkpoints written by Trainer / Saver."""


@ckpt.command("inspect")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=True, dir_okay=True))
@click.option("--ckpt-id", default=None, metavar="ID",
              help="Checkpoint to inspect under a root DIR: ckpt_<step>, delta_<step> or <step>.  "
                   "[default: the latest full checkpoint]")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--verify", is_flag=True,
              help="Check every file against checksums.json (reads all the data).")
def ckpt_inspect(directory, ckpt_id, as_json, verify):
    """Show what a checkpoint holds, without loading the model.

    \b
    DIR is a checkpoint root (the Trainer's output_dir, with a 'checkpoint' file listing
    ckpt_<step> ids; the latest is shown unless --ckpt-id) or one ckpt_<step> or delta_<step>
    directory.

    \b
    Delta checkpoints (TrainingArguments.delta_save_steps): the chain of the inspected
    checkpoint is shown (its full base and every delta listed for it in delta_checkpoint, with
    the step, rows changed and ids deleted of each); a delta directory shows its base, parent,
    sequence and per-table counts. A missing or unlinked link (with --verify: a corrupt one) is
    listed under problems.

    \b
    Shown: every embedding table (shared_name) with its row count, embedding dim and dtype,
    its slots (id, embedding, optimizer slots such as sparse_adamw_exp_avg: shapes, dtypes)
    and the slices / shards it was saved in; the dense tensors of the sparse files (the
    sparse optimizer's scalars, with values); model.pt keys with shapes; extra.pt contents
    (global_step, dense optimizer, registered objects); io_state_<rank>.pt files (dataset
    positions) and io_state_count. Table data is not read (only the safetensors headers);
    torch files are loaded with weights_only=True. --verify also reads every file and checks
    it against the checkpoint's checksums.json (mismatches are listed under problems).

    \b
    Examples:
      recis-compat ckpt inspect ./ckpt_out
      recis-compat ckpt inspect ./ckpt_out --ckpt-id 200 --json
      recis-compat ckpt inspect ./ckpt_out/ckpt_200
      recis-compat ckpt inspect ./ckpt_out --ckpt-id delta_210

    Exit codes: 0 ok, 1 some files could not be read (listed under problems), 2 DIR is not a
    checkpoint.
    """
    from recis_compat.tools.ckpt_inspect import NotACheckpointError, format_text, inspect_checkpoint
    try:
        info = inspect_checkpoint(directory, ckpt_id, verify=verify)
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
