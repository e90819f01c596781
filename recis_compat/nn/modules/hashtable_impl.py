"""RecIS's ``HashtableImpl`` surface over the backend's :class:`DynamicTableImpl`.

The backend table (backend/table_impl.py) speaks TorchRec-style names only; what RecIS scripts
call on the object that ``filter_out_sparse_param`` returns lives here: the ``hashtable_tag``
marker and :func:`is_hashtable`, ``slot_group()`` with :class:`Slot` / :class:`SlotGroup`,
``embedding_lookup``, ``clear_id`` and ``append_*_filter_slot``. :class:`HashTable`
(nn/modules/hashtable.py) builds its backend table with this class. Shapes: ids int64 ``[N]``;
rows int64 ``[N]`` (``-1`` = absent); embeddings ``[N, dim]`` of the table dtype.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from recis_compat.backend.locking import locked
from recis_compat.backend.table_impl import DynamicTableImpl

__all__ = ["HashtableImpl", "Slot", "SlotGroup", "is_hashtable"]


def is_hashtable(obj) -> bool:
    """RecIS's test: the object carries a ``hashtable_tag`` attribute."""
    return hasattr(obj, "hashtable_tag")


class Slot:
    """A named per-row tensor of a table (a view; RecIS's slot object)."""

    def __init__(self, impl: DynamicTableImpl, name: str):
        self._impl, self._name = impl, name

    def name(self) -> str:
        return self._name

    def block_size(self) -> int:
        return self._impl.block_size

    def flat_size(self) -> int:
        t = self.value()
        return int(t[0].numel()) if t.shape[0] else int(torch.Size(self._impl.storage.specs[self._name].tail).numel())

    def value(self) -> torch.Tensor:
        """All rows ``[capacity, *tail]`` (row order)."""
        return self._impl.storage.slot(self._name)

    def values(self) -> List[torch.Tensor]:
        """The rows cut into blocks of ``block_size``."""
        return list(torch.split(self.value(), self._impl.block_size))


class SlotGroup:
    """The slots of a table: ``slot_by_name``, ``slot_by_index``, ``slots``."""

    def __init__(self, impl: DynamicTableImpl):
        self._impl = impl

    def slots(self) -> List[Slot]:
        return [Slot(self._impl, n) for n in self._impl.storage.slots]

    def slot_by_name(self, name: str) -> Slot:
        self._impl.storage.slot(name)   # KeyError naming the slots when absent
        return Slot(self._impl, name)

    def slot_by_index(self, i: int) -> Slot:
        return self.slots()[i]

    def names(self) -> List[str]:
        return list(self._impl.storage.slots)


class HashtableImpl(DynamicTableImpl):
    """A :class:`DynamicTableImpl` with RecIS's method names (same constructor)."""

    hashtable_tag = True

    def __repr__(self) -> str:
        return f"HashtableImpl({self.name!r}, dim={self.dim}, dtype={self.dtype}, ids={len(self)}, " \
               f"capacity={self.storage.capacity}, slots={list(self.storage.slots)})"

    @locked
    def embedding_lookup(self, ids: torch.Tensor, readonly: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """RecIS's ``embedding_lookup(ids, readonly) -> (index, emb)`` (no autograd)."""
        rows = self.find_rows(ids) if (readonly or self.read_only) else self.find_or_insert_rows(ids)
        return rows, self.gather(rows)

    def clear_id(self) -> None:
        """Remove every id; rows are re-initialised and handed out again from 0."""
        self.clear()

    def slot_group(self) -> SlotGroup:
        return SlotGroup(self)

    def append_filter_slot(self, name: str, tail: Sequence[int] = (1,), dtype=torch.int64, init: float = 0) -> torch.Tensor:
        return self.add_slot(name, tail, dtype, init)

    def append_step_filter_slot(self, name: str, init_step: int) -> torch.Tensor:
        return self.add_slot(name, [1], torch.int64, init_step)
