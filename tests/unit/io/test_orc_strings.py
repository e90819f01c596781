"""String columns through the reader: hashing (contract vectors, pyfarmhash), int8, raw."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from recis_compat.io.orc_dataset import OrcDataset
from reference_kernels import hash_strings_ref

from orc_test_helpers import drain, write_orc

VECTORS = [b"\x00\x01\x02", b"\x01\x02\x03", b"\x00\x05\x05", b"\x05\x06\x07", b""]
FARM_RAW = [-7736835464683084646, -5546720800891377920, -4442022684725028445,
            -909183002746659612, -7286425919675154353]
MURMUR_RAW = [-4003751876240412087, -1042754718167355375, -5541886947548579749,
              4434088491466393040, 0]


def _read_hashed(tmp_path, rows, hash_type, bucket, binary=True):
    typ = pa.list_(pa.binary() if binary else pa.string())
    write_orc(tmp_path / "s.orc", {"s": pa.array(rows, type=typ)})
    ds = OrcDataset(len(rows))
    ds.add_path(str(tmp_path / "s.orc"))
    ds.varlen_feature("s", hash_type=hash_type, hash_bucket=bucket)
    (batch,) = drain(iter(ds))
    return batch[0]["s"]


@pytest.mark.parametrize("hash_type,raw", [("farm", FARM_RAW), ("murmur", MURMUR_RAW)])
@pytest.mark.parametrize("bucket", [0, 1000, 7])
def test_contract_vectors(tmp_path, hash_type, raw, bucket):
    rows = [VECTORS[:2], [], VECTORS[2:]]
    rt = _read_hashed(tmp_path, rows, hash_type, bucket)
    assert rt.values().dtype == torch.int64
    assert rt.offsets()[0].tolist() == [0, 2, 2, 5]
    u = [h & (2 ** 64 - 1) for h in raw]
    expect = [h & 0x7FFFFFFFFFFFFFFF for h in u] if bucket == 0 else [h % bucket for h in u]
    assert rt.values().tolist() == expect
    assert rt.values().tolist() == hash_strings_ref(VECTORS, hash_type, bucket)


def test_ten_thousand_random_strings_vs_pyfarmhash(tmp_path):
    farmhash = pytest.importorskip("farmhash")
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 130, 10000)
    strings = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in lengths]
    rows = [strings[i:i + 7] for i in range(0, len(strings), 7)]
    rt = _read_hashed(tmp_path, rows, "farm", 0)
    expect = [farmhash.fingerprint64(s) & 0x7FFFFFFFFFFFFFFF for s in strings]
    assert rt.values().tolist() == expect
    rt = _read_hashed(tmp_path, rows, "murmur", 12345)
    assert rt.values().tolist() == hash_strings_ref(strings, "murmur", 12345)


def test_utf8_strings_hash_their_bytes(tmp_path):
    rows = [["héllo", "wörld"], ["ß"]]
    rt = _read_hashed(tmp_path, rows, "farm", 0, binary=False)
    flat = [s.encode() for r in rows for s in r]
    assert rt.values().tolist() == hash_strings_ref(flat, "farm", 0)


def test_hashed_nested_string_lists(tmp_path):
    write_orc(tmp_path / "s.orc", {"s": pa.array([[["a", "b"], []], [["c"]]],
                                                 type=pa.list_(pa.list_(pa.string())))})
    ds = OrcDataset(2)
    ds.add_path(str(tmp_path))
    ds.varlen_feature("s", hash_type="murmur")
    rt = drain(iter(ds))[0][0]["s"]
    assert [o.tolist() for o in rt.offsets()] == [[0, 2, 3], [0, 2, 2, 3]]
    assert rt.values().tolist() == hash_strings_ref([b"a", b"b", b"c"], "murmur", 0)


def test_trans_int8_extra_byte_level(tmp_path):
    write_orc(tmp_path / "s.orc", {"s": pa.array([["ab", ""], [], ["xyz"]],
                                                 type=pa.list_(pa.string()))})
    ds = OrcDataset(2)
    ds.add_path(str(tmp_path))
    ds.varlen_feature("s", trans_int8=True)
    b1, b2 = drain(iter(ds))
    rt = b1[0]["s"]
    assert rt.values().dtype == torch.int8
    assert bytes(rt.values().numpy().astype(np.uint8)) == b"ab"
    assert [o.tolist() for o in rt.offsets()] == [[0, 2, 2], [0, 2, 2]]
    assert rt._dense_shape == (2, -1, -1)
    rt = b2[0]["s"]
    assert bytes(rt.values().numpy().astype(np.uint8)) == b"xyz"
    assert [o.tolist() for o in rt.offsets()] == [[0, 1], [0, 3]]


def test_raw_strings_nested_list(tmp_path):
    write_orc(tmp_path / "s.orc", {
        "s": pa.array([["ab", "c"], None, ["def"]], type=pa.list_(pa.string())),
        "n": pa.array([[["x"], ["y", "zz"]], [], [[]]], type=pa.list_(pa.list_(pa.string()))),
    })
    ds = OrcDataset(3)
    ds.add_path(str(tmp_path))
    ds.varlen_feature("s")
    ds.varlen_feature("n")
    g = drain(iter(ds))[0][0]
    values, offsets = g["s"]
    assert isinstance(values, np.ndarray) and values.dtype.kind == "S"
    assert values.tolist() == [b"ab", b"c", b"def"]
    assert offsets.tolist() == [0, 2, 2, 3]  # the null row is an empty list
    values, inner, outer = g["n"]  # column_io order: innermost offsets first
    assert values.tolist() == [b"x", b"y", b"zz"]
    assert inner.tolist() == [0, 1, 3, 3] and outer.tolist() == [0, 2, 2, 3]


def test_raw_strings_across_files(tmp_path):
    write_orc(tmp_path / "a.orc", {"s": pa.array([["a"], ["bb"]], type=pa.list_(pa.string()))})
    write_orc(tmp_path / "b.orc", {"s": pa.array([["ccc", "d"]], type=pa.list_(pa.string()))})
    ds = OrcDataset(3)
    ds.add_path(str(tmp_path))
    ds.varlen_feature("s")
    values, offsets = drain(iter(ds))[0][0]["s"]
    assert values.tolist() == [b"a", b"bb", b"ccc", b"d"] and offsets.tolist() == [0, 1, 2, 4]
