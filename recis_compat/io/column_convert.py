"""Arrow columns of one stripe / row group -> :class:`~.column_chunk.ColumnChunk` (validated,
hashed, cast).

Rules (column_io's, as RecIS 1.0 applies them):
  * a selected column must be ``list<T>``/``large_list<T>``, possibly nested, or
    ``list<struct<k, v>>``; a missing or non-list column is an error. Formats whose
    :class:`ReadRules` say ``scalars`` (Parquet) also accept plain numeric, bool and string
    columns, read as one-element rows: a null scalar is an empty row (the fixedlen default);
  * a null list *row* is an empty list; a null *element* at any inner level is an error;
  * fixedlen (dense) columns must be ``list<numeric>`` whose rows hold 0 or ``D`` values
    (``D = len(default_value)``); empty rows get the default; result ``[rows, D]``;
  * floating values are cast to the dataset ``dtype``; integer values keep their type;
  * strings: hashed (farm/murmur, bucket rule of ``hash_bucket``) into int64 by the C++
    ``fused_hash_bytes`` op straight over the Arrow buffers (one call per hash type per stripe,
    no Python loop over strings); ``trans_int8`` keeps the bytes as int8 with one extra offsets
    level; otherwise the strings stay raw.
  * every file's selected columns must have the types of the dataset's first file
    (:func:`check_same_types`; only widths may differ, see ``_WIDENING``);
  * a float value that overflows the dataset ``dtype`` (a double past float32's range) is an
    error, not an inf.
Every error names the file and the column and says what was expected; its class is the
format's (:class:`ReadRules` ``error``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recis_compat.io.column_chunk import DENSE, RAGGED, STRINGS, ColumnChunk
from recis_compat.io.dataset_config import ColumnSpec
from recis_compat.io.errors import OrcDataError, where

__all__ = ["ReadRules", "ORC_RULES", "convert_record_batch", "check_schema", "check_same_types",
           "type_signature"]


@dataclass(frozen=True)
class ReadRules:
    """What a file format's dataset accepts, and how it reports what it does not.

    Attributes:
        dataset: the dataset class name, for messages (``"OrcDataset"``).
        error: the :class:`~.errors.DataError` subclass raised.
        scalars: plain (non-list) numeric/bool/string columns are read as one-element rows.
    """

    dataset: str
    error: type
    scalars: bool = False

    @property
    def hint(self) -> str:
        kinds = "list<T>, large_list<T> (possibly nested) or list<struct<k,v>> columns"
        if self.scalars:
            kinds = "scalar int/float/bool/string columns (one value per row) or " + kinds
        return f"{self.dataset} reads {kinds}"


ORC_RULES = ReadRules("OrcDataset", OrcDataError, scalars=False)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _is_string(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t))


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_scalar(t: pa.DataType) -> bool:
    """A plain (non-list) column the ``scalars`` rule accepts; dictionary-encoded columns are
    judged by their value type."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return _is_number(t) or _is_string(t)


def check_schema(schema: pa.Schema, specs: Sequence[ColumnSpec], path: str,
                 rules: ReadRules = ORC_RULES) -> None:
    """Raise ``rules.error`` if a selected column is missing or has a type ``rules`` refuse
    (not a list; with ``rules.scalars`` not a list and not a scalar number/string; a scalar
    fixedlen column whose default is not one value wide)."""
    names = set(schema.names)
    missing = [s.name for s in specs if s.name not in names]
    if missing:
        raise rules.error(
            f"{where(path, missing[0])}: selected column not in sample (missing columns: "
            f"{missing}; the file has {sorted(names)})")
    for s in specs:
        t = schema.field(s.name).type
        if _is_list(t):
            continue
        if not (rules.scalars and _is_scalar(t)):
            raise rules.error(f"{where(path, s.name)}: type {t} is not a list; {rules.hint}")
        if s.is_dense and len(s.dense_default) != 1:
            raise rules.error(
                f"{where(path, s.name)}: scalar column ({t}) gives one value per row but "
                f"fixedlen_feature default_value has {len(s.dense_default)} values; use a "
                f"one-element default or a list column")


_WIDENING = ("files may differ only in integer width (int8..int64: widened to the wider type when "
             "one batch spans both), float width (both cast to the dataset dtype) and string vs "
             "binary")


def type_signature(t: pa.DataType) -> tuple:
    """The part of a column type that must agree between the files of one dataset: nesting
    (list and large_list alike), struct fields, and the element kind (signed int, unsigned int,
    float, bool, bytes); widths and dictionary encoding are left out (see ``_WIDENING``)."""
    if pa.types.is_dictionary(t):
        return type_signature(t.value_type)
    if _is_list(t):
        return ("list", type_signature(t.value_type))
    if pa.types.is_struct(t):
        return ("struct",) + tuple((t.field(i).name, type_signature(t.field(i).type))
                                   for i in range(t.num_fields))
    if pa.types.is_signed_integer(t):
        return ("int",)
    if pa.types.is_unsigned_integer(t):
        return ("uint",)
    if pa.types.is_floating(t):
        return ("float",)
    if pa.types.is_boolean(t):
        return ("bool",)
    if _is_string(t):
        return ("bytes",)
    return (str(t),)


def check_same_types(schema: pa.Schema, specs: Sequence[ColumnSpec], path: str,
                     ref_schema: pa.Schema, ref_path: str,
                     rules: ReadRules = ORC_RULES) -> List[str]:
    """Compare the selected columns of file ``path`` with the reference file ``ref_path`` (the
    dataset's first file). Raise ``rules.error`` naming the column and both files when a
    type differs beyond widening; return the names of columns that differ only in width (they
    are widened, see ``_WIDENING``). Both schemas have passed :func:`check_schema`."""
    widened = []
    for s in specs:
        t, r = schema.field(s.name).type, ref_schema.field(s.name).type
        if t == r:
            continue
        if type_signature(t) != type_signature(r):
            raise rules.error(
                f"{where(path, s.name)}: type {t} differs from {r} in file {ref_path!r} (the "
                f"dataset's first file); every file of a dataset must give a column the same "
                f"type: {_WIDENING}")
        widened.append(s.name)
    return widened


def _buffer_view(buf, np_dtype, count: int, offset: int) -> np.ndarray:
    """Zero-copy numpy view of ``count`` items of an Arrow buffer starting at item ``offset``."""
    if count == 0 or buf is None:
        return np.zeros(count, dtype=np_dtype)
    itemsize = np.dtype(np_dtype).itemsize
    return np.frombuffer(buf, dtype=np_dtype, count=count, offset=offset * itemsize)


def _offsets_view(arr: pa.Array) -> np.ndarray:
    """``[len(arr)+1]`` offsets of a list or string array (absolute, zero-copy)."""
    dt = np.int64 if (pa.types.is_large_list(arr.type) or pa.types.is_large_string(arr.type)
                      or pa.types.is_large_binary(arr.type)) else np.int32
    return _buffer_view(arr.buffers()[1], dt, len(arr) + 1, arr.offset)


def _numbers(arr: pa.Array, float_dtype: np.dtype, path: str, name: str,
             rules: ReadRules) -> np.ndarray:
    """Leaf numbers as numpy; floats cast to ``float_dtype``; integers keep their type.

    A finite value that the cast turns into inf (a double beyond float32's range) is a
    ``rules.error`` naming the file and column (numpy would only warn)."""
    if pa.types.is_boolean(arr.type):
        return arr.to_numpy(zero_copy_only=False)
    np_dtype = arr.type.to_pandas_dtype()
    vals = _buffer_view(arr.buffers()[1], np_dtype, len(arr), arr.offset)
    return _cast_floats(vals, float_dtype, path, name, rules)


def _cast_floats(vals: np.ndarray, float_dtype: np.dtype, path: str, name: str,
                 rules: ReadRules) -> np.ndarray:
    """Floating ``vals`` cast to ``float_dtype`` (others returned as they are); a finite value
    the cast makes inf is a ``rules.error`` (see :func:`_numbers`)."""
    if vals.dtype.kind == "f" and vals.dtype != float_dtype:
        with np.errstate(over="ignore"):
            out = vals.astype(float_dtype)
        if out.dtype.itemsize < vals.dtype.itemsize:
            inf = np.isinf(out)
            if inf.any():
                bad = np.flatnonzero(inf & np.isfinite(vals))
                if len(bad):
                    i = int(bad[0])
                    raise rules.error(
                        f"{where(path, name)}: value {float(vals[i])!r} (element {i} of the "
                        f"stripe's values) overflows the dataset dtype {np.dtype(float_dtype).name} "
                        f"({len(bad)} such values); rescale the column or use a wider dtype")
        vals = out
    return vals


def _validity(arr: pa.Array):
    """``bool [len(arr)]`` validity of a flat array (from its bitmap, no copy of the values),
    or None when it has no nulls."""
    if arr.null_count == 0:
        return None
    bits = np.frombuffer(arr.buffers()[0], dtype=np.uint8)
    return np.unpackbits(bits, count=arr.offset + len(arr),
                         bitorder="little")[arr.offset:].view(np.bool_)


def _scalar_numbers(arr: pa.Array):
    """``(values of every slot, validity or None)`` of a flat numeric array (not bool): a
    zero-copy view whose null slots hold whatever the buffer holds."""
    vals = _buffer_view(arr.buffers()[1], arr.type.to_pandas_dtype(), len(arr), arr.offset)
    return vals, _validity(arr)


def _unnest(arr: pa.Array, path: str, name: str,
            rules: ReadRules) -> Tuple[List[np.ndarray], pa.Array]:
    """Peel every list level: ``(offsets per level outermost first, leaf array)``.

    Null rows of the outermost level become empty lists; nulls deeper down are rejected.
    """
    levels = []
    depth = 0
    while _is_list(arr.type):
        if arr.null_count:
            if depth > 0:
                raise rules.error(f"{where(path, name)}: null elements inside lists are not "
                                  f"supported (found null inner lists at nesting level {depth})")
            lengths = pc.list_value_length(arr).fill_null(0).to_numpy()
            dt = np.int64 if pa.types.is_large_list(arr.type) else np.int32
            off = np.zeros(len(arr) + 1, dtype=dt)
            np.cumsum(lengths, out=off[1:])
            levels.append(off)
            arr = arr.flatten()
        else:
            levels.append(_offsets_view(arr))
            arr = arr.values
        depth += 1
    if arr.null_count:
        raise rules.error(f"{where(path, name)}: null elements inside lists are not supported "
                          f"(RecIS: 'Not support column with null elements inside'); "
                          f"{arr.null_count} null {arr.type} values found")
    return levels, arr


def _scalar_as_list(arr: pa.Array) -> pa.Array:
    """A scalar column as ``list<T>`` with one-element rows; null scalars become empty rows.
    Without nulls the values are not copied."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    n = len(arr)
    if arr.null_count == 0:
        offsets = np.arange(n + 1, dtype=np.int32)
    else:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(valid, out=offsets[1:])
        arr = arr.drop_null()
    return pa.ListArray.from_arrays(pa.array(offsets), arr)


class _HashJobs:
    """String leaves waiting to be hashed, batched into one kernel call per hash type."""

    def __init__(self):
        self.jobs: Dict[str, list] = {}

    def add(self, hash_type: str, leaf: pa.Array, bucket: int, done) -> None:
        data = _buffer_view(leaf.buffers()[2], np.uint8,
                            leaf.buffers()[2].size if leaf.buffers()[2] is not None else 0, 0)
        offs = _offsets_view(leaf)
        self.jobs.setdefault(hash_type, []).append(
            (torch.from_numpy(data), torch.from_numpy(offs), int(bucket), done))

    def run(self) -> None:
        if not self.jobs:
            return
        from recis_compat.ops.hashing import fused_hash_bytes
        for hash_type, jobs in self.jobs.items():
            outs = fused_hash_bytes([j[0] for j in jobs], [j[1] for j in jobs], hash_type,
                                    [j[2] for j in jobs])
            for job, out in zip(jobs, outs):
                job[3](out.numpy())


def _leaf_values(leaf: pa.Array, spec: ColumnSpec, path: str, float_dtype, hashes: _HashJobs,
                 chunk: ColumnChunk, attr: str, levels: List[np.ndarray],
                 rules: ReadRules) -> None:
    """Fill ``chunk.<attr>`` (values or weight) from a leaf array; may append a byte level."""
    t = leaf.type
    if _is_number(t):
        setattr(chunk, attr, _numbers(leaf, float_dtype, path, spec.name, rules))
    elif _is_string(t):
        if attr == "weight":
            raise rules.error(f"{where(path, spec.name)}: struct field 'v' (the weight) must be "
                              f"numeric, got {t}")
        if spec.hash_type in ("farm", "murmur"):
            chunk.values = None
            hashes.add(spec.hash_type, leaf, spec.hash_bucket,
                       lambda out, c=chunk: setattr(c, "values", out))
        else:
            buf = leaf.buffers()[2]
            data = _buffer_view(buf, np.uint8, buf.size if buf is not None else 0, 0)
            levels.append(_offsets_view(leaf))
            if spec.trans_int8:
                chunk.values = data.view(np.int8)
            else:
                chunk.kind = STRINGS
                chunk.values = data
    else:
        raise rules.error(f"{where(path, spec.name)}: unsupported element type {t}; expected "
                          f"integers, floats, strings or struct<k, v>")


def _convert_varlen(arr: pa.Array, spec: ColumnSpec, path: str, float_dtype,
                    hashes: _HashJobs, rules: ReadRules) -> ColumnChunk:
    levels, leaf = _unnest(arr, path, spec.name, rules)
    chunk = ColumnChunk(RAGGED, None, levels)
    if pa.types.is_struct(leaf.type):
        names = [leaf.type.field(i).name for i in range(leaf.type.num_fields)]
        if "k" not in names or "v" not in names:
            raise rules.error(f"{where(path, spec.name)}: struct elements must have fields "
                              f"'k' (ids) and 'v' (weights), got {names}")
        fields = dict(zip(names, leaf.flatten()))
        for fname in ("k", "v"):
            if fields[fname].null_count:
                raise rules.error(f"{where(path, spec.name)}: null elements inside lists are "
                                  f"not supported (struct field {fname!r} has nulls)")
        if _is_string(fields["k"].type) and spec.hash_type not in ("farm", "murmur"):
            raise rules.error(f"{where(path, spec.name)}: string struct ids need "
                              f"varlen_feature(hash_type='farm'|'murmur')")
        _leaf_values(fields["k"], spec, path, float_dtype, hashes, chunk, "values", levels, rules)
        _leaf_values(fields["v"], spec, path, float_dtype, hashes, chunk, "weight", levels, rules)
    else:
        _leaf_values(leaf, spec, path, float_dtype, hashes, chunk, "values", levels, rules)
    return chunk


def _convert_varlen_scalar(arr: pa.Array, spec: ColumnSpec, path: str, float_dtype,
                           rules: ReadRules) -> ColumnChunk:
    """A scalar int/float column as one-element ragged rows (null rows empty), straight from
    the Arrow buffers."""
    n = len(arr)
    vals, valid = _scalar_numbers(arr)
    offsets = np.empty(n + 1, dtype=np.int32)
    offsets[0] = 0
    if valid is None:
        offsets[1:] = np.arange(1, n + 1, dtype=np.int32)
    else:
        vals = np.compress(valid, vals)
        # torch's cumsum of a bool mask into int32 is ~3x numpy's (numpy casts element-wise)
        torch.cumsum(torch.from_numpy(valid), 0, dtype=torch.int32,
                     out=torch.from_numpy(offsets[1:]))
    return ColumnChunk(RAGGED, _cast_floats(vals, float_dtype, path, spec.name, rules), [offsets])


def _convert_dense_scalar(arr: pa.Array, spec: ColumnSpec, path: str,
                          float_dtype, rules: ReadRules) -> ColumnChunk:
    """A scalar numeric column as ``[rows, 1]``; null rows get the default."""
    if not _is_number(arr.type):
        raise rules.error(f"{where(path, spec.name)}: a fixedlen (dense) column must be numeric "
                          f"(a scalar or list<numeric>), got {arr.type}")
    if pa.types.is_boolean(arr.type):
        vals = arr.fill_null(bool(spec.dense_default[0])).to_numpy(zero_copy_only=False)
    else:
        vals, valid = _scalar_numbers(arr)
        if valid is not None:
            vals = np.where(valid, vals, np.asarray(spec.dense_default[0]).astype(vals.dtype))
        vals = _cast_floats(vals, float_dtype, path, spec.name, rules)
    return ColumnChunk(DENSE, vals.reshape(len(arr), 1), [])


def _convert_dense(arr: pa.Array, spec: ColumnSpec, path: str, location: str,
                   float_dtype, rules: ReadRules) -> ColumnChunk:
    width = len(spec.dense_default)
    levels, leaf = _unnest(arr, path, spec.name, rules)
    if len(levels) != 1 or not _is_number(leaf.type):
        raise rules.error(f"{where(path, spec.name)}: a fixedlen (dense) column must be "
                          f"list<numeric>, got {arr.type}")
    off = levels[0]
    vals = _numbers(leaf, float_dtype, path, spec.name, rules)
    lengths = np.diff(off)
    n = len(lengths)
    full = lengths == width
    if not full.all():
        bad = np.flatnonzero(~full & (lengths != 0))
        if len(bad):
            r = int(bad[0])
            raise rules.error(
                f"{where(path, spec.name)}: dense feature dim not match default dim: row {r} "
                f"of {location} has {int(lengths[r])} values, expected {width} "
                f"(len(default_value)) or 0")
    body = vals[int(off[0]):int(off[-1])]
    if full.all():
        values = body.reshape(n, width)
    else:
        values = np.empty((n, width), dtype=vals.dtype)
        values[:] = np.asarray(spec.dense_default, dtype=vals.dtype)
        values[full] = body.reshape(-1, width)
    return ColumnChunk(DENSE, values, [])


def convert_record_batch(batch: pa.RecordBatch, specs: Sequence[ColumnSpec], path: str,
                         location: str, float_dtype: np.dtype,
                         rules: ReadRules = ORC_RULES) -> Dict[str, ColumnChunk]:
    """Convert every selected column of one stripe / row group (``location``, e.g. ``"stripe 0
    from row 0"``, only feeds error messages)."""
    hashes = _HashJobs()
    out: Dict[str, ColumnChunk] = {}
    for spec in specs:
        arr = batch.column(spec.name)
        if not _is_list(arr.type):
            if not (rules.scalars and _is_scalar(arr.type)):
                raise rules.error(f"{where(path, spec.name)}: type {arr.type} is not a list; "
                                  f"{rules.hint}")
            if spec.is_dense:
                if len(spec.dense_default) != 1:
                    raise rules.error(
                        f"{where(path, spec.name)}: scalar column ({arr.type}) gives one value "
                        f"per row but fixedlen_feature default_value has "
                        f"{len(spec.dense_default)} values")
                if pa.types.is_dictionary(arr.type):
                    arr = arr.dictionary_decode()
                out[spec.name] = _convert_dense_scalar(arr, spec, path, float_dtype, rules)
                continue
            if _is_number(arr.type) and not pa.types.is_boolean(arr.type):
                out[spec.name] = _convert_varlen_scalar(arr, spec, path, float_dtype, rules)
                continue
            arr = _scalar_as_list(arr)
        if spec.is_dense:
            out[spec.name] = _convert_dense(arr, spec, path, location, float_dtype, rules)
        else:
            out[spec.name] = _convert_varlen(arr, spec, path, float_dtype, hashes, rules)
    hashes.run()
    return out
