"""Argument coercion shared by the ``nn.functional`` wrappers: RecIS passes per-feature integer
and boolean options as Python lists, tuples, scalars or tensors."""
from __future__ import annotations

from typing import List

import torch


def as_int_list(x) -> List[int]:
    """``x`` (int, sequence of ints, or tensor of any shape) as a flat list of Python ints."""
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.reshape(-1).tolist()]
    if isinstance(x, int):
        return [int(x)]
    return [int(v) for v in x]


def as_bool_list(x, n: int, default: bool = False) -> List[bool]:
    """``x`` as ``n`` Python bools: None -> ``[default] * n``; a bool -> repeated ``n`` times;
    a sequence or tensor -> its values."""
    if x is None:
        return [default] * n
    if isinstance(x, torch.Tensor):
        return [bool(v) for v in x.reshape(-1).tolist()]
    if isinstance(x, bool):
        return [x] * n
    return [bool(v) for v in x]
