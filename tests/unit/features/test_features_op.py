"""Single ops called directly (port of RecIS feature_engine/op_test.py, on CPU) plus the op
base class: config, hashing, DataValueProcessor and the structures each op accepts."""
import hashlib

import farmhash
import pytest
import torch

from fe_helpers import assert_unchanged, ragged, random_ragged, rows_of, snapshot, strings_ragged
from recis_compat.features.errors import FeatureOpAssertionError
from recis_compat.features.op import (_OP, Bucketize, DataValueProcessor, FeatureCross, Hash,
                                      IDMultiHash, Mod, SelectField, SelectFields,
                                      SequenceTruncate)
from reference_kernels import murmur64a_ref
from recis_compat.ragged.tensor import RaggedPadInfo, RaggedTensor

U64 = 1 << 64


def _signed(v):
    return v - U64 if v >= 1 << 63 else v


# ------------------------------------------------------------------------------- _OP / hash
def test_get_hash_is_sha256_of_class_and_sorted_config():
    op = SequenceTruncate(seq_len=16, truncate_side="right")
    text = f"SequenceTruncate:{sorted(op._get_config().items())}"
    want = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)
    assert op.get_hash() == want
    assert Mod(1000).get_hash() == int.from_bytes(
        hashlib.sha256(b"Mod:[('mod', 1000)]").digest()[:8], "big", signed=True)


def test_configs_and_hash_identity():
    assert SelectField("a")._get_config() == {"name": "a", "dtype": "torch.int64", "dim": None,
                                              "from_dict": True}
    assert SelectFields([SelectField("a"), SelectField("b")])._get_config() == {
        "input_list": [SelectField("a").get_hash(), SelectField("b").get_hash()]}
    assert Bucketize([0, 0.5, 1])._get_config() == {"boundary": [0.0, 0.5, 1.0]}
    assert FeatureCross()._get_config() == {}
    assert Hash("farm")._get_config() == {"hash_type": "farm"}
    assert IDMultiHash([10, 20])._get_config() == {"num_buckets": [10, 20],
                                                   "multi_muls": [1, 3, 5, 7],
                                                   "multi_mods": [29, 47, 67, 83]}
    assert SequenceTruncate()._get_config() == {
        "seq_len": 64, "check_length": True, "truncate": True, "truncate_side": "left",
        "n_dims": 2, "dtype": "torch.int64"}
    assert Mod(7).get_hash() == Mod(7).get_hash() != Mod(8).get_hash()
    assert Hash("farm").get_hash() != Hash("murmur").get_hash()
    assert -(1 << 63) <= Mod(7).get_hash() < (1 << 63)


def test_custom_op_without_config_raises_not_implemented():
    class NoConfig(_OP):
        def forward(self, x):
            return x

    with pytest.raises(NotImplementedError, match="_get_config"):
        NoConfig().get_hash()


# ------------------------------------------------------------------------------- processor
def test_data_value_processor_structures():
    rt = ragged([[1, 2], [3]], weight=[0.5, 1.0, 2.0])
    p = DataValueProcessor(rt)
    assert p.get_input_value() is rt.values()
    out = p.get_output_value(rt.values() * 10)
    assert isinstance(out, RaggedTensor) and out is not rt
    assert out.offsets()[0] is rt.offsets()[0] and out.weight() is rt.weight()
    assert rt.values().tolist() == [1, 2, 3]

    dense = torch.arange(6).reshape(2, 3)
    p = DataValueProcessor(dense)
    assert p.get_input_value() is dense
    assert p.get_output_value(dense.reshape(-1) + 1).shape == (2, 3)

    sp = torch.sparse_coo_tensor(torch.tensor([[0, 1], [2, 0]]), torch.tensor([5, 6]), (2, 3),
                                 check_invariants=True)
    p = DataValueProcessor(sp)
    assert p.get_input_value().tolist() == [5, 6]
    out = p.get_output_value(torch.tensor([7, 8]))
    assert out.is_sparse and out.to_dense().tolist() == [[0, 0, 7], [8, 0, 0]]

    with pytest.raises(ValueError, match="RaggedTensor"):
        DataValueProcessor([1, 2]).get_input_value()


# ------------------------------------------------------------------------------- select
def test_select_field_and_fields():
    data = {"a": torch.tensor([1]), "b": torch.tensor([2])}
    assert SelectField("a")(data) is data["a"]
    assert SelectField("x", from_dict=False)(data) is data
    assert [t.item() for t in SelectFields([SelectField("a"), SelectField("b")])(data)] == [1, 2]


def test_select_field_dim_quirk_q2():
    rt = ragged([[1, 2], [3]])
    # from_dict=True: dim is never applied (RecIS quirk Q2, kept)
    out = SelectField("a", dim=8)({"a": rt})
    assert out is rt and rt._dense_shape == (2, 2)
    # from_dict=False on a RaggedTensor: a shallow copy carries the dim; the input is untouched
    out = SelectField("a", dim=8, from_dict=False)(rt)
    assert out._dense_shape == (2, 8) and rt._dense_shape == (2, 2)
    assert out.values() is rt.values()


# ------------------------------------------------------------------------------- Mod
def test_mod_vectors_ragged_dense_sparse():
    ids = [1, 1000000008, -1, (1 << 63) - 1, -(1 << 63), 0]
    want = [(v % U64) % 1000000007 for v in ids]
    rt = ragged([ids[:2], ids[2:]], weight=[.1, .2, .3, .4, .5, .6])
    snap = snapshot(rt)
    out = Mod(1000000007)(rt)
    assert out.values().tolist() == want and out.dtype == torch.int64
    assert out.weight() is rt.weight() and out.offsets()[0] is rt.offsets()[0]
    assert_unchanged(rt, snap)                  # Q3 fixed: no in-place mutation

    dense = torch.tensor(ids).reshape(2, 3)
    assert Mod(1000000007)(dense).tolist() == [want[:3], want[3:]]
    sp = torch.sparse_coo_tensor(torch.tensor([[0, 1, 2]]), torch.tensor(ids[:3]), (4,),
                                 check_invariants=True)
    assert Mod(1000000007)(sp).to_dense().tolist() == want[:3] + [0]


def test_mod_two_applications_do_not_stack():
    rt = ragged([[1234567]])
    a = Mod(1000)(rt)
    b = Mod(100)(rt)
    assert a.values().tolist() == [567] and b.values().tolist() == [67]


# ------------------------------------------------------------------------------- Bucketize
def test_bucketize_vs_torch_bucketize():
    b = [-3.0, 0.0, 0.5, 1.0, 2.5]
    x = torch.cat([torch.randn(500) * 3, torch.tensor(b), torch.tensor([float("nan")])])
    out = Bucketize(b)(x)
    ref = torch.bucketize(x, torch.tensor(b), right=True)
    assert torch.equal(out[:-1], ref[:-1]) and out.dtype == torch.int64
    assert out[-1].item() == len(b)             # NaN -> last bucket
    assert Bucketize([18, 25, 35, 45, 55, 65])(torch.tensor([20., 30, 40, 50, 60])).tolist() \
        == [1, 2, 3, 4, 5]


def test_bucketize_shapes_and_structures():
    dense = torch.tensor([[-1., 100.], [150., 250.]], dtype=torch.float64)
    assert Bucketize([0, 100, 200])(dense).tolist() == [[0, 2], [2, 3]]
    rt = ragged([[-1., 100.], [150.]], dtype=torch.float32, weight=[1., 2., 3.])
    snap = snapshot(rt)
    out = Bucketize(torch.tensor([0., 100., 200.]))(rt)
    assert out.values().tolist() == [0, 2, 2] and out.weight() is rt.weight()
    assert_unchanged(rt, snap)
    kept = torch.tensor([1.0, 2.0])
    assert Bucketize(kept).boundary is kept


# ------------------------------------------------------------------------------- FeatureCross
def test_feature_cross_vectors():
    x = ragged([[1001], [1002], [1003]], offsets_dtype=torch.int64)
    y = ragged([[1], [2], [3]], offsets_dtype=torch.int64)
    out = FeatureCross()([x, y])
    assert out.values().tolist() == [-7808879811642834040, -4967483181219983279,
                                      1752425377096056168]
    assert out.offsets()[0].tolist() == [0, 1, 2, 3] and out.offsets()[0].dtype == torch.int64
    assert out.weight().tolist() == [1.0, 1.0, 1.0]
    xi = ragged([[1], [2], [3]])
    raw = FeatureCross()([xi, xi]).values()
    assert [(v % U64) % 1000 for v in raw.tolist()] == [216, 2, 783]


def test_feature_cross_dedup_weights_and_empty_rows():
    x = ragged([[5, 5, 6], [], [7]], weight=[2.0, 3.0, 4.0, 5.0])
    y = ragged([[9, 8], [1], []], weight=[0.5, 0.25, 1.0])
    out = FeatureCross()([x, y])
    assert out.offsets()[0].tolist() == [0, 4, 4, 4]
    pairs = sorted(zip(out.values().tolist(), out.weight().tolist()))
    want = []
    for xv, xw in ((5, 2.0), (6, 4.0)):
        for yv, yw in ((9, 0.5), (8, 0.25)):
            h = murmur64a_ref(xv.to_bytes(8, "little", signed=True)
                              + yv.to_bytes(8, "little", signed=True))
            want.append((_signed(h), xw * yw))
    assert pairs == sorted(want)


# ------------------------------------------------------------------------------- truncation
def test_sequence_truncate_check_length_asserts():
    rt = ragged([list(range(20))])
    with pytest.raises(AssertionError, match="check_length") as ei:
        SequenceTruncate(seq_len=16)(rt)
    assert isinstance(ei.value, FeatureOpAssertionError)
    assert "SequenceTruncate(seq_len=16" in str(ei.value)


def test_sequence_truncate_left_keeps_last_values():
    rt = RaggedTensor(torch.arange(500), torch.tensor([0, 200, 500], dtype=torch.int32),
                      weight=torch.arange(500, dtype=torch.float32))
    snap = snapshot(rt)
    out = SequenceTruncate(seq_len=128, check_length=False, truncate_side="left")(rt)
    assert out.offsets()[0].tolist() == [0, 128, 256]
    assert out.values().tolist() == list(range(72, 200)) + list(range(372, 500))
    assert out.weight().tolist() == [float(v) for v in out.values().tolist()]
    assert out._dense_shape == (2, 128)
    assert isinstance(out.pad_info, RaggedPadInfo)
    assert out.pad_info.drop_nums[0].tolist() == [72, 172]
    assert out.pad_info.pad_nums[0].tolist() == [0, 0]
    assert_unchanged(rt, snap)


def test_sequence_truncate_right_and_short_rows():
    rt = ragged([[1, 2, 3, 4, 5], [6], []])
    out = SequenceTruncate(seq_len=3, check_length=False, truncate_side="right")(rt)
    assert rows_of(out) == [[1, 2, 3], [6], []]
    assert out.pad_info.pad_nums[0].tolist() == [0, 2, 3]
    assert out.pad_info.drop_sides.tolist() == [False]


def test_sequence_truncate_truncate_false_returns_input():
    rt = ragged([[1, 2, 3]])
    assert SequenceTruncate(seq_len=2, check_length=False, truncate=False)(rt) is rt


def test_sequence_truncate_3d():
    # row 0: [[0], [1, 2], [3]]; row 1: [[4, 5]]
    rt = RaggedTensor(torch.arange(6), [torch.tensor([0, 3, 4]), torch.tensor([0, 1, 3, 4, 6])])
    left = SequenceTruncate(seq_len=2, check_length=False, n_dims=3)(rt)
    assert left.offsets()[0].tolist() == [0, 2, 4]
    assert left.offsets()[1].tolist() == [0, 2, 3, 5, 5]
    assert left.values().tolist() == [1, 2, 3, 4, 5]
    assert left._dense_shape[:2] == (2, 2)
    right = SequenceTruncate(seq_len=2, check_length=False, truncate_side="right", n_dims=3)(rt)
    assert right.offsets()[1].tolist() == [0, 1, 3, 5, 5]
    assert right.values().tolist() == [0, 1, 2, 4, 5]


# ------------------------------------------------------------------------------- Hash
FARM = [-7736835464683084646, -5546720800891377920, -4442022684725028445, -909183002746659612]
MURMUR = [-4003751876240412087, -1042754718167355375, -5541886947548579749, 4434088491466393040]
STRS = [b"\x00\x01\x02", b"\x01\x02\x03", b"\x00\x05\x05", b"\x05\x06\x07"]


@pytest.mark.parametrize("hash_type,want", [("farm", FARM), ("murmur", MURMUR)])
def test_hash_vectors(hash_type, want):
    rt = strings_ragged([STRS[:1], STRS[1:3], [], STRS[3:]])
    out = Hash(hash_type)(rt)
    assert out.values().tolist() == want and out.dtype == torch.int64
    assert out.offsets()[0].tolist() == [0, 1, 3, 3, 4] and len(out.offsets()) == 1
    assert out._dense_shape == rt._dense_shape[:-1]


def test_hash_empty_and_long_strings():
    long = bytes(range(200))
    rt = strings_ragged([[b"", long, b"abc" * 30]])
    farm = Hash("farm")(rt).values().tolist()
    assert farm[0] == -7286425919675154353
    assert farm[1:] == [_signed(farmhash.fingerprint64(s)) for s in (long, b"abc" * 30)]
    assert Hash("murmur")(rt).values().tolist()[0] == 0


# ------------------------------------------------------------------------------- IDMultiHash
def test_id_multi_hash_vector_and_structures():
    op = IDMultiHash([1000] * 4)
    assert op.primes == [28979, 46997, 66977, 82997]
    out = op(torch.tensor([1001, 1002, 1003]))
    assert [out[f"multi_hash_{j}"].tolist() for j in range(4)] == [
        [1, 2, 3], [3, 6, 9], [5, 10, 15], [7, 14, 21]]
    rt = ragged([[1001], [1002, 1003]], weight=[1., 2., 3.])
    snap = snapshot(rt)
    out = IDMultiHash([1000, 1000])(rt)
    assert sorted(out) == ["multi_hash_0", "multi_hash_1"]
    assert out["multi_hash_1"].values().tolist() == [3, 6, 9]
    assert out["multi_hash_0"].weight() is rt.weight()
    assert out["multi_hash_0"].offsets()[0] is rt.offsets()[0]
    assert_unchanged(rt, snap)


def test_id_multi_hash_negative_ids_c_semantics():
    x = torch.tensor([-5, -(1 << 62), 123456789012])
    out = IDMultiHash([100, 7])(x)
    for j, (mul, b) in enumerate(zip([1, 3], [100, 7])):
        p = IDMultiHash([100, 7]).primes[j]
        want = []
        for v in x.tolist():
            prod = _signed((v * mul) % U64)
            r = abs(prod) % p * (1 if prod >= 0 else -1)       # C truncating %
            h = (r + p) % p
            want.append(h % b)
        assert out[f"multi_hash_{j}"].tolist() == want


def test_random_ragged_mod_matches_python():
    rt = random_ragged(50, 8, low=-(1 << 62), high=1 << 62)
    out = Mod(97)(rt)
    assert out.values().tolist() == [(v % U64) % 97 for v in rt.values().tolist()]


# ------------------------------------------------------------------- documented aliases
def test_hash_bucket_size_config_and_split():
    op = Hash("murmur", bucket_size=64)
    assert op._get_config() == {"hash_type": "murmur", "bucket_size": 64}
    assert op.get_hash() != Hash("murmur").get_hash()
    assert op.label() == "Hash('murmur', bucket_size=64)"
    parts = op.split()
    assert [type(p) for p in parts] == [Hash, Mod]
    assert parts[0]._get_config() == {"hash_type": "murmur"} and parts[1].mod_value == 64
    plain = Hash("farm")
    assert plain.split() == [plain]
    with pytest.raises(Exception, match="hash_type must be 'farm' or 'murmur'"):
        Hash("md5", bucket_size=4).split()


def test_bucketize_boundaries_keyword_is_the_boundary():
    b = torch.tensor([0.0, 1.0])
    assert Bucketize(boundaries=b).boundary is b
    with pytest.raises(TypeError, match="pass only one"):
        Bucketize(boundary=b, boundaries=b)
