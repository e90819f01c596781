"""Reading and re-wrapping the values of a feature input (dense, sparse COO or RaggedTensor).

:class:`DataValueProcessor` is RecIS's helper (``recis.features.op.DataValueProcessor``):
element-wise ops take the flat values out, transform them and put the result back in the
input's structure. Deliberate fix (RecIS quirk Q3): a RaggedTensor input is **not** modified;
the result is a new RaggedTensor sharing the input's offsets and weight.
"""
from __future__ import annotations

from typing import Optional

import torch

from recis_compat.ragged.tensor import RaggedTensor

__all__ = ["DataValueProcessor", "replace_values", "is_feature_value", "describe"]


def replace_values(x: RaggedTensor, values: torch.Tensor,
                   weight: Optional[torch.Tensor] = None, keep_weight: bool = True
                   ) -> RaggedTensor:
    """A new RaggedTensor with ``values`` in place of ``x``'s values.

    Shares ``x``'s offsets tensors (a new list), ``_dense_shape`` and pad info; the weight is
    ``weight`` if given, else ``x``'s weight when ``keep_weight``. ``x`` is left untouched.
    """
    w = weight if weight is not None else (x.weight() if keep_weight else None)
    out = RaggedTensor(values, list(x.offsets()), w, dense_shape=x.dense_shape)
    out.set_pad_info(x.pad_info)
    return out


def is_feature_value(x) -> bool:
    """True for a RaggedTensor, a dense tensor or a sparse COO tensor."""
    if isinstance(x, RaggedTensor):
        return True
    return isinstance(x, torch.Tensor) and x.layout in (torch.strided, torch.sparse_coo)


def describe(x) -> str:
    """Short description of an input for error messages, e.g. ``RaggedTensor[int64]``."""
    if isinstance(x, RaggedTensor):
        return f"RaggedTensor[{str(x.dtype).replace('torch.', '')}]"
    if isinstance(x, torch.Tensor):
        kind = "sparse tensor" if x.is_sparse else "tensor"
        return f"{kind}[{str(x.dtype).replace('torch.', '')}, shape={tuple(x.shape)}]"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of {len(x)}"
    return type(x).__name__


class DataValueProcessor:
    """Flat values in, same structure out.

    * RaggedTensor ``x``: values ``[N]``; the output is a new RaggedTensor (offsets, weight,
      dense shape and pad info of ``x``).
    * sparse COO ``x``: ``x._values()`` ``[nnz]``; the output is a new COO tensor with
      ``x``'s indices and size.
    * dense ``x`` (any shape): ``x`` itself; the output is ``result.reshape(x.shape)``.
    """

    def __init__(self, data):
        self._data = data

    @property
    def data(self):
        return self._data

    def get_input_value(self) -> torch.Tensor:
        d = self._data
        if isinstance(d, RaggedTensor):
            return d.values()
        if isinstance(d, torch.Tensor):
            if d.layout == torch.sparse_coo:
                return d._values()
            if d.layout == torch.strided:
                return d
        raise ValueError(f"DataValueProcessor: expected a RaggedTensor, a dense tensor or a "
                         f"sparse COO tensor, got {describe(d)}")

    def get_output_value(self, result: torch.Tensor):
        d = self._data
        if isinstance(d, RaggedTensor):
            return replace_values(d, result)
        if isinstance(d, torch.Tensor):
            if d.layout == torch.sparse_coo:
                return torch.sparse_coo_tensor(d._indices(), result,
                                               tuple(d.shape[:d.sparse_dim()])
                                               + tuple(result.shape[1:]),
                                               is_coalesced=d.is_coalesced(),
                                               check_invariants=False)
            if d.layout == torch.strided:
                return result.reshape(d.shape)
        raise ValueError(f"DataValueProcessor: expected a RaggedTensor, a dense tensor or a "
                         f"sparse COO tensor, got {describe(d)}")

