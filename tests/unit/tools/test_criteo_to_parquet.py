"""recis-compat criteo-to-parquet: Criteo TSV -> OneFlow's DLRM Parquet layout (mod_idx offsets,
64-bit hashing with the field index, dense +1 / log), splits, dataset info, many inputs, ORC."""
import gzip
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest
import xxhash
from click.testing import CliRunner

from recis.io.orc_dataset import OrcDataset
from recis_compat.cli import main
from recis_compat.io.criteo import (CRITEO_COLUMNS, CriteoFormatError, CriteoOptions, convert,
                                    hash_with_field_index, parse_hex, xxh64_short)

M = 40_000_000


def line(label, dense, cats):
    """One Criteo TSV line: dense/cats lists with None for a missing value."""
    d = ["" if v is None else str(v) for v in dense]
    c = ["" if v is None else v for v in cats]
    return "\t".join([str(label)] + d + c) + "\n"


CATS_A = ["68fd1e64", "80e26c9b"] + [None] + ["00000001"] * 23
CATS_B = ["ffffffff", "00000000"] + ["0a"] * 23 + [None]
ROWS = [
    (1, [0, -1, None, 10, 5, 0, 1, 2, 3, 4, 5, 6, -3], CATS_A),
    (0, [None] * 13, CATS_B),
    (0, [7] * 13, ["00000002"] * 26),
]
TSV = "".join(line(*r) for r in ROWS)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def run(*args):
    return CliRunner().invoke(main, ["criteo-to-parquet", *map(str, args)])


def test_small_tsv_with_missing_values_exact_values(tmp_path):
    src = write(tmp_path / "day_0", TSV)
    res = convert([src], str(tmp_path / "out"))
    assert res.splits == {"train": 3}
    t = pq.read_table(tmp_path / "out" / "train")
    assert t.column_names == CRITEO_COLUMNS
    assert t.schema.field("label").type == pa.int32()
    assert t.schema.field("I1").type == pa.int32()
    assert t.schema.field("C1").type == pa.int64()
    rows = t.to_pylist()
    assert [r["label"] for r in rows] == [1, 0, 0]
    # dense: raw + 1, missing -> 1 (OneFlow's DLRM files)
    assert [rows[0][f"I{j}"] for j in range(1, 14)] == [1, 0, 1, 11, 6, 1, 2, 3, 4, 5, 6, 7, -2]
    assert [rows[1][f"I{j}"] for j in range(1, 14)] == [1] * 13
    # categorical: int(hex, 16) % M + M * i, missing -> M * i
    assert rows[0]["C1"] == 0x68fd1e64 % M == 1418852
    assert rows[0]["C2"] == 0x80e26c9b % M + M == 2322587 + M
    assert rows[0]["C3"] == 2 * M                                   # missing
    assert rows[0]["C26"] == 1 + 25 * M
    assert rows[1]["C1"] == 0xffffffff % M
    assert rows[1]["C2"] == M                                       # "00000000" -> the field's offset
    assert rows[1]["C3"] == 10 + 2 * M
    assert rows[1]["C26"] == 25 * M                                 # missing
    assert [rows[2][f"C{i + 1}"] for i in range(26)] == [2 + M * i for i in range(26)]


def test_dense_log_transform(tmp_path):
    src = write(tmp_path / "d", TSV)
    convert([src], str(tmp_path / "out"), CriteoOptions(dense="log"))
    t = pq.read_table(tmp_path / "out" / "train")
    assert t.schema.field("I1").type == pa.float32()
    got = [t.column(f"I{j}")[0].as_py() for j in range(1, 14)]
    # log(max(raw + 1, 0) + 1): raw 0 -> log 2, -1 -> 0, missing -> log 2, -3 -> clamped to 0
    want = [math.log(2), 0.0, math.log(2), math.log(12), math.log(7), math.log(2), math.log(3), math.log(4),
            math.log(5), math.log(6), math.log(7), math.log(8), 0.0]
    assert got == pytest.approx(want, rel=1e-6)
    assert [t.column(f"I{j}")[1].as_py() for j in range(1, 14)] == pytest.approx([math.log(2)] * 13)


def test_mod_idx_limits_each_field_to_its_own_range(tmp_path):
    rng = np.random.default_rng(0)
    vals = rng.integers(0, 2 ** 32, size=(50, 26), dtype=np.uint64)
    text = "".join(line(0, [1] * 13, [f"{v:08x}" for v in row]) for row in vals)
    src = write(tmp_path / "x", text)
    convert([src], str(tmp_path / "out"), CriteoOptions(mod_idx=7))
    t = pq.read_table(tmp_path / "out" / "train")
    for i in range(26):
        col = np.array(t.column(f"C{i + 1}").to_pylist())
        assert ((col >= 7 * i) & (col < 7 * (i + 1))).all()
        assert (col == (vals[:, i] % 7).astype(np.int64) + 7 * i).all()


def test_xxh64_matches_the_reference_and_known_vectors():
    assert int(xxh64_short(np.zeros((1, 0), np.uint8), np.uint64(0))[0]) == 0xEF46DB3751D8E999
    abc = np.frombuffer(b"abc", np.uint8)[None, :]
    assert int(xxh64_short(abc, np.uint64(0))[0]) == 0x44BC2CF5AD770999
    rng = np.random.default_rng(1)
    for length in range(32):
        data = rng.integers(0, 256, size=(20, length), dtype=np.uint8)
        seeds = rng.integers(0, 2 ** 63, size=20, dtype=np.uint64)
        got = xxh64_short(data, seeds)
        assert [int(g) for g in got] == [xxhash.xxh64_intdigest(r.tobytes(), int(s)) for r, s in zip(data, seeds)]
    with pytest.raises(ValueError, match="shorter than 32"):
        xxh64_short(np.zeros((1, 32), np.uint8), np.uint64(0))


def test_hash_with_field_index_fixed_vectors():
    vals = pa.array(["68fd1e64", "80e26c9b", None])
    assert hash_with_field_index(vals, 0).tolist() == [-2765237202055021921, 1964402840847429778,
                                                       3614696996920510707]
    assert hash_with_field_index(vals, 25).tolist() == [-2886214891151886029, -359902610416304863,
                                                        -4403913861450321882]

    def ref(s, i):       # the chain of the module docstring, with the xxhash package
        h = 42 if not s else xxhash.xxh64_intdigest(s.encode(), 42)
        h = xxhash.xxh64_intdigest(np.int32(i).astype("<i4").tobytes(), h)
        return int(np.uint64(h).view(np.int64))

    odd = pa.array(["", "a", "abc", "0123456789abcdef0", "x" * 40, None, "68fd1e64"])
    assert hash_with_field_index(odd, 7).tolist() == [ref(s, 7) for s in odd.to_pylist()]


def test_hash_option_end_to_end(tmp_path):
    src = write(tmp_path / "h", TSV)
    res = run(src, "-o", tmp_path / "out", "--hash", "--no-progress")
    assert res.exit_code == 0, res.output
    t = pq.read_table(tmp_path / "out" / "train")
    for i in range(26):
        col = f"C{i + 1}"
        raw = pa.array([r[2][i] for r in ROWS])
        assert t.column(col).to_pylist() == hash_with_field_index(raw, i).tolist()
    # --mod-idx 0 means hashing, as OneFlow's --mod_idx <= 0
    res = run(src, "-o", tmp_path / "out0", "--mod-idx", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    assert pq.read_table(tmp_path / "out0" / "train").equals(t)


def test_export_dataset_info_and_splits(tmp_path):
    train = write(tmp_path / "in" / "day_0", TSV + TSV)
    day23 = write(tmp_path / "in" / "day_23", TSV)
    res = run(train, "--val", day23, "--test-rows", 1, "-o", tmp_path / "out", "--export-dataset-info",
              "--no-progress")
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    assert pq.read_table(out / "train").num_rows == 6
    test = pq.read_table(out / "test")
    val = pq.read_table(out / "val")
    assert test.column("label").to_pylist() == [1] and val.column("label").to_pylist() == [0, 0]
    # distinct ids per C field over all splits (the missing-value id M * i counts as an id)
    expected = []
    for i in range(26):
        ids = set()
        for _, _, cats in ROWS:
            v = cats[i]
            ids.add(M * i if v is None else int(v, 16) % M + M * i)
        expected.append(len(ids))
    assert (out / "README.md").read_text() == (
        "## number of examples:\ntrain: 6\ntest: 1\nval: 2\n\n## table size array\n"
        "table_size_array = [" + ", ".join(map(str, expected)) + "]\n")
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["num_train_samples"] == 6 and info["num_val_samples"] == 2 and info["num_test_samples"] == 1
    assert info["table_size_array"] == expected
    assert info["sparse"] == {"mod_idx": M} and info["dense"] == "plus1"
    assert f"table_size_array = {','.join(map(str, expected))}" in res.output


def test_many_input_files_directories_globs_and_rolling_files(tmp_path):
    lines = [line(i % 2, [i] * 13, [f"{i:08x}"] * 26) for i in range(10)]
    write(tmp_path / "in" / "a", "".join(lines[:3]))
    write(tmp_path / "in" / "b.gz", "".join(lines[3:7]))
    write(tmp_path / "in" / ".hidden", "garbage\n")
    write(tmp_path / "more" / "c1", "".join(lines[7:9]))
    write(tmp_path / "more" / "c2", lines[9])
    res = convert([str(tmp_path / "in"), str(tmp_path / "more" / "c*")], str(tmp_path / "out"),
                  rows_per_file=4, row_group_rows=3)
    assert len(res.inputs) == 4
    assert [n for _, n in res.files["train"]] == [4, 4, 2]
    t = pq.read_table(tmp_path / "out" / "train")
    assert t.column("I1").to_pylist() == [i + 1 for i in range(10)]      # input order kept
    assert t.column("C3").to_pylist() == [i + 2 * M for i in range(10)]
    assert pq.ParquetFile(res.files["train"][0][0]).metadata.num_row_groups == 2    # 3 + 1 rows
    with pytest.raises(FileExistsError, match="part-"):
        convert([str(tmp_path / "in")], str(tmp_path / "out"))
    res = convert([str(tmp_path / "in" / "a")], str(tmp_path / "out"), overwrite=True, rows_per_file=0)
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == ["part-00000.parquet"]


def test_orc_output_is_read_by_orc_dataset(tmp_path):
    src = write(tmp_path / "o", TSV)
    res = run(src, "-o", tmp_path / "out", "--orc", "--no-progress")
    assert res.exit_code == 0, res.output
    path = tmp_path / "out" / "train" / "part-00000.orc"
    f = orc.ORCFile(str(path))
    assert f.schema.field("label").type == pa.list_(pa.int32())
    assert f.schema.field("C1").type == pa.list_(pa.int64())
    ds = OrcDataset(8, read_threads_num=1, prefetch=0)
    ds.add_path(str(tmp_path / "out" / "train"))
    ds.fixedlen_feature("label", [0])
    ds.fixedlen_feature("I1", [0])
    ds.varlen_feature("C2")
    it = iter(ds)
    is_end, batch = next(it)
    assert not is_end
    b = batch[0]
    assert b["label"].reshape(-1).tolist() == [1, 0, 0]
    assert b["I1"].reshape(-1).tolist() == [1, 1, 8]
    assert b["C2"].values().tolist() == [2322587 + M, M, 2 + M]
    res = run(src, "-o", tmp_path / "plain", "--orc", "--plain-scalars", "--no-progress")
    assert res.exit_code == 0, res.output
    assert orc.ORCFile(str(tmp_path / "plain" / "train" / "part-00000.orc")).schema.field("C1").type == pa.int64()


@pytest.mark.parametrize("text, message", [
    ("1\t2\t3\n", "not Criteo TSV"),
    (line(2, [1] * 13, ["aa"] * 26), "column label has value 2"),
    (line(1, [1] * 13, ["aa"] * 25 + ["zz"]), "column C26: categorical value 'zz'"),
    (line(1, ["x"] + [1] * 12, ["aa"] * 26), "not Criteo TSV"),
])
def test_bad_input_names_file_and_column_and_removes_output(tmp_path, text, message):
    good = write(tmp_path / "in" / "0_good", TSV)
    bad = write(tmp_path / "in" / "1_bad", text)
    with pytest.raises(CriteoFormatError, match=message) as e:
        convert([good, bad], str(tmp_path / "out"), row_group_rows=1)
    assert bad in str(e.value)
    assert not list((tmp_path / "out" / "train").iterdir())
    res = run(good, bad, "-o", tmp_path / "out2", "--no-progress")
    assert res.exit_code == 1 and message.split(":")[0] in res.output and bad in res.output


def test_cli_option_errors(tmp_path):
    src = write(tmp_path / "a", TSV)
    res = run(src, "-o", tmp_path / "out", "--test-rows", 5)
    assert res.exit_code == 2 and "--val" in res.output
    res = run(tmp_path / "missing", "-o", tmp_path / "out")
    assert res.exit_code == 1 and "no such file" in res.output
    res = run(src, "-o", tmp_path / "out", "--dense", "sqrt")
    assert res.exit_code == 2


def test_parse_hex_missing_and_bad_values():
    vals, valid = parse_hex(pa.array(["ff", None, "", "FFFFFFFFFFFFFFFF", "0"]))
    assert valid.tolist() == [True, False, False, True, True]
    assert vals[valid].tolist() == [255, 2 ** 64 - 1, 0]
    with pytest.raises(CriteoFormatError, match="f.tsv: column C4: categorical value '1g'"):
        parse_hex(pa.array(["1g"]), "f.tsv: column C4")
    with pytest.raises(CriteoFormatError, match="not 1-16 hexadecimal digits"):
        parse_hex(pa.array(["1" * 17]), "x")
    # Criteo's own shape (8 digits, missing empty) takes a vectorised path: same values, same errors
    vals, valid = parse_hex(pa.array(["68fd1e64", "", None, "FFFFFFFF", "00000000"]))
    assert valid.tolist() == [True, False, False, True, True]
    assert vals.tolist() == [0x68fd1e64, 0, 0, 0xFFFFFFFF, 0]
    with pytest.raises(CriteoFormatError, match="C9: categorical value '0000000x'"):
        parse_hex(pa.array(["68fd1e64", None, "0000000x"]), "f.tsv: column C9")
