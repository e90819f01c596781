"""Threaded, ordered reader of a file list, one read unit (ORC stripe, Parquet row group) at a
time, for any file format behind the small :class:`FileFormat` interface.

:class:`ChunkReader` decodes the units of a file list with ``threads`` worker threads and yields
:class:`Chunk` objects in **file order, then row order**, whatever order the threads finish in.
This is deliberately stricter than RecIS's sloppy interleave of ``read_threads_num`` files: a
fixed order is what makes IO-state resume exact.

Division of work: a reader thread only decodes (one pyarrow call per unit, without the GIL);
the column conversion (:mod:`.column_convert`) runs in the thread iterating the reader (the
prefetch thread, which also packs batches), as each unit's turn comes. Converting in the
reader threads made them take the GIL back after every numpy/torch/hash call of every column
(a few hundred times per unit), each time waiting behind the Python-heavy packing and batch
threads, and spread the converted arrays' allocations over short-lived threads (several
thousand extra page faults per pass of ``recis-compat bench io``).

At most ``threads + 1`` units are in flight or buffered, so memory stays bounded by a few
units. Closing the generator (or dropping it) cancels the pending reads and joins the worker
threads; a pass still open when the interpreter exits is shut down by the exit hook of
:mod:`.threads`.

Formats: :class:`~.orc_reader.OrcFormat` (units are stripes) and
:class:`~.parquet_reader.ParquetFormat` (units are row groups).
"""
from __future__ import annotations

import abc
import collections
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import pyarrow as pa

from recis_compat.io.column_chunk import ColumnChunk
from recis_compat.io.column_convert import ReadRules, check_same_types, check_schema
from recis_compat.io.dataset_config import ColumnSpec
from recis_compat.io.file_list import DataFile
from recis_compat.io.threads import register_stopper, unregister_stopper

__all__ = ["Chunk", "ChunkReader", "FileFormat"]

Converter = Callable[[pa.RecordBatch, str, str], Dict[str, ColumnChunk]]


@dataclass
class Chunk:
    """Converted rows ``[row_start, row_start + nrows)`` of file ``file_index``.

    ``last_in_file`` is True for the file's final read unit. ``plan`` caches how the packer
    cuts rows out of ``columns`` (:func:`~.column_chunk.rows_plan`), made on first use.
    """

    file_index: int
    row_start: int
    nrows: int
    columns: Dict[str, ColumnChunk]
    last_in_file: bool
    plan: Optional[Any] = None


class FileFormat(abc.ABC):
    """What :class:`ChunkReader` needs to know about a file format.

    Attributes: ``kind`` (``"ORC"``, for messages and thread names), ``unit`` (``"stripe"``,
    for messages), ``rules`` (:class:`~.column_convert.ReadRules`), ``logger`` (where the
    type-widening warning goes). Every method raises the format's
    :class:`~.errors.ReadError` (or ``FileNotFoundError`` / ``PermissionError``) naming the file
    when it cannot be read.
    """

    kind: str = "?"
    unit: str = "unit"
    rules: ReadRules
    logger: logging.Logger

    @abc.abstractmethod
    def open(self, path: str) -> Any:
        """An opened file: the handle the other methods get."""
        raise NotImplementedError

    @abc.abstractmethod
    def schema(self, handle) -> pa.Schema:
        """The Arrow schema of an opened file."""
        raise NotImplementedError

    @abc.abstractmethod
    def num_units(self, handle) -> int:
        """Number of read units (stripes, row groups) of an opened file."""
        raise NotImplementedError

    @abc.abstractmethod
    def unit_rows(self, handle, path: str, unit: int, columns: List[str]) -> int:
        """Rows of one unit (used to find where a resumed read starts)."""
        raise NotImplementedError

    @abc.abstractmethod
    def read_unit(self, handle, path: str, unit: int, columns: List[str]) -> pa.RecordBatch:
        """The selected ``columns`` of one unit, one contiguous array per column. Called from
        reader threads: must not share mutable state with other calls."""
        raise NotImplementedError


class ChunkReader:
    """Iterate :class:`Chunk` objects over ``files`` from ``(start_file, start_row)``.

    Args:
        fmt: the file format.
        files: this reader's files, in reading order.
        specs: the selected columns.
        convert: ``convert(record_batch, path, location) -> {column: ColumnChunk}``, called in
            the iterating thread (module docstring);
            ``location`` (e.g. ``"stripe 2 from row 0"``) is for error messages.
        threads: number of reader threads (>= 1).
        start_file, start_row: where to begin (an IO-state position). Rows before
            ``start_row`` of ``files[start_file]`` are skipped; ``start_row`` past the file's end
            continues with the next file.
        reference: the dataset's first file (over all readers), or None for ``files[0]``. Each
            file's selected column types are compared with it before any of the file's rows are
            read (:func:`~.column_convert.check_same_types`), so files of every rank are held to
            the same types.
    """

    def __init__(self, fmt: FileFormat, files: Sequence[DataFile], specs: Sequence[ColumnSpec],
                 convert: Converter, threads: int, start_file: int = 0, start_row: int = 0,
                 reference: DataFile = None):
        self.fmt = fmt
        self.files = list(files)
        self.specs = list(specs)
        self.columns = [s.name for s in specs]
        self.convert = convert
        self.threads = max(1, int(threads or 1))
        self.start_file = start_file
        self.start_row = start_row
        self.reference = reference

    def _read_task(self, handle, path: str, unit: int, skip: int) -> pa.RecordBatch:
        """One unit decoded (a reader thread's whole job: one long call without the GIL)."""
        rb = self.fmt.read_unit(handle, path, unit, self.columns)
        return rb.slice(skip) if skip else rb

    def _check_types(self, fmt: FileFormat, handle, path: str, ref, warned: set):
        """Schema of ``path`` checked alone and against the reference; returns the reference
        ``(path, schema)`` (opened on first use)."""
        schema = fmt.schema(handle)
        check_schema(schema, self.specs, path, fmt.rules)
        if ref is None:
            ref_file = self.reference or self.files[0]
            if ref_file.path == path:
                ref = (path, schema)
            else:
                ref_schema = fmt.schema(fmt.open(ref_file.path))
                check_schema(ref_schema, self.specs, ref_file.path, fmt.rules)
                ref = (ref_file.path, ref_schema)
        for name in check_same_types(schema, self.specs, path, ref[1], ref[0], fmt.rules):
            if name not in warned:
                warned.add(name)
                fmt.logger.warning(
                    "%s: column %r is %s in %r but %s in %r (the dataset's first file); its "
                    "values are widened to the wider type in batches that span both",
                    fmt.rules.dataset, name, schema.field(name).type, path,
                    ref[1].field(name).type, ref[0])
        return ref

    def _plan(self) -> Iterator[tuple]:
        """``(file_index, handle, path, unit, skip, row_base|None, last)`` work items in order.

        ``row_base`` is only known up front for the first unit read after a resume; for
        the others the generator tracks it as chunks come back in order.
        """
        fmt = self.fmt
        ref = None  # (path, schema) of the reference file, opened on first use
        warned: set = set()
        for fi in range(self.start_file, len(self.files)):
            path = self.files[fi].path
            handle = fmt.open(path)
            ref = self._check_types(fmt, handle, path, ref, warned)
            nunits = fmt.num_units(handle)
            first, skip, base = 0, 0, None
            if fi == self.start_file and self.start_row > 0:
                # find the unit holding start_row
                base = 0
                while first < nunits:
                    n = fmt.unit_rows(handle, path, first, self.columns[:1])
                    if base + n > self.start_row:
                        break
                    base += n
                    first += 1
                skip = self.start_row - base
            for u in range(first, nunits):
                yield fi, handle, path, u, (skip if u == first else 0), base, u == nunits - 1
                base = None

    def __iter__(self) -> Iterator[Chunk]:
        pool = ThreadPoolExecutor(max_workers=self.threads,
                                  thread_name_prefix=f"recis-{self.fmt.kind.lower()}-read")
        # a pass dropped without being closed (no prefetch, loop left by an exception) is
        # stopped at interpreter exit
        key = register_stopper(functools.partial(pool.shutdown, wait=True, cancel_futures=True))
        window = collections.deque()
        plan = self._plan()
        fmt_unit = self.fmt.unit
        # per-file next row, filled as chunks come back in order
        next_row: Dict[int, int] = {}
        try:
            exhausted = False
            while True:
                while not exhausted and len(window) < self.threads + 1:
                    item = next(plan, None)
                    if item is None:
                        exhausted = True
                        break
                    fi, handle, path, u, skip, base, last = item
                    if base is not None:
                        next_row[fi] = base + skip
                    fut = pool.submit(self._read_task, handle, path, u, skip)
                    window.append((fi, last, fut, path, f"{fmt_unit} {u} from row {skip}"))
                if not window:
                    return
                fi, last, fut, path, location = window.popleft()
                rb = fut.result()
                n = rb.num_rows
                row = next_row.get(fi, 0)
                next_row[fi] = row + n
                if n:
                    columns = self.convert(rb, path, location)
                    del rb  # the Arrow buffers no chunk column views are freed now
                    yield Chunk(fi, row, n, columns, last)
        finally:
            # closing (or finishing) the pass joins the reader threads: at most one unit per
            # thread is still being read, and none may outlive the pass (recis_compat/io/threads.py)
            for item in window:
                item[2].cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            unregister_stopper(key)
