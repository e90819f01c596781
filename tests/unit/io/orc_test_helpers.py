"""Helpers for the OrcDataset tests: write small ORC files and drain datasets."""
import os

import pyarrow as pa
import pyarrow.orc as orc


def write_orc(path, columns: dict, stripe_size=None) -> str:
    """Write ``columns`` (name -> pyarrow array or python lists) to ``path``."""
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    table = pa.table(columns)
    kwargs = {}
    if stripe_size is not None:
        kwargs["stripe_size"] = stripe_size
    orc.write_table(table, str(path), **kwargs)
    return str(path)


def write_ids(path, start: int, n: int, extra=None) -> str:
    """A file whose ``rid`` column holds ``[start], [start+1], ...`` (one id per row)."""
    cols = {"rid": pa.array([[start + i] for i in range(n)], type=pa.list_(pa.int64()))}
    cols.update(extra or {})
    return write_orc(path, cols)


def drain(it, limit=100000):
    """Batches of an ``(is_end, batch)`` iterator up to the end marker."""
    out = []
    for _ in range(limit):
        is_end, batch = next(it)
        if is_end:
            assert batch is None
            return out
        out.append(batch)
    raise AssertionError("iterator never reached the end")


def rids(batches):
    """All ``rid`` values of ``[ {rid: RaggedTensor} ]`` batches, in order."""
    return [int(v) for b in batches for v in b[0]["rid"].values()]


