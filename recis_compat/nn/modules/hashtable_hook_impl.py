"""``recis.nn.modules.hashtable_hook_impl``: admission and eviction policies of tables (§1.4.6).

* ``ReadOnly`` admission: unknown ids are not inserted and look up as zeros (the table's lookup
  does this when given ``AdmitHook("ReadOnly")``; the impl object only names the policy).
* ``GlobalStepFilter`` eviction: every training lookup stamps the looked-up rows with the current
  global step (int64 slot ``step_filter``); ``do_filter()`` evicts ids whose stamp is older than
  ``filter_step`` steps: they leave the id map, their rows get fresh embedding and optimizer
  slot values (the stamp slot is preserved, as in RecIS) and are reused by later inserts.
  ``recis.hooks.HashTableFilterHook`` drives ``update_step`` and ``do_filter``.
"""
from __future__ import annotations

import weakref
from typing import Dict, Tuple

import torch
from torch import nn

from recis_compat.common.singleton import SingletonMeta
from recis_compat.utils.logger import Logger

__all__ = ["HashtableHookFactory", "BaseAdmitHookImpl", "ReadOnlyHookImpl", "BaseFilterHookImpl",
           "GlobalStepFilterHookImpl"]

logger = Logger(__name__)


class HashtableHookFactory(metaclass=SingletonMeta):
    """Registry of hook implementations and of the filter impls created per table."""

    def __init__(self):
        self._filter_cls: Dict[str, type] = {}
        self._admit_cls: Dict[str, type] = {}
        self._filters: Dict[str, "weakref.WeakKeyDictionary"] = {}
        self._admits: Dict[str, object] = {}

    def regist_filter(self, name: str, impl_cls: type) -> None:
        if name in self._filter_cls:
            raise ValueError(f"filter hook {name!r} is already registered")
        self._filter_cls[name] = impl_cls

    def regist_admit(self, name: str, impl_cls: type) -> None:
        if name in self._admit_cls:
            raise ValueError(f"admit hook {name!r} is already registered")
        self._admit_cls[name] = impl_cls

    def create_filter_hook(self, ht, hook) -> "BaseFilterHookImpl":
        """One filter impl per (hook name, table); a second one raises ValueError."""
        if hook.name not in self._filter_cls:
            raise ValueError(f"table {ht.name!r}: unknown filter hook {hook.name!r}; "
                             f"registered: {sorted(self._filter_cls)}")
        per_table = self._filters.setdefault(hook.name, weakref.WeakKeyDictionary())
        if ht in per_table:
            raise ValueError(f"table {ht.name!r} already has a {hook.name!r} filter hook")
        impl = self._filter_cls[hook.name](ht, **hook.params)
        per_table[ht] = impl
        return impl

    def create_admit_hook(self, ht, hook) -> "BaseAdmitHookImpl":
        if hook.name not in self._admit_cls:
            raise ValueError(f"unknown admit hook {hook.name!r}; registered: {sorted(self._admit_cls)}")
        if hook.name not in self._admits:
            self._admits[hook.name] = self._admit_cls[hook.name](**hook.params)
        return self._admits[hook.name]

    def get_filters(self) -> Dict[str, Dict[object, "BaseFilterHookImpl"]]:
        """``{hook_name: {HashTable: impl}}`` of the live tables."""
        return {name: dict(per_table) for name, per_table in self._filters.items()}

    def get_admits(self) -> Dict[str, "BaseAdmitHookImpl"]:
        return dict(self._admits)


class BaseAdmitHookImpl:
    def __init__(self, **kw):
        self.params = kw


class ReadOnlyHookImpl(BaseAdmitHookImpl):
    """Never insert unknown ids; they look up as zero vectors."""


class BaseFilterHookImpl(nn.Module):
    """An eviction policy attached to one table (an ``nn.Module`` child of the HashTable).

    Subclasses implement :meth:`update` (after each training lookup, with the rows looked up)
    and :meth:`filter` (-> the ``(ids, rows)`` to evict)."""

    def __init__(self, ht, name: str = None, **kw):
        super().__init__()
        # a weak reference: the table owns this module, not the other way round
        self._ht_ref = weakref.ref(ht)
        self._name = name or type(self).__name__

    @property
    def ht(self):
        ht = self._ht_ref()
        if ht is None:
            raise RuntimeError(f"filter {self._name!r}: its table no longer exists")
        return ht

    @property
    def name(self) -> str:
        return self._name

    def forward(self, index: torch.Tensor) -> None:
        self.update(index)

    def update(self, index: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement update(index)")

    def filter(self) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement filter()")

    def after_filter(self) -> None:
        pass

    def do_filter(self) -> int:
        """Evict what :meth:`filter` selects; returns the number of evicted ids. Selection and
        eviction hold the table's lock together, so a lookup in another thread cannot refresh
        an id between the two."""
        with self.ht.impl.lock:
            ids, index = self.filter()
            if ids.numel():
                self.ht.delete(ids, index, preserve_slot=self._name)
            self.after_filter()
        return int(ids.numel())


class GlobalStepFilterHookImpl(BaseFilterHookImpl):
    """Evict ids not looked up during the last ``filter_step`` global steps.

    Buffer ``_global_step`` (int64 ``[1]``) is saved with the model; slot ``step_filter`` (int64
    ``[rows, 1]``) with the table.
    """

    def __init__(self, ht, name: str = "step_filter", filter_step: int = 100, **kw):
        super().__init__(ht, name=name, **kw)
        if int(filter_step) <= 0:
            raise ValueError(f"table {ht.name!r}: filter_step must be > 0, got {filter_step}")
        self.filter_step = int(filter_step)
        self.register_buffer("_global_step", torch.zeros(1, dtype=torch.int64, device=ht.device))
        ht.impl.append_step_filter_slot(self._name, init_step=0)
        ht.impl.lookup_listeners.append(self.update)

    @property
    def global_step(self) -> int:
        return int(self._global_step.item())

    def update(self, index: torch.Tensor) -> None:
        """Stamp rows ``index`` (int64) with the current global step."""
        if index.numel():
            self.ht.impl.fill_slot(self._name, index, int(self._global_step.item()))

    def update_step(self, step_size: int = 1) -> None:
        self._global_step += int(step_size)

    def filter(self) -> Tuple[torch.Tensor, torch.Tensor]:
        ids, rows = self.ht.impl.ids_map()
        stamps = self.ht.impl.read_slot(self._name, rows).view(-1)
        stale = stamps < (self._global_step - self.filter_step)
        return ids[stale], rows[stale]

    def do_filter(self) -> int:
        before = len(self.ht.impl)
        n = super().do_filter()
        logger.info(f"GlobalStepFilter on {self.ht.name}: step {self.global_step}, ids {before} -> "
                    f"{before - n} ({n} evicted)")
        return n


HashtableHookFactory().regist_admit("ReadOnly", ReadOnlyHookImpl)
HashtableHookFactory().regist_filter("GlobalStepFilter", GlobalStepFilterHookImpl)
