"""``recis.features.feature.Feature``: a named chain of feature ops (RecIS 1.0; see COMPATIBILITY.md).

``Feature(name).add_op(SelectField("col")).add_op(Mod(1000))``, or the form of RecIS's
documentation ``Feature(name="f", ops=[SelectField("col"), Mod(1000)])`` (the same ``add_op``
calls, in order; COMPATIBILITY.md). The first op must be exactly a ``SelectField`` or
``SelectFields``. ``forward(data)`` runs the ops one after another (the
direct, non-fused semantics); inside a ``FeatureEngine`` the same ops run fused across features.
Errors raised by an op carry the feature's name.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from recis_compat.features.errors import in_feature
from recis_compat.features.op import _OP, Hash, SelectField, SelectFields, sha256_int64

__all__ = ["Feature", "run_op"]

DATA_INPUT_OPS = (SelectField, SelectFields)


def run_op(op: nn.Module, data, feature_name: str):
    """``op(data)``; any exception is re-raised with ``feature_name`` in its message."""
    try:
        return op(data)
    except Exception as e:  # noqa: BLE001 - re-raised with the feature named, same type
        raise in_feature(e, feature_name) from e


class Feature(nn.Module):
    """A named feature: an ``nn.ModuleList`` of ops applied in order.

    Properties ``name``, ``id`` (``id(self)``), ``compiled`` (set by the ``FeatureEngine`` that
    owns it) and ``ops``.
    """

    def __init__(self, name: str, ops: Optional[Sequence[_OP]] = None):
        super().__init__()
        if not isinstance(name, str) or not name:
            raise ValueError(f"Feature name must be a non-empty str, got {name!r}")
        self._name = name
        self._ops = nn.ModuleList()
        self._compiled = False
        self._buffers_data = None
        if ops is not None:
            if not isinstance(ops, (list, tuple, nn.ModuleList)):
                raise TypeError(f"feature {name!r}: ops must be a list of feature ops, got "
                                f"{type(ops).__name__}")
            for op in ops:
                self.add_op(op)

    @property
    def name(self) -> str:
        return self._name

    @property
    def id(self) -> int:
        return id(self)

    @property
    def compiled(self) -> bool:
        return self._compiled

    @property
    def ops(self) -> nn.ModuleList:
        return self._ops

    def compiled_(self, compiled: bool = True) -> "Feature":
        """Mark the feature as owned by a compiled engine (no more ``add_op``)."""
        self._compiled = bool(compiled)
        return self

    def add_op(self, op: _OP) -> "Feature":
        """Append ``op`` and return ``self``.

        Raises ValueError when the feature is compiled, when the first op is not exactly a
        ``SelectField``/``SelectFields`` (subclasses are rejected, as in RecIS) or when the op
        was built with an invalid argument (the message names this feature and the op).
        A ``Hash(..., bucket_size=N)`` (documented form) is added as ``Hash`` then ``Mod(N)``.
        """
        if self._compiled:
            raise ValueError(f"feature {self._name!r} has been compiled by a FeatureEngine; "
                             f"ops cannot be added any more")
        if not isinstance(op, _OP):
            raise TypeError(f"feature {self._name!r}: ops must subclass "
                            f"recis.features.op._OP, got {type(op).__name__}")
        if len(self._ops) == 0 and type(op) not in DATA_INPUT_OPS:
            raise ValueError(f"feature {self._name!r} must start with DataInputOP "
                             f"(SelectField or SelectFields), got {type(op).__name__}")
        try:
            op.check_config()
            parts = op.split() if isinstance(op, Hash) else [op]
        except Exception as e:  # noqa: BLE001 - re-raised with the feature named
            raise in_feature(e, self._name) from e
        for part in parts:
            self._ops.append(part)
        return self

    def set_buffers_data(self, data) -> None:
        """Kept for API compatibility (RecIS never reads it); stores ``data``."""
        self._buffers_data = data

    @staticmethod
    def from_json(json_obj) -> Optional["Feature"]:
        """Not supported, as in RecIS."""
        raise NotImplementedError("Feature.from_json is not implemented (nor in RecIS)")

    def get_hash(self) -> int:
        """0 with no ops, else int64 of ``sha256(f"{name}:{sorted(op hashes)}")``."""
        if len(self._ops) == 0:
            return 0
        hashes = []
        for op in self._ops:
            try:
                hashes.append(op.get_hash())
            except NotImplementedError as e:
                raise NotImplementedError(f"feature {self._name!r}: op {type(op).__name__}: "
                                          f"{e}") from e
        return sha256_int64(f"{self._name}:{sorted(hashes)}")

    def forward(self, data):
        """Run every op in order on ``data`` (the input dict for the first op)."""
        for op in self._ops:
            data = run_op(op, data, self._name)
        return data

    def extra_repr(self) -> str:
        return f"name={self._name!r}"
