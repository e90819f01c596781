"""sparse_adam_rows_: NumPy reference of RecIS's math over several steps, opcheck, errors, twin."""
import numpy as np
import pytest
import torch

from recis_compat.ops.optim import sparse_adam_rows_
from reference_kernels import sparse_adam_rows_ref

HP = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("decay_kind", ["adamw", "adamw_tf", "adam"])
def test_matches_numpy_reference_over_steps(dtype, decay_kind):
    g = torch.Generator().manual_seed(0)
    n, d = 300, 8
    p = torch.randn(n, d, generator=g, dtype=dtype)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    P, M, V = (x.double().numpy().copy() for x in (p, m, v))
    wd = 0.01
    decay = {"adamw": 1 - HP["lr"] * wd, "adamw_tf": 1 - wd, "adam": 1.0}[decay_kind]
    b1p = b2p = 1.0
    for step in range(5):
        rows = torch.randperm(n, generator=g)[: 50 + 20 * step]
        grad = torch.randn(rows.numel(), d, generator=g, dtype=dtype)
        b1p *= HP["beta1"]
        b2p *= HP["beta2"]
        sparse_adam_rows_(p, m, v, rows, grad, decay=decay, beta1_power=b1p, beta2_power=b2p, **HP)
        sparse_adam_rows_ref(P, M, V, rows.numpy(), grad.double().numpy(), decay=decay,
                             beta1_power=b1p, beta2_power=b2p, **HP)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(p.double().numpy(), P, atol=tol, rtol=tol)
    np.testing.assert_allclose(m.double().numpy(), M, atol=tol, rtol=tol)
    np.testing.assert_allclose(v.double().numpy(), V, atol=tol, rtol=tol)


def test_untouched_rows_stay_exactly_equal():
    p = torch.randn(10, 4)
    before = p.clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    sparse_adam_rows_(p, m, v, torch.tensor([3, 7]), torch.ones(2, 4), decay=0.9, beta1_power=0.9,
                      beta2_power=0.999, **HP)
    untouched = [i for i in range(10) if i not in (3, 7)]
    assert torch.equal(p[untouched], before[untouched])
    assert not torch.equal(p[3], before[3]) and m[untouched].abs().sum() == 0


def test_tf_epsilon_equals_torch_adam_with_scaled_eps_first_step():
    # one step from zero moments: RecIS's update == torch Adam with eps / sqrt(1 - beta2^t):
    # theta -= lr sqrt(1-b2p)/(1-b1p) m/(sqrt(v) + eps)  ==  lr/(1-b1p) m/(sqrt(v)/sqrt(1-b2p) + eps')
    g = torch.Generator().manual_seed(11)
    p = torch.randn(6, 3, dtype=torch.float64, generator=g)
    grad = torch.randn(6, 3, dtype=torch.float64, generator=g)
    ref = p.clone().requires_grad_()
    opt = torch.optim.Adam([ref], lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]),
                           eps=HP["eps"] / np.sqrt(1 - HP["beta2"]))
    ref.grad = grad.clone()
    opt.step()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    sparse_adam_rows_(p, m, v, torch.arange(6), grad, decay=1.0, beta1_power=HP["beta1"],
                      beta2_power=HP["beta2"], **HP)
    torch.testing.assert_close(p, ref.detach(), rtol=1e-12, atol=1e-12)


def test_opcheck():
    p = torch.randn(8, 4)
    args = (p, torch.zeros_like(p), torch.zeros_like(p), torch.tensor([1, 5]), torch.randn(2, 4),
            0.1, 0.9, 0.999, 1e-8, 0.99, 0.9, 0.999)
    torch.library.opcheck(torch.ops.recis_compat.sparse_adam_rows_.default, args)


def test_bad_inputs():
    p = torch.randn(8, 4)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    kw = dict(decay=1.0, beta1_power=0.9, beta2_power=0.999, **HP)
    with pytest.raises(RuntimeError, match="grad dtype"):
        sparse_adam_rows_(p, m, v, torch.tensor([1]), torch.randn(1, 4, dtype=torch.float64), **kw)
    with pytest.raises(RuntimeError, match="rows must be in"):
        sparse_adam_rows_(p, m, v, torch.tensor([8]), torch.randn(1, 4), **kw)
    with pytest.raises(RuntimeError, match="rows must be 1-D int64"):
        sparse_adam_rows_(p, m, v, torch.tensor([1], dtype=torch.int32), torch.randn(1, 4), **kw)
    with pytest.raises(RuntimeError, match="betas must be in"):
        sparse_adam_rows_(p, m, v, torch.tensor([1]), torch.randn(1, 4), **{**kw, "beta1": 1.0})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_twin_matches_cpu():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(100, 8, generator=g)
    rows, grad = torch.randperm(100, generator=g)[:40], torch.randn(40, 8, generator=g)
    kw = dict(decay=0.99, beta1_power=0.9, beta2_power=0.999, **HP)
    pc, mc, vc = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    pg, mg, vg = p.cuda(), torch.zeros_like(p).cuda(), torch.zeros_like(p).cuda()
    sparse_adam_rows_(pc, mc, vc, rows, grad, **kw)
    sparse_adam_rows_(pg, mg, vg, rows.cuda(), grad.cuda(), **kw)
    torch.testing.assert_close(pg.cpu(), pc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_twins_share_their_argument_checks(device):
    """csrc/optim/sparse_adam_checks.h: both devices reject the same inputs with the same errors
    (the CUDA twin did not check the betas, eps or the dtype before)."""
    p, m, v = (torch.zeros(4, 2, device=device) for _ in range(3))
    rows, grad = torch.tensor([1], device=device), torch.ones(1, 2, device=device)
    kw = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, decay=1.0, beta1_power=0.9, beta2_power=0.999)
    with pytest.raises(RuntimeError, match=r"sparse_adam_rows_: betas must be in \[0, 1\)"):
        sparse_adam_rows_(p, m, v, rows, grad, **{**kw, "beta2": 1.5})
    with pytest.raises(RuntimeError, match=r"sparse_adam_rows_: rows must be in \[0, 4\), got \[7, 7\]"):
        sparse_adam_rows_(p, m, v, torch.tensor([7], device=device), grad, **kw)
