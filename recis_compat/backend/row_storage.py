"""Growable row storage with named slots: the values side of a dynamic embedding table.

A table owns one :class:`RowStorage`: slot ``"embedding"`` ``[capacity, dim]`` plus any number
of extra slots (optimizer moments such as ``sparse_adamw_exp_avg``, the eviction filter's
``step_filter``), all indexed by the same row numbers the id map hands out.

Capacity grows without a size from the user, amortised (x1.5, at least one ``block`` of rows,
always a whole number of blocks as RecIS's block storage), so a table holding N rows never
reserves more than ~1.5 N + block rows. New embedding rows
take values from the table's initializer when the capacity grows (RecIS fills a whole block
at block creation); rows freed by eviction are re-initialised by :meth:`reset_rows`.

Thread safety: every method holds the storage's lock (a ``threading.RLock``, the owning table's
lock when it passes one, see ``backend/table_impl.py``): growth replaces each slot tensor by a
larger copy, so an unsynchronised write or a second growth running at the same time would be
lost or leave slots of different lengths.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from recis_compat.backend.locking import OwnLock, locked

GROWTH = 1.5


@dataclass
class SlotSpec:
    """How a slot's rows look and start: ``[rows, *tail]`` of ``dtype``, filled with ``init``."""

    tail: List[int]
    dtype: torch.dtype
    init: float = 0.0


class RowStorage(OwnLock):
    """Named slots over one row index space.

    Args:
        dim: embedding width (the ``"embedding"`` slot is ``[capacity, dim]``).
        dtype: embedding dtype.
        device: where the slots live.
        sample_rows: ``f(k) -> Tensor[k, dim]`` drawing k initial embedding rows (the table's
            initializer); called on growth and on :meth:`reset_rows`. None: new and reset rows
            are zeros (the table then writes each new id's initial values itself).
        block: minimum growth step in rows.
        lock: the lock every method holds (default: a new ``threading.RLock``).
    """

    def __init__(self, dim: int, dtype: torch.dtype, device, sample_rows, block: int = 1024,
                 lock: Optional[threading.RLock] = None):
        self._lock = lock if lock is not None else threading.RLock()
        self.dim = int(dim)
        self.device = torch.device(device)
        self.block = max(1, int(block))
        self._sample_rows = sample_rows
        self.specs: Dict[str, SlotSpec] = {"embedding": SlotSpec([self.dim], dtype)}
        self.slots: Dict[str, torch.Tensor] = {
            "embedding": torch.empty((0, self.dim), dtype=dtype, device=self.device)}

    # ---------------------------------------------------------------- shape
    @property
    def capacity(self) -> int:
        return self.slots["embedding"].shape[0]

    @property
    def embedding(self) -> torch.Tensor:
        return self.slots["embedding"]

    @locked
    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.slots.values())

    def _initial(self, name: str, rows: int) -> torch.Tensor:
        spec = self.specs[name]
        if name == "embedding" and self._sample_rows is not None:
            vals = self._sample_rows(rows)
            if tuple(vals.shape) != (rows, self.dim):
                raise RuntimeError(f"initializer produced shape {tuple(vals.shape)}, expected "
                                   f"({rows}, {self.dim})")
            return vals.to(device=self.device, dtype=spec.dtype)
        return torch.full([rows] + spec.tail, spec.init, dtype=spec.dtype, device=self.device)

    @locked
    def ensure_capacity(self, rows_needed: int) -> None:
        """Grow every slot so that row indices ``< rows_needed`` exist (amortised)."""
        cap = self.capacity
        if rows_needed <= cap:
            return
        new_cap = max(int(rows_needed), int(cap * GROWTH), cap + self.block)
        new_cap = -(-new_cap // self.block) * self.block
        extra = new_cap - cap
        for name, t in self.slots.items():
            self.slots[name] = torch.cat([t, self._initial(name, extra)], 0)

    # ---------------------------------------------------------------- slots
    @locked
    def add_slot(self, name: str, tail: Sequence[int], dtype: torch.dtype, init: float = 0.0) -> torch.Tensor:
        """Create slot ``name`` (rows ``[capacity, *tail]`` filled with ``init``); idempotent for an
        identical spec, an error for a conflicting one."""
        spec = SlotSpec([int(x) for x in tail], dtype, float(init))
        if name in self.specs:
            if self.specs[name] != spec:
                raise ValueError(f"slot {name!r} already exists as {self.specs[name]}, not {spec}")
            return self.slots[name]
        self.specs[name] = spec
        self.slots[name] = self._initial(name, self.capacity)
        return self.slots[name]

    def slot(self, name: str) -> torch.Tensor:
        if name not in self.slots:
            raise KeyError(f"no slot {name!r}; slots: {list(self.slots)}")
        return self.slots[name]

    @locked
    def reset_rows(self, rows: torch.Tensor, preserve: Iterable[str] = ()) -> None:
        """Re-initialise ``rows`` in every slot but ``preserve`` (eviction: a freed row must
        start fresh when reused)."""
        if rows.numel() == 0:
            return
        keep = set(preserve)
        rows = rows.to(device=self.device, dtype=torch.int64)
        for name in self.slots:
            if name not in keep:
                self.slots[name].index_copy_(0, rows, self._initial(name, rows.numel()))

    @locked
    def write_rows(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        """``slot[rows] = values`` (dtype and device converted)."""
        t = self.slot(name)
        t.index_copy_(0, rows.to(device=self.device, dtype=torch.int64), values.to(t.dtype).to(self.device))

    @locked
    def clear(self) -> None:
        """Drop every row of every slot (capacity 0; the slots themselves stay)."""
        self.slots = {k: v[:0].clone() for k, v in self.slots.items()}

    @locked
    def to(self, device) -> "RowStorage":
        self.device = torch.device(device)
        self.slots = {k: v.to(self.device) for k, v in self.slots.items()}
        return self
