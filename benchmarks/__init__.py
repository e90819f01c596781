"""Benchmarks, one module per hot path, driven by ``recis-compat bench NAME``.

Installed as ``recis_compat.benchmarks``. Each module defines ``run(opts: BenchOptions) ->
list[Case]``; :mod:`recis_compat.benchmarks.common` times, reports and plots.
"""
