"""``PrefetchDataset``: run an iterable in a background thread, ``buffer_size`` items ahead.

The producer is a daemon thread that owns the source iterator (it creates it, drives it and
closes it, so generators are only ever touched by one thread). A stop event ends it: set when
the consumer reaches the end, calls ``close()``, or drops the iterator (a ``weakref.finalize``);
the producer then closes the source, which lets the reader threads below it exit.
Exceptions raised by the source are re-raised in the consumer, in order.
"""
from __future__ import annotations

import queue
import threading
import weakref

__all__ = ["PrefetchDataset"]

_END = object()
_POLL = 0.05  # seconds between stop checks while the queue is full


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def _produce(dataset, q: queue.Queue, stop: threading.Event) -> None:
    it = None
    try:
        it = iter(dataset)
        for item in it:
            if not _put(q, item, stop):
                return
        _put(q, _END, stop)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
        _put(q, _Failure(e), stop)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


class _PrefetchIterator:
    def __init__(self, dataset, buffer_size: int):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(buffer_size)))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=_produce, args=(dataset, self._q, self._stop),
                                        name="recis-io-prefetch", daemon=True)
        self._thread.start()
        weakref.finalize(self, self._stop.set)

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item = self._q.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the producer thread and wait for it (it exits within a poll interval), so no
        reader thread is still inside native code when the process exits."""
        self._done = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


class PrefetchDataset:
    """Iterate ``dataset`` in a background thread with a queue of ``buffer_size`` items."""

    def __init__(self, dataset, buffer_size: int = 1):
        self._dataset = dataset
        self._buffer_size = buffer_size

    def __iter__(self):
        return _PrefetchIterator(self._dataset, self._buffer_size)
