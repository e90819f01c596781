"""sparse_adam_rows_ is bit for bit RecIS's SparseAdam-family update (recis-api.md §1.6.2) for every
row width: the row loop has compile-time widths (8, 16, 32, 64 elements) and a generic one
(csrc/optim/sparse_adam.cpp), and every one must round exactly like the element-wise NumPy form
of the update below in the table's dtype (one IEEE rounding per operation, no FMA contraction,
correctly rounded sqrt and division; NumPy, not torch: torch's vectorised float32 sqrt is not
correctly rounded)."""
import math

import numpy as np
import pytest
import torch

from recis_compat.ops.optim import sparse_adam_rows_

HP = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)


def _reference(p, m, v, rows, g, *, lr, beta1, beta2, eps, decay, beta1_power, beta2_power):
    """The update in NumPy scalars of p's dtype, in the kernel's operation order, in place on
    the torch tensors ``p``, ``m``, ``v``."""
    P, M, V, G, r = p.numpy(), m.numpy(), v.numpy(), g.contiguous().numpy(), rows.numpy()
    t = P.dtype.type
    alpha = t(-lr * math.sqrt(1.0 - beta2_power) / (1.0 - beta1_power))
    b1, b2, e, d = t(beta1), t(beta2), t(eps), t(decay)
    c1, c2 = t(1) - b1, t(1) - b2
    mk = b1 * M[r] + c1 * G
    vk = b2 * V[r] + c2 * G * G
    pk = P[r] * d + alpha * mk / (np.sqrt(vk) + e)
    assert mk.dtype == P.dtype and vk.dtype == P.dtype and pk.dtype == P.dtype
    M[r], V[r], P[r] = mk, vk, pk


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [1, 3, 8, 13, 16, 24, 32, 64, 100])
@pytest.mark.parametrize("threads", [1, 2])
def test_every_width_matches_the_elementwise_update_bit_for_bit(dtype, dim, threads):
    g = torch.Generator().manual_seed(dim)
    n = 3000
    p = torch.randn(n, dim, generator=g, dtype=dtype)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    ref = [x.clone() for x in (p, m, v)]
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in range(1, 4):
            rows = torch.randperm(n, generator=g)[: 500 + 300 * step]   # more rows than one parallel chunk
            grad = torch.randn(rows.numel(), dim, generator=g, dtype=dtype) * 10 ** step
            kw = dict(decay=1 - HP["lr"] * 0.01, beta1_power=HP["beta1"] ** step, beta2_power=HP["beta2"] ** step,
                      **HP)
            sparse_adam_rows_(p, m, v, rows, grad, **kw)
            _reference(*ref, rows, grad, **kw)
    finally:
        torch.set_num_threads(prev)
    for name, got, want in zip(("param", "exp_avg", "exp_avg_sq"), (p, m, v), ref):
        assert torch.equal(got, want), f"{name} differs at width {dim}"


def test_rows_of_a_narrow_view_and_a_non_contiguous_gradient():
    """The slots are whole tables (contiguous); the gradient may be any layout (it is made
    contiguous) and the rows any order: same bits as the reference."""
    g = torch.Generator().manual_seed(4)
    p = torch.randn(500, 16, generator=g)
    m, v = torch.rand(500, 16, generator=g), torch.rand(500, 16, generator=g)
    ref = [x.clone() for x in (p, m, v)]
    rows = torch.randperm(500, generator=g)[:200]
    grad = torch.randn(16, 200, generator=g).t()
    kw = dict(decay=0.999, beta1_power=0.9, beta2_power=0.999, **HP)
    sparse_adam_rows_(p, m, v, rows, grad, **kw)
    _reference(*ref, rows, grad.contiguous(), **kw)
    assert all(torch.equal(a, b) for a, b in zip((p, m, v), ref))
