"""``recis.utils.data_utils``: ``copy_data_to_device`` (RecIS 1.0; see COMPATIBILITY.md)."""
from __future__ import annotations

import collections
import collections.abc
import dataclasses

__all__ = ["copy_data_to_device"]


def copy_data_to_device(data, device, *args, **kwargs):
    """Move ``data`` to ``device`` recursively, keeping container types.

    * namedtuples, lists and tuples keep their type; ``defaultdict`` keeps its factory; any other
      ``Mapping`` is rebuilt with its own type from a plain dict;
    * anything with ``.to`` (tensors, :class:`RaggedTensor`, modules) gets
      ``.to(device, *args, **kwargs)``;
    * dataclass instances are rebuilt field by field (``init=False`` fields are set afterwards);
    * anything else is returned unchanged.
    """
    def rec(x):
        return copy_data_to_device(x, device, *args, **kwargs)

    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(rec(x) for x in data))
    if isinstance(data, (list, tuple)):
        return type(data)(rec(x) for x in data)
    if isinstance(data, collections.defaultdict):
        return type(data)(data.default_factory, {k: rec(v) for k, v in data.items()})
    if isinstance(data, collections.abc.Mapping):
        return type(data)({k: rec(v) for k, v in data.items()})
    if hasattr(data, "to"):
        return data.to(device, *args, **kwargs)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        fields = dataclasses.fields(data)
        out = type(data)(**{f.name: rec(getattr(data, f.name)) for f in fields if f.init})
        for f in fields:
            if not f.init and hasattr(data, f.name):
                setattr(out, f.name, rec(getattr(data, f.name)))
        return out
    return data
