"""``recis.serialize.checkpoint_reader.CheckpointReader``: read the tensors of a sparse checkpoint
directory by logical name (RecIS 1.0; see COMPATIBILITY.md).

Logical names: ``"<shared_name>@<slot>"`` for table blocks (``"user_emb@id"``,
``"user_emb@embedding"``, ``"user_emb@sparse_adamw_exp_avg"``) and the plain name for dense
tensors (``"sparse_adamw_step"``). A table tensor is the concatenation of its blocks over shards
in slice order, so row ``k`` of ``"<shared>@<slot>"`` belongs to id ``k`` of ``"<shared>@id"``.
Errors: :class:`~recis_compat.serialize.layout.CheckpointError` for a missing or corrupt
directory / file, ``KeyError`` for an unknown name.
"""
from __future__ import annotations

from typing import List

import torch

from recis_compat.serialize.bundle import CheckpointBundle

__all__ = ["CheckpointReader"]


class CheckpointReader:
    """Reads a checkpoint directory written by ``recis.serialize.Saver``.

    Args:
        path: the checkpoint directory (with ``index`` and ``tensorkey.json``).
    """

    def __init__(self, path: str):
        self._bundle = CheckpointBundle(path)

    def _refs(self, name: str):
        refs = self._bundle.blocks(name)
        if not refs:
            raise KeyError(f"tensor {name!r} not found in checkpoint {self._bundle.path} "
                           f"({len(self._bundle.tensors)} tensors, e.g. {self.tensor_names()[:5]})")
        return refs

    def tensor_names(self) -> List[str]:
        """Every logical tensor name, sorted."""
        return sorted(self._bundle.tensors)

    def tensor_shape(self, name: str) -> List[int]:
        """Shape of the full tensor (rows summed over blocks)."""
        shape: List[int] = []
        for ref in self._refs(name):
            _, s = self._bundle.block_meta(ref)
            if not shape:
                shape = list(s)
            elif s:
                shape[0] += s[0]
        return shape

    def tensor_dtype(self, name: str) -> torch.dtype:
        return self._bundle.block_meta(self._refs(name)[0])[0]

    def read_tensor(self, name: str) -> torch.Tensor:
        """The full tensor: its blocks concatenated along dim 0 in slice order."""
        refs = self._refs(name)
        parts = [self._bundle.read(ref) for ref in refs]
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts, 0)
