"""``recis.nn.hashtable_hook``: user-facing admission / eviction hook descriptors (§1.4.5).

These only describe a policy; the implementations live in
``recis.nn.modules.hashtable_hook_impl``. ``str()`` is the JSON that enters
``EmbeddingOption.coalesced_info()`` / ``runtime_info()``.
"""
from __future__ import annotations

import json
from typing import Optional

__all__ = ["BaseHook", "AdmitHook", "FilterHook"]

ADMIT_HOOKS = ("ReadOnly",)
FILTER_HOOKS = ("GlobalStepFilter",)


class BaseHook:
    """A named policy with parameters."""

    def __init__(self, name: str, params: Optional[dict] = None):
        self._name = name
        self._params = dict(params) if params else {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def params(self) -> dict:
        return self._params

    def __str__(self) -> str:
        return json.dumps({"name": self._name, "params": self._params}, sort_keys=True)

    __repr__ = __str__

    def __eq__(self, other) -> bool:
        return isinstance(other, BaseHook) and type(self) is type(other) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, str(self)))


class AdmitHook(BaseHook):
    """Admission policy. ``AdmitHook("ReadOnly")``: unknown ids are never inserted and look up
    as zero vectors."""

    def __init__(self, name: str, params: Optional[dict] = None):
        if name not in ADMIT_HOOKS:
            raise ValueError(f"AdmitHook: unknown admit hook {name!r}; available: {list(ADMIT_HOOKS)}")
        super().__init__(name, params)

    @property
    def type(self) -> str:
        return "admit"


class FilterHook(BaseHook):
    """Eviction policy. ``FilterHook("GlobalStepFilter", {"filter_step": N})`` evicts rows not
    looked up during the last N global steps (N > 0, default 100)."""

    def __init__(self, name: str, params: Optional[dict] = None):
        if name not in FILTER_HOOKS:
            raise ValueError(f"FilterHook: unknown filter hook {name!r}; available: {list(FILTER_HOOKS)}")
        params = dict(params) if params else {}
        if name == "GlobalStepFilter":
            step = params.setdefault("filter_step", 100)
            if not isinstance(step, int) or isinstance(step, bool) or step <= 0:
                raise ValueError(f"FilterHook('GlobalStepFilter'): filter_step must be an int > 0, "
                                 f"got {step!r}")
        super().__init__(name, params)

    @property
    def type(self) -> str:
        return "filter"
