"""``recis.features.feature_engine.FeatureEngine``: runs many features, fusing their ops (RecIS 1.0; see COMPATIBILITY.md).

Construction:
  * identical features (same ``Feature.get_hash()``: same name and ops) are deduplicated; the
    later copies become aliases filled in at the end of ``forward``;
  * two different features with one name raise ``ValueError("Duplicate feature name ...")``;
    a feature already compiled by another engine raises ``ValueError("feature X has been
    compiled")``; a feature whose first op is not exactly SelectField/SelectFields, or that has
    no ops, raises ValueError; a custom op without ``_get_config`` raises NotImplementedError;
  * execution step ``i`` holds the ``i``-th op of every feature. Within a step, the ops whose
    exact class is registered with :class:`FusedOpFactory` are grouped by class into one
    :class:`FuseExecutionGroup` (one kernel call for all its features); the rest (SelectField(s),
    FeatureCross, custom ops) run one by one in a :class:`NonFuseExecutionGroup`.

``forward(data: dict, remain_no_use_data=True) -> dict``: step-0 ops receive the whole input
dict, later ops their feature's previous output; the result maps each feature name to its last
op's output, followed (with ``remain_no_use_data``) by every input key no feature produced.
Inputs are never modified.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from torch import nn

from recis_compat.features.errors import FeatureOpTypeError, in_feature
from recis_compat.features.feature import DATA_INPUT_OPS, Feature, run_op
from recis_compat.features.fused_op_impl import FusedOpFactory, _FusedOP
from recis_compat.features.op import _OP

__all__ = ["FeatureEngine", "RunContext", "FuseExecutionGroup", "NonFuseExecutionGroup",
           "ExecutionStep"]


class RunContext:
    """Per-``forward`` state: the input dict and each feature's latest output.

    ``get(name)`` is the feature's previous output, or the whole input dict before its first op.
    ``results()`` lists features in ``feature_names`` order (else first-set order), then, with
    ``remain_no_use_data``, every input key that no feature produced.
    """

    def __init__(self, input_data: Dict, remain_no_use_data: bool = True,
                 feature_names: Optional[Sequence[str]] = None):
        self._input = input_data
        self._remain = remain_no_use_data
        self._order = list(feature_names) if feature_names is not None else None
        self._values: Dict[str, object] = {}

    def get(self, name: str):
        return self._values[name] if name in self._values else self._input

    def set(self, name: str, value) -> None:
        self._values[name] = value

    def results(self) -> Dict[str, object]:
        names = self._order if self._order is not None else list(self._values)
        out = {n: self._values[n] for n in names if n in self._values}
        if self._remain:
            for k, v in self._input.items():
                if k not in out:
                    out[k] = v
        return out


class NonFuseExecutionGroup:
    """Ops run one at a time (``op(ctx.get(feature))``)."""

    def __init__(self):
        self._items: List[Tuple[str, nn.Module]] = []

    @property
    def items(self) -> List[Tuple[str, nn.Module]]:
        return list(self._items)

    def add(self, feature_name: str, op: nn.Module) -> None:
        self._items.append((feature_name, op))

    def run(self, ctx: RunContext) -> None:
        for name, op in self._items:
            ctx.set(name, run_op(op, ctx.get(name), name))


class FuseExecutionGroup:
    """All ops of one registered class in one step: a single fused call."""

    def __init__(self, fused_op: _FusedOP):
        self._fused = fused_op
        self._names: List[str] = []

    @property
    def fused_op(self) -> _FusedOP:
        return self._fused

    @property
    def feature_names(self) -> List[str]:
        return list(self._names)

    def add(self, feature_name: str, op: _OP) -> None:
        try:
            self._fused.add_op(op)
        except Exception as e:  # noqa: BLE001 - re-raised naming the feature
            raise in_feature(e, feature_name) from e
        self._names.append(feature_name)

    def run(self, ctx: RunContext) -> None:
        outs = self._fused.process([ctx.get(n) for n in self._names], self._names)
        for name, out in zip(self._names, outs):
            ctx.set(name, out)


class ExecutionStep:
    """Step ``index``: the ``index``-th op of every feature, as fused and non-fused groups."""

    def __init__(self, index: int):
        self.index = index
        self._fused: Dict[str, FuseExecutionGroup] = {}
        self._plain = NonFuseExecutionGroup()

    @property
    def groups(self) -> list:
        groups: list = list(self._fused.values())
        if self._plain.items:
            groups.append(self._plain)
        return groups

    def add(self, feature_name: str, op: _OP) -> None:
        if FusedOpFactory.contains(op):
            key = type(op).__name__
            if key not in self._fused:
                self._fused[key] = FuseExecutionGroup(FusedOpFactory.get_fused_op(op))
            self._fused[key].add(feature_name, op)
        else:
            self._plain.add(feature_name, op)

    def run(self, ctx: RunContext) -> None:
        for group in self.groups:
            group.run(ctx)


class FeatureEngine(nn.Module):
    """Runs a list of :class:`Feature` s over an input dict; see the module docstring."""

    def __init__(self, feature_list: Iterable[Feature]):
        super().__init__()
        features = list(feature_list)
        for f in features:
            if not isinstance(f, Feature):
                raise TypeError(f"FeatureEngine takes Feature objects, got {type(f).__name__}")
        seen_ids = set()
        for f in features:
            if f.compiled and id(f) not in seen_ids:
                raise ValueError(f"feature {f.name} has been compiled (it belongs to another "
                                 f"FeatureEngine)")
            seen_ids.add(id(f))
        unique: Dict[int, Feature] = {}
        self._aliases: List[Tuple[str, str]] = []   # (alias name, source name)
        for f in features:
            self._check_feature(f)
            h = f.get_hash()
            if h in unique:
                if unique[h] is not f:
                    self._aliases.append((f.name, unique[h].name))
                continue
            unique[h] = f
        names: Dict[str, Feature] = {}
        for f in unique.values():
            if f.name in names:
                raise ValueError(f"Duplicate feature name {f.name!r}: two different features "
                                 f"(different ops) share it")
            names[f.name] = f
        self._features = nn.ModuleList(list(unique.values()))
        self._feature_names = [f.name for f in self._features]
        self._execution_steps = self._compile(self._features)
        for f in features:
            f.compiled_(True)

    @staticmethod
    def _check_feature(f: Feature) -> None:
        if len(f.ops) == 0:
            raise ValueError(f"feature {f.name!r} has no ops (add a SelectField first)")
        if type(f.ops[0]) not in DATA_INPUT_OPS:
            raise ValueError(f"feature {f.name} must start with DataInputOP (SelectField or "
                             f"SelectFields), got {type(f.ops[0]).__name__}")
        for op in f.ops:
            if not isinstance(op, _OP):
                raise TypeError(f"feature {f.name!r}: ops must subclass recis.features.op._OP, "
                                f"got {type(op).__name__}")

    @staticmethod
    def _compile(features: Sequence[Feature]) -> List[ExecutionStep]:
        depth = max((len(f.ops) for f in features), default=0)
        steps = [ExecutionStep(i) for i in range(depth)]
        for f in features:
            for i, op in enumerate(f.ops):
                steps[i].add(f.name, op)
        return steps

    @property
    def features(self) -> List[Feature]:
        """The unique (deduplicated) features, in the order given."""
        return list(self._features)

    @property
    def execution_steps(self) -> List[ExecutionStep]:
        return list(self._execution_steps)

    @property
    def aliases(self) -> Dict[str, str]:
        """``{alias name: source feature name}`` for deduplicated features."""
        return dict(self._aliases)

    def forward(self, data: Dict, remain_no_use_data: bool = True) -> Dict:
        """``{feature name: output}`` (+ unused input keys when ``remain_no_use_data``)."""
        if not isinstance(data, dict):
            raise FeatureOpTypeError(f"FeatureEngine.forward expects a dict of columns, got "
                                     f"{type(data).__name__}")
        ctx = RunContext(data, remain_no_use_data, self._feature_names)
        for step in self._execution_steps:
            step.run(ctx)
        out = ctx.results()
        for alias, source in self._aliases:
            out[alias] = out[source]
        return out
