"""ParquetDataset's reader threads (``recis-parquet-read``) and prefetch thread are joined
however a pass ends: ``close()``, the end of the data, an exception in a map, an iterator left
open at interpreter exit (recis_compat/io/threads.py)."""
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recis_compat.io.parquet_dataset import ParquetDataset

from orc_test_helpers import drain


def _io_threads():
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith(("recis-io", "recis-parquet")))


def _write(directory):
    for k in range(6):
        pq.write_table(pa.table({"x": pa.array(np.arange(100 * k, 100 * k + 40))}),
                       str(directory / f"f{k}.parquet"), row_group_size=8)


def _ds(directory, **kw):
    ds = ParquetDataset(4, **kw)
    ds.add_path(str(directory))
    ds.varlen_feature("x")
    return ds


@pytest.mark.parametrize("prefetch", [0, 2])
def test_close_joins_threads(tmp_path, prefetch):
    _write(tmp_path)
    it = iter(_ds(tmp_path, prefetch=prefetch, read_threads_num=2))
    assert next(it)[0] is False
    assert any(n.startswith("recis-parquet-read") for n in _io_threads())
    it.close()
    assert _io_threads() == []
    assert next(it) == (True, None)


def test_end_and_exception_join_threads(tmp_path):
    _write(tmp_path)
    assert len(drain(iter(_ds(tmp_path, prefetch=1, read_threads_num=2)))) == 60
    assert _io_threads() == []
    ds = _ds(tmp_path, prefetch=1, read_threads_num=2)
    ds.map(lambda b: b if int(b[0]["x"].values()[0]) < 8 else {}["boom"])
    it = iter(ds)
    next(it)
    next(it)
    with pytest.raises(KeyError, match="boom"):
        next(it)
    assert _io_threads() == []


def test_iterator_left_open_at_exit(tmp_path):
    _write(tmp_path)
    script = textwrap.dedent(f"""
        import atexit, threading
        from recis.io import ParquetDataset

        def report():  # atexit runs after threading's exit hooks, before finalization
            print("LIVE", [t.name for t in threading.enumerate()
                           if t.name.startswith(("recis-io", "recis-parquet"))], flush=True)
        atexit.register(report)
        ds = ParquetDataset(2, prefetch=2, read_threads_num=2)
        ds.add_path({str(tmp_path)!r})
        ds.varlen_feature("x")
        it = iter(ds)
        next(it)
        print("STARTED", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STARTED" in proc.stdout and "LIVE []" in proc.stdout
