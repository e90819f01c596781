"""Threaded, ordered ORC stripe reader.

:class:`OrcStripeReader` reads the stripes of a file list with ``threads`` worker threads
(pyarrow decodes ORC with the GIL released, and the column conversion is mostly numpy and the
C++ hash op) and yields :class:`Chunk` objects in **file order, then row order**, whatever order
the threads finish in. This is deliberately stricter than RecIS's sloppy interleave of
``read_threads_num`` files: a fixed order is what makes IO-state resume exact.

At most ``threads + 1`` stripes are in flight or buffered, so memory stays bounded by a few
stripes. Closing the generator (or dropping it) cancels the pending reads and joins the worker
threads; a pass still open when the interpreter exits is shut down by the exit hook of
:mod:`.threads`.
"""
from __future__ import annotations

import collections
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Sequence

import pyarrow as pa
import pyarrow.orc as orc

from recis_compat.io.column_chunk import ColumnChunk
from recis_compat.io.column_convert import check_same_types, check_schema
from recis_compat.io.dataset_config import ColumnSpec
from recis_compat.io.errors import OrcReadError, where
from recis_compat.io.file_list import OrcFile
from recis_compat.io.threads import register_stopper, unregister_stopper

__all__ = ["Chunk", "OrcStripeReader", "open_orc"]

logger = logging.getLogger(__name__)

Converter = Callable[[pa.RecordBatch, str, str], Dict[str, ColumnChunk]]


@dataclass
class Chunk:
    """Converted rows ``[row_start, row_start + nrows)`` of file ``file_index``.

    ``last_in_file`` is True for the file's final stripe.
    """

    file_index: int
    row_start: int
    nrows: int
    columns: Dict[str, ColumnChunk]
    last_in_file: bool


def open_orc(path: str) -> orc.ORCFile:
    """Open an ORC file; failures become :class:`OrcReadError` (or ``PermissionError`` /
    ``FileNotFoundError``) naming the file."""
    try:
        return orc.ORCFile(path)
    except (PermissionError, FileNotFoundError, IsADirectoryError) as e:
        raise type(e)(f"cannot open ORC {where(path)}: {e}") from e
    except (pa.ArrowException, OSError, ValueError) as e:
        raise OrcReadError(f"cannot read ORC {where(path)} (corrupt or truncated?): {e}") from e


def _read_stripe(path: str, stripe: int, columns: List[str]) -> pa.RecordBatch:
    f = open_orc(path)
    try:
        return f.read_stripe(stripe, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise OrcReadError(f"cannot decode stripe {stripe} of ORC {where(path)} "
                           f"(corrupt or truncated?): {e}") from e


class OrcStripeReader:
    """Iterate :class:`Chunk` objects over ``files`` from ``(start_file, start_row)``.

    Args:
        files: this reader's files, in reading order.
        specs: the selected columns.
        convert: ``convert(record_batch, path, location) -> {column: ColumnChunk}``;
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

    def __init__(self, files: Sequence[OrcFile], specs: Sequence[ColumnSpec], convert: Converter,
                 threads: int, start_file: int = 0, start_row: int = 0,
                 reference: OrcFile = None):
        self.files = list(files)
        self.specs = list(specs)
        self.columns = [s.name for s in specs]
        self.convert = convert
        self.threads = max(1, int(threads or 1))
        self.start_file = start_file
        self.start_row = start_row
        self.reference = reference

    def _task(self, path: str, stripe: int, skip: int):
        rb = _read_stripe(path, stripe, self.columns)
        if skip:
            rb = rb.slice(skip)
        return rb.num_rows, rb

    def _convert_task(self, path: str, stripe: int, skip: int):
        n, rb = self._task(path, stripe, skip)
        return n, self.convert(rb, path, f"stripe {stripe} from row {skip}")

    def _plan(self) -> Iterator[tuple]:
        """``(file_index, path, stripe, skip, row_base|None, last)`` work items in order.

        ``row_base`` is only known up front for the first stripe read after a resume; for
        the others the generator tracks it as chunks come back in order.
        """
        ref = None  # (path, schema) of the reference file, opened on first use
        warned = set()
        for fi in range(self.start_file, len(self.files)):
            path = self.files[fi].path
            f = open_orc(path)
            check_schema(f.schema, self.specs, path)
            if ref is None:
                ref_file = self.reference or self.files[0]
                if ref_file.path == path:
                    ref = (path, f.schema)
                else:
                    rf = open_orc(ref_file.path)
                    check_schema(rf.schema, self.specs, ref_file.path)
                    ref = (ref_file.path, rf.schema)
            for name in check_same_types(f.schema, self.specs, path, ref[1], ref[0]):
                if name not in warned:
                    warned.add(name)
                    logger.warning("OrcDataset: column %r is %s in %r but %s in %r (the dataset's "
                                   "first file); its values are widened to the wider type in "
                                   "batches that span both", name, f.schema.field(name).type,
                                   path, ref[1].field(name).type, ref[0])
            nstripes = f.nstripes
            first, skip, base = 0, 0, None
            if fi == self.start_file and self.start_row > 0:
                # find the stripe holding start_row by counting rows (reads one column)
                base = 0
                col = self.columns[:1]
                while first < nstripes:
                    n = f.read_stripe(first, columns=col).num_rows
                    if base + n > self.start_row:
                        break
                    base += n
                    first += 1
                skip = self.start_row - base
            for s in range(first, nstripes):
                yield fi, path, s, (skip if s == first else 0), base, s == nstripes - 1
                base = None

    def __iter__(self) -> Iterator[Chunk]:
        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="recis-orc-read")
        # a pass dropped without being closed (no prefetch, loop left by an exception) is
        # stopped at interpreter exit
        key = register_stopper(functools.partial(pool.shutdown, wait=True, cancel_futures=True))
        window = collections.deque()
        plan = self._plan()
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
                    fi, path, s, skip, base, last = item
                    if base is not None:
                        next_row[fi] = base + skip
                    fut = pool.submit(self._convert_task, path, s, skip)
                    window.append((fi, last, fut))
                if not window:
                    return
                fi, last, fut = window.popleft()
                n, columns = fut.result()
                row = next_row.get(fi, 0)
                next_row[fi] = row + n
                if n:
                    yield Chunk(fi, row, n, columns, last)
        finally:
            # closing (or finishing) the pass joins the reader threads: at most one stripe per
            # thread is still being read, and none may outlive the pass (recis_compat/io/threads.py)
            for _, _, fut in window:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            unregister_stopper(key)
