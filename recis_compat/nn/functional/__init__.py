"""``recis.nn.functional``: low-level functional ops (RecIS 1.0; see COMPATIBILITY.md).

Submodules: :mod:`array_ops`, :mod:`embedding_ops`, :mod:`fused_ops`, :mod:`hash_ops`,
:mod:`ragged_ops`. They run on CPU and CUDA tensors alike.
"""
from recis_compat.nn.functional import array_ops, embedding_ops, fused_ops, hash_ops, ragged_ops

__all__ = ["array_ops", "embedding_ops", "fused_ops", "hash_ops", "ragged_ops"]
