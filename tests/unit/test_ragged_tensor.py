"""RaggedTensor / RaggedPadInfo against RecIS's API, with our Q15 fixes."""
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from recis_compat.ragged.tensor import RaggedPadInfo, RaggedTensor


def _rt2(weight=False, dense_shape=None):
    # rows: [1, 2], [3, 4, 5], [6]
    values = torch.tensor([1, 2, 3, 4, 5, 6])
    offsets = torch.tensor([0, 2, 5, 6], dtype=torch.int32)
    w = torch.tensor([.1, .2, .3, .4, .5, .6]) if weight else None
    return RaggedTensor(values, offsets, weight=w, dense_shape=dense_shape)


def _rt3():
    # batch 0: [[0], [1, 2, 3]]; batch 1: [[], [4, 5, 6], [7]]
    values = torch.arange(8, dtype=torch.float32)
    outer = torch.tensor([0, 2, 5])
    inner = torch.tensor([0, 1, 4, 4, 7, 8], dtype=torch.int32)
    return RaggedTensor(values, [outer, inner])


# ------------------------------------------------------------------------ construction
def test_pad_info_dataclass():
    fields = {f.name: f.default for f in dataclasses.fields(RaggedPadInfo)}
    assert fields == {"drop_nums": None, "pad_nums": None, "drop_sides": None, "pad_sides": None}
    rt = _rt2()
    assert rt.pad_info is None and rt._pad_info is None
    info = RaggedPadInfo(drop_nums=[torch.tensor([1, 0, 0])])
    rt.set_pad_info(info)
    assert rt.pad_info is info


def test_single_offsets_tensor_is_wrapped():
    rt = _rt2()
    assert isinstance(rt.offsets(), list) and len(rt.offsets()) == 1
    assert rt.offsets()[0].dtype == torch.int32


def test_dense_shape_computed_when_none():
    rt = _rt2()
    assert rt._dense_shape == (3, 3)
    assert isinstance(rt._dense_shape, tuple)
    assert _rt3()._dense_shape == (2, 3, 3)


def test_dense_shape_given_is_kept():
    rt = _rt2(dense_shape=(-1, -1))
    assert rt._dense_shape == (-1, -1)
    assert rt.shape == (3, 3)
    rt = _rt2(dense_shape=torch.Size([3, 10]))
    assert rt._dense_shape == (3, 10) and rt.shape == (3, 10)


@pytest.mark.parametrize("bad", [(3,), (3, 3, 3), (-2, 3), (3, -5)])
def test_dense_shape_validation(bad):
    with pytest.raises(ValueError, match="dense_shape"):
        _rt2(dense_shape=bad)


def test_empty_offsets_list_is_stored_like_recis():
    """RecIS stores ``offsets=[]`` unchecked; here it is a plain 1-D batch of the values."""
    values = torch.tensor([4.0, 5.0, 6.0])
    rt = RaggedTensor(values, [])
    assert rt.offsets() == [] and rt.values() is values
    assert rt._dense_shape == (3,) and rt.shape == (3,) and rt.dim == 1 and rt.max_length == 3
    assert rt.get_shape(0) == 3 and rt.get_shape(-1) == 3 and rt.real_shape(0, 1) == (3,)
    dense = rt.to_dense()
    assert torch.equal(dense, values) and dense.data_ptr() != values.data_ptr()
    assert torch.equal(rt.to_sparse().to_dense(), values)
    moved = rt.to(torch.float64)
    assert moved.offsets() == [] and moved.dtype == torch.float64 and moved._dense_shape == (3,)
    assert rt.clone().offsets() == []
    given = RaggedTensor(values, [], dense_shape=(7,))           # a given dense_shape is kept
    assert given._dense_shape == (7,) and given.shape == (7,)
    with pytest.raises(ValueError, match="dense_shape"):
        RaggedTensor(values, [], dense_shape=(3, 1))
    w = RaggedTensor(values, [], weight=torch.ones(3))
    assert torch.equal(w.weight(), torch.ones(3))


def test_offsets_and_weight_validation():
    with pytest.raises(ValueError, match="weight"):
        RaggedTensor(torch.arange(3), [], weight=torch.ones(2))
    with pytest.raises(ValueError, match="1-D"):
        RaggedTensor(torch.arange(3), torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="weight"):
        RaggedTensor(torch.arange(3), torch.tensor([0, 3]), weight=torch.ones(2))


def test_accessors_dtype_device_dim():
    rt = _rt2(weight=True)
    assert rt.values().tolist() == [1, 2, 3, 4, 5, 6]
    assert rt.weight().shape == (6,)
    assert rt.dtype == torch.int64 and rt.device == torch.device("cpu")
    assert rt.dim == 2 and _rt3().dim == 3
    new_w = torch.ones(6)
    rt.set_weight(new_w)
    assert rt.weight() is new_w
    rt.set_weight(None)
    assert rt.weight() is None


def test_set_values_mutates_in_place():
    rt = _rt2()
    alias = rt
    v = torch.tensor([9, 9, 9, 9, 9, 9])
    assert rt.set_values(v) is None
    assert alias.values() is v


# ------------------------------------------------------------------------ shapes
def test_real_shape_resolves_minus_one():
    rt = _rt3()
    rt._dense_shape = (-1, -1, -1)
    assert rt.real_shape() == (2, 3, 3)
    rt.set_dim_by_rank(5, 2)
    assert rt._dense_shape == (-1, -1, 5)
    assert rt.real_shape() == (2, 3, 5)
    assert rt.shape == rt.size() == (2, 3, 5)
    assert type(rt.shape) is tuple


def test_real_shape_start_end_and_negative_end():
    rt = _rt3()
    assert rt.real_shape(1) == (3, 3)
    assert rt.real_shape(0, 1) == (2,)
    assert rt.real_shape(0, -1) == (2, 3)
    assert rt.real_shape(1, -1) == (3,)
    assert rt.real_shape(2, 2) == ()


def test_real_shape_dim_k_is_longest_row_of_previous_offsets():
    # offsets[0] longest row has 3 sub-lists, offsets[1] longest row has 3 values
    rt = RaggedTensor(torch.arange(4), [torch.tensor([0, 3, 4]), torch.tensor([0, 1, 1, 1, 4])],
                      dense_shape=(-1, -1, -1))
    assert rt.real_shape() == (2, 3, 3)


def test_real_shape_zero_when_offsets_too_short():
    rt = RaggedTensor(torch.zeros(0), torch.tensor([0]))
    assert rt.real_shape() == (0, 0)
    rt = RaggedTensor(torch.zeros(0), torch.tensor([0, 0, 0]))
    assert rt.real_shape() == (2, 0)


def test_get_shape_and_max_length_with_negative_dims():
    rt = _rt3()
    rt._dense_shape = (-1, -1, -1)
    assert rt.get_shape(0) == 2 and rt.get_shape(1) == 3 and rt.get_shape(2) == 3
    assert rt.get_shape(-1) == 3 and rt.get_shape(-2) == 3 and rt.get_shape(-3) == 2
    assert rt.max_length == 3
    rt2 = _rt2(dense_shape=(-1, -1))
    assert rt2.max_length == 3
    assert rt2.get_shape(-2) == 3
    rt2.set_dim_by_rank(7, -1)
    assert rt2.max_length == 7
    with pytest.raises(IndexError):
        rt2.get_shape(2)
    with pytest.raises(IndexError):
        rt2.get_shape(-3)


# ------------------------------------------------------------------------ to_dense / to_sparse
def test_to_dense_2d_default_value_dtype():
    rt = _rt2()
    assert rt.to_dense().tolist() == [[1, 2, 0], [3, 4, 5], [6, 0, 0]]
    assert rt.to_dense().dtype == torch.int64
    assert rt.to_dense(default_value=-1).tolist() == [[1, 2, -1], [3, 4, 5], [6, -1, -1]]
    f = rt.to(torch.float32).to_dense(default_value=0.5)
    assert f.dtype == torch.float32 and f[0, 2].item() == 0.5


def test_to_dense_ignores_dense_shape():
    rt = _rt2(dense_shape=(3, 10))
    assert rt.to_dense().shape == (3, 3)
    rt = _rt2(dense_shape=(3, 1))
    assert rt.to_dense().shape == (3, 3)


def test_to_dense_all_empty_rows_width_zero():
    rt = RaggedTensor(torch.zeros(0, dtype=torch.int64), torch.tensor([0, 0, 0, 0]))
    d = rt.to_dense()
    assert d.shape == (3, 0) and d.dtype == torch.int64


def test_to_dense_3_levels():
    d = _rt3().to_dense(default_value=-1.0)
    assert d.shape == (2, 3, 3)
    expect = [[[0, -1, -1], [1, 2, 3], [-1, -1, -1]],
              [[-1, -1, -1], [4, 5, 6], [7, -1, -1]]]
    assert d.tolist() == expect


def test_to_dense_mixed_offsets_dtypes():
    rt = _rt3()  # int64 outer, int32 inner
    assert rt.to_dense().shape == (2, 3, 3)


def test_to_sparse_2d_and_3d():
    s = _rt2().to_sparse()
    assert s.layout == torch.sparse_coo
    assert s.shape == (3, 3)
    assert s.to_dense().tolist() == _rt2().to_dense().tolist()
    s3 = _rt3().to_sparse()
    assert s3.shape == (2, 3, 3)
    assert torch.equal(s3.to_dense(), _rt3().to_dense())
    idx = s3.coalesce().indices()
    assert idx.shape == (3, 8)


def test_to_sparse_size_from_data_not_user_dense_shape():
    rt = _rt2()
    rt.set_dim_by_rank(1, 1)  # smaller than the data: must not produce out-of-range indices
    s = rt.to_sparse()
    assert s.shape == (3, 3)
    assert torch.equal(s.to_dense(), rt.to_dense())


def test_to_sparse_empty():
    s = RaggedTensor(torch.zeros(0), torch.tensor([0, 0])).to_sparse()
    assert s.shape == (1, 0) and s._nnz() == 0


# ------------------------------------------------------------------------ to / clone / pin
def test_to_dtype_converts_values_only_q15():
    rt = _rt2(weight=True)
    f = rt.to(torch.float32)
    assert f is not rt
    assert f.dtype == torch.float32
    assert f.offsets()[0].dtype == torch.int32  # RecIS would make them float
    assert f.weight().dtype == torch.float32
    d = rt.to(torch.float64)
    assert d.weight().dtype == torch.float64  # a floating dtype also converts the weight
    i = rt.to(torch.int32)
    assert i.dtype == torch.int32 and i.weight().dtype == torch.float32  # not to int
    assert i.offsets()[0].dtype == torch.int32


def test_to_device_and_kwargs_forms():
    rt = _rt2(weight=True)
    for moved in (rt.to("cpu"), rt.to(torch.device("cpu")), rt.to(device="cpu"),
                  rt.to("cpu", torch.float32), rt.to(dtype=torch.float32),
                  rt.to(torch.zeros(1, dtype=torch.float32)),
                  rt.to("cpu", non_blocking=True)):
        assert isinstance(moved, RaggedTensor) and moved.device.type == "cpu"
    assert rt.to(torch.zeros(1, dtype=torch.float16)).dtype == torch.float16
    same = rt.to("cpu")
    assert same.values().data_ptr() == rt.values().data_ptr()
    copied = rt.to("cpu", copy=True)
    assert copied.values().data_ptr() != rt.values().data_ptr()
    assert torch.equal(copied.values(), rt.values())


def test_to_carries_dense_shape_and_pad_info():
    rt = _rt2(dense_shape=(-1, 10))
    info = RaggedPadInfo(pad_nums=[torch.tensor([1, 0, 2])])
    rt.set_pad_info(info)
    out = rt.to(torch.float32)
    assert out._dense_shape == (-1, 10)
    assert out.pad_info is info


def test_clone_is_shallow():
    rt = _rt3()
    rt._weight = torch.ones(8)
    c = rt.clone()
    assert c is not rt
    assert c.values() is rt.values()
    assert c.weight() is rt.weight()
    assert c.offsets() is not rt.offsets()  # a new list ...
    assert all(a is b for a, b in zip(c.offsets(), rt.offsets()))  # ... of the same tensors
    assert c._dense_shape == rt._dense_shape
    c.offsets().append(torch.tensor([0]))
    assert len(rt.offsets()) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pin_memory needs CUDA")
def test_pin_memory():
    rt = _rt2(weight=True)
    p = rt.pin_memory()
    assert p is not rt
    assert p.values().is_pinned() and p.offsets()[0].is_pinned() and p.weight().is_pinned()
    assert p._dense_shape == rt._dense_shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    c = _rt2(weight=True).cuda()
    assert c.device.type == "cuda" and c.offsets()[0].device.type == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_cuda_without_cuda_names_the_variable(monkeypatch):
    monkeypatch.delenv("RECIS_COMPAT_DEVICE", raising=False)
    rt = _rt2(weight=True)
    with pytest.raises(RuntimeError, match=r"RaggedTensor\.cuda\(\).*RECIS_COMPAT_DEVICE=cpu"):
        rt.cuda()
    with pytest.raises(RuntimeError, match=r"RaggedTensor\.to\(\).*RECIS_COMPAT_DEVICE=cpu"):
        rt.to("cuda:0", torch.float32)
    with pytest.raises(RuntimeError, match="RECIS_COMPAT_DEVICE=cpu"):
        rt.to(device=torch.device("cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_cuda_with_cpu_override_stays_on_cpu(monkeypatch):
    """``RECIS_COMPAT_DEVICE=cpu``: RaggedTensor.cuda()/.to("cuda") give new CPU RaggedTensors
    (recis_compat/utils/device.py resolve_device), dtype arguments still applied."""
    monkeypatch.setenv("RECIS_COMPAT_DEVICE", "cpu")
    rt = _rt2(weight=True, dense_shape=(3, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for moved in (rt.cuda(), rt.cuda(1), rt.to("cuda"), rt.to(torch.device("cuda:0"), torch.float64)):
            assert moved is not rt and moved.device.type == "cpu"
            assert moved.offsets()[0].device.type == "cpu" and moved.weight().device.type == "cpu"
            assert moved.offsets()[0].dtype == torch.int32 and moved._dense_shape == (3, 4)
            assert torch.equal(moved.to_dense().to(torch.int64), rt.to_dense())
    assert rt.to("cuda", torch.float64).dtype == torch.float64


# ------------------------------------------------------------------------ constructors
def test_from_dense_strips_trailing_zeros_only():
    dense = torch.tensor([[1, 0, 2, 0], [0, 0, 0, 0], [3, 4, 5, 6], [0, 7, 0, 0]])
    rt = RaggedTensor.from_dense(dense)
    assert rt.values().tolist() == [1, 0, 2, 3, 4, 5, 6, 0, 7]
    assert len(rt.offsets()) == 1
    assert rt.offsets()[0].tolist() == [0, 3, 3, 7, 9]
    assert rt.offsets()[0].dtype == torch.int32
    assert rt._dense_shape == (4, 4)
    assert rt.values().dtype == dense.dtype


def test_from_dense_float_and_roundtrip():
    dense = torch.tensor([[1.5, 0.0, 0.0], [0.0, 2.5, 0.0]])
    rt = RaggedTensor.from_dense(dense)
    assert rt.values().tolist() == [1.5, 0.0, 2.5]
    assert torch.equal(rt.to_dense(), torch.tensor([[1.5, 0.0], [0.0, 2.5]]))


def test_from_dense_options_and_errors():
    dense = torch.tensor([[1, 0], [0, 0]])
    keep = RaggedTensor.from_dense(dense, check_invalid=False)
    assert keep.values().tolist() == [1, 0, 0, 0]
    assert keep.offsets()[0].tolist() == [0, 2, 4]
    minus = RaggedTensor.from_dense(torch.tensor([[1, -1, -1], [-1, 2, -1]]), invalid_value=-1)
    assert minus.values().tolist() == [1, -1, 2]
    with pytest.raises(ValueError, match="2-D"):
        RaggedTensor.from_dense(torch.tensor([1, 2, 3]))


def test_from_numpy():
    rt = RaggedTensor.from_numpy(np.array([1, 2, 3], dtype=np.int64), np.array([0, 1, 3]))
    assert rt.values().tolist() == [1, 2, 3]
    assert len(rt.offsets()) == 1 and rt.offsets()[0].tolist() == [0, 1, 3]
    assert rt.shape == (2, 2)
    rt3 = RaggedTensor.from_numpy(np.arange(4, dtype=np.float32),
                                  [np.array([0, 2]), np.array([0, 1, 4], dtype=np.int32)])
    assert rt3.shape == (1, 2, 3)
    assert rt3.offsets()[1].dtype == torch.int32
    assert rt3.dtype == torch.float32


def test_str_mentions_parts():
    s = str(_rt2())
    assert "RaggedTensor" in s and "offsets" in s and "dense_shape" in s
