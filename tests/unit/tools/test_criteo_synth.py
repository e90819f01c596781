"""Synthetic Criteo (recis_compat/io/criteo_synth.py): determinism, schema and bounds, Criteo-like
missing values and click rate, TSV -> criteo-to-parquet equals write_parquet, learnable labels, CLI."""
import numpy as np
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from recis_compat.cli import main
from recis_compat.io.criteo_synth import (CHUNK_ROWS, DENSE_MISSING, DLRM_TABLE_SIZES, SPARSE_MISSING, CriteoSynth,
                                          synth_batches, write_parquet, write_tsv)
from recis_compat.io.criteo import CRITEO_COLUMNS, CriteoOptions, convert, read_criteo_tsv


def one(rows, seed=0, **kw):
    (b,) = list(synth_batches(rows, seed, batch_rows=max(rows, 1), **kw))
    return b


def test_dlrm_table_sizes_are_oneflows_26():
    assert len(DLRM_TABLE_SIZES) == 26
    assert DLRM_TABLE_SIZES[0] == 39884406 and DLRM_TABLE_SIZES[-1] == 36
    assert max(DLRM_TABLE_SIZES) < 40_000_000          # fits OneFlow's default mod_idx


def test_deterministic_and_prefix_stable():
    a = one(1000, seed=5)
    b = one(1000, seed=5)
    for f in ("label", "dense", "dense_valid", "sparse", "sparse_valid"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    # rows depend on their index only: a longer run and other batch sizes start with the same rows
    longer = np.concatenate([x.sparse for x in synth_batches(CHUNK_ROWS + 500, 5, batch_rows=777)])
    assert longer.shape == (CHUNK_ROWS + 500, 26)
    assert np.array_equal(longer[:1000], a.sparse)
    assert np.array_equal(longer, one(CHUNK_ROWS + 500, seed=5).sparse)
    assert not np.array_equal(one(1000, seed=6).sparse, a.sparse)
    sizes = [len(x) for x in synth_batches(2500, 0, batch_rows=1000)]
    assert sizes == [1000, 1000, 500]
    assert list(synth_batches(0, 0)) == []


def test_schema_bounds_missing_rates_and_click_rate():
    b = one(CHUNK_ROWS, seed=1)
    n = len(b)
    assert b.label.dtype == np.int32 and set(np.unique(b.label)) == {0, 1}
    assert 0.22 < b.label.mean() < 0.28
    assert b.dense.shape == (n, 13) and b.sparse.shape == (n, 26) and b.sparse.dtype == np.int64
    assert (b.sparse >= 0).all() and (b.sparse < np.array(DLRM_TABLE_SIZES)).all()
    assert np.allclose(1 - b.sparse_valid.mean(0), SPARSE_MISSING, atol=0.02)
    assert np.allclose(1 - b.dense_valid.mean(0), DENSE_MISSING, atol=0.02)
    assert (b.dense[:, [0] + list(range(2, 13))] >= 0).all() and (b.dense[:, 1] == -1).any()
    # Zipf-like: the most frequent id of a large field is far above uniform, yet many ids appear
    c1 = b.sparse[:, 0]
    counts = np.bincount(np.unique(c1, return_inverse=True)[1])
    assert counts.max() > 5 * counts.mean() and len(counts) > 1000
    # small tables are covered
    assert len(np.unique(b.sparse[:, 5])) == DLRM_TABLE_SIZES[5]
    other = one(CHUNK_ROWS, seed=2, click_rate=0.05)
    assert 0.03 < other.label.mean() < 0.07


def test_custom_table_sizes_and_bad_arguments():
    b = one(5000, seed=0, table_size_array=[5] * 26)
    assert (b.sparse < 5).all()
    with pytest.raises(ValueError, match="26 sizes"):
        CriteoSynth(0, [10] * 3)
    with pytest.raises(ValueError, match="click_rate"):
        CriteoSynth(0, click_rate=1.5)


def test_tsv_converted_equals_write_parquet(tmp_path):
    rows = CHUNK_ROWS + 123
    write_tsv(str(tmp_path / "day_0.gz"), rows, seed=3)
    raw = [b for b, _ in read_criteo_tsv(str(tmp_path / "day_0.gz"))]
    assert sum(b.num_rows for b in raw) == rows and raw[0].schema.names == CRITEO_COLUMNS
    for opts in (CriteoOptions(), CriteoOptions(hash=True, dense="log")):
        convert([str(tmp_path / "day_0.gz")], str(tmp_path / "conv"), opts, overwrite=True)
        files = write_parquet(str(tmp_path / "direct"), rows, 3, options=opts, rows_per_file=50_000)
        assert [n for _, n in files] == [50_000, rows - 50_000]
        assert pq.read_table(tmp_path / "direct").equals(pq.read_table(tmp_path / "conv" / "train"))
        for p, _ in files:
            (tmp_path / "direct" / p.split("/")[-1]).unlink()


def _auc(y, s):
    order = np.argsort(s, kind="mergesort")
    r = np.empty(len(s))
    r[order] = np.arange(1, len(s) + 1)
    pos = y == 1
    return (r[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def test_labels_are_learnable():
    """A logistic regression on hashed ids + log dense, two passes over 40k rows: held-out AUC > 0.55."""
    b = one(50_000, seed=7)
    buckets = 1 << 16
    ids = np.where(b.sparse_valid, (b.sparse + np.arange(26) * 1_000_003) % buckets, buckets)
    x = torch.from_numpy(ids)
    d = torch.from_numpy(np.log1p(np.maximum(b.dense, 0)).astype(np.float32))
    y = torch.from_numpy(b.label).float()
    torch.manual_seed(0)
    emb = torch.nn.EmbeddingBag(buckets + 1, 1, mode="sum")
    torch.nn.init.zeros_(emb.weight)
    lin = torch.nn.Linear(13, 1)
    opt = torch.optim.Adam(list(emb.parameters()) + list(lin.parameters()), lr=0.05)
    ntr = 40_000
    for _ in range(2):
        for s in range(0, ntr, 2048):
            logit = emb(x[s:s + 2048]).squeeze(1) + lin(d[s:s + 2048]).squeeze(1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[s:s + 2048])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        score = (emb(x[ntr:]).squeeze(1) + lin(d[ntr:]).squeeze(1)).numpy()
    assert _auc(b.label[ntr:], score) > 0.55


def test_cli_tsv_parquet_orc(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["criteo-synth", "--rows", "300", "--out", str(tmp_path / "a.tsv"), "--seed", "4"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "a.tsv").read_text().splitlines()
    assert len(lines) == 300 and all(len(ln.split("\t")) == 40 for ln in lines)
    assert all(len(c) in (0, 8) for ln in lines for c in ln.split("\t")[14:])
    res = r.invoke(main, ["criteo-synth", "--rows", "300", "--format", "parquet", "--out", str(tmp_path / "p"),
                          "--seed", "4", "--rows-per-file", "200"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    res = r.invoke(main, ["criteo-to-parquet", str(tmp_path / "a.tsv"), "-o", str(tmp_path / "c"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert pq.read_table(tmp_path / "p").equals(pq.read_table(tmp_path / "c" / "train"))
    res = r.invoke(main, ["criteo-synth", "--rows", "10", "--format", "orc", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert orc.ORCFile(str(tmp_path / "o" / "part-00000.orc")).nrows == 10
    res = r.invoke(main, ["criteo-synth", "--rows", "10", "--out", str(tmp_path / "x.tsv"),
                          "--table-size-array", "1,2,x"])
    assert res.exit_code == 2 and "--table-size-array" in res.output
    res = r.invoke(main, ["criteo-synth", "--rows", "10", "--out", str(tmp_path / "x.tsv"),
                          "--table-size-array", "1,2,3"])
    assert res.exit_code == 2 and "26 sizes" in res.output
