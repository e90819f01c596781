"""The deepctr example's feature pipeline (RecIS 1.0; see COMPATIBILITY.md) on generated data."""
import farmhash
import numpy as np
import torch

from fe_helpers import assert_unchanged, snapshot
from recis_compat.benchmarks.features_bench import baseline, make_batch, make_features
from recis_compat.features import FeatureEngine
from recis_compat.ragged.tensor import RaggedTensor

B, MAX_LEN, SEQ = 64, 300, 100


def test_deepctr_pipeline_shapes_dtypes_offsets():
    data = make_batch(B, MAX_LEN, seed=3)
    snaps = {k: snapshot(v) for k, v in data.items() if isinstance(v, RaggedTensor)}
    out = FeatureEngine(make_features(SEQ))(data)
    assert set(out) == {"dense2", "sparse1", "sparse2", "sparse3", "sparse4", "sparse1_x_sparse2",
                        "sparse5", "label", "dense1"}
    assert out["dense1"] is data["dense1"] and out["label"] is data["label"]
    assert out["dense2"].shape == (B, 1) and out["dense2"].dtype == torch.int64
    assert int(out["dense2"].max()) <= 2
    for name in ("sparse3", "sparse4", "sparse5", "sparse1_x_sparse2"):
        rt = out[name]
        assert isinstance(rt, RaggedTensor) and rt.dtype == torch.int64
        assert len(rt.offsets()) == 1 and rt.offsets()[0].shape == (B + 1,)
        assert rt.offsets()[0].dtype == torch.int32
        bound = 1000 if name == "sparse1_x_sparse2" else 10000
        assert int(rt.values().min()) >= 0 and int(rt.values().max()) < bound
    for name in ("sparse4", "sparse5"):
        lens = out[name].offsets()[0].diff()
        assert int(lens.max()) <= SEQ and out[name]._dense_shape == (B, SEQ)
        assert out[name].pad_info is not None
    # sparse4 keeps the first SEQ ids of each row (right drop side)
    s4 = data["sparse4"]
    off = s4.offsets()[0].tolist()
    first = [v % 10000 for v in s4.values()[off[5]:off[6]].tolist()[:SEQ]]
    o4 = out["sparse4"].offsets()[0].tolist()
    assert out["sparse4"].values()[o4[5]:o4[6]].tolist() == first
    # sparse5: the last SEQ strings of a row, farm-hashed then uint64 mod 10000
    s5 = data["sparse5"]
    rows, strs = s5.offsets()[0].tolist(), s5.offsets()[1].tolist()
    raw = s5.values().numpy().tobytes()
    want = [farmhash.fingerprint64(raw[strs[k]:strs[k + 1]]) % 10000
            for k in range(rows[7], rows[8])][-SEQ:]
    o5 = out["sparse5"].offsets()[0].tolist()
    assert out["sparse5"].values()[o5[7]:o5[8]].tolist() == want
    assert out["sparse1_x_sparse2"].weight().dtype == torch.float32
    for k, s in snaps.items():
        assert_unchanged(data[k], s)


def test_pipeline_fused_equals_plain_baseline_and_feature_forward():
    data = make_batch(B, MAX_LEN, seed=4)
    feats = make_features(SEQ)
    direct = {f.name: f for f in make_features(SEQ)}
    out = FeatureEngine(feats)(data, remain_no_use_data=False)
    ref = baseline(data, SEQ)
    for name, r in ref.items():
        o = out[name]
        if isinstance(r, RaggedTensor):
            assert torch.equal(o.offsets()[0].long(), r.offsets()[0].long()), name
            assert torch.equal(torch.sort(o.values())[0], torch.sort(r.values())[0]), name
        else:
            assert torch.equal(o, r), name
    # the direct (non-fused) path; truncation with check_length=True would assert on long rows
    for name in ("dense2", "sparse3", "sparse1_x_sparse2"):
        d = direct[name](data)
        got = out[name]
        assert torch.equal(got if isinstance(got, torch.Tensor) else got.values(),
                           d if isinstance(d, torch.Tensor) else d.values())
    assert np.isfinite(out["sparse1_x_sparse2"].weight().numpy()).all()
