"""``recis.hooks``: Hook, LoggerHook, ProfilerHook, HashTableFilterHook."""
from recis_compat.hooks.filter_hook import HashTableFilterHook
from recis_compat.hooks.hook import Hook
from recis_compat.hooks.logger_hook import LoggerHook
from recis_compat.hooks.profiler_hook import ProfilerHook

__all__ = ["Hook", "LoggerHook", "ProfilerHook", "HashTableFilterHook"]
