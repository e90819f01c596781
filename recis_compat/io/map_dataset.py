"""``recis.io.map_dataset.MapDataset``: apply functions to every item, in order."""
from __future__ import annotations

from typing import Callable, Sequence

from recis_compat.io.threads import close_iterator

__all__ = ["MapDataset"]


class MapDataset:
    """Yield ``f_n(...f_2(f_1(item)))`` for each item of ``input_dataset``."""

    def __init__(self, input_dataset, map_funcs: Sequence[Callable]):
        self._input = input_dataset
        self._funcs = list(map_funcs)

    def __iter__(self):
        return self._gen(iter(self._input))

    def _gen(self, it):
        """Closing this generator (or its end, or an exception) closes ``it`` too, so a
        ``close()`` reaches the prefetch and reader threads (recis_compat/io/threads.py)."""
        funcs = self._funcs
        try:
            for item in it:
                for f in funcs:
                    item = f(item)
                yield item
        finally:
            close_iterator(it)
