"""Name -> benchmark module. Each module exposes ``run(opts) -> list[Case]`` and ``DESCRIPTION``.

Modules are imported lazily so one broken dependency does not hide the other benchmarks.
"""
from __future__ import annotations

import importlib
from typing import Dict

# bench name -> module under recis_compat.benchmarks
BENCHMARKS: Dict[str, str] = {}


def register(name: str, module: str) -> None:
    BENCHMARKS[name] = module


def load(name: str):
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return importlib.import_module(f"recis_compat.benchmarks.{BENCHMARKS[name]}")


for _name, _mod in [
    ("io", "io_bench"),
    ("features", "features_bench"),
    ("hashtable", "hashtable_bench"),
    ("lookup", "lookup_bench"),
    ("tile", "tile_bench"),
    ("optim", "optim_bench"),
    ("train", "train_bench"),
    ("ckpt", "ckpt_bench"),
    ("store", "store_bench"),
]:
    register(_name, _mod)
