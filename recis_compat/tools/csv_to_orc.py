"""``recis-compat csv-to-orc``: convert CSV files into ORC files that ``OrcDataset`` reads.

RecIS ships ``tools/csv_to_orc.py`` (``--input/-i``, ``--output_dir/-o``, ``--blocksize``,
``--no-header``; dask reads the CSV with inferred scalar types and writes one ORC file per
block). This tool accepts the same options and adds what RecIS training data needs:

* a **schema** (column -> type) with **list columns** for multi-valued features, either inline
  (``"label:float,dense1:list<float>:;,sparse1:list<int64>:;,tags:list<string>:|"``: each
  entry is ``name:type`` or ``name:list<type>:separator``) or as JSON (a file, or the text
  itself): ``{"label": "float", "tags": {"type": "list<string>", "sep": "|"}}``, ``{"tags":
  "list<string>:|"}`` or ``[{"name": "tags", "type": "list<string>", "sep": "|"}]``. Columns
  not in the schema get a scalar type inferred from the first block (int64, double or string)
  unless ``drop_unlisted``; without a schema every column is inferred (as RecIS does);
* element types ``bool``, ``int8``, ``int16``, ``int32`` (``int``), ``int64`` (``bigint``,
  ``long``), ``float`` (32 bit), ``double``, ``string``;
* since ``OrcDataset`` reads only list columns (column_io's rule), scalar columns are written
  as one-element lists by default (``fixedlen_feature("label", [0.0])`` reads them as
  ``[B, 1]``); ``plain_scalars`` writes plain ORC scalar columns instead. An empty cell is a
  missing value: an empty list (a null with ``plain_scalars``, except for strings);
* output: ``part-00000.orc``, ``part-00001.orc``, ... in the output directory, each with at
  most ``rows_per_file`` rows (inputs are concatenated in order, so the sorted file names keep
  the CSV row order), or a single file when the output path ends in ``.orc``; the ORC stripe
  size and compression are options (uncompressed by default). Files are written under a
  temporary name and renamed when complete; a failed run removes what it wrote;
* every bad value is an error naming the CSV file, its line, the column and the value.

Inputs: CSV files (``.gz`` / ``.bz2`` are decompressed) or directories (walked recursively for
``*.csv``, ``*.csv.gz``, ``*.csv.bz2``, ``*.tsv``, sorted). Values are parsed by pyarrow (rows
may not span lines: quoted values with newlines are not supported).
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.orc as orc

__all__ = ["ColumnType", "SchemaError", "CsvConversionError", "ConversionResult", "TYPES",
           "DEFAULT_LIST_SEP", "DEFAULT_ROWS_PER_FILE", "COMPRESSIONS", "parse_schema", "parse_size", "find_inputs",
           "convert"]

DEFAULT_LIST_SEP = ";"
DEFAULT_ROWS_PER_FILE = 1_000_000
COMPRESSIONS = ("uncompressed", "zlib", "snappy", "lz4", "zstd")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".tsv.gz", ".tsv.bz2")

# canonical element type -> arrow type
TYPES: Dict[str, pa.DataType] = {
    "bool": pa.bool_(), "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(),
    "int64": pa.int64(), "float": pa.float32(), "double": pa.float64(), "string": pa.string(),
}
_ALIASES = {
    "boolean": "bool", "tinyint": "int8", "smallint": "int16", "int": "int32", "integer": "int32",
    "bigint": "int64", "long": "int64", "float32": "float", "float64": "double", "str": "string",
}
_LIST_RE = re.compile(r"^(?:list|array)\s*<\s*([A-Za-z0-9_]+)\s*>$", re.IGNORECASE)


class SchemaError(ValueError):
    """The schema text / file cannot be parsed, names an unknown type, or does not fit the
    CSV header."""


class CsvConversionError(ValueError):
    """A CSV value or row cannot be converted; the message names the file, line and column."""

    def __init__(self, message: str, file: str = None, line: Optional[int] = None,
                 column: Optional[str] = None):
        super().__init__(message)
        self.file, self.line, self.column = file, line, column


# ------------------------------------------------------------------------------ schema
@dataclass(frozen=True)
class ColumnType:
    """The type of one output column."""

    name: str
    type: str                      # canonical element type (a key of TYPES)
    is_list: bool = False
    sep: Optional[str] = None      # list separator (list columns only)
    inferred: bool = False         # not in the schema; type inferred from the data

    @property
    def value_type(self) -> pa.DataType:
        return TYPES[self.type]

    @property
    def type_text(self) -> str:
        return f"list<{self.type}>" if self.is_list else self.type

    def spec(self) -> str:
        """The inline schema entry (``name:type`` / ``name:list<type>:sep``)."""
        return f"{self.name}:{self.type_text}" + (f":{self.sep}" if self.is_list else "")

    def arrow_type(self, plain_scalars: bool = False) -> pa.DataType:
        if self.is_list or not plain_scalars:
            return pa.list_(self.value_type)
        return self.value_type


def _canonical_type(text: str, where: str) -> str:
    t = text.strip().lower()
    t = _ALIASES.get(t, t)
    if t not in TYPES:
        known = ", ".join(list(TYPES) + [f"{a} (={b})" for a, b in _ALIASES.items()])
        raise SchemaError(f"{where}: unknown type {text.strip()!r}; known element types: {known}; "
                          "list columns are written list<type>:separator")
    return t


def _column_from_text(name: str, text: str, where: str, sep: Optional[str] = None,
                      default_sep: str = DEFAULT_LIST_SEP) -> ColumnType:
    """``text`` = ``type``, ``list<type>`` or ``list<type>:sep`` (``sep`` given separately
    wins)."""
    if not name:
        raise SchemaError(f"{where}: empty column name")
    body = text.strip()
    if body.lower().startswith(("list", "array")) and "<" in body:
        close = text.find(">")
        if close < 0:
            raise SchemaError(f"{where}: unterminated list type {text.strip()!r} "
                              "(expected list<type>)")
        m = _LIST_RE.match(text[:close + 1].strip())
        if not m:
            raise SchemaError(f"{where}: bad list type {text[:close + 1].strip()!r} "
                              "(expected list<type>)")
        rest = text[close + 1:]
        if rest and not rest.startswith(":"):
            raise SchemaError(f"{where}: expected ':separator' after {text[:close + 1].strip()!r}, "
                              f"got {rest!r}")
        if sep is None:
            sep = rest[1:] if rest else default_sep
            if sep.strip():          # surrounding blanks are layout, unless the separator is blank
                sep = sep.strip()
        if sep == "":
            raise SchemaError(f"{where}: empty list separator for column {name!r}")
        return ColumnType(name, _canonical_type(m.group(1), where), True, sep)
    tname, colon, rest = text.partition(":")
    if colon or sep is not None:
        raise SchemaError(f"{where}: a separator is only allowed for list columns "
                          f"(column {name!r} has scalar type {tname.strip()!r}); use list<{tname.strip()}>")
    return ColumnType(name, _canonical_type(tname, where))


def _schema_from_json(obj, source: str, default_sep: str) -> List[ColumnType]:
    cols: List[ColumnType] = []
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list):
        items = []
        for i, e in enumerate(obj):
            if not isinstance(e, dict) or "name" not in e or "type" not in e:
                raise SchemaError(f"{source}: entry {i} must be an object with 'name' and 'type' "
                                  f"(and 'sep' for lists), got {e!r}")
            items.append((e["name"], e))
    else:
        raise SchemaError(f"{source}: a JSON schema must be an object {{column: type}} or a list "
                          f"of {{name, type, sep}} objects, got {type(obj).__name__}")
    for name, val in items:
        where = f"{source}, column {name!r}"
        if isinstance(val, str):
            cols.append(_column_from_text(str(name), val, where, default_sep=default_sep))
        elif isinstance(val, dict) and isinstance(val.get("type"), str):
            unknown = set(val) - {"name", "type", "sep"}
            if unknown:
                raise SchemaError(f"{where}: unknown keys {sorted(unknown)} (allowed: type, sep)")
            sep = val.get("sep")
            if sep is not None and not isinstance(sep, str):
                raise SchemaError(f"{where}: 'sep' must be a string, got {sep!r}")
            cols.append(_column_from_text(str(name), val["type"], where, sep=sep, default_sep=default_sep))
        else:
            raise SchemaError(f"{where}: expected a type string or {{\"type\": ..., \"sep\": ...}}, "
                              f"got {val!r}")
    return cols


def parse_schema(schema: Union[str, os.PathLike, None],
                 default_sep: str = DEFAULT_LIST_SEP) -> List[ColumnType]:
    """Parse a schema: the path of a JSON file, JSON text, or the inline form
    ``name:type,name:list<type>:sep,...`` (separators cannot contain ``,`` in the inline form;
    use JSON for that). Returns the columns in the given order."""
    if schema is None:
        return []
    text = os.fspath(schema)
    source = "schema"
    if os.path.isfile(text):
        source = f"schema file {text!r}"
        try:
            with open(text, encoding="utf-8") as f:
                content = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise SchemaError(f"cannot read {source}: {e}") from e
        try:
            cols = _schema_from_json(json.loads(content), source, default_sep)
        except json.JSONDecodeError as e:
            raise SchemaError(f"{source} is not valid JSON: {e}") from e
    elif text.lstrip().startswith(("{", "[")):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise SchemaError(f"schema looks like JSON but does not parse: {e}") from e
        cols = _schema_from_json(obj, source, default_sep)
    else:
        cols = []
        for i, item in enumerate(text.split(",")):
            if not item.strip():
                if i == len(text.split(",")) - 1 and i > 0:
                    continue           # trailing comma
                raise SchemaError(f"schema entry {i + 1} is empty (in {text!r})")
            name, colon, rest = item.partition(":")
            if not colon:
                raise SchemaError(f"schema entry {i + 1} {item.strip()!r}: expected name:type "
                                  "or name:list<type>:separator")
            cols.append(_column_from_text(name.strip(), rest, f"schema entry {i + 1} {item.strip()!r}",
                                          default_sep=default_sep))
    if not cols:
        raise SchemaError(f"{source} lists no column")
    seen = set()
    for c in cols:
        if c.name in seen:
            raise SchemaError(f"{source}: column {c.name!r} is listed twice")
        seen.add(c.name)
    return cols


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6,
               "g": 10 ** 9, "gb": 10 ** 9, "t": 10 ** 12, "tb": 10 ** 12,
               "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_size(text: Union[str, int]) -> int:
    """``"64MB"`` (10^6 units, as dask), ``"64MiB"`` (2^20), ``"65536"`` -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r} (examples: 65536, 64MB, 128MiB, 1GB)")
    n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return n


# ------------------------------------------------------------------------------ inputs
def find_inputs(paths: Sequence[str]) -> List[str]:
    """CSV files of ``paths``: files as given, directories walked for CSV suffixes (sorted)."""
    out: List[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = []
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                found.extend(os.path.join(dirpath, fn) for fn in filenames
                             if fn.lower().endswith(CSV_SUFFIXES) and not fn.startswith("."))
            if not found:
                raise FileNotFoundError(f"input directory {p!r} holds no CSV file "
                                        f"(looked for {', '.join(CSV_SUFFIXES)})")
            out.extend(sorted(found))
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p!r} does not exist")
    if not out:
        raise FileNotFoundError("no input CSV given")
    return out


def _compression_of(path: str) -> Optional[str]:
    low = path.lower()
    if low.endswith(".gz"):
        return "gzip"
    if low.endswith(".bz2"):
        return "bz2"
    return None


def _open_text_binary(path: str):
    """A binary Python file object of the decompressed CSV (for header and line lookups)."""
    comp = _compression_of(path)
    if comp == "gzip":
        return gzip.open(path, "rb")
    if comp == "bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")


def _read_header(path: str, delimiter: str) -> List[str]:
    with _open_text_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        for row in csv.reader(text, delimiter=delimiter):
            if row:
                return row
    return []


def _line_of_record(path: str, record: int) -> Optional[int]:
    """Physical line (1-based) of the ``record``-th (0-based) non-empty line of ``path``
    (pyarrow's row numbering: empty lines are skipped, the header counts)."""
    k = -1
    with _open_text_binary(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip(b"\r\n") == b"":
                continue
            k += 1
            if k == record:
                return lineno
    return None


def _line_of_text(path: str, text: str) -> Optional[int]:
    want = text.encode("utf-8")
    with _open_text_binary(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.rstrip(b"\r\n") == want:
                return lineno
    return None


# ------------------------------------------------------------------------------ conversion
@dataclass
class ConversionResult:
    """What :func:`convert` wrote."""

    inputs: List[str]
    files: List[Tuple[str, int]]          # (path, rows)
    rows: int
    columns: List[ColumnType]
    plain_scalars: bool
    compression: str
    stripe_size: int

    @property
    def schema_text(self) -> str:
        return ",".join(c.spec() for c in self.columns)


@dataclass
class _Where:
    """Locates a row of the current block in its CSV file (for error messages)."""

    path: str
    first_record: int                     # record number (0-based, header counts) of row 0
    cache: Dict[int, Optional[int]] = field(default_factory=dict)

    def line(self, row: int) -> Optional[int]:
        rec = self.first_record + int(row)
        if rec not in self.cache:
            self.cache[rec] = _line_of_record(self.path, rec)
        return self.cache[rec]

    def fail(self, row: int, column: ColumnType, what: str, hint: str = "") -> CsvConversionError:
        line = self.line(row)
        loc = f"{self.path}, line {line}" if line is not None else f"{self.path}, data row {row + 1}"
        kind = column.type_text + (", inferred from the first block" if column.inferred else "")
        msg = f"{loc}, column {column.name!r} ({kind}): {what}"
        if hint:
            msg += f"; {hint}"
        elif column.inferred:
            msg += f"; give the column a type with --schema (e.g. {column.name}:string)"
        return CsvConversionError(msg, self.path, line, column.name)


_NUMERIC = {"bool", "int8", "int16", "int32", "int64", "float", "double"}
_NULL_STR = pa.scalar(None, pa.string())


def _first_bad(values: pa.Array, to: pa.DataType) -> int:
    """Index of the first element of ``values`` (strings) that does not cast to ``to``."""
    step = 4096
    for start in range(0, len(values), step):
        part = values.slice(start, step)
        try:
            pc.cast(part, to)
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        for i in range(len(part)):
            try:
                pc.cast(part.slice(i, 1), to)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return start + i
    return 0


def _cast_values(values: pa.Array, col: ColumnType, row_of: Callable[[int], int],
                 describe: Callable[[int], str], where: _Where) -> pa.Array:
    """Cast string ``values`` (no empty strings for numeric types; nulls allowed) to the
    column's element type; a failure raises :class:`CsvConversionError` naming the first bad
    value."""
    to = col.value_type
    if col.type == "string":
        return values
    try:
        out = pc.cast(values, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        i = _first_bad(values, to)
        text = values[i].as_py()
        ranged = col.type.startswith("int") and re.fullmatch(r"\s*[+-]?\d+\s*", str(text))
        raise where.fail(row_of(i), col, f"{text!r}{describe(i)} is not a valid {col.type}"
                                         + (" (out of range)" if ranged else "")) from None
    if col.type == "float" and len(out):
        # float32 overflow parses as inf: only accept inf where the text says so
        inf = pc.is_inf(out).to_numpy(zero_copy_only=False)
        if inf.any():
            for i in np.flatnonzero(inf):
                txt = str(values[int(i)].as_py()).strip().lower().lstrip("+-")
                if txt not in ("inf", "infinity"):
                    raise where.fail(row_of(int(i)), col, f"{values[int(i)].as_py()!r}{describe(int(i))} is "
                                                          "out of range for float (32 bit); use double")
    return out


def _convert_scalar(arr: pa.Array, col: ColumnType, plain: bool, where: _Where) -> pa.Array:
    vals = pc.utf8_trim_whitespace(arr) if col.type in _NUMERIC else arr
    empty = pc.equal(vals, "").to_numpy(zero_copy_only=False)
    if col.type == "string" and plain:
        return vals
    src = pc.if_else(pa.array(empty), _NULL_STR, vals) if empty.any() else vals
    typed = _cast_values(src, col, lambda i: i, lambda i: "", where)
    if plain:
        return typed
    offsets = np.zeros(len(arr) + 1, dtype=np.int32)
    np.cumsum(~empty, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), typed.drop_null())


def _convert_list(arr: pa.Array, col: ColumnType, where: _Where) -> pa.Array:
    empty = pc.equal(arr, "")
    parts = pc.split_pattern(pc.if_else(empty, _NULL_STR, arr), pattern=col.sep)
    lengths = pc.list_value_length(parts).fill_null(0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(arr) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise CsvConversionError(f"{where.path}: column {col.name!r} has more than 2^31 list "
                                 "elements in one block; use a smaller --blocksize")
    flat = parts.flatten()

    def row_of(i: int) -> int:
        return int(np.searchsorted(offsets, i, side="right") - 1)

    def describe(i: int) -> str:
        r = row_of(i)
        return f" (element {i - int(offsets[r]) + 1} of {arr[r].as_py()!r})"

    if col.type in _NUMERIC:
        flat = pc.utf8_trim_whitespace(flat)
        bad = pc.equal(flat, "").to_numpy(zero_copy_only=False)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise where.fail(row_of(i), col, f"empty element{describe(i)}",
                             hint=f"list elements are separated by {col.sep!r}; a missing value is "
                                  "an empty cell, not an empty element")
    values = _cast_values(flat, col, row_of, describe, where)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()), values)


def _infer_type(arr: pa.Array) -> str:
    vals = pc.utf8_trim_whitespace(arr)
    vals = vals.filter(pc.not_equal(vals, ""))
    if len(vals) == 0:
        return "string"
    for t in ("int64", "double"):
        try:
            pc.cast(vals, TYPES[t])
            return t
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return "string"


class _Output:
    """Writes ``part-XXXXX.orc`` files (or one file), rotating every ``rows_per_file`` rows;
    each file is written under a temporary name and renamed when closed."""

    def __init__(self, output: str, single: bool, rows_per_file: int, writer_kwargs: dict):
        self.output, self.single, self.rows_per_file = output, single, rows_per_file
        self.kwargs = writer_kwargs
        self.files: List[Tuple[str, int]] = []
        self._writer = None
        self._tmp = self._final = None
        self._rows = 0

    def _open(self, schema: pa.Schema) -> None:
        if self.single:
            final = self.output
        else:
            final = os.path.join(self.output, f"part-{len(self.files):05d}.orc")
        tmp = os.path.join(os.path.dirname(final) or ".", f".{os.path.basename(final)}.tmp.{os.getpid()}")
        self._writer = orc.ORCWriter(tmp, **self.kwargs)
        self._tmp, self._final, self._rows, self._schema = tmp, final, 0, schema

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self._final)
        self.files.append((self._final, self._rows))
        self._tmp = None

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                self._open(table.schema)
            room = table.num_rows if not self.rows_per_file else self.rows_per_file - self._rows
            part, table = table.slice(0, room), table.slice(room)
            self._writer.write(part)
            self._rows += part.num_rows
            if self.rows_per_file and self._rows >= self.rows_per_file:
                self._close()

    def finish(self, schema: pa.Schema) -> None:
        if self._writer is None and not self.files:     # no rows at all: one empty file
            self._open(schema)
            self._writer.write(schema.empty_table())
        self._close()

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:   # noqa: BLE001 - already failing; clean up what we can
                pass
            self._writer = None
        for path in [self._tmp] + [f for f, _ in self.files]:
            if path and os.path.exists(path):
                try:
                    os.remove(path)
                except OSError:
                    pass
        self.files = []


def _prepare_output(output: str, rows_per_file: int, overwrite: bool) -> Tuple[bool, bool]:
    """Check for existing results and create the output directory. Returns ``(single file,
    directory created)``."""
    output = os.fspath(output)
    single = output.lower().endswith(".orc") and not os.path.isdir(output)
    if single:
        if rows_per_file:
            raise ValueError(f"output {output!r} is a single .orc file, but rows per file is "
                             f"{rows_per_file}; give a directory to split the output")
        if os.path.exists(output) and not overwrite:
            raise FileExistsError(f"output file {output!r} exists (use --overwrite to replace it)")
        os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
        return True, False
    if os.path.exists(output) and not os.path.isdir(output):
        raise FileExistsError(f"output {output!r} exists and is not a directory")
    created = not os.path.exists(output)
    os.makedirs(output, exist_ok=True)
    old = sorted(fn for fn in os.listdir(output) if re.fullmatch(r"part-\d+\.orc", fn))
    if old:
        if not overwrite:
            raise FileExistsError(f"output directory {output!r} already holds {len(old)} part-*.orc "
                                  f"files ({old[0]}, ...); use --overwrite to replace them")
        for fn in old:
            os.remove(os.path.join(output, fn))
    return False, created


def convert(inputs: Sequence[str], output: str, schema: Union[str, Sequence[ColumnType], None] = None, *,
            header: bool = True, delimiter: str = ",", list_sep: str = DEFAULT_LIST_SEP,
            rows_per_file: Optional[int] = None, stripe_size: Union[int, str] = 64 * 2 ** 20,
            block_size: Union[int, str] = "64MB", compression: str = "uncompressed",
            plain_scalars: bool = False, drop_unlisted: bool = False, overwrite: bool = False,
            progress: Optional[bool] = None) -> ConversionResult:
    """Convert CSV ``inputs`` (files / directories) into ORC under ``output``.

    Args:
        schema: inline / JSON schema text, a JSON file, or parsed :class:`ColumnType` s.
        header: the CSV files start with a header row (else the schema, which must then list
            every column in order, or ``"0", "1", ...`` names the columns, as RecIS does).
        delimiter: the CSV field delimiter.
        list_sep: separator of list columns that do not give one.
        rows_per_file: rows per output file (0: everything in one file); default 1,000,000,
            or 0 when ``output`` is a single ``.orc`` file (where it must be 0).
        stripe_size: ORC stripe size (bytes or ``"64MB"``); OrcDataset reads stripe by stripe.
        block_size: bytes of CSV parsed at once (RecIS's ``--blocksize``).
        compression: one of :data:`COMPRESSIONS`.
        plain_scalars: write scalar columns as plain ORC columns, not one-element lists.
        drop_unlisted: drop CSV columns the schema does not list (else their type is inferred).
        overwrite: replace existing ``part-*.orc`` files (or the output file).
        progress: tqdm progress bar over input bytes (None: only on a terminal).

    Raises:
        SchemaError, CsvConversionError, FileNotFoundError, FileExistsError, ValueError.
    """
    from tqdm import tqdm

    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose one of {COMPRESSIONS}")
    if len(delimiter) != 1:
        raise ValueError(f"the CSV delimiter must be one character, got {delimiter!r}")
    if rows_per_file is None:
        single_out = os.fspath(output).lower().endswith(".orc") and not os.path.isdir(output)
        rows_per_file = 0 if single_out else DEFAULT_ROWS_PER_FILE
    if int(rows_per_file) < 0:
        raise ValueError(f"rows per file must be >= 0, got {rows_per_file}")
    rows_per_file = int(rows_per_file)
    stripe_size, block_size = parse_size(stripe_size), parse_size(block_size)
    if isinstance(schema, (list, tuple)):
        listed = list(schema)
    else:
        listed = parse_schema(schema, default_sep=list_sep) if schema is not None else []
    files = find_inputs(inputs)
    by_name = {c.name: c for c in listed}

    # column names of every file
    names_of: Dict[str, List[str]] = {}
    for path in files:
        if header:
            names = _read_header(path, delimiter)
            if not names:
                raise CsvConversionError(f"{path}: empty file (no header row)", path)
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise CsvConversionError(f"{path}, line 1: duplicate column names {dup} in the header", path, 1)
        elif listed:
            names = [c.name for c in listed]
            width = len(_read_header(path, delimiter))
            if width and width != len(names):
                raise SchemaError(f"{path} has {width} columns but the schema lists {len(names)}; "
                                  "with --no-header the schema must list every column, in order")
        else:
            first = _read_header(path, delimiter)
            names = [str(i) for i in range(len(first))]
        names_of[path] = names
    base = names_of[files[0]]
    for path in files[1:]:
        if sorted(names_of[path]) != sorted(base):
            raise CsvConversionError(
                f"{path}: its columns {names_of[path]} differ from those of {files[0]} ({base})", path)
    missing = [c.name for c in listed if c.name not in base]
    if missing:
        raise SchemaError(f"schema columns {missing} are not in the CSV header of {files[0]} "
                          f"(columns: {base})")
    out_names = [n for n in base if n in by_name or not drop_unlisted]
    if not out_names:
        raise SchemaError("no column to write (every CSV column was dropped)")

    single, created = _prepare_output(output, rows_per_file, overwrite)
    writer_kwargs = dict(stripe_size=stripe_size, compression=compression)
    out = _Output(os.fspath(output), single, rows_per_file, writer_kwargs)
    columns: Dict[str, ColumnType] = {}      # resolved types, output order
    total_bytes = sum(os.path.getsize(p) for p in files)
    rows = 0
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="csv-to-orc",
               disable=(None if progress is None else not progress), leave=False)
    try:
        for path in files:
            names = names_of[path]
            bad_rows: list = []

            def on_invalid(row, _bad=bad_rows):
                _bad.append((row.number, row.text, row.expected_columns, row.actual_columns))
                return "error"

            raw = pa.OSFile(path, "rb")
            comp = _compression_of(path)
            stream = pa.CompressedInputStream(raw, comp) if comp else raw
            try:
                try:
                    reader = pacsv.open_csv(
                        stream,
                        read_options=pacsv.ReadOptions(block_size=block_size, column_names=names,
                                                       skip_rows=1 if header else 0, use_threads=True),
                        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
                        convert_options=pacsv.ConvertOptions(
                            column_types={n: pa.string() for n in names}, include_columns=out_names,
                            strings_can_be_null=False, quoted_strings_can_be_null=False))
                except pa.ArrowInvalid as e:
                    raise _parse_failure(path, e, bad_rows, header) from None
                done = 0
                first_record = 1 if header else 0
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        break
                    except pa.ArrowInvalid as e:
                        raise _parse_failure(path, e, bad_rows, header) from None
                    where = _Where(path, first_record)
                    if not columns:
                        for n in out_names:
                            columns[n] = by_name.get(n) or ColumnType(
                                n, _infer_type(batch.column(n)), inferred=True)
                    arrays = []
                    for n in out_names:
                        col, arr = columns[n], batch.column(n)
                        if col.is_list:
                            arrays.append(_convert_list(arr, col, where))
                        else:
                            arrays.append(_convert_scalar(arr, col, plain_scalars, where))
                    schema_out = pa.schema([pa.field(n, columns[n].arrow_type(plain_scalars)) for n in out_names])
                    out.write(pa.Table.from_arrays(arrays, schema=schema_out))
                    rows += batch.num_rows
                    first_record += batch.num_rows
                    pos = raw.tell()
                    bar.update(pos - done)
                    done = pos
            finally:
                stream.close()
                if stream is not raw:
                    raw.close()
        if not columns:       # no data rows anywhere
            for n in out_names:
                columns[n] = by_name.get(n) or ColumnType(n, "string", inferred=True)
        out.finish(pa.schema([pa.field(n, columns[n].arrow_type(plain_scalars)) for n in out_names]))
    except BaseException:
        out.abort()
        if created:
            try:
                os.rmdir(output)          # only when empty
            except OSError:
                pass
        raise
    finally:
        bar.close()
    return ConversionResult(inputs=files, files=out.files, rows=rows,
                            columns=[columns[n] for n in out_names], plain_scalars=plain_scalars,
                            compression=compression, stripe_size=stripe_size)


def _parse_failure(path: str, err: Exception, bad_rows: list, header: bool) -> CsvConversionError:
    """A pyarrow CSV parse error -> an error naming the file and line."""
    if bad_rows:
        number, text, expected, actual = bad_rows[0]
        line = _line_of_record(path, number - 1) if number is not None else _line_of_text(path, text)
        loc = f"{path}, line {line}" if line is not None else path
        return CsvConversionError(f"{loc}: expected {expected} columns, got {actual}: {text[:200]!r}",
                                  path, line)
    msg = str(err)
    m = re.search(r"Row #(\d+)", msg)
    line = _line_of_record(path, int(m.group(1)) - 1) if m else None
    loc = f"{path}, line {line}" if line is not None else path
    return CsvConversionError(f"{loc}: cannot parse the CSV: {msg}", path, line)


def _main(argv: Optional[Sequence[str]] = None, prog_name: str = "python -m recis_compat.tools.csv_to_orc") -> None:
    """``python -m recis_compat.tools.csv_to_orc ARGS`` (or ``python -m recis.tools.csv_to_orc``,
    RecIS's spelling): runs the ``recis-compat csv-to-orc`` command, same options and exit codes."""
    import sys

    from recis_compat.tools.csv_to_orc_cli import command
    args = list(sys.argv[1:] if argv is None else argv)
    command.main(args, prog_name=prog_name)


if __name__ == "__main__":
    _spec = globals().get("__spec__")
    _main(prog_name=f"python -m {_spec.name}" if _spec is not None else None)
