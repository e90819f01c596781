"""``recis.features.fused_op_impl``: fused forms of the feature ops (RecIS 1.0; see COMPATIBILITY.md).

A fused op holds several ops of one class (one per feature) and runs them with **one** kernel
call: ``process(inputs)`` takes one input per op (same order) and returns one output per op.

* :class:`FusedBoundaryOP` (``Bucketize``) -> ``fused_bucketize_gpu``
* :class:`FusedModOP` (``Mod``) -> ``fused_uint64_mod_gpu``
* :class:`FusedHashOP` (``Hash``) -> one ``farmhash``/``murmurhash`` call per hash type
* :class:`FusedCutoffOP` (``SequenceTruncate``) -> one 2-D and one 3-D cutoff call; always
  truncates (``check_length``/``truncate`` are ignored, RecIS quirk Q4, kept)
* :class:`FusedMultiHashOP` (``IDMultiHash``) -> ``fused_multi_hash``

The "gpu" kernels run on CPU tensors too. :class:`FusedOpFactory` maps an op class (exact
type: subclasses are not fused) to its fused class.
"""
from __future__ import annotations

import abc
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from recis_compat.common.singleton import SingletonMeta
from recis_compat.features import apply
from recis_compat.features.errors import FeatureOpError, in_feature, in_features
from recis_compat.features.op import _OP, Bucketize, Hash, IDMultiHash, Mod, SequenceTruncate

__all__ = ["FusedOpFactory", "_FusedOP", "FusedBoundaryOP", "FusedModOP", "FusedHashOP",
           "FusedCutoffOP", "FusedMultiHashOP"]


class _FusedOP(abc.ABC):
    """Base of the fused ops. ``op_class`` is the op type it fuses."""

    op_class: type = _OP

    def __init__(self, ops: Optional[List[_OP]] = None):
        self._ops: List[_OP] = []
        for op in ops or []:
            self.add_op(op)

    @property
    def ops(self) -> List[_OP]:
        return list(self._ops)

    def add_op(self, op: _OP) -> None:
        """Add one op (its input is the next entry of ``process``'s list)."""
        if not isinstance(op, self.op_class):
            raise TypeError(f"{type(self).__name__} fuses {self.op_class.__name__} ops, got "
                            f"{type(op).__name__}")
        op.check_config()
        self._ops.append(op)

    def process(self, inputs: Sequence, feature_names: Optional[Sequence[str]] = None) -> list:
        """One output per op. Every input is validated first; with ``feature_names`` (one per
        op) errors name the feature they concern."""
        inputs = list(inputs)
        if len(inputs) != len(self._ops):
            raise ValueError(f"{type(self).__name__}: {len(self._ops)} ops but "
                             f"{len(inputs)} inputs")
        for i, (op, x) in enumerate(zip(self._ops, inputs)):
            try:
                op.check_input(x)
            except Exception as e:  # noqa: BLE001 - re-raised naming the feature
                if feature_names is None:
                    raise
                raise in_feature(e, feature_names[i]) from e
        if not inputs:
            return []
        try:
            return self._process(inputs)
        except FeatureOpError:
            raise
        except Exception as e:  # noqa: BLE001 - kernel errors: name the features involved
            if feature_names is None:
                raise
            raise in_features(e, feature_names, self.op_class.__name__) from e

    def __call__(self, inputs: Sequence, feature_names: Optional[Sequence[str]] = None) -> list:
        return self.process(inputs, feature_names)

    @abc.abstractmethod
    def _process(self, inputs: List) -> list:
        """The kernel call(s) on validated inputs."""


class FusedBoundaryOP(_FusedOP):
    """Fused ``Bucketize``: floating inputs -> int64 bucket indices, one kernel call."""

    op_class = Bucketize

    def _process(self, inputs):
        return apply.bucketize(inputs, [op.fused_boundary(x.device)
                                        for op, x in zip(self._ops, inputs)])


class FusedModOP(_FusedOP):
    """Fused ``Mod``: int64 ids -> ``uint64(id) % mod``, one kernel call."""

    op_class = Mod

    def _process(self, inputs):
        return apply.uint64_mod(inputs, [op.mod_value for op in self._ops])


def _grouped(keys: Sequence) -> Dict[object, List[int]]:
    groups: Dict[object, List[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    return groups


class FusedHashOP(_FusedOP):
    """Fused ``Hash``: one kernel call per ``hash_type`` present, then one fused ``uint64 %`` for
    the ops built with ``bucket_size`` (``Hash(bucket_size=N)`` appended to ``feature.ops``
    directly rather than split by ``Feature.add_op``)."""

    op_class = Hash

    def _process(self, inputs):
        out: list = [None] * len(inputs)
        for hash_type, idx in _grouped([op.hash_type for op in self._ops]).items():
            for i, r in zip(idx, apply.hash_strings([inputs[i] for i in idx], hash_type)):
                out[i] = r
        bucketed = [i for i, op in enumerate(self._ops) if op.bucket_size is not None]
        if bucketed:
            res = apply.uint64_mod([out[i] for i in bucketed], [self._ops[i].bucket_size for i in bucketed])
            for i, r in zip(bucketed, res):
                out[i] = r
        return out


class FusedCutoffOP(_FusedOP):
    """Fused ``SequenceTruncate``: one call for the 2-D ops, one for the 3-D ops.

    Always truncates: ``check_length`` and ``truncate`` are ignored (RecIS behaviour)."""

    op_class = SequenceTruncate

    def _process(self, inputs):
        out: list = [None] * len(inputs)
        for n_dims, idx in _grouped([op.n_dims for op in self._ops]).items():
            fn = apply.cutoff_2d if n_dims == 2 else apply.cutoff_3d
            res = fn([inputs[i] for i in idx], [self._ops[i].seq_len for i in idx],
                     [self._ops[i].drop_left for i in idx])
            for i, r in zip(idx, res):
                out[i] = r
        return out


class FusedMultiHashOP(_FusedOP):
    """Fused ``IDMultiHash``: one ``fused_multi_hash`` call; one dict per op."""

    op_class = IDMultiHash

    def _process(self, inputs):
        return apply.multi_hash(inputs, [op.muls for op in self._ops],
                                [op.primes for op in self._ops],
                                [op.num_buckets for op in self._ops])


class FusedOpFactory(metaclass=SingletonMeta):
    """Registry ``op class -> fused op class`` (a process-wide singleton)."""

    _registry: Dict[type, type] = {}

    @staticmethod
    def register(op_class: type, fused_op_class: type) -> None:
        """Register ``fused_op_class`` for ops of exactly ``op_class``; ValueError if taken."""
        if op_class in FusedOpFactory._registry:
            raise ValueError(f"{op_class.__name__} already has a fused op "
                             f"({FusedOpFactory._registry[op_class].__name__})")
        if not (isinstance(fused_op_class, type) and issubclass(fused_op_class, _FusedOP)):
            raise TypeError(f"fused_op_class must subclass _FusedOP, got {fused_op_class!r}")
        FusedOpFactory._registry[op_class] = fused_op_class

    @staticmethod
    def contains(op_instance) -> bool:
        """True when ``type(op_instance)`` has a registered fused op."""
        return type(op_instance) in FusedOpFactory._registry

    @staticmethod
    def get_fused_op(op_instance) -> _FusedOP:
        """A new, empty fused op for ``op_instance``'s class (add the ops with ``add_op``)."""
        cls = FusedOpFactory._registry.get(type(op_instance))
        if cls is None:
            raise KeyError(f"no fused op registered for {type(op_instance).__name__}")
        return cls()


for _op_cls, _fused_cls in ((Bucketize, FusedBoundaryOP), (Mod, FusedModOP), (Hash, FusedHashOP),
                            (SequenceTruncate, FusedCutoffOP), (IDMultiHash, FusedMultiHashOP)):
    FusedOpFactory.register(_op_cls, _fused_cls)
