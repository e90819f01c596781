"""The lock of a dynamic table (docs/reliability.md, thread safety).

One reentrant lock per table guards its id map, its row storage and the table implementation
that owns both (they are handed the same lock). :func:`locked` runs a method holding
``self._lock``; :class:`OwnLock` gives a copy (pickle, ``copy.deepcopy``) a fresh lock of its own,
since a lock can be neither pickled nor shared with a copy.
"""
from __future__ import annotations

import functools
import threading

__all__ = ["locked", "OwnLock"]


def locked(method):
    """Run ``method`` holding ``self._lock``."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


class OwnLock:
    """Mixin for objects whose ``_lock`` must not travel with a copy."""

    _lock: threading.RLock

    def __getstate__(self):
        with self._lock:
            state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()
