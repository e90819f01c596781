"""``recis.utils.logger``: the RecIS console logger (RecIS 1.0; see COMPATIBILITY.md).

``Logger(name)`` configures ``logging.getLogger(name)``: level ``level``, ``propagate=False``,
INFO records to stdout and every other level to stderr, format
``[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s``. The ``*_rank0`` methods log only when
env ``RANK`` is ``"0"`` (the default when unset).

Differences from RecIS (COMPATIBILITY.md):
* Q20 fixed: building a second ``Logger`` with the same name replaces the handlers the first one
  installed instead of adding two more, so lines are never duplicated. Handlers added by other
  code are left alone.
* ``debug`` exists (the RecIS docs list it; the contract's RecIS version lacks it).
* The handlers write to the *current* ``sys.stdout`` / ``sys.stderr`` at emit time, so
  redirections made after the logger was built (pytest capture, ``contextlib.redirect_stdout``)
  are honoured.
"""
from __future__ import annotations

import logging
import os
import sys

__all__ = ["Logger", "SingleLevelFilter"]

_FORMAT = "[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s"
_OWNED = "_recis_compat_logger_handler"


class SingleLevelFilter(logging.Filter):
    """Pass only records of ``passlevel`` (``reject=False``) or all but those (``reject=True``)."""

    def __init__(self, passlevel: int, reject: bool):
        super().__init__()
        self.passlevel = passlevel
        self.reject = reject

    def filter(self, record: logging.LogRecord) -> bool:
        is_level = record.levelno == self.passlevel
        return not is_level if self.reject else is_level


class _SysStreamHandler(logging.StreamHandler):
    """A StreamHandler bound to ``sys.<which>`` looked up at every use."""

    def __init__(self, which: str):
        self._which = which
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return getattr(sys, self._which)

    @stream.setter
    def stream(self, value):  # StreamHandler.setStream / __init__ assign here; ignore
        pass


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


class Logger:
    """RecIS's logger facade. ``Logger(__name__).info("step %d", n)``."""

    def __init__(self, name=__file__, level=logging.DEBUG):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for h in list(logger.handlers):  # Q20: drop what an earlier Logger(name) installed
            if getattr(h, _OWNED, False):
                logger.removeHandler(h)
        formatter = logging.Formatter(_FORMAT)
        out = _SysStreamHandler("stdout")
        out.addFilter(SingleLevelFilter(logging.INFO, reject=False))
        err = _SysStreamHandler("stderr")
        err.addFilter(SingleLevelFilter(logging.INFO, reject=True))
        err.setLevel(level)
        for h in (out, err):
            h.setFormatter(formatter)
            setattr(h, _OWNED, True)
            logger.addHandler(h)
        logger.propagate = False
        self._logger = logger

    def debug(self, *args, **kwargs):
        self._logger.debug(*args, **kwargs)

    def info(self, *args, **kwargs):
        self._logger.info(*args, **kwargs)

    def info_rank0(self, *args, **kwargs):
        if _is_rank0():
            self._logger.info(*args, **kwargs)

    def warning(self, *args, **kwargs):
        self._logger.warning(*args, **kwargs)

    def warning_rank0(self, *args, **kwargs):
        if _is_rank0():
            self._logger.warning(*args, **kwargs)

    def error(self, *args, **kwargs):
        self._logger.error(*args, **kwargs)

    def error_rank0(self, *args, **kwargs):
        if _is_rank0():
            self._logger.error(*args, **kwargs)
