"""Bridge between :class:`RaggedTensor` and TorchRec's ``JaggedTensor`` / ``KeyedJaggedTensor``.

The layouts are the same (1-D values, ``B+1`` offsets starting at 0, optional per-value
weights), so the conversions share tensors instead of copying them:

* :func:`ragged_to_jagged` / :func:`jagged_to_ragged`: zero-copy both ways (the ``JaggedTensor``
  holds the RaggedTensor's own values, last-level offsets and weight tensors, and back). A
  ``JaggedTensor`` built from lengths only gets its offsets computed once by TorchRec.
* RaggedTensors -> one ``KeyedJaggedTensor``: TorchRec's own
  ``KeyedJaggedTensor.from_jt_dict({name: ragged_to_jagged(rt), ...})`` (one concatenation per
  buffer). Give every feature a weight or none: TorchRec concatenates only the weights present.
* :func:`kjt_to_ragged_dict`: each feature's values and weights are views into the KJT buffers
  (zero-copy); its offsets are a view too for the first key, and one scalar subtraction over
  ``B+1`` entries for the others (RaggedTensor offsets start at 0).

Only the LAST offsets level of a RaggedTensor is a TorchRec bag boundary: a 3-level
``[B, T, L]`` RaggedTensor becomes a JaggedTensor of its ``len(offsets[-1]) - 1`` inner lists.

Layering: this module imports only ``recis_compat.ragged`` and TorchRec (never nn/features/io).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recis_compat.ragged.tensor import RaggedTensor

__all__ = ["ragged_to_jagged", "jagged_to_ragged", "kjt_to_ragged_dict"]


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
