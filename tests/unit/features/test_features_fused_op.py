"""Fused ops (port of RecIS feature_engine/fused_op_test.py, on CPU): each equals the unfused
op, runs one kernel call for all its features, and the factory's registry rules."""
import pytest
import torch

from fe_helpers import random_ragged, strings_ragged
from recis_compat.features import fused_op_impl as F
from recis_compat.features.op import (Bucketize, Hash, IDMultiHash, Mod, SelectField,
                                      SequenceTruncate)
from recis_compat.ops import features as kernels
from recis_compat.ops import hashing


def _same_ragged(a, b):
    assert torch.equal(a.values(), b.values())
    assert len(a.offsets()) == len(b.offsets())
    assert all(torch.equal(x, y) for x, y in zip(a.offsets(), b.offsets()))
    assert (a.weight() is None) == (b.weight() is None)
    if a.weight() is not None:
        assert torch.equal(a.weight(), b.weight())


def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, spy)
    return calls


def test_fused_boundary_equals_bucketize_and_torch(monkeypatch):
    calls = _count_calls(monkeypatch, kernels, "fused_bucketize")
    ops = [Bucketize([0, 100, 200]), Bucketize([0.25, 0.5]), Bucketize([1.0])]
    inputs = [random_ragged(40, 6, dtype=torch.float32, high=300, seed=1),
              torch.rand(7, 3), torch.rand(5, dtype=torch.float64) * 2]
    outs = F.FusedBoundaryOP(ops).process(inputs)
    assert len(calls) == 1
    _same_ragged(outs[0], ops[0](inputs[0]))
    assert torch.equal(outs[1], torch.bucketize(inputs[1], torch.tensor([0.25, 0.5]), right=True))
    assert torch.equal(outs[2], ops[2](inputs[2]))


def test_fused_mod_equals_mod(monkeypatch):
    calls = _count_calls(monkeypatch, kernels, "fused_uint64_mod")
    ops = [Mod(1000000007), Mod(10), Mod(3)]
    inputs = [random_ragged(30, 5, low=-(1 << 62), high=1 << 62, weight=True),
              torch.randint(-100, 100, (4, 4)), random_ragged(3, 2, offsets_dtype=torch.int64)]
    outs = F.FusedModOP(ops).process(inputs)
    assert len(calls) == 1
    _same_ragged(outs[0], ops[0](inputs[0]))
    assert torch.equal(outs[1], ops[1](inputs[1]))
    _same_ragged(outs[2], ops[2](inputs[2]))


def test_fused_hash_groups_by_type(monkeypatch):
    kinds = []
    real = hashing.fused_hash_bytes
    monkeypatch.setattr(hashing, "fused_hash_bytes",
                        lambda d, o, kind, b: kinds.append(kind) or real(d, o, kind, b))
    strs = [[b"\x00\x01\x02", b"abc"], [], [b"\x05\x06\x07" * 30]]
    inputs = [strings_ragged(strs), strings_ragged(strs, torch.int64), strings_ragged(strs[:2])]
    ops = [Hash("farm"), Hash("murmur"), Hash("farm")]
    outs = F.FusedHashOP(ops).process(inputs)
    assert sorted(kinds) == ["farm", "murmur"]
    for op, x, out in zip(ops, inputs, outs):
        _same_ragged(out, op(x))
    assert outs[0].values()[0].item() == -7736835464683084646
    assert outs[1].values()[0].item() == -4003751876240412087


def test_fused_cutoff_2d_3d_mixed_dtypes(monkeypatch):
    calls2 = _count_calls(monkeypatch, kernels, "fused_ragged_cutoff_2d")
    calls3 = _count_calls(monkeypatch, kernels, "fused_ragged_cutoff_3d")
    r3 = random_ragged(20, 5, seed=3)
    outer = r3.offsets()[0].to(torch.int64)
    nested = random_ragged(int(outer[-1]), 3, dtype=torch.float32, seed=4,
                           offsets_dtype=torch.int32)
    from recis_compat.ragged.tensor import RaggedTensor
    three_d = RaggedTensor(nested.values(), [outer, nested.offsets()[0].to(torch.int64)])
    inputs = [random_ragged(30, 40, seed=5, weight=True),
              random_ragged(30, 40, dtype=torch.float32, offsets_dtype=torch.int64, seed=6),
              three_d, random_ragged(8, 3, dtype=torch.int32, seed=7)]
    ops = [SequenceTruncate(16, check_length=False),
           SequenceTruncate(7, check_length=False, truncate_side="right"),
           SequenceTruncate(2, check_length=False, n_dims=3),
           SequenceTruncate(5, check_length=False, truncate_side="right")]
    outs = F.FusedCutoffOP(ops).process(inputs)
    assert len(calls2) == 1 and len(calls3) == 1
    for op, x, out in zip(ops, inputs, outs):
        direct = op(x)
        _same_ragged(out, direct)
        assert out._dense_shape == direct._dense_shape
    assert outs[1].offsets()[0].dtype == torch.int64 and outs[3].dtype == torch.int32
    info = outs[0].pad_info
    lens = inputs[0].offsets()[0][1:] - inputs[0].offsets()[0][:-1]
    assert torch.equal(info.drop_nums[0].long(), (lens - 16).clamp(min=0))
    assert torch.equal(info.pad_nums[0].long(), (16 - lens).clamp(min=0))
    assert info.drop_sides.tolist() == [True] and outs[1].pad_info.drop_sides.tolist() == [False]


def test_fused_cutoff_ignores_check_length_and_truncate():
    x = random_ragged(4, 50, seed=9)
    op = SequenceTruncate(seq_len=3, check_length=True, truncate=False)
    with pytest.raises(AssertionError):
        op(x)
    out = F.FusedCutoffOP([op]).process([x])[0]
    assert int((out.offsets()[0][1:] - out.offsets()[0][:-1]).max()) <= 3


def test_fused_multi_hash_equals_op(monkeypatch):
    calls = _count_calls(monkeypatch, kernels, "fused_multi_hash")
    ops = [IDMultiHash([1000] * 4), IDMultiHash([7, 11])]
    inputs = [torch.tensor([1001, 1002, 1003]), random_ragged(10, 4, weight=True)]
    outs = F.FusedMultiHashOP(ops).process(inputs)
    assert len(calls) == 1
    assert [outs[0][f"multi_hash_{j}"].tolist() for j in range(4)] == [
        [1, 2, 3], [3, 6, 9], [5, 10, 15], [7, 14, 21]]
    direct = ops[1](inputs[1])
    assert sorted(outs[1]) == ["multi_hash_0", "multi_hash_1"]
    for k in direct:
        _same_ragged(outs[1][k], direct[k])


def test_factory_registry():
    factory = F.FusedOpFactory()
    assert factory is F.FusedOpFactory()
    assert F.FusedOpFactory.contains(Mod(3)) and not F.FusedOpFactory.contains(SelectField("a"))

    class MyMod(Mod):
        pass
    assert not F.FusedOpFactory.contains(MyMod(3))           # exact type only
    fused = F.FusedOpFactory.get_fused_op(Hash("farm"))
    assert isinstance(fused, F.FusedHashOP) and fused.ops == []
    with pytest.raises(ValueError, match="already has a fused op"):
        F.FusedOpFactory.register(Mod, F.FusedModOP)
    with pytest.raises(KeyError):
        F.FusedOpFactory.get_fused_op(SelectField("a"))


def test_fused_op_argument_checks():
    with pytest.raises(TypeError, match="fuses Mod"):
        F.FusedModOP([Bucketize([1.0])])
    with pytest.raises(ValueError, match="1 ops but 2 inputs"):
        F.FusedModOP([Mod(3)]).process([torch.tensor([1]), torch.tensor([2])])
    with pytest.raises(TypeError, match="int64"):
        F.FusedModOP([Mod(3)]).process([torch.tensor([1.0])])
    with pytest.raises(TypeError, match="feature 'f1'.*int64"):
        F.FusedModOP([Mod(3)]).process([torch.tensor([1.0])], ["f1"])


def test_kernel_error_names_all_fused_features(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(kernels, "fused_uint64_mod", boom)
    with pytest.raises(RuntimeError, match=r"features \['a', 'b'\] \(fused Mod\): kernel exploded"):
        F.FusedModOP([Mod(3), Mod(4)]).process([torch.tensor([1]), torch.tensor([2])], ["a", "b"])
