"""Logical sub-tables ("children") of one physical table and RecIS's 52-bit id encoding.

A coalesced table stores the ids of several logical tables (one per ``shared_name``); an id of
child ``k`` is stored as ``(id & (2^52 - 1)) | (k << 52)``: the top 12 bits hold the child index,
so a physical table holds at most 4095 children and ids keep only their low 52 bits (RecIS's
quirk Q8, kept so checkpoints hold the same ids).
"""
from __future__ import annotations

from typing import List, Sequence

import torch

INDEX_BITS = 12
ID_BITS = 52
ID_MASK = (1 << ID_BITS) - 1
INDEX_MASK = ((1 << INDEX_BITS) - 1) << ID_BITS
MAX_CHILDREN = (1 << INDEX_BITS) - 1     # 4095

__all__ = ["ChildrenInfo", "ID_BITS", "ID_MASK", "INDEX_BITS", "MAX_CHILDREN", "encode_ids", "decode_ids"]


def _signed(x: int) -> int:
    """The int64 value with the same 64 bits as the non-negative ``x``."""
    return x - (1 << 64) if x >= (1 << 63) else x


def encode_ids(ids: torch.Tensor, child_index: int) -> torch.Tensor:
    """int64 ``ids`` -> ``(ids & (2^52-1)) | (child_index << 52)`` (same shape)."""
    return (ids & ID_MASK) | _signed(int(child_index) << ID_BITS)


def decode_ids(encoded: torch.Tensor):
    """``(raw_ids, child_index)`` of encoded int64 ids: the low 52 bits and the top 12 bits."""
    return encoded & ID_MASK, (encoded >> ID_BITS) & ((1 << INDEX_BITS) - 1)


class ChildrenInfo:
    """Names of the children of one physical table, in index order.

    Args:
        children: child names (unique, 1..4095 of them).
        coalesced: whether ids are encoded with the child index (EmbeddingEngine tables).
        table: the physical table's name, for error messages.
    """

    def __init__(self, children: Sequence[str], coalesced: bool = False, table: str = "hashtable"):
        children = list(children)
        if not children:
            raise ValueError(f"table {table!r}: needs at least one child name")
        if len(children) > MAX_CHILDREN:
            raise ValueError(f"table {table!r}: {len(children)} children (shared_names) in one physical "
                             f"table; at most {MAX_CHILDREN} fit the 12-bit child index. Give some "
                             "options a different dim, dtype or initializer to split the table.")
        if len(set(children)) != len(children):
            dup = sorted({c for c in children if children.count(c) > 1})
            raise ValueError(f"table {table!r}: duplicate child names {dup}")
        self._children: List[str] = children
        self._index = {c: i for i, c in enumerate(children)}
        self._coalesced = bool(coalesced)

    # RecIS's ChildrenInfo API
    def index_bits_num(self) -> int:
        return INDEX_BITS

    def id_bits_num(self) -> int:
        return ID_BITS

    @property
    def id_mask(self) -> int:
        return ID_MASK

    @property
    def index_mask(self) -> int:
        return _signed(INDEX_MASK)

    def max_children_num(self) -> int:
        return MAX_CHILDREN

    def encode_id(self, ids: torch.Tensor, index: int) -> torch.Tensor:
        return encode_ids(ids, index)

    def children(self) -> List[str]:
        return list(self._children)

    def child_index(self, name: str) -> int:
        if name not in self._index:
            raise KeyError(f"no child {name!r}; children: {self._children}")
        return self._index[name]

    def has_child(self, name: str) -> bool:
        return name in self._index

    def child_at(self, index: int) -> str:
        return self._children[index]

    def is_coalesce(self) -> bool:
        return self._coalesced

    def __len__(self) -> int:
        return len(self._children)

    def __repr__(self) -> str:
        return f"ChildrenInfo(children={self._children}, coalesced={self._coalesced})"
