"""``recis.nn.functional``: low-level functional ops (RecIS 1.0; see COMPATIBILITY.md).

Submodules: :mod:`array_ops`, :mod:`fused_ops`, :mod:`hash_ops`, :mod:`ragged_ops`
(and ``embedding_ops`` where provided). They run on CPU and CUDA tensors alike.
"""
import importlib as _importlib
import importlib.util as _importlib_util

from recis_compat.nn.functional import array_ops, fused_ops, hash_ops, ragged_ops

# embedding_ops is written by another part of the project; import it when present (its own
# import errors are not hidden).
if _importlib_util.find_spec(f"{__name__}.embedding_ops") is not None:
    embedding_ops = _importlib.import_module(f"{__name__}.embedding_ops")

__all__ = ["array_ops", "fused_ops", "hash_ops", "ragged_ops"]
