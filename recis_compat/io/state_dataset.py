"""``recis.io.state_dataset.StateDataset``: records the IO state of what was handed out.

Input items are :class:`~recis_compat.io.packer.PackedBatch` objects; the output is their
``data``. The state is written to ``state_map[sub_id]`` at the moment a batch is handed
downstream (after any prefetching), so it always points at the first row the consumer has
not received: resuming from it is exact.

``save_interval``: falsy disables state tracking (as in RecIS). Any other value refreshes the
state on **every** batch (a difference from RecIS, which refreshes every ``save_interval``
batches and so may replay up to ``save_interval - 1`` batches on resume); refreshing is a dict
assignment, so doing it per batch costs nothing measurable.
"""
from __future__ import annotations

from typing import Optional

from recis_compat.io.threads import close_iterator

__all__ = ["StateDataset"]


class StateDataset:
    """Args:
        dataset: iterable of ``PackedBatch``.
        mp_lock: a lock guarding ``state_map`` (a ``threading.Lock`` here).
        state_map: dict ``{sub_id: state string}`` shared with the owning dataset.
        load_state: the state string of the position this pipeline starts at (the loaded IO
            state when resuming); recorded before the first batch.
        save_interval: falsy disables tracking.
        sub_id: key of this reader in ``state_map``.
    """

    def __init__(self, dataset, mp_lock, state_map, load_state: Optional[str] = None,
                 save_interval=100, sub_id: int = 0):
        self._dataset = dataset
        self._lock = mp_lock
        self._state_map = state_map
        self._load_state = load_state
        self._save_interval = save_interval
        self._sub_id = sub_id
        self._started = False

    def _record(self, state: str) -> None:
        with self._lock:
            self._state_map[self._sub_id] = state

    def __iter__(self):
        self._started = True
        if self._save_interval and self._load_state is not None:
            self._record(self._load_state)
        return self._gen(iter(self._dataset))

    def _gen(self, it):
        """Closing this generator closes ``it`` too (see :mod:`.map_dataset`)."""
        track = bool(self._save_interval)
        try:
            for item in it:
                if track:
                    self._record(item.state)
                yield item.data
        finally:
            close_iterator(it)

    def dump_io_state(self) -> dict:
        """``{sub_id: state}``; ``RuntimeError`` before the first ``__iter__``."""
        if not self._started:
            raise RuntimeError("StateDataset.dump_io_state() called before iteration started")
        with self._lock:
            return dict(self._state_map)
