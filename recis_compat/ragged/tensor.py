"""``recis.ragged.tensor``: RaggedTensor and RaggedPadInfo (RecIS 1.0; see COMPATIBILITY.md).

A RaggedTensor holds ``values`` (1-D, every leaf value concatenated), a list of 1-D
``offsets`` tensors outermost first (``offsets[0]`` has ``B+1`` entries; ``offsets[k+1]``
partitions the elements counted by ``offsets[k]``), an optional per-value ``weight`` and a
``_dense_shape`` tuple of length ``len(offsets)+1`` where ``-1`` means ragged/unknown.

Fixes relative to RecIS (COMPATIBILITY.md, Q15): ``to(dtype)`` converts the values only (the
offsets keep their integer type); ``get_shape``/``max_length`` resolve negative dims correctly;
``from_dense`` works (strips trailing zeros per row). ``to_sparse`` sizes the result from the
data (as ``to_dense`` does), so a user-set ``_dense_shape`` can never yield out-of-bounds indices.

An empty offsets list is accepted, as RecIS stores it: such a RaggedTensor is a plain 1-D batch
(dim 0 = ``values.shape[0]`` unless ``dense_shape`` says otherwise; ``to_dense`` is a copy of the
values, ``to_sparse`` indexes them by position). RecIS itself fails on it as soon as a shape is
asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from recis_compat.utils.device import resolve_device

__all__ = ["RaggedTensor", "RaggedPadInfo"]


@dataclass
class RaggedPadInfo:
    """Per-row drop/pad counts attached by the fused 2-D ``SequenceTruncate``.

    ``drop_nums``/``pad_nums``: lists of int tensors ``[B]``; ``drop_sides``/``pad_sides``: bool
    tensors (True = left).
    """

    drop_nums: List[torch.Tensor] = None
    pad_nums: List[torch.Tensor] = None
    drop_sides: torch.Tensor = None
    pad_sides: torch.Tensor = None


def _max_row_length(offsets: torch.Tensor) -> int:
    if offsets.numel() < 2:
        return 0
    return int((offsets[1:] - offsets[:-1]).max().item())


class RaggedTensor:
    """A batch of variable-length (possibly nested) lists; see the module docstring."""

    def __init__(self, values: torch.Tensor,
                 offsets: Union[torch.Tensor, Sequence[torch.Tensor]],
                 weight: Optional[torch.Tensor] = None,
                 dense_shape: Optional[Sequence[int]] = None):
        if isinstance(offsets, torch.Tensor):
            offsets = [offsets]
        offsets = list(offsets)
        for i, o in enumerate(offsets):
            if not isinstance(o, torch.Tensor) or o.dim() != 1:
                raise ValueError(f"RaggedTensor offsets[{i}] must be a 1-D tensor, got "
                                 f"{type(o).__name__} {getattr(o, 'shape', '')}")
        if weight is not None and weight.shape[0] != values.shape[0]:
            raise ValueError(f"RaggedTensor weight has {weight.shape[0]} entries but values "
                             f"has {values.shape[0]}")
        self._values = values
        self._offsets = offsets
        self._weight = weight
        self._pad_info: Optional[RaggedPadInfo] = None
        if dense_shape is None:
            self._dense_shape = tuple(self.real_shape())
        else:
            dense_shape = tuple(int(d) for d in dense_shape)
            if len(dense_shape) != len(offsets) + 1:
                raise ValueError(f"RaggedTensor dense_shape {dense_shape} must have "
                                 f"len(offsets)+1 = {len(offsets) + 1} entries")
            if any(d < -1 for d in dense_shape):
                raise ValueError(f"RaggedTensor dense_shape {dense_shape}: every entry must be "
                                 f"a size >= 0 or -1 (ragged/unknown)")
            self._dense_shape = dense_shape

    @classmethod
    def from_checked(cls, values: torch.Tensor, offsets: List[torch.Tensor],
                     dense_shape: tuple) -> "RaggedTensor":
        """A RaggedTensor without weights from parts the caller has already checked: ``offsets``
        a list of 1-D tensors (outermost first), ``dense_shape`` a tuple of ints with
        ``len(offsets) + 1`` entries, each ``>= -1``. Skips the constructor's checks: the IO
        pipeline builds one per column per batch (tens of thousands per pass of
        ``recis-compat bench io``) from the packer's tensors, whose shapes it made itself."""
        out = cls.__new__(cls)
        out._set_parts(values, offsets, dense_shape)
        return out

    def _set_parts(self, values: torch.Tensor, offsets: List[torch.Tensor],
                   dense_shape: tuple) -> None:
        self._values = values
        self._offsets = offsets
        self._weight = None
        self._pad_info = None
        self._dense_shape = dense_shape

    # ------------------------------------------------------------------ accessors
    def values(self) -> torch.Tensor:
        return self._values

    def set_values(self, values: torch.Tensor) -> None:
        """Replace the values in place (RecIS semantics: mutates this object)."""
        self._values = values

    def offsets(self) -> List[torch.Tensor]:
        return self._offsets

    def weight(self) -> Optional[torch.Tensor]:
        return self._weight

    def set_weight(self, weight: Optional[torch.Tensor]) -> None:
        self._weight = weight

    @property
    def dtype(self) -> torch.dtype:
        return self._values.dtype

    @property
    def device(self) -> torch.device:
        return self._values.device

    @property
    def pad_info(self) -> Optional[RaggedPadInfo]:
        return self._pad_info

    def set_pad_info(self, pad_info: Optional[RaggedPadInfo]) -> None:
        self._pad_info = pad_info

    # ------------------------------------------------------------------ shapes
    def set_dim_by_rank(self, dim: int, rank: int) -> None:
        shape = list(self._dense_shape)
        shape[rank] = int(dim)
        self._dense_shape = tuple(shape)

    @property
    def dim(self) -> int:
        return len(self._dense_shape)

    @property
    def dense_shape(self) -> tuple:
        """The declared dense shape (``len(offsets) + 1`` entries, ``-1`` = ragged/unknown);
        RecIS keeps it in ``_dense_shape``, which stays for RecIS code that reads it."""
        return self._dense_shape

    def _resolve_dim(self, i: int) -> int:
        d = self._dense_shape[i] if self._dense_shape is not None and i < len(self._dense_shape) else -1
        if d != -1:
            return d
        if i == 0:
            # no offsets level: the values themselves are the (dense) first dimension
            return self._offsets[0].shape[0] - 1 if self._offsets else int(self._values.shape[0])
        return _max_row_length(self._offsets[i - 1])

    def real_shape(self, start: int = 0, end: Optional[int] = None) -> Tuple[int, ...]:
        """The shape with each -1 resolved: dim 0 = rows, dim k = longest row of offsets[k-1]."""
        ndim = len(self._offsets) + 1
        start = start + ndim if start < 0 else start
        end = ndim if end is None else (end + ndim if end < 0 else end)
        if getattr(self, "_dense_shape", None) is None:
            self._dense_shape = (-1,) * ndim
        return tuple(self._resolve_dim(i) for i in range(start, end))

    def get_shape(self, dim: int) -> int:
        ndim = len(self._offsets) + 1
        if dim < 0:
            dim += ndim
        if not 0 <= dim < ndim:
            raise IndexError(f"RaggedTensor.get_shape: dim {dim} out of range for {ndim} dims")
        return self._resolve_dim(dim)

    @property
    def max_length(self) -> int:
        return self.get_shape(-1)

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.real_shape()

    def size(self) -> Tuple[int, ...]:
        return self.real_shape()

    # ------------------------------------------------------------------ conversions
    def to_dense(self, default_value: float = 0.0) -> torch.Tensor:
        """Dense ``[B, max_len_1, ...]`` (widths = longest rows in this batch), dtype of values."""
        if not self._offsets:
            return self._values.clone()
        from recis_compat.ragged.dense import ragged_to_dense
        return ragged_to_dense(self._values, self._offsets, default_value)

    def to_sparse(self) -> torch.Tensor:
        """A sparse COO tensor with the values at their ragged coordinates.

        Its size is the data's own ``[B, max_len_1, ...]`` (like :meth:`to_dense`, ``_dense_shape``
        is not consulted), so ``to_sparse().to_dense()`` equals ``to_dense()``.
        """
        from recis_compat.ragged.dense import dense_shape_of, ragged_coordinates
        if not self._offsets:
            n = int(self._values.shape[0])
            idx = torch.arange(n, dtype=torch.int64, device=self._values.device).unsqueeze(0)
            return torch.sparse_coo_tensor(idx, self._values, size=[n] + list(self._values.shape[1:]),
                                           check_invariants=False)
        idx = ragged_coordinates(self._values.shape[0], self._offsets)
        size = list(dense_shape_of(self._offsets)) + list(self._values.shape[1:])
        return torch.sparse_coo_tensor(idx, self._values, size=size, check_invariants=False)

    def _new(self, values, offsets, weight) -> "RaggedTensor":
        out = RaggedTensor(values, offsets, weight, dense_shape=self._dense_shape)
        out._pad_info = self._pad_info
        return out

    def pin_memory(self) -> "RaggedTensor":
        w = self._weight.pin_memory() if self._weight is not None else None
        return self._new(self._values.pin_memory(), [o.pin_memory() for o in self._offsets], w)

    def cuda(self, device=None, non_blocking: bool = False) -> "RaggedTensor":
        """A new RaggedTensor on CUDA device ``device`` (an ordinal, a device or None = the current
        one). On a host without CUDA it is on the CPU when ``RECIS_COMPAT_DEVICE=cpu``, else a
        ``RuntimeError`` naming that variable (``recis_compat/utils/device.py``)."""
        if device is None:
            device = torch.device("cuda")
        elif isinstance(device, int) and not isinstance(device, bool):
            device = torch.device("cuda", device)
        return self._to(torch.device(device), None, non_blocking, False, "RaggedTensor.cuda()")

    def to(self, *args, **kwargs) -> "RaggedTensor":
        """Move and/or cast; accepts what ``Tensor.to`` accepts (device, dtype, a tensor,
        ``non_blocking``, ``copy``). A dtype applies to the values (and a floating weight)
        only: the offsets keep their integer dtype (RecIS casts them too, Q15). A CUDA device on
        a host without CUDA follows ``recis_compat/utils/device.py`` ``resolve_device``: the CPU
        with ``RECIS_COMPAT_DEVICE=cpu``, else a ``RuntimeError`` naming that variable."""
        copy = bool(kwargs.pop("copy", False))
        kwargs.pop("memory_format", None)  # meaningless for 1-D tensors
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        return self._to(device, dtype, non_blocking, copy, "RaggedTensor.to()")

    def _to(self, device, dtype, non_blocking: bool, copy: bool, what: str) -> "RaggedTensor":
        if device is not None and device.type == "cuda":
            device = resolve_device(device, what)
        values = self._values.to(device=device, dtype=dtype, non_blocking=non_blocking,
                                 copy=copy)
        offsets = [o.to(device=device, non_blocking=non_blocking, copy=copy)
                   for o in self._offsets]
        weight = self._weight
        if weight is not None:
            wdt = dtype if (dtype is not None and dtype.is_floating_point) else None
            weight = weight.to(device=device, dtype=wdt, non_blocking=non_blocking, copy=copy)
        return self._new(values, offsets, weight)

    def clone(self) -> "RaggedTensor":
        """Shallow copy (RecIS semantics): same tensors, a new offsets list."""
        return self._new(self._values, list(self._offsets), self._weight)

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def from_numpy(values: np.ndarray, offsets) -> "RaggedTensor":
        if isinstance(offsets, np.ndarray):
            offsets = [offsets]
        return RaggedTensor(torch.from_numpy(np.asarray(values)),
                            [torch.from_numpy(np.asarray(o)) for o in offsets])

    @staticmethod
    def from_dense(dense: torch.Tensor, check_invalid: bool = True,
                   invalid_value=0) -> "RaggedTensor":
        """Strip trailing zeros per row of a 2-D tensor (inner zeros kept); int32 offsets;
        ``dense_shape = dense.shape``.

        ``check_invalid``/``invalid_value`` (optional additions, as in later RecIS releases)
        choose what counts as trailing padding; ``check_invalid=False`` keeps every entry.
        """
        from recis_compat.ragged.dense import dense_to_ragged
        values, offsets = dense_to_ragged(dense, check_invalid, invalid_value)
        return RaggedTensor(values, [offsets], dense_shape=tuple(dense.shape))

    def __str__(self) -> str:
        return (f"RaggedTensor(values={self._values}, offsets={self._offsets}, "
                f"weight={self._weight}, dense_shape={self._dense_shape})")

    __repr__ = __str__
