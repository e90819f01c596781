"""``recis.hooks``: Hook, LoggerHook, ProfilerHook (and HashTableFilterHook with the tables)."""
from recis_compat.hooks.hook import Hook
from recis_compat.hooks.logger_hook import LoggerHook
from recis_compat.hooks.profiler_hook import ProfilerHook

__all__ = ["Hook", "LoggerHook", "ProfilerHook"]
