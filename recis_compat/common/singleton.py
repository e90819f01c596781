"""``recis.common.singleton``: a metaclass that makes a class a process-wide singleton."""
from __future__ import annotations

import threading

__all__ = ["SingletonMeta"]


class SingletonMeta(type):
    """``class C(metaclass=SingletonMeta)``: every ``C(...)`` returns the first instance built
    (later constructor arguments are ignored). Each class, subclasses included, has its own
    instance. Construction is thread-safe."""

    _instances: dict = {}
    _lock = threading.Lock()

    def __call__(cls, *args, **kwargs):
        inst = SingletonMeta._instances.get(cls)
        if inst is None:
            with SingletonMeta._lock:
                inst = SingletonMeta._instances.get(cls)
                if inst is None:
                    inst = super().__call__(*args, **kwargs)
                    SingletonMeta._instances[cls] = inst
        return inst
