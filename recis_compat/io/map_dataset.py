"""``recis.io.map_dataset.MapDataset``: apply functions to every item, in order."""
from __future__ import annotations

from typing import Callable, Sequence

__all__ = ["MapDataset"]


class MapDataset:
    """Yield ``f_n(...f_2(f_1(item)))`` for each item of ``input_dataset``."""

    def __init__(self, input_dataset, map_funcs: Sequence[Callable]):
        self._input = input_dataset
        self._funcs = list(map_funcs)

    def __iter__(self):
        funcs = self._funcs
        for item in self._input:
            for f in funcs:
                item = f(item)
            yield item
