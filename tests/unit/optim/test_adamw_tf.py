"""Dense AdamWTF: the formula by hand, fuse on/off agreement, errors."""
import math

import pytest
import torch

from recis.optim.adamw_tf import AdamWTF


def run(fuse, steps=4, maximize=False, wd=0.01):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 1)).double()
    opt = AdamWTF(model.parameters(), lr=0.05, weight_decay=wd, fuse=fuse, maximize=maximize)
    x = torch.randn(16, 5, dtype=torch.float64)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("maximize", [False, True])
def test_fuse_and_unfused_agree(maximize):
    for a, b in zip(run(True, maximize=maximize), run(False, maximize=maximize)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_formula_by_hand():
    p = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = AdamWTF([p], lr=0.1, betas=(0.9, 0.99), eps=1e-3, weight_decay=0.1)
    theta, m, v = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.0, 0.0
    for t in range(1, 4):
        g = torch.tensor([0.5, 0.25], dtype=torch.float64) * t
        p.grad = g.clone()
        opt.step()
        theta = theta * (1 - 0.1)
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        theta = theta - 0.1 * math.sqrt(1 - 0.99 ** t) / (1 - 0.9 ** t) * m / (v.sqrt() + 1e-3)
        torch.testing.assert_close(p.detach(), theta)


def test_errors():
    p = [torch.nn.Parameter(torch.zeros(2))]
    for kw in (dict(lr=-1), dict(eps=-1), dict(betas=(1.0, 0.9)), dict(betas=(0.9, -0.1)), dict(weight_decay=-1)):
        with pytest.raises(ValueError):
            AdamWTF(p, **kw)
    opt = AdamWTF(p, use_nesterov=True)
    p[0].grad = torch.ones(2)
    with pytest.raises(AssertionError):
        opt.step()
    sp = torch.nn.Parameter(torch.zeros(3, 2))
    sp.grad = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 2), (3, 2))
    with pytest.raises(RuntimeError, match="sparse"):
        AdamWTF([sp]).step()
