"""``recis.hooks.filter_hook.HashTableFilterHook``: drives table eviction from the training loop (§1.8).

Every ``after_step`` advances the global step of **every** filter registered in the process
(``HashtableHookFactory().get_filters()``), and every ``filter_interval`` steps runs their
``do_filter()`` (e.g. ``GlobalStepFilter`` evicts ids unseen for ``filter_step`` steps).
The Trainer does not add it by itself: ``trainer.add_hooks([HashTableFilterHook(100)])``.

Difference from RecIS: the hook's schedule (``last_filter_step``) is checkpointed (``state_dict``;
the Trainer saves the state of every hook that has one in ``extra.pt``), so a resumed run evicts
on the same steps as an uninterrupted one. RecIS restarts the schedule at the resume step.
"""
from __future__ import annotations

from recis_compat.hooks.hook import Hook
from recis_compat.nn.modules.hashtable_hook_impl import HashtableHookFactory

__all__ = ["HashTableFilterHook"]


class HashTableFilterHook(Hook):
    """Args:
        filter_interval: run the filters every this many global steps (> 0).
    """

    def __init__(self, filter_interval: int = 100):
        self.reset_filter_interval(filter_interval)
        self.last_filter_step = 0

    def reset_filter_interval(self, interval: int = 100) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
            raise ValueError(f"HashTableFilterHook: filter_interval must be an int > 0, got {interval!r}")
        self.filter_interval = interval

    @property
    def ht_filters(self):
        """Every live filter impl of the process (a list)."""
        return [impl for per_table in HashtableHookFactory().get_filters().values() for impl in per_table.values()]

    def state_dict(self) -> dict:
        """``{"last_filter_step": int}``: the step of the last filter run (0 before the first step)."""
        return {"last_filter_step": int(self.last_filter_step)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "last_filter_step" not in state:
            raise ValueError(f"HashTableFilterHook.load_state_dict: expected {{'last_filter_step': int}}, got {state!r}")
        self.last_filter_step = int(state["last_filter_step"])

    def after_step(self, metrics=None, global_step: int = 0) -> None:
        gstep = int(global_step)
        if not self.last_filter_step:
            self.last_filter_step = gstep
        filters = self.ht_filters
        for f in filters:
            f.update_step()
        if gstep - self.last_filter_step >= self.filter_interval:
            for f in filters:
                f.do_filter()
            self.last_filter_step = gstep
