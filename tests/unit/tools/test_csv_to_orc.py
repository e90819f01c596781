"""recis-compat csv-to-orc: CSV -> ORC with scalar and list columns, read back by OrcDataset;
schema parsing; errors naming file, line and column."""
import gzip
import json
import os

import pyarrow as pa
import pyarrow.orc as orc
import pytest
import torch
from click.testing import CliRunner

from recis.io.orc_dataset import OrcDataset
from recis_compat.cli import main
from reference_kernels import hash_strings_ref
from recis_compat.tools.csv_to_orc import (ColumnType, CsvConversionError, SchemaError, convert, parse_schema,
                                           parse_size)

SCHEMA = "label:float,dense1:list<float>:;,sparse1:list<int64>:;,sparse5:list<string>:;"
CSV = (
    "label,dense1,sparse1,sparse5,uid\n"
    "1,0.5;1.5,1;2;3,a;b,7\n"
    "0,2.5;3.5,,c,8\n"
    "\n"                                   # blank lines are skipped (and counted in line numbers)
    "1,,4, x ,9\n"
    "0, 4.5 ; 5.5 ,5;6,d;e;f,10\n"
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def drain(ds):
    it = iter(ds)
    out = []
    while True:
        is_end, batch = next(it)
        if is_end:
            return out
        out.append(batch[0])


def run(*args):
    return CliRunner().invoke(main, ["csv-to-orc", *map(str, args)])


def test_convert_scalar_and_list_columns_read_by_orc_dataset(tmp_path):
    src = write(tmp_path / "a.csv", CSV)
    res = run(src, "-o", tmp_path / "out", "--schema", SCHEMA)
    assert res.exit_code == 0, res.output
    assert "converted 4 rows of 1 CSV file(s) into 1 ORC file(s)" in res.output
    assert "schema: " + SCHEMA + ",uid:int64" in res.output       # uid inferred
    path = tmp_path / "out" / "part-00000.orc"
    f = orc.ORCFile(str(path))
    assert f.compression == "UNCOMPRESSED"
    assert f.schema.field("label").type == pa.list_(pa.float32())
    assert f.schema.field("sparse1").type == pa.list_(pa.int64())
    assert f.schema.field("sparse5").type == pa.list_(pa.string())
    assert f.schema.field("uid").type == pa.list_(pa.int64())

    ds = OrcDataset(8, read_threads_num=1, prefetch=0)
    ds.add_path(str(tmp_path / "out"))
    ds.fixedlen_feature("label", [0.0])
    ds.fixedlen_feature("dense1", [-1.0, -1.0])
    ds.varlen_feature("sparse1")
    ds.varlen_feature("sparse5", hash_type="farm", hash_bucket=0)
    ds.varlen_feature("uid")
    (b,) = drain(ds)
    assert b["label"].dtype == torch.float32 and b["label"].tolist() == [[1.0], [0.0], [1.0], [0.0]]
    assert b["dense1"].tolist() == [[0.5, 1.5], [2.5, 3.5], [-1.0, -1.0], [4.5, 5.5]]   # empty -> default
    assert b["sparse1"].values().tolist() == [1, 2, 3, 4, 5, 6]
    assert b["sparse1"].offsets()[0].tolist() == [0, 3, 3, 4, 6]                       # empty cell -> []
    assert b["sparse1"].values().dtype == torch.int64
    tags = [b"a", b"b", b"c", b" x ", b"d", b"e", b"f"]                 # strings are not trimmed
    assert b["sparse5"].values().tolist() == hash_strings_ref(tags, "farm", 0)
    assert b["sparse5"].offsets()[0].tolist() == [0, 2, 3, 4, 7]
    assert b["uid"].values().tolist() == [7, 8, 9, 10]


def test_rows_per_file_directory_input_order_and_stripes(tmp_path):
    rows = [f"{i},{i};{i + 1}\n" for i in range(25)]
    write(tmp_path / "in" / "b.csv", "id,ids\n" + "".join(rows[10:]))
    write(tmp_path / "in" / "a.csv", "ids,id\n" + "".join(f"{r.split(',')[1].strip()},{r.split(',')[0]}\n"
                                                         for r in rows[:10]))   # other column order
    write(tmp_path / "in" / "notes.txt", "ignored")
    res = run(tmp_path / "in", "-o", tmp_path / "out", "-s", "id:int64,ids:list<int32>", "--rows-per-file", 8,
              "--stripe-size", "64KiB", "--blocksize", "4KB")
    assert res.exit_code == 0, res.output
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == [f"part-{i:05d}.orc" for i in range(4)]
    assert [orc.ORCFile(str(tmp_path / "out" / n)).nrows for n in names] == [8, 8, 8, 1]
    ds = OrcDataset(10, read_threads_num=2, prefetch=0)
    ds.add_path(str(tmp_path / "out"))
    ds.varlen_feature("id")
    ds.varlen_feature("ids")
    batches = drain(ds)
    assert [v for b in batches for v in b["id"].values().tolist()] == list(range(25))
    assert batches[0]["ids"].values().dtype == torch.int32
    assert batches[0]["ids"].values().tolist()[:4] == [0, 1, 1, 2]


def test_single_file_output_json_schema_file_no_header_and_gzip(tmp_path):
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps({"y": "double", "tags": {"type": "list<string>", "sep": "|"},
                                       "w": "list<float>:,"}))
    with gzip.open(tmp_path / "d.csv.gz", "wt") as f:
        f.write('1.5,a|b,"1,2"\n2.5,,3\n')
    out = tmp_path / "one.orc"
    res = run(tmp_path / "d.csv.gz", "-o", out, "--schema", schema_file, "--no-header", "--compression", "zstd")
    assert res.exit_code == 0, res.output
    t = orc.read_table(str(out))
    assert orc.ORCFile(str(out)).compression == "ZSTD"
    assert t.to_pydict() == {"y": [[1.5], [2.5]], "tags": [["a", "b"], []], "w": [[1.0, 2.0], [3.0]]}


def test_plain_scalars_and_drop_unlisted(tmp_path):
    src = write(tmp_path / "a.csv", "a,b,c\n1,x,2\n,y,3\n")
    res = convert([src], str(tmp_path / "o"), "a:int32,b:string", plain_scalars=True, drop_unlisted=True)
    assert res.rows == 2 and [c.name for c in res.columns] == ["a", "b"]
    t = orc.read_table(res.files[0][0])
    assert t.schema.field("a").type == pa.int32()
    assert t.to_pydict() == {"a": [1, None], "b": ["x", "y"]}


def test_no_schema_infers_like_recis(tmp_path):
    src = write(tmp_path / "a.csv", "i,f,s\n1,0.5,u\n2,1,v\n")
    res = convert([src], str(tmp_path / "o"))
    assert [(c.name, c.type, c.inferred) for c in res.columns] == [
        ("i", "int64", True), ("f", "double", True), ("s", "string", True)]


def test_parse_schema_forms():
    cols = parse_schema("label:float, ids:list<bigint>:;,t:array<str>:|, c:list<int>::,d:list<double>")
    assert cols == [ColumnType("label", "float"), ColumnType("ids", "int64", True, ";"),
                    ColumnType("t", "string", True, "|"), ColumnType("c", "int32", True, ":"),
                    ColumnType("d", "double", True, ";")]
    assert ",".join(c.spec() for c in cols) == \
        "label:float,ids:list<int64>:;,t:list<string>:|,c:list<int32>::,d:list<double>:;"
    as_json = parse_schema('[{"name": "label", "type": "float"}, {"name": "ids", "type": "list<int64>", "sep": ";"}]')
    assert as_json == cols[:2]
    assert parse_schema('{"label": "float", "ids": "list<int64>:;"}') == cols[:2]
    assert parse_size("64MB") == 64_000_000 and parse_size("1MiB") == 2 ** 20 and parse_size("4096") == 4096


@pytest.mark.parametrize("text,needle", [
    ("label:floot", "unknown type 'floot'"),
    ("label:list<float", "unterminated list type"),
    ("label:float:;", "separator is only allowed for list columns"),
    ("label", "expected name:type"),
    ("a:int64,a:float", "listed twice"),
    ('{"a": 5}', "expected a type string"),
    ("{not json", "does not parse"),
])
def test_schema_errors(text, needle):
    with pytest.raises(SchemaError, match=needle.replace("(", r"\(")):
        parse_schema(text)


def test_unknown_type_exit_code_2_and_nothing_written(tmp_path):
    src = write(tmp_path / "a.csv", CSV)
    res = run(src, "-o", tmp_path / "out", "--schema", "label:decimal")
    assert res.exit_code == 2
    assert "unknown type 'decimal'" in res.output and "int64" in res.output
    assert not (tmp_path / "out").exists()
    res = run(src, "-o", tmp_path / "out", "--schema", "nope:float")
    assert res.exit_code == 2 and "schema columns ['nope'] are not in the CSV header" in res.output


@pytest.mark.parametrize("row,line_no,needle", [
    ("abc,1;2,3,x,1", 7, "column 'label' (float): 'abc' is not a valid float"),
    ("1,1;x,3,x,1", 7, "column 'dense1' (list<float>): 'x' (element 2 of '1;x') is not a valid float"),
    ("1,1,3;;4,x,1", 7, "column 'sparse1' (list<int64>): empty element (element 2 of '3;;4')"),
    ("1,1,99999999999999999999,x,1", 7, "is not a valid int64 (out of range)"),
    ("1,1e39,3,x,1", 7, "out of range for float (32 bit)"),
    ("1,1,3,x,1,extra", 7, "expected 5 columns, got 6"),
])
def test_bad_values_name_file_line_and_column(tmp_path, row, line_no, needle):
    src = write(tmp_path / "bad.csv", CSV + row + "\n1,1,1,1,1\n")
    with pytest.raises(CsvConversionError) as e:
        convert([src], str(tmp_path / "out"), SCHEMA)
    assert f"{src}, line {line_no}" in str(e.value) and needle in str(e.value)
    assert e.value.line == line_no
    assert not (tmp_path / "out").exists()          # a failed run leaves nothing behind
    res = run(src, "-o", tmp_path / "out", "--schema", SCHEMA)
    assert res.exit_code == 1 and needle in res.output


def test_bad_value_in_a_later_block_and_later_file(tmp_path):
    good = "".join(f"{i},{i}\n" for i in range(2000))
    write(tmp_path / "in" / "a.csv", "x,y\n" + good)
    b = write(tmp_path / "in" / "b.csv", "x,y\n" + good + "5,oops\n")
    with pytest.raises(CsvConversionError, match=f"{b}, line 2002, column 'y'"):
        convert([str(tmp_path / "in")], str(tmp_path / "out"), "x:int64,y:list<int64>", block_size=4096)
    assert not (tmp_path / "out").exists()


def test_inferred_type_fails_in_a_later_block(tmp_path):
    src = write(tmp_path / "a.csv", "x\n" + "".join(f"{i}\n" for i in range(3000)) + "abc\n")
    with pytest.raises(CsvConversionError) as e:
        convert([src], str(tmp_path / "out"), block_size=2048)
    assert f"{src}, line 3002, column 'x' (int64, inferred from the first block): 'abc'" in str(e.value)
    assert "give the column a type with --schema" in str(e.value)


def test_existing_output_needs_overwrite(tmp_path):
    src = write(tmp_path / "a.csv", CSV)
    assert run(src, "-o", tmp_path / "out", "-s", SCHEMA).exit_code == 0
    res = run(src, "-o", tmp_path / "out", "-s", SCHEMA)
    assert res.exit_code == 1 and "--overwrite" in res.output
    assert run(src, "-o", tmp_path / "out", "-s", SCHEMA, "--overwrite").exit_code == 0


def test_recis_option_names_and_help(tmp_path):
    src = write(tmp_path / "a.csv", CSV)
    res = CliRunner().invoke(main, ["csv-to-orc", "--input", src, "--output_dir", str(tmp_path / "o"),
                                    "--blocksize", "1MB"])
    assert res.exit_code == 0, res.output
    help_text = CliRunner().invoke(main, ["csv-to-orc", "--help"]).output
    for word in ("--schema", "list<int64>", "--rows-per-file", "--stripe-size", "--compression",
                 "--no-header", "fixedlen_feature", "Exit codes"):
        assert word in help_text
