"""Training an EmbeddingEngine for a few steps and keeping what it produced: the harness of the
bit-equality tests that compare an engine's lookup paths (tests/unit/test_dlrm_speed_*.py)."""
import torch

from recis.nn.modules.hashtable import HashtableRegister, filter_out_sparse_param


def train_engine(make_engine, make_opt, batch, steps):
    """``steps`` training steps of ``make_engine()`` with ``make_opt(sparse params)`` on
    ``batch(step)`` under a loss of fixed random weights; returns (per-step outputs, per table
    ``(ids, embedding)``). Seeds and the table registry are reset first, so two calls with
    engines that compute alike return equal tensors."""
    HashtableRegister().clear()
    torch.manual_seed(0)          # initializers without a generator draw from the global one
    eng = make_engine()
    eng.train()
    opt = make_opt(filter_out_sparse_param(eng))
    coef = torch.Generator().manual_seed(5)
    outs = []
    for step in range(steps):
        out = eng(batch(step))
        loss = sum((v.float() * torch.randn(v.shape, generator=coef)).sum()
                   for k, v in out.items() if k != "label")
        loss.backward()
        opt.step()
        opt.zero_grad()
        outs.append({k: v.detach().clone() for k, v in out.items()})
    tables = {name: (impl.ids_map()[0].clone(), impl.embedding.clone())
              for name, impl in filter_out_sparse_param(eng).items()}
    return outs, tables
