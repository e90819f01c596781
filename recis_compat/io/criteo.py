"""Criteo TSV -> Parquet (or ORC) laid out as OneFlow's DLRM preprocessing
(``RecommenderSystems/dlrm/tools/criteo1t_parquet.py`` and its README) describes: the library
behind ``recis-compat criteo-to-parquet`` (``recis_compat/tools/criteo_to_parquet.py``).

Input
    Criteo's TSV without a header, 40 columns per line: ``label`` (0/1), 13 integer columns
    ``I1..I13`` and 26 categorical columns ``C1..C26`` holding hexadecimal strings (8 hex digits,
    the 32-bit hashes Criteo publishes). An empty field is a missing value. Plain or ``.gz``
    files; directories (every regular non-hidden file in them, sorted) and globs are expanded.

Output schema (one row per input line, in input order; columns in this order)
    ============  =========  ==================================================================
    column        type       value
    ============  =========  ==================================================================
    ``label``     int32      the label (0 or 1; anything else is an error)
    ``I1..I13``   int32      ``--dense plus1`` (default): ``raw + 1``, missing -> ``1``
                             (OneFlow's files; their DLRM applies ``log(x + 1)`` in the model)
                  float32    ``--dense log``: ``log(max(raw + 1, 0) + 1)``, missing -> ``log 2``:
                             what OneFlow's DLRM feeds its bottom MLP, computed once here;
                             ``raw <= -2`` (rare in Criteo) is clamped to ``log 1 = 0`` where
                             OneFlow's model would compute ``log`` of a value <= 0
    ``C1..C26``   int64      ``--mod-idx M`` (default 40,000,000): ``int(hex, 16) % M + M * i``
                             with ``i`` = 0 for ``C1`` ... 25 for ``C26``; missing -> ``M * i``.
                             Every field owns ``[M * i, M * (i + 1))``, so fields never collide.
                  int64      ``--hash``: the 64-bit hash of the value together with the field
                             index ``i`` (below); missing values hash the index alone.
    ============  =========  ==================================================================

    With ``--orc`` every column is a one-element list (``list<int32>`` ...) so that
    ``recis.io.OrcDataset`` reads it (``fixedlen_feature("I1", [1])`` -> ``[B, 1]``);
    ``--plain-scalars`` writes plain ORC columns instead.

The 64-bit hash (``--hash``)
    ``h = XXH64(utf8(value), seed=42)``; ``h = XXH64(int32_le(i), seed=h)``; stored as the signed
    int64 with the same bits. A missing value skips the first step (``h = 42``). XXH64 is
    xxHash's 64-bit function (the ``xxhash`` package, a dependency, is its reference here). This
    chain is how Spark SQL's ``xxhash64(C, lit(i))`` combines its arguments (seed 42, nulls
    skipped), the function OneFlow's tools call, so a Spark user can recompute our ids with
    ``xxhash64(C{i+1}, lit(i))``; we have not run Spark to confirm bit-equality. Values of up to
    31 bytes (all of Criteo's) are hashed by a vectorised numpy XXH64 (:func:`xxh64_short`),
    longer ones by the ``xxhash`` package.

Differences from OneFlow's tools (COMPATIBILITY.md): their Python tool passes ``lit(i - 1)``
from a 0-based ``enumerate``, i.e. field index -1 for ``C1`` (negative ids); their Scala tool
uses a stride of ``M + 1`` with missing -> ``M``. We follow the README's formula with 0-based
field indices. The train split is not shuffled (OneFlow's Spark job sorts by ``rand()``): shuffle
in the reader. Splits, as OneFlow's ``data_dir`` holds them: the positional inputs go to ``train/``, ``--val``
inputs to ``val/``, ``--test`` inputs to ``test/``; ``--test-rows N`` sends the first ``N`` rows
of the ``--val`` inputs to ``test/`` (OneFlow's ``day_23`` split: ``head -n 89137319``).

``--export-dataset-info`` writes ``README.md`` in OneFlow's format (sample counts per split and
``table_size_array = [...]``: distinct ids of ``C1..C26`` over all splits, the missing-value id
included) and the same as ``dataset_info.json`` (``num_train_samples`` ... as OneFlow's DeepFM
arguments name them).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

__all__ = [
    "DENSE_COLUMNS", "SPARSE_COLUMNS", "CRITEO_COLUMNS", "DEFAULT_MOD_IDX", "HASH_SEED",
    "CriteoOptions", "CriteoFormatError", "ConversionResult", "output_schema", "xxh64_short",
    "hash_with_field_index", "parse_hex", "convert_batch", "read_criteo_tsv", "expand_inputs",
    "convert", "write_converted",
]

DENSE_COLUMNS = [f"I{i}" for i in range(1, 14)]
SPARSE_COLUMNS = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label"] + DENSE_COLUMNS + SPARSE_COLUMNS
DEFAULT_MOD_IDX = 40_000_000
HASH_SEED = 42          # Spark SQL's xxhash64 seed
DENSE_MODES = ("plus1", "log")


class CriteoFormatError(ValueError):
    """A Criteo input that is not 40 tab-separated columns of the expected kinds."""


@dataclass(frozen=True)
class CriteoOptions:
    """How categorical and integer columns are encoded (module docstring, "Output schema")."""

    mod_idx: int = DEFAULT_MOD_IDX   # > 0; ignored with hash=True
    hash: bool = False               # 64-bit XXH64 with the field index instead of mod_idx
    dense: str = "plus1"             # "plus1" (int32 raw+1) or "log" (float32)

    def __post_init__(self):
        if self.dense not in DENSE_MODES:
            raise ValueError(f"dense must be one of {DENSE_MODES}, got {self.dense!r}")
        if not self.hash and int(self.mod_idx) <= 0:
            raise ValueError(f"mod_idx must be > 0 (or use hash=True), got {self.mod_idx}")
        if not self.hash and int(self.mod_idx) * 26 >= 2 ** 63:
            raise ValueError(f"mod_idx {self.mod_idx} too large: ids mod_idx * 25 + ... overflow int64")


def output_schema(options: CriteoOptions, list_columns: bool = False) -> pa.Schema:
    """The Arrow schema of converted rows; ``list_columns``: one-element lists (ORC for OrcDataset)."""
    dense_t = pa.int32() if options.dense == "plus1" else pa.float32()
    types = [("label", pa.int32())] + [(c, dense_t) for c in DENSE_COLUMNS] + \
            [(c, pa.int64()) for c in SPARSE_COLUMNS]
    if list_columns:
        types = [(n, pa.list_(t)) for n, t in types]
    return pa.schema(types)


# ---------------------------------------------------------------------------------------------
# XXH64, vectorised over many short inputs of one length
# ---------------------------------------------------------------------------------------------
_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _avalanche(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    return h ^ (h >> np.uint64(32))


def xxh64_short(data: np.ndarray, seeds) -> np.ndarray:
    """XXH64 of each row of ``data`` (uint8 ``[n, L]``, ``L < 32``) with ``seeds`` (uint64 scalar
    or ``[n]``); returns uint64 ``[n]``. Equal to ``xxhash.xxh64_intdigest(row.tobytes(), seed)``."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    n, length = data.shape
    if length >= 32:
        raise ValueError(f"xxh64_short handles inputs shorter than 32 bytes, got {length}")
    with np.errstate(over="ignore"):
        h = np.asarray(seeds, dtype=np.uint64) + _P5 + np.uint64(length)
        h = np.broadcast_to(h, (n,)).copy()
        pos = 0
        while pos + 8 <= length:
            lane = data[:, pos:pos + 8].copy().view("<u8")[:, 0]
            k = _rotl(lane * _P2, 31) * _P1
            h = _rotl(h ^ k, 27) * _P1 + _P4
            pos += 8
        if pos + 4 <= length:
            word = data[:, pos:pos + 4].copy().view("<u4")[:, 0].astype(np.uint64)
            h = _rotl(h ^ (word * _P1), 23) * _P2 + _P3
            pos += 4
        while pos < length:
            h = _rotl(h ^ (data[:, pos].astype(np.uint64) * _P5), 11) * _P1
            pos += 1
        return _avalanche(h)


def _string_parts(arr: pa.Array) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bytes uint8, offsets int64 ``[n+1]``, valid bool ``[n]``) of a string/binary array."""
    arr = arr.cast(pa.large_binary()) if not pa.types.is_large_binary(arr.type) else arr
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset:arr.offset + n + 1] if bufs[1] is not None \
        else np.zeros(n + 1, np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    valid = np.ones(n, bool) if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    return data, offsets, valid


def _rows_of_width(data: np.ndarray, offsets: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """The bytes of the strings ``rows`` (bool ``[n]``; every selected one ``width`` bytes long) as
    uint8 ``[m, width]``; a reshape when they lie back to back (Criteo: unselected are empty)."""
    lengths = np.diff(offsets)
    n = lengths.size
    if width and ((lengths == width).all() or (lengths[~rows] == 0).all()):
        block = data[offsets[0]:offsets[-1]].reshape(-1, width)
        return block if block.shape[0] == int(rows.sum()) else block[rows]
    idx = offsets[:-1][rows, None] + np.arange(width, dtype=np.int64)
    return data[idx] if n else np.zeros((0, width), np.uint8)


def hash_with_field_index(values: pa.Array, field_index: int) -> np.ndarray:
    """The ``--hash`` id (module docstring) of every string in ``values`` for field ``field_index``.

    values: Arrow string/binary ``[n]`` (nulls and empty strings are missing values) -> int64 ``[n]``.
    """
    import xxhash

    data, offsets, valid = _string_parts(values)
    n = len(values)
    first = np.full(n, HASH_SEED, dtype=np.uint64)
    lengths = np.diff(offsets)
    valid = valid & (lengths > 0)
    for length in np.unique(lengths[valid]):
        sel = valid & (lengths == length)
        if length < 32:
            first[sel] = xxh64_short(_rows_of_width(data, offsets, sel, int(length)), np.uint64(HASH_SEED))
        else:
            for r in np.nonzero(sel)[0]:
                first[r] = xxhash.xxh64_intdigest(data[offsets[r]:offsets[r + 1]].tobytes(), HASH_SEED)
    index_bytes = np.frombuffer(np.int32(field_index).astype("<i4").tobytes(), np.uint8)
    out = xxh64_short(np.broadcast_to(index_bytes, (n, 4)), first)
    return out.view(np.int64)


_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def parse_hex(values: pa.Array, where: str = "") -> Tuple[np.ndarray, np.ndarray]:
    """Hexadecimal strings -> (uint64 ``[n]`` values, bool ``[n]`` valid); nulls/empty are missing.

    Raises :class:`CriteoFormatError` naming ``where`` and the first bad value (not 1-16 hex digits).
    """
    data, offsets, valid = _string_parts(values)
    lengths = np.diff(offsets)
    valid = valid & (lengths > 0)
    n = len(values)
    out = np.zeros(n, dtype=np.uint64)
    if not valid.any():
        return out, valid
    if (lengths[valid] == 8).all():        # Criteo: 8 hex digits, missing values empty
        nib = _HEX[_rows_of_width(data, offsets, valid, 8)]
        if (nib == 255).any():
            r = int(np.nonzero(valid)[0][np.nonzero((nib == 255).any(axis=1))[0][0]])
            text = data[offsets[r]:offsets[r + 1]].tobytes().decode("utf-8", "replace")
            raise CriteoFormatError(f"{where}: categorical value {text!r} is not 1-16 hexadecimal digits")
        nib = nib.astype(np.uint32)
        acc = nib[:, 0]
        for k in range(1, 8):
            acc = (acc << np.uint32(4)) | nib[:, k]
        out[valid] = acc
        return out, valid
    bad = valid & (lengths > 16)
    starts = offsets[:-1]
    with np.errstate(over="ignore"):
        for k in range(int(lengths[valid].max(initial=0)) if not bad.any() else 0):
            rows = valid & (lengths > k)
            nib = _HEX[data[starts[rows] + k]]
            bad[np.nonzero(rows)[0][nib == 255]] = True
            out[rows] = (out[rows] << np.uint64(4)) | nib.astype(np.uint64)
    if bad.any():
        r = int(np.nonzero(bad)[0][0])
        text = data[offsets[r]:offsets[r + 1]].tobytes().decode("utf-8", "replace")
        raise CriteoFormatError(f"{where}: categorical value {text!r} is not 1-16 hexadecimal digits")
    return out, valid


def _dense(col: pa.Array, options: CriteoOptions, where: str) -> pa.Array:
    raw = col.to_numpy(zero_copy_only=False) if col.null_count == 0 else \
        pc.fill_null(col, 0).to_numpy(zero_copy_only=False)
    raw = raw.astype(np.int64, copy=False)
    valid = np.ones(len(col), bool) if col.null_count == 0 else col.is_valid().to_numpy(zero_copy_only=False)
    plus1 = np.where(valid, raw + 1, 1)
    if options.dense == "plus1":
        if plus1.size and (plus1.max() > np.iinfo(np.int32).max or plus1.min() < np.iinfo(np.int32).min):
            r = int(np.nonzero((plus1 > np.iinfo(np.int32).max) | (plus1 < np.iinfo(np.int32).min))[0][0])
            raise CriteoFormatError(f"{where}: value {int(raw[r])} (row {r} of the block) does not fit "
                                    f"int32 after +1; use --dense log")
        return pa.array(plus1.astype(np.int32), pa.int32())
    return pa.array(np.log1p(np.maximum(plus1, 0).astype(np.float64)).astype(np.float32), pa.float32())


def _sparse(col: pa.Array, field_index: int, options: CriteoOptions, where: str) -> pa.Array:
    if options.hash:
        return pa.array(hash_with_field_index(col, field_index), pa.int64())
    mod = np.uint64(options.mod_idx)
    vals, valid = parse_hex(col, where)
    ids = np.where(valid, vals % mod, np.uint64(0)).astype(np.int64) + np.int64(options.mod_idx) * field_index
    return pa.array(ids, pa.int64())


def convert_batch(batch: pa.RecordBatch, options: CriteoOptions, where: str = "") -> pa.RecordBatch:
    """One block of raw Criteo columns -> the output schema.

    batch: ``label`` int, ``I1..I13`` int (nullable), ``C1..C26`` string (nullable), as
    :func:`read_criteo_tsv` yields. ``where`` (e.g. the file) is named in errors.
    """
    label = batch.column("label")
    if label.null_count:
        raise CriteoFormatError(f"{where}: column label has a missing value (expected 0 or 1)")
    lab = label.to_numpy(zero_copy_only=False)
    if lab.size and ((lab != 0) & (lab != 1)).any():
        bad = lab[(lab != 0) & (lab != 1)][0]
        raise CriteoFormatError(f"{where}: column label has value {bad} (expected 0 or 1)")
    cols = [pa.array(lab.astype(np.int32), pa.int32())]
    cols += [_dense(batch.column(c), options, f"{where}: column {c}") for c in DENSE_COLUMNS]
    cols += [_sparse(batch.column(c), i, options, f"{where}: column {c}") for i, c in enumerate(SPARSE_COLUMNS)]
    return pa.RecordBatch.from_arrays(cols, schema=output_schema(options))


def _raw_types() -> Dict[str, pa.DataType]:
    types = {"label": pa.int64()}
    types.update({c: pa.int64() for c in DENSE_COLUMNS})
    types.update({c: pa.string() for c in SPARSE_COLUMNS})
    return types


def read_criteo_tsv(path: str, block_size: int = 16 << 20) -> Iterator[Tuple[pa.RecordBatch, int]]:
    """Stream a Criteo TSV (plain or .gz): yields (raw batch, input bytes consumed so far).

    Raises :class:`CriteoFormatError` naming ``path`` when a line is not 40 columns or an integer
    column holds something else.
    """
    raw = pa.OSFile(path, "rb")
    stream = pa.CompressedInputStream(raw, "gzip") if path.endswith(".gz") else raw
    try:
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(column_names=CRITEO_COLUMNS, block_size=block_size),
                parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                convert_options=pacsv.ConvertOptions(column_types=_raw_types(), strings_can_be_null=True,
                                                     null_values=[""]))
            for batch in reader:
                yield batch, raw.tell()
        except pa.ArrowInvalid as e:
            raise CriteoFormatError(f"{path}: not Criteo TSV (label, I1..I13 integers, C1..C26 hex, "
                                    f"tab-separated): {e}") from None
    finally:
        stream.close()


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """Files, directories (their regular non-hidden files, sorted) and globs -> file list, in order."""
    out: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(n for n in os.listdir(item) if not n.startswith("."))
            out += [os.path.join(item, n) for n in names if os.path.isfile(os.path.join(item, n))]
        elif os.path.isfile(item):
            out.append(item)
        elif any(ch in item for ch in "*?["):
            hits = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not hits:
                raise FileNotFoundError(f"{item}: the pattern matches no file")
            out += hits
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
    return out


class _RollingWriter:
    """Writes batches to ``dir/part-00000.<ext>``, ... with at most ``rows_per_file`` rows each
    (0: one file); files are written as ``.tmp`` and renamed by :meth:`close`."""

    def __init__(self, directory: str, fmt: str, schema: pa.Schema, rows_per_file: int,
                 row_group_rows: int, list_columns: bool):
        self.dir, self.fmt, self.schema = directory, fmt, schema
        self.rows_per_file, self.row_group_rows, self.list_columns = rows_per_file, row_group_rows, list_columns
        self.files: List[Tuple[str, int]] = []
        self._writer = None
        self._rows_in_file = 0
        self._pending: List[pa.RecordBatch] = []
        self._pending_rows = 0
        os.makedirs(directory, exist_ok=True)

    def _open(self):
        ext = "parquet" if self.fmt == "parquet" else "orc"
        path = os.path.join(self.dir, f"part-{len(self.files):05d}.{ext}")
        if self.fmt == "parquet":
            import pyarrow.parquet as pq
            self._writer = pq.ParquetWriter(path + ".tmp", self.schema)
        else:
            import pyarrow.orc as orc
            self._writer = orc.ORCWriter(path + ".tmp")
        self.files.append((path, 0))

    def _flush(self):
        if not self._pending_rows:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        self._pending, self._pending_rows = [], 0
        if self._writer is None:
            self._open()
        if self.fmt == "parquet":
            self._writer.write_table(table, row_group_size=self.row_group_rows)
        else:
            self._writer.write(table)
        path, n = self.files[-1]
        self.files[-1] = (path, n + table.num_rows)

    def _close_file(self):
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            path = self.files[-1][0]
            os.replace(path + ".tmp", path)
        self._rows_in_file = 0

    def write(self, batch: pa.RecordBatch):
        if self.list_columns:
            offsets = pa.array(np.arange(batch.num_rows + 1, dtype=np.int32))
            batch = pa.RecordBatch.from_arrays(
                [pa.ListArray.from_arrays(offsets, c) for c in batch.columns], schema=self.schema)
        start = 0
        while start < batch.num_rows:
            room = batch.num_rows - start
            if self.rows_per_file:
                if self._rows_in_file == self.rows_per_file:
                    self._close_file()
                room = min(room, self.rows_per_file - self._rows_in_file)
            piece = batch.slice(start, room)
            self._pending.append(piece)
            self._pending_rows += room
            self._rows_in_file += room
            start += room
            if self._pending_rows >= self.row_group_rows:
                self._flush()

    def close(self):
        self._close_file()

    def abort(self):
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the conversion already failed; remove what we wrote
                pass
            self._writer = None
        for path, _ in self.files:
            for p in (path, path + ".tmp"):
                if os.path.exists(p):
                    os.remove(p)


def write_converted(batches, output_dir: str, options: CriteoOptions = CriteoOptions(), *, fmt: str = "parquet",
                    rows_per_file: int = 1_000_000, row_group_rows: int = 131_072,
                    plain_scalars: bool = False) -> List[Tuple[str, int]]:
    """Write converted batches (:func:`convert_batch` output) to ``output_dir/part-*.parquet|orc``.

    Returns [(path, rows)]. Files are renamed into place only when complete; on an error the
    files written so far are removed.
    """
    if fmt not in ("parquet", "orc"):
        raise ValueError(f"fmt must be 'parquet' or 'orc', got {fmt!r}")
    list_columns = fmt == "orc" and not plain_scalars
    w = _RollingWriter(output_dir, fmt, output_schema(options, list_columns), rows_per_file, row_group_rows,
                       list_columns)
    try:
        for b in batches:
            w.write(b)
        w.close()
    except BaseException:
        w.abort()
        raise
    return w.files


class _DistinctCounter:
    """Exact distinct count of each ``C`` column over everything added (memory ~ 8 B / distinct id)."""

    def __init__(self):
        self._merged: List[np.ndarray] = [np.zeros(0, np.int64) for _ in SPARSE_COLUMNS]
        self._pending: List[List[np.ndarray]] = [[] for _ in SPARSE_COLUMNS]
        self._pending_size = [0] * len(SPARSE_COLUMNS)

    def add(self, batch: pa.RecordBatch):
        for i, c in enumerate(SPARSE_COLUMNS):
            u = np.unique(batch.column(c).to_numpy())
            self._pending[i].append(u)
            self._pending_size[i] += u.size
            if self._pending_size[i] > max(1 << 20, self._merged[i].size):
                self._merge(i)

    def _merge(self, i: int):
        self._merged[i] = np.unique(np.concatenate([self._merged[i]] + self._pending[i]))
        self._pending[i], self._pending_size[i] = [], 0

    def counts(self) -> List[int]:
        for i in range(len(SPARSE_COLUMNS)):
            self._merge(i)
        return [int(m.size) for m in self._merged]


@dataclass
class ConversionResult:
    """What :func:`convert` wrote: per split its rows and files, and the table size array."""

    splits: Dict[str, int] = field(default_factory=dict)             # split -> rows
    files: Dict[str, List[Tuple[str, int]]] = field(default_factory=dict)  # split -> [(path, rows)]
    inputs: List[str] = field(default_factory=list)
    table_size_array: Optional[List[int]] = None
    info_files: List[str] = field(default_factory=list)


def _write_info(output_dir: str, res: ConversionResult, options: CriteoOptions, fmt: str) -> List[str]:
    readme = os.path.join(output_dir, "README.md")
    with open(readme, "w") as f:
        f.write("## number of examples:\n")
        for name, n in res.splits.items():
            f.write(f"{name}: {n}\n")
        f.write("\n## table size array\n")
        f.write("table_size_array = [" + ", ".join(str(i) for i in res.table_size_array) + "]\n")
    info = {f"num_{name}_samples": n for name, n in res.splits.items()}
    info.update({"table_size_array": res.table_size_array, "format": fmt,
                 "sparse": "hash" if options.hash else {"mod_idx": options.mod_idx},
                 "dense": options.dense, "columns": CRITEO_COLUMNS})
    path = os.path.join(output_dir, "dataset_info.json")
    with open(path, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return [readme, path]


def convert(inputs: Sequence[str], output_dir: str, options: CriteoOptions = CriteoOptions(), *,
            fmt: str = "parquet", rows_per_file: int = 1_000_000, row_group_rows: int = 131_072,
            val_inputs: Sequence[str] = (), test_inputs: Sequence[str] = (), test_rows: Optional[int] = None,
            export_dataset_info: bool = False, plain_scalars: bool = False, overwrite: bool = False,
            progress: Optional[bool] = None, block_size: int = 16 << 20) -> ConversionResult:
    """Convert Criteo TSV files (module docstring) into ``output_dir``.

    ``inputs`` go to ``output_dir/train/part-*.<ext>``, ``val_inputs`` to ``val``, ``test_inputs`` to
    ``test``. ``test_rows``: the first ``test_rows`` rows of ``val_inputs`` go to ``test``.
    ``fmt``: "parquet" or "orc" (one-element list columns unless ``plain_scalars``). On an error
    the files written so far are removed.
    """
    from tqdm import tqdm

    if fmt not in ("parquet", "orc"):
        raise ValueError(f"fmt must be 'parquet' or 'orc', got {fmt!r}")
    if test_rows is not None and (test_inputs or not val_inputs):
        raise ValueError("test_rows splits the --val inputs into test and val: give --val and no --test")
    if rows_per_file < 0 or row_group_rows <= 0:
        raise ValueError("rows_per_file must be >= 0 and row_group_rows > 0")
    plan: List[Tuple[str, List[str]]] = [("train", expand_inputs(inputs))]
    if val_inputs:
        plan.append(("val", expand_inputs(val_inputs)))
    if test_inputs:
        plan.append(("test", expand_inputs(test_inputs)))
    for name, files in plan:
        if not files:
            raise FileNotFoundError(f"no input file for the {name} split")
    ext = "parquet" if fmt == "parquet" else "orc"
    dirs = {name: os.path.join(output_dir, name) for name, _ in plan}
    if test_rows is not None:
        dirs["test"] = os.path.join(output_dir, "test")
    for d in dirs.values():
        existing = glob.glob(os.path.join(d, f"part-*.{ext}"))
        if existing and not overwrite:
            raise FileExistsError(f"{d} already holds part-*.{ext} files; pass overwrite=True (--overwrite)")
        for p in existing:
            os.remove(p)

    list_columns = fmt == "orc" and not plain_scalars
    schema = output_schema(options, list_columns)
    res = ConversionResult(inputs=[p for _, files in plan for p in files])
    counter = _DistinctCounter() if export_dataset_info else None
    total = sum(os.path.getsize(p) for p in res.inputs)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="criteo-to-parquet",
               disable=(not os.isatty(2)) if progress is None else not progress)
    writers: Dict[str, _RollingWriter] = {}

    def writer(name: str) -> _RollingWriter:
        if name not in writers:
            writers[name] = _RollingWriter(dirs[name], fmt, schema, rows_per_file, row_group_rows, list_columns)
            res.splits[name] = 0
        return writers[name]

    try:
        for name, files in plan:
            if name == "val" and test_rows is not None:
                writer("test")
            writer(name)
            for path in files:
                done = 0
                for raw, pos in read_criteo_tsv(path, block_size):
                    out = convert_batch(raw, options, path)
                    pieces = [(name, out)]
                    if name == "val" and test_rows is not None and res.splits["test"] < test_rows:
                        k = min(out.num_rows, test_rows - res.splits["test"])
                        pieces = [("test", out.slice(0, k)), (name, out.slice(k))]
                    for split, piece in pieces:
                        if piece.num_rows:
                            writer(split).write(piece)
                            res.splits[split] += piece.num_rows
                            if counter is not None:
                                counter.add(piece)
                    bar.update(pos - done)
                    done = pos
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
    res.files = {name: w.files for name, w in writers.items()}
    if counter is not None:
        res.table_size_array = counter.counts()
        res.info_files = _write_info(output_dir, res, options, fmt)
    return res
