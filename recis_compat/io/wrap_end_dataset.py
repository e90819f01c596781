"""``recis.io.wrap_end_dataset.WrapEndDataset``: ``(is_end, data)`` items, never StopIteration.

The iterator yields ``(False, item)`` while the input lasts, then ``(True, None)`` forever, as
RecIS's does (consumers check the flag; a plain ``for`` loop never ends).
"""
from __future__ import annotations

from recis_compat.io.threads import close_iterator

__all__ = ["WrapEndDataset"]


class _WrapEndIterator:
    def __init__(self, it):
        self._it = it

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            return True, None
        try:
            return False, next(self._it)
        except StopIteration:
            self.close()
            return True, None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the pipeline (stops prefetch and reader threads); later calls give the end."""
        it, self._it = self._it, None
        close_iterator(it)


class WrapEndDataset:
    """Wrap an iterable so its iterator reports the end with ``(True, None)``."""

    def __init__(self, dataset):
        self._dataset = dataset

    def __iter__(self):
        return _WrapEndIterator(iter(self._dataset))
