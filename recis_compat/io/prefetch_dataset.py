"""``PrefetchDataset``: run an iterable in a background thread, ``buffer_size`` items ahead.

The producer is a daemon thread that owns the source iterator (it creates it, drives it and
closes it, so generators are only ever touched by one thread). A stop event ends it: set when
the consumer reaches the end, calls ``close()``, or drops the iterator (a ``weakref.finalize``);
the producer then closes the source, which stops and joins the reader threads below it.
``close()`` joins the producer. A producer still alive when the interpreter exits is stopped and
joined by the exit hook of :mod:`.threads` (a daemon thread left inside native code during
finalization aborts the process). Exceptions raised by the source are re-raised in the
consumer, in order.
"""
from __future__ import annotations

import queue
import threading
import weakref

from recis_compat.io.threads import close_iterator, join_thread, register_stopper, unregister_stopper

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
            del item  # the queue holds it now; the consumer frees it
        _put(q, _END, stop)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
        _put(q, _Failure(e), stop)
    finally:
        close_iterator(it)


def _stop_and_join(stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    join_thread(thread)


class _PrefetchIterator:
    def __init__(self, dataset, buffer_size: int):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(buffer_size)))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=_produce, args=(dataset, self._q, self._stop),
                                        name="recis-io-prefetch", daemon=True)
        # registered before start, so no instant exists where the thread runs unregistered
        self._key = register_stopper(
            lambda stop=self._stop, thread=self._thread: _stop_and_join(stop, thread),
            alive=lambda thread=self._thread: thread.ident is None or thread.is_alive())
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
        """Stop the producer thread and wait until it has ended (it has then closed the source,
        which joined the reader threads), so no thread of ours is inside native code when the
        process exits. Items still queued are dropped. Idempotent."""
        self._done = True
        _stop_and_join(self._stop, self._thread)
        unregister_stopper(self._key)
        while True:  # free queued batches here, in the consumer thread
            try:
                self._q.get_nowait()
            except queue.Empty:
                break


class PrefetchDataset:
    """Iterate ``dataset`` in a background thread with a queue of ``buffer_size`` items."""

    def __init__(self, dataset, buffer_size: int = 1):
        self._dataset = dataset
        self._buffer_size = buffer_size

    def __iter__(self):
        return _PrefetchIterator(self._dataset, self._buffer_size)
