"""The internal first map function: column_io-style nested lists -> tensors (RecIS 1.0; see COMPATIBILITY.md).

Input: ``[{column: nested list}]`` as produced by the packer (layout in
:mod:`recis_compat.io.column_chunk`). Output, per column:
  * dense (``dense_column``): the ``[B, D]`` tensor (floating data cast to ``dtype``);
  * raw strings: the nested list itself, ``[np.ndarray dtype 'S', offsets (numpy), ...]`` with
    offsets innermost first; object arrays are turned into ``'S'`` (``'U'`` if that fails);
  * otherwise ``RaggedTensor(values, offsets outermost first, weight, dense_shape=(B, -1, ...))``
    (floating values and weights cast to ``dtype``; integer values keep their type; offsets
    int32 for ``list<>``, int64 for ``large_list<>``);
  * ``ragged_format=False``: those RaggedTensors become sparse COO tensors; a weighted column
    also adds ``name + "_weight"``, a sparse tensor of the **weights** (RecIS puts the ids
    there, quirk Q22, fixed).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from recis_compat.ragged.tensor import RaggedTensor

__all__ = ["is_string_dtype", "batch_convert"]


def is_string_dtype(arr) -> bool:
    """True for numpy arrays of byte strings, unicode strings or objects."""
    return arr.dtype.kind in {"U", "S", "O"}


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(t)
    if t.dtype != dtype and t.dtype.is_floating_point:
        t = t.to(dtype)
    return t


def _ragged(level: list, dtype: torch.dtype, weight=None) -> RaggedTensor:
    values = _cast(level[0], dtype)
    offsets = [o if isinstance(o, torch.Tensor) else torch.from_numpy(o) for o in level[:0:-1]]
    shape = (offsets[0].numel() - 1,) + (-1,) * len(offsets)
    return RaggedTensor(values=values, offsets=offsets, weight=weight, dense_shape=shape)


def batch_convert(dense_column: Sequence[str], ragged_format: bool,
                  dtype: torch.dtype) -> Callable[[list], list]:
    """The conversion function for one dataset configuration (see module docstring)."""
    dense = set(dense_column)

    tensor_type = torch.Tensor
    from_checked = RaggedTensor.from_checked

    def convert(input_data: list) -> list:
        out = []
        for table in input_data:
            group = {}
            for name, data in table.items():
                level = data[0]
                first = level[0]
                if (ragged_format and len(data) == 1 and len(level) == 2
                        and type(first) is tensor_type and type(level[1]) is tensor_type
                        and name not in dense):
                    # the common case, a one-level ragged column without weights, tensors
                    # already (the packer's short path, recis_compat/io/column_chunk.py)
                    if first.dtype.is_floating_point and first.dtype != dtype:
                        first = first.to(dtype)
                    off = level[1]
                    group[name] = from_checked(first, [off], (off.shape[0] - 1, -1))
                    continue
                offsets = level[:0:-1]
                if (len(data) == 1 and ragged_format and type(first) is tensor_type
                        and name not in dense and offsets
                        and all(type(o) is tensor_type for o in offsets)):
                    # a nested ragged column without weights: tensors already
                    if first.dtype != dtype and first.is_floating_point():
                        first = first.to(dtype)
                    group[name] = RaggedTensor(values=first, offsets=offsets,
                                               dense_shape=(offsets[0].numel() - 1,)
                                               + (-1,) * len(offsets))
                elif isinstance(first, np.ndarray) and is_string_dtype(first):
                    if first.dtype.kind == "O":
                        try:
                            data[0][0] = first.astype("S")
                        except (UnicodeEncodeError, ValueError, TypeError):
                            data[0][0] = first.astype("U")
                    group[name] = data[0]
                elif name in dense:
                    group[name] = _cast(first, dtype)
                else:
                    weight = _cast(data[1][0], dtype) if len(data) > 1 else None
                    rt = _ragged(data[0], dtype, weight)
                    if ragged_format:
                        group[name] = rt
                    else:
                        group[name] = rt.to_sparse()
                        if weight is not None:
                            group[name + "_weight"] = RaggedTensor(
                                weight, rt.offsets(), dense_shape=rt.dense_shape).to_sparse()
            out.append(group)
        return out

    return convert
