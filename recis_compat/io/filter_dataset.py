"""``recis.io.filter_dataset.FilterDataset``: keep the items every filter function accepts.

Fix of RecIS quirk Q10 (COMPATIBILITY.md): RecIS stores filter functions but never applies
them. Here an item is **dropped when any filter returns a falsy value** (``tf.data`` semantics:
the function says which batches to keep). Filters run on the final batch, after the internal
conversion, the ``map`` functions and the ``transform_fn`` list.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

__all__ = ["FilterDataset"]


class FilterDataset:
    """Yield the items of ``input_dataset`` for which every ``filter_funcs`` entry is truthy."""

    def __init__(self, input_dataset, filter_funcs: Optional[Sequence[Callable]] = None):
        self._input = input_dataset
        self._funcs = list(filter_funcs or [])

    def __iter__(self):
        funcs = self._funcs
        for item in self._input:
            if all(f(item) for f in funcs):
                yield item
