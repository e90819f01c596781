"""Errors raised by feature ops, and how a feature's name is added to them.

Every bad argument or bad input is reported as a :class:`FeatureOpError` (a ``ValueError``)
or one of its subclasses, whose message starts with the op (``"Mod(mod_value=0): ..."``).
When the op runs inside a :class:`~recis_compat.features.feature.Feature` or a
``FeatureEngine``, :func:`in_feature` re-raises the error with the feature's name in front
(``"feature 'sparse3': Mod(mod_value=0): ..."``), keeping the exception type.
"""
from __future__ import annotations

from typing import Iterable

__all__ = ["FeatureOpError", "FeatureOpTypeError", "FeatureOpKeyError",
           "FeatureOpAssertionError", "FeatureOpIndexError", "in_feature", "in_features"]


class FeatureOpError(ValueError):
    """A feature op got a bad argument or a bad input; the message names the op."""


class FeatureOpTypeError(FeatureOpError, TypeError):
    """Wrong input type or dtype (e.g. float ids given to ``Mod``)."""


class FeatureOpKeyError(FeatureOpError, KeyError):
    """``SelectField`` asked for a column the input dict does not have."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class FeatureOpAssertionError(FeatureOpError, AssertionError):
    """A check RecIS makes with ``assert`` (e.g. ``SequenceTruncate``'s ``check_length``)."""


class FeatureOpIndexError(FeatureOpError, IndexError):
    """``IDMultiHash`` given more buckets than it has hash functions (RecIS: IndexError)."""


def _rebuild(exc: BaseException, message: str) -> BaseException:
    """An exception of ``exc``'s type carrying ``message`` (FeatureOpError if that fails)."""
    try:
        new = type(exc)(message)
    except Exception:  # noqa: BLE001 - exotic constructors: fall back to our own type
        new = FeatureOpError(message)
    return new


def in_feature(exc: BaseException, feature_name: str) -> BaseException:
    """``exc`` with ``"feature '<name>': "`` in front of its message (same type).

    Returns ``exc`` itself when it already names that feature. Use as
    ``raise in_feature(e, name) from e``.
    """
    prefix = f"feature {feature_name!r}: "
    message = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    if message.startswith(prefix):
        return exc
    return _rebuild(exc, prefix + message)


def in_features(exc: BaseException, feature_names: Iterable[str], op_label: str) -> BaseException:
    """For an error from one fused kernel call over several features: names them all."""
    names = ", ".join(repr(n) for n in feature_names)
    message = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    return _rebuild(exc, f"features [{names}] (fused {op_label}): {message}")
