"""``recis.utils.parser``: the command-line parser of the RecIS examples (RecIS 1.0; see COMPATIBILITY.md).

A ``simple_parsing.ArgumentParser`` whose ``add_arguments(dataclass, dest=None)`` defaults
``dest`` to the dataclass's name, so ``parse_args()`` returns a Namespace with one dataclass
instance per dest. Booleans accept ``--flag``, ``--flag=true`` / ``--flag=false`` (any case,
also ``1/0``, ``yes/no``), as the example ``run.sh`` scripts pass them.
"""
from __future__ import annotations

import simple_parsing

__all__ = ["ArgumentParser"]


class ArgumentParser(simple_parsing.ArgumentParser):
    def add_arguments(self, dataclass, dest=None, **kwargs):
        """Add every field of ``dataclass`` (a dataclass type or instance) as options.

        Args:
            dataclass: the dataclass type (or an instance, whose values become the defaults).
            dest: attribute name on the parsed Namespace; default ``dataclass.__name__``.
            **kwargs: passed on to ``simple_parsing`` (``prefix=``, ``default=``, ...).
        """
        if dest is None:
            cls = dataclass if isinstance(dataclass, type) else type(dataclass)
            dest = cls.__name__
        return super().add_arguments(dataclass, dest, **kwargs)
