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
def check_script(script, as_json):
    """List the recis APIs SCRIPT uses (statically) and flag those recis-compat lacks."""
    from dataclasses import asdict

    from recis_compat.tools.check_script import check_file
    uses = check_file(script)
    missing = [u for u in uses if not u.supported]
    if as_json:
        click.echo(json.dumps({"script": script, "apis": [asdict(u) for u in uses],
                               "unsupported": len(missing)}, indent=2))
    else:
        for u in uses:
            mark = "ok " if u.supported else "NO "
            lines = ",".join(str(n) for n in u.lines)
            click.echo(f"{mark} {u.name}  (line {lines})" + (f"  -- {u.reason}" if u.reason else ""))
        click.echo(f"{len(uses)} recis APIs used, {len(missing)} unsupported")
    sys.exit(1 if missing else 0)


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
