"""``recis.io.filter_dataset.FilterDataset``: keep the items every filter function accepts.

Fix of RecIS quirk Q10 (COMPATIBILITY.md): RecIS stores filter functions but never applies
them. Here an item is **dropped when any filter returns a falsy value** (``tf.data`` semantics:
the function says which batches to keep). Filters run on the final batch, after the internal
conversion, the ``map`` functions and the ``transform_fn`` list.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from recis_compat.io.threads import close_iterator

__all__ = ["FilterDataset"]


class FilterDataset:
    """Yield the items of ``input_dataset`` for which every ``filter_funcs`` entry is truthy."""

    def __init__(self, input_dataset, filter_funcs: Optional[Sequence[Callable]] = None):
        self._input = input_dataset
        self._funcs = list(filter_funcs or [])

    def __iter__(self):
        return self._gen(iter(self._input))

    def _gen(self, it):
        """Closing this generator closes ``it`` too (see :mod:`.map_dataset`)."""
        funcs = self._funcs
        try:
            for item in it:
                if all(f(item) for f in funcs):
                    yield item
        finally:
            close_iterator(it)
