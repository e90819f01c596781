"""``recis.io.dataset_config``: the column selection of a dataset.

RecIS ships this module empty. Here it holds :class:`ColumnSpec`, the per-column reading rule
that ``varlen_feature`` / ``fixedlen_feature`` build up and the reader applies, and
:func:`build_column_specs`, which derives the specs from the public attribute lists RecIS code
relies on (``_select_column``, ``_dense_column``, ``_dense_default_value``, ``hash_features``,
``hash_types``, ``hash_buckets``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

__all__ = ["ColumnSpec", "build_column_specs"]


@dataclass(frozen=True)
class ColumnSpec:
    """How one selected column is read.

    Attributes:
        name: column name in the ORC file.
        dense_default: for fixedlen columns the default row (its length is the dense width),
            ``None`` for varlen columns.
        hash_type: ``"farm"`` / ``"murmur"`` to hash string elements, ``"no_hash"`` for
            ``trans_int8`` (strings become int8 bytes), ``None`` to read raw.
        hash_bucket: bucket rule of the hash (0: ``h & INT64_MAX``; >0: ``uint64(h) % bucket``).
    """

    name: str
    dense_default: Optional[tuple] = None
    hash_type: Optional[str] = None
    hash_bucket: int = 0

    @property
    def is_dense(self) -> bool:
        return self.dense_default is not None

    @property
    def trans_int8(self) -> bool:
        return self.hash_type == "no_hash"


def build_column_specs(select_column: Sequence[str], dense_column: Sequence[str],
                       dense_default_value: Sequence[Sequence[float]],
                       hash_features: Sequence[str], hash_types: Sequence[str],
                       hash_buckets: Sequence[int]) -> List[ColumnSpec]:
    """One :class:`ColumnSpec` per selected column, in selection order.

    A column that is both fixedlen and varlen-with-hash is dense (the dense rule wins, as in
    RecIS where the packer treats every ``_dense_column`` as dense).
    """
    dense: Dict[str, tuple] = {n: tuple(d) for n, d in zip(dense_column, dense_default_value)}
    hashes = {n: (t, int(b)) for n, t, b in zip(hash_features, hash_types, hash_buckets)}
    specs = []
    for name in select_column:
        if name in dense:
            specs.append(ColumnSpec(name, dense_default=dense[name]))
        elif name in hashes:
            t, b = hashes[name]
            specs.append(ColumnSpec(name, hash_type=t, hash_bucket=b))
        else:
            specs.append(ColumnSpec(name))
    return specs
