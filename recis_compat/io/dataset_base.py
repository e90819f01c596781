"""``recis.io.dataset_base``: DatasetBase, ``is_string_dtype``, ``_batch_convert``.

Pipeline built on every ``__iter__`` (RecIS 1.0; see COMPATIBILITY.md):
  1. this reader's files (``_shard_path``), read by ``read_threads_num`` threads in a fixed
     order (file order, then row order) and converted stripe by stripe (ORC) or row group by
     row group (Parquet), see :mod:`.chunk_reader`;
  2. packing into batches of exactly ``batch_size`` rows (spanning stripes and files; the
     last one smaller or dropped with ``drop_remainder``), placed on the output device;
  3. ``_batch_convert`` (nested lists -> tensors / RaggedTensors), the first map function;
  4. ``prefetch`` batches ahead in a background thread (if ``prefetch`` is truthy);
  5. IO-state tracking (``StateDataset``): the state is refreshed as each batch is handed on;
  6. the other map functions: ``map()`` functions in registration order, then the
     ``transform_fn`` list in order;
  7. ``filter()`` functions (fix of Q10: a batch is dropped when a filter returns falsy);
  8. ``(is_end, batch)`` items: ``(False, batch)`` while data lasts, then ``(True, None)``
     forever.

``_batch_convert`` runs before the prefetch queue, so with ``prefetch`` it runs in the prefetch
thread together with reading and packing: the consumer thread (a training step) only receives
finished batches. RecIS runs it after the queue; the order relative to the user's map
functions, filters and the IO state is the same (COMPATIBILITY.md).

Threads: ``it.close()`` on the iterator (Trainer does it when a loop ends) passes through every
stage and stops and joins the prefetch thread and the reader threads; the end of the data or an
exception in a stage does the same. Threads of an iterator that is never closed are stopped and
joined before interpreter finalization (:mod:`.threads`).

IO state (``dump_io_state``/``load_io_state``): JSON strings (see :mod:`.io_state`) that name
the first row not yet handed to the consumer, so a resume yields exactly the remaining rows. A
loaded state is applied once, on the next ``__iter__`` (fix of Q11). States live in this
process: with ``torch.utils.data.DataLoader`` worker processes each worker tracks its own.
"""
from __future__ import annotations

import copy
import threading
from typing import Callable, List, Optional

import torch
from torch.utils.data import IterableDataset

from recis_compat.io import io_state
from recis_compat.io.batch_convert import batch_convert, is_string_dtype
from recis_compat.io.filter_dataset import FilterDataset
from recis_compat.io.map_dataset import MapDataset
from recis_compat.io.prefetch_dataset import PrefetchDataset
from recis_compat.io.state_dataset import StateDataset
from recis_compat.io.threads import close_iterator
from recis_compat.io.wrap_end_dataset import WrapEndDataset
from recis_compat.utils.device import resolve_device

__all__ = ["DatasetBase", "is_string_dtype", "_batch_convert"]


def _batch_convert(dense_column, ragged_format, dtype) -> Callable[[list], list]:
    """RecIS's name for the internal conversion; see :mod:`recis_compat.io.batch_convert`."""
    return batch_convert(dense_column, ragged_format, dtype)


def _output_placement(device: str, owner: str = "OrcDataset"
                      ) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """Tensor -> tensor on the output device: None = stay in host memory (``cpu``, or ``pin``
    without CUDA), ``pin_memory()`` (``pin`` with CUDA), ``.to(cuda)`` (``cuda``, via
    ``resolve_device``; host memory when ``RECIS_COMPAT_DEVICE=cpu``)."""
    if device == "cuda":
        dev = resolve_device("cuda", f"{owner}(device='cuda')")
        if dev.type == "cpu":
            return None
        return lambda t: t.to(dev, non_blocking=False)
    if device == "pin" and torch.cuda.is_available():
        return lambda t: t.pin_memory()
    return None


class _Converted:
    """The packed batches (``PackedBatch``) with ``convert`` (``_batch_convert``) applied to
    their data; closing the iteration closes the source (:mod:`.threads`)."""

    def __init__(self, source, convert: Callable[[list], list]):
        self._source = source
        self._convert = convert

    def __iter__(self):
        return self._gen(iter(self._source))

    def _gen(self, it):
        convert = self._convert
        try:
            for item in it:
                item.data = convert(item.data)
                yield item
        finally:
            close_iterator(it)


class DatasetBase(IterableDataset):
    """Base of the RecIS datasets: configuration, pipeline assembly and IO state.

    Subclasses implement ``make_dataset_fn()`` (returns ``fn(start_state_or_None) ->
    (iterable of PackedBatch, initial state string)`` for the current shard) and
    ``_shard_path(sub_id, sub_num)`` (fills ``self._shard_paths``).
    """

    def __init__(self, batch_size, worker_idx=0, worker_num=1, read_threads_num=4,
                 pack_threads_num=None, prefetch=1, is_compressed=False, drop_remainder=False,
                 worker_slice_batch_num=None, ragged_format=True, transform_fn=None,
                 save_interval=100, dtype=torch.float32, device="cpu"):
        super().__init__()
        assert device in ["cpu", "cuda", "pin"], \
            f"Only support io result placed in `cpu|cuda|pin` but got {device}"
        self._batch_size = batch_size
        self._worker_idx = worker_idx
        self._worker_num = worker_num
        self._read_threads_num = read_threads_num
        self._pack_threads_num = pack_threads_num  # accepted; packing is one thread here
        self._prefetch = prefetch
        self._is_compressed = is_compressed
        self._drop_remainder = drop_remainder
        self._worker_slice_batch_num = worker_slice_batch_num  # stored, unused (as in RecIS)
        self._ragged_format = ragged_format
        self._dtype = dtype
        self._device = device
        self._place = _output_placement(device, type(self).__name__)
        if transform_fn is None:
            transform_fn = []
        elif not isinstance(transform_fn, (list, tuple)):
            transform_fn = [transform_fn]
        self._transform_fn = list(transform_fn)
        self._save_interval = save_interval
        self._paths: List[str] = []
        self._shard_paths = None
        self._select_column: List[str] = []
        self._dense_column: List[str] = []
        self._dense_default_value: List[list] = []
        self.hash_types: List[str] = []
        self.hash_buckets: List[int] = []
        self.hash_features: List[str] = []
        self._map_funcs: List[Callable] = []
        self._filter_funcs: List[Callable] = []
        self._lock = threading.Lock()
        self._io_state: dict = {}
        self._load_states: Optional[dict] = None
        self._state_dataset: Optional[StateDataset] = None
        self._dataset = None

    # ------------------------------------------------------------------ configuration
    def varlen_feature(self, name):
        """Select ``name`` as a varlen (ragged) column; a repeated name is ignored."""
        if name not in self._select_column:
            self._select_column.append(name)

    def fixedlen_feature(self, name, default_value):
        """Select ``name`` as a dense column of width ``len(default_value)``; empty rows get
        ``default_value``. A second call for the same name keeps the first default."""
        if not isinstance(default_value, (list, tuple)):
            raise TypeError(f"fixedlen_feature({name!r}): default_value must be a list of numbers "
                            f"(its length is the dense width), got {default_value!r}")
        if name not in self._select_column:
            self._select_column.append(name)
        if name not in self._dense_column:
            self._dense_column.append(name)
            self._dense_default_value.append(list(default_value))

    def map(self, map_func):
        """Append a function ``batch -> batch`` (runs after ``_batch_convert``, before
        ``transform_fn``)."""
        self._map_funcs.append(map_func)

    def filter(self, filter_func):
        """Append a predicate ``batch -> bool``; batches for which it is falsy are dropped.
        Filters see the final batch (after every map and ``transform_fn``)."""
        self._filter_funcs.append(filter_func)

    def make_dataset_fn(self):
        raise NotImplementedError("make_dataset_fn not implemented")

    def _shard_path(self, sub_id, sub_num):
        raise NotImplementedError("_shard_path not implemented")

    # ------------------------------------------------------------------ IO state
    def dump_io_state(self):
        """``{sub_id: state string}`` of this process's readers; None if ``save_interval`` is
        falsy. Each state names the first row not yet handed to the consumer."""
        if not self._save_interval:
            return None
        with self._lock:
            return dict(self._io_state)

    def load_io_state(self, io_states):
        """Resume from ``io_states`` (a ``dump_io_state()`` result) on the next ``__iter__``
        only. Every state is checked now for format; its fit to the files and worker layout is
        checked when iteration starts."""
        if not io_states:
            return
        if not isinstance(io_states, dict):
            raise TypeError(f"load_io_state expects the dict returned by dump_io_state(), got "
                            f"{type(io_states).__name__}")
        states = {int(k): v for k, v in copy.deepcopy(io_states).items()}
        for v in states.values():
            io_state.decode(v)
        self._load_states = states

    @staticmethod
    def _get_sub_info():
        info = torch.utils.data.get_worker_info()
        if info is None:
            return 0, 1
        return info.id, info.num_workers

    def _take_load_state(self, sub_id: int, sub_num: int) -> Optional[str]:
        states, self._load_states = self._load_states, None
        if states is None:
            return None
        if len(states) != sub_num:
            raise ValueError(
                f"IO states size not equal to sub worker num: the loaded state has "
                f"{len(states)} entries (keys {sorted(states)}) but this dataset runs with "
                f"{sub_num} DataLoader worker(s); use the same num_workers as when it was saved")
        if sub_id not in states:
            raise ValueError(f"loaded IO state has no entry for sub worker {sub_id} "
                             f"(keys {sorted(states)})")
        return states[sub_id]

    # ------------------------------------------------------------------ pipeline
    def _build_dataset(self):
        sub_id, sub_num = self._get_sub_info()
        self._shard_paths = []
        self._shard_path(sub_id, sub_num)
        load_state = self._take_load_state(sub_id, sub_num)
        source, start_state = self.make_dataset_fn()(load_state)
        source = _Converted(source, _batch_convert(self._dense_column, self._ragged_format,
                                                   self._dtype))
        if self._prefetch:
            source = PrefetchDataset(source, self._prefetch)
        with self._lock:  # the start position is the state until the first batch is out
            self._io_state.clear()
            if self._save_interval:
                self._io_state[sub_id] = start_state
        self._state_dataset = StateDataset(source, self._lock, self._io_state,
                                           load_state=start_state,
                                           save_interval=self._save_interval, sub_id=sub_id)
        dataset = MapDataset(self._state_dataset, self._map_funcs + self._transform_fn)
        if self._filter_funcs:
            dataset = FilterDataset(dataset, self._filter_funcs)
        self._dataset = WrapEndDataset(dataset)

    def __iter__(self):
        self._build_dataset()
        return iter(self._dataset)
