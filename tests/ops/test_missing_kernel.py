"""A device without a kernel for an op is an error naming the op and the device: the feature-op
wrappers never fall back to a pure-PyTorch implementation (recis_compat/ops/features.py)."""
import pytest
import torch

import recis_compat.ops  # noqa: F401  (loads the extension)
from recis_compat.ops import _library
from recis_compat.ops import features as F


@pytest.mark.skipif(_library.has_cuda_kernel("fused_uint64_mod"),
                    reason="this build has CUDA kernels")
def test_cuda_input_without_cuda_kernel_names_op_and_device():
    with pytest.raises(RuntimeError, match=r"recis_compat::fused_uint64_mod has no CUDA kernel in "
                                           r"this build \(compiled without CUDA\).*cuda:1"):
        _library.require_kernel("fused_uint64_mod", torch.device("cuda", 1))


def test_unsupported_device_type_names_op_and_device():
    with pytest.raises(RuntimeError, match=r"recis_compat::ragged_to_dense has no kernel for "
                                           r"device xpu"):
        _library.require_kernel("ragged_to_dense", torch.device("xpu"))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_cpu_and_meta_always_run(device):
    assert _library.require_kernel("feature_cross", torch.device(device)) is None   # no error: a kernel exists


def test_every_wrapper_checks_the_device_of_its_input(monkeypatch):
    seen = []

    def record(name, device):
        seen.append((name, torch.device(device).type))
    monkeypatch.setattr(F, "require_kernel", record)
    ids = torch.tensor([3, -1, 7], dtype=torch.int64)
    off = torch.tensor([0, 2, 3], dtype=torch.int64)
    F.fused_uint64_mod([ids], [5])
    F.fused_bucketize([torch.tensor([0.5, 2.0])], [torch.tensor([1.0])])
    F.fused_multi_hash([ids], [[3]], [[7]], [[4]])
    F.feature_cross(ids, off, ids, off)
    F.fused_ragged_cutoff_2d([ids], [off], None, [1], [False])
    F.fused_ragged_cutoff_3d([ids], [torch.tensor([0, 1, 2])], [off], None, [1], False, False)
    F.ragged_to_dense(ids, [off])
    F.dense_to_ragged(torch.tensor([[1, 0], [2, 3]]))
    assert seen == [(n, "cpu") for n in ("fused_uint64_mod", "fused_bucketize", "fused_multi_hash",
                                          "feature_cross", "fused_ragged_cutoff_2d",
                                          "fused_ragged_cutoff_3d", "ragged_to_dense",
                                          "dense_to_ragged")]
