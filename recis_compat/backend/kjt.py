"""Bridge between :class:`RaggedTensor` and TorchRec's ``JaggedTensor`` / ``KeyedJaggedTensor``.

The layouts are the same (1-D values, ``B+1`` offsets starting at 0, optional per-value
weights), so the conversions share tensors instead of copying them:

* :func:`ragged_to_jagged` / :func:`jagged_to_ragged`: zero-copy both ways (the ``JaggedTensor``
  holds the RaggedTensor's own values, last-level offsets and weight tensors, and back). A
  ``JaggedTensor`` built from lengths only gets its offsets computed once by TorchRec.
* :func:`ragged_dict_to_kjt`: one feature -> zero-copy. Several features must live in one values
  buffer, so the values (weights, offsets) are concatenated: **one concatenation per buffer, no
  per-row work** (each feature's offsets are shifted by one scalar add). The per-key lengths and
  value offsets are passed to the KJT up front, so TorchRec need not recompute them (no sync).
* :func:`kjt_to_ragged_dict`: each feature's values and weights are views into the KJT buffers
  (zero-copy); its offsets are a view too for the first key, and one scalar subtraction over
  ``B+1`` entries for the others (RaggedTensor offsets start at 0).

Offsets keep int32 when every input has int32 offsets (TorchRec accepts int32 KJT offsets);
they widen to int64 when any input is int64 or the total number of values needs it.

Only the LAST offsets level of a RaggedTensor is a TorchRec bag boundary: a 3-level
``[B, T, L]`` RaggedTensor becomes a JaggedTensor of its ``len(offsets[-1]) - 1`` inner lists.

Layering: this module imports only ``recis_compat.ragged`` and TorchRec (never nn/features/io).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recis_compat.ragged.tensor import RaggedTensor

__all__ = ["ragged_to_jagged", "jagged_to_ragged", "ragged_dict_to_kjt", "kjt_to_ragged_dict"]

_INT32_MAX = 2 ** 31 - 1


def ragged_to_jagged(rt: RaggedTensor) -> JaggedTensor:
    """A ``JaggedTensor`` over the same values, last-level offsets and weight (no copy).

    Args:
        rt: any RaggedTensor; its last offsets level delimits the bags.
    Returns:
        ``JaggedTensor(values=rt.values(), offsets=rt.offsets()[-1], weights=rt.weight())``.
    """
    if not isinstance(rt, RaggedTensor):
        raise TypeError(f"ragged_to_jagged expects a RaggedTensor, got {type(rt).__name__}")
    return JaggedTensor(values=rt.values(), offsets=rt.offsets()[-1], weights=rt.weight())


def jagged_to_ragged(jt: JaggedTensor,
                     dense_shape: Optional[Sequence[int]] = None) -> RaggedTensor:
    """A 2-level RaggedTensor over the JaggedTensor's values, offsets and weights (no copy).

    Args:
        jt: a ``JaggedTensor`` (offsets are computed from lengths if it has none).
        dense_shape: passed to :class:`RaggedTensor`; ``None`` computes the real shape
            ``(B, longest row)`` like RecIS's constructor does.
    """
    if not isinstance(jt, JaggedTensor):
        raise TypeError(f"jagged_to_ragged expects a torchrec JaggedTensor, got "
                        f"{type(jt).__name__}")
    return RaggedTensor(jt.values(), [jt.offsets()], weight=jt.weights_or_none(),
                        dense_shape=dense_shape)


class _Feature:
    __slots__ = ("name", "values", "offsets", "weight", "bags", "ragged_offsets_dtype")

    def __init__(self, name, values, offsets, weight, bags, ragged_offsets_dtype):
        self.name = name
        self.values = values
        self.offsets = offsets  # None for a dense feature (built later in the common dtype)
        self.weight = weight
        self.bags = bags
        self.ragged_offsets_dtype = ragged_offsets_dtype


def _describe(name: str, x: Union[RaggedTensor, torch.Tensor]) -> _Feature:
    if isinstance(x, RaggedTensor):
        values, off, w = x.values(), x.offsets()[-1], x.weight()
        if values.dim() != 1:
            raise ValueError(f"feature {name!r}: RaggedTensor values must be 1-D, got shape "
                             f"{tuple(values.shape)}")
        if off.numel() < 1:
            raise ValueError(f"feature {name!r}: its last offsets tensor is empty "
                             f"(needs B+1 >= 1 entries)")
        if off.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"feature {name!r}: offsets must be int32 or int64, got {off.dtype}")
        if off.device.type == "cpu":  # cheap consistency check (would sync on an accelerator)
            first, last = int(off[0]), int(off[-1])
            if first != 0 or last != values.numel():
                raise ValueError(f"feature {name!r}: last-level offsets run from {first} to "
                                 f"{last} but must run from 0 to len(values) = "
                                 f"{values.numel()}")
        return _Feature(name, values, off, w, off.numel() - 1, off.dtype)
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"feature {name!r}: a dense feature must hold integer ids, got "
                            f"dtype {x.dtype}")
        if x.dim() == 1:
            x = x.unsqueeze(1)
        if x.dim() != 2:
            raise ValueError(f"feature {name!r}: a dense feature must be 2-D [B, W] (or 1-D "
                             f"[B]), got shape {tuple(x.shape)}")
        return _Feature(name, x.reshape(-1), None, None, x.shape[0], None)
    raise TypeError(f"feature {name!r}: expected a RaggedTensor or a dense integer tensor, got "
                    f"{type(x).__name__}")


def ragged_dict_to_kjt(features: Mapping[str, Union[RaggedTensor, torch.Tensor]],
                       variable_stride: bool = False) -> KeyedJaggedTensor:
    """One ``KeyedJaggedTensor`` holding every feature, keys in the dict's order.

    Args:
        features: name -> RaggedTensor (its last offsets level gives the bags; its weight, if
            any, the KJT weights) or a dense integer tensor ``[B, W]`` (every row one bag of
            ``W`` ids; ``[B]`` counts as ``[B, 1]``).
        variable_stride: allow features with different bag counts (a TorchRec variable-batch
            KJT, ``stride_per_key_per_rank``). By default they must all have the same count.
    Returns:
        A KJT. Weights are present when any feature has a weight; features without one get
        ones. With a single feature every tensor is shared with the input.
    Raises:
        ValueError / TypeError naming the offending feature.
    """
    if not features:
        raise ValueError("ragged_dict_to_kjt: no features given")
    feats: List[_Feature] = [_describe(str(k), v) for k, v in features.items()]
    keys = [f.name for f in feats]
    if not variable_stride:
        first = feats[0]
        for f in feats[1:]:
            if f.bags != first.bags:
                raise ValueError(
                    f"feature {f.name!r} has {f.bags} bags but feature {first.name!r} has "
                    f"{first.bags}; a KeyedJaggedTensor needs one batch size "
                    f"(pass variable_stride=True for a variable-batch KJT)")
    devices = {f.values.device for f in feats}
    if len(devices) > 1:
        raise ValueError(f"ragged_dict_to_kjt: features are on different devices "
                         f"{sorted(str(d) for d in devices)}: "
                         + ", ".join(f"{f.name!r}: {f.values.device}" for f in feats))
    device = feats[0].values.device

    counts = [f.values.numel() for f in feats]
    total = sum(counts)
    wide = total > _INT32_MAX or any(f.ragged_offsets_dtype == torch.int64 for f in feats)
    odt = torch.int64 if wide else torch.int32
    for f in feats:
        if f.offsets is None:
            width = f.values.numel() // f.bags if f.bags else 0
            f.offsets = torch.arange(f.bags + 1, dtype=odt, device=device) * width
    offset_per_key = [0]
    for c in counts:
        offset_per_key.append(offset_per_key[-1] + c)
    strides = [f.bags for f in feats]
    kw = dict(length_per_key=counts, offset_per_key=offset_per_key)
    if variable_stride:
        kw["stride_per_key_per_rank"] = [[b] for b in strides]
    else:
        kw["stride"] = strides[0]

    any_weight = [f.weight for f in feats if f.weight is not None]
    if len(feats) == 1:
        f = feats[0]
        return KeyedJaggedTensor(keys=keys, values=f.values, weights=f.weight,
                                 offsets=f.offsets.to(odt), **kw)

    # several features: one concatenation per buffer, per-feature scalar shifts only
    values = torch.cat([f.values for f in feats])
    weights = None
    if any_weight:
        wdt = any_weight[0].dtype
        for w in any_weight[1:]:
            wdt = torch.promote_types(wdt, w.dtype)
        if not wdt.is_floating_point:
            wdt = torch.float32
        weights = torch.cat([(f.weight.to(wdt) if f.weight is not None else
                              torch.ones(f.values.numel(), dtype=wdt, device=device))
                             for f in feats])
    parts = [feats[0].offsets.to(odt)]
    for f, base in zip(feats[1:], offset_per_key[1:-1]):
        parts.append(f.offsets[1:].to(odt) + base)
    offsets = torch.cat(parts)
    return KeyedJaggedTensor(keys=keys, values=values, weights=weights, offsets=offsets, **kw)


def kjt_to_ragged_dict(kjt: KeyedJaggedTensor) -> Dict[str, RaggedTensor]:
    """name -> 2-level RaggedTensor, viewing the KJT's buffers.

    Values and weights are views (zero-copy). Offsets are a view for a key whose values start at
    0 (the first key) and ``slice - start`` (one op over ``B+1`` entries) for the others.
    Variable-batch KJTs are supported (each key keeps its own batch size).
    """
    if not isinstance(kjt, KeyedJaggedTensor):
        raise TypeError(f"kjt_to_ragged_dict expects a torchrec KeyedJaggedTensor, got "
                        f"{type(kjt).__name__}")
    keys = kjt.keys()
    if not keys:
        return {}
    values = kjt.values()
    weights = kjt.weights_or_none()
    offsets = kjt.offsets()
    strides = kjt.stride_per_key()
    value_starts = kjt.offset_per_key()
    out: Dict[str, RaggedTensor] = {}
    row = 0
    for i, key in enumerate(keys):
        b = int(strides[i])
        lo, hi = int(value_starts[i]), int(value_starts[i + 1])
        off = offsets[row: row + b + 1]
        if off.numel() != b + 1:
            raise ValueError(f"feature {key!r}: the KJT offsets hold {off.numel()} entries for "
                             f"it but its batch size is {b}")
        if lo != 0:
            off = off - lo
        out[key] = RaggedTensor(values[lo:hi], [off],
                                weight=None if weights is None else weights[lo:hi])
        row += b
    return out
