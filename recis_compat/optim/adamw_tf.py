"""``recis.optim.adamw_tf.AdamWTF``: dense AdamW with TensorFlow's decay and epsilon (§1.6.3).

Per parameter and step: ``step += 1``; ``p *= (1 - weight_decay)`` (NOT scaled by lr, as TF's
``AdamWOptimizer``); then ``m = β1 m + (1-β1) g``, ``v = β2 v + (1-β2) g²`` and
``p -= lr·sqrt(1-β2^t)/(1-β1^t) · m / (sqrt(v) + eps)`` (eps added before bias correction).
``fuse=True`` runs the update with ``torch._foreach_*`` over all parameters at once;
``fuse=False`` one parameter at a time. Both evaluate the same formula.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["AdamWTF", "adamwtf"]


def maybe_get_value(x):
    """A Python number from a number or a 0-dim tensor."""
    return x.item() if isinstance(x, Tensor) else x


class AdamWTF(Optimizer):
    def __init__(self, params, lr: Union[float, Tensor] = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, use_nesterov: bool = False, *,
                 maximize: bool = False, fuse: bool = True):
        if not 0.0 <= maybe_get_value(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        use_nesterov=use_nesterov, maximize=maximize, fuse=fuse)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamWTF does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            beta1, beta2 = group["betas"]
            adamwtf(params, grads, exp_avgs, exp_avg_sqs, steps, use_nesterov=group["use_nesterov"],
                    beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                    eps=group["eps"], maximize=group["maximize"], fuse=group["fuse"])
        return loss


def adamwtf(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
            state_steps: List[Tensor], grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
            *, use_nesterov: bool, beta1: float, beta2: float, lr: Union[float, Tensor],
            weight_decay: float, eps: float, maximize: bool, fuse: bool) -> None:
    """Functional AdamWTF over lists of parameters (see the module docstring)."""
    assert not use_nesterov, "AdamWTF: use_nesterov is not supported"
    if grad_scale is not None or found_inf is not None:
        raise RuntimeError("AdamWTF: grad_scale / found_inf are not supported")
    if not params:
        return
    fn = _fuse_tensor_adamwtf if fuse else _single_tensor_adamwtf
    fn(params, grads, exp_avgs, exp_avg_sqs, state_steps, beta1=beta1, beta2=beta2,
       lr=maybe_get_value(lr), weight_decay=weight_decay, eps=eps, maximize=maximize)


def _alpha(step: float, lr: float, beta1: float, beta2: float) -> float:
    return lr * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)


def _single_tensor_adamwtf(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, beta1, beta2, lr,
                           weight_decay, eps, maximize):
    for p, g, m, v, step in zip(params, grads, exp_avgs, exp_avg_sqs, state_steps):
        g = -g if maximize else g
        step += 1
        p.mul_(1.0 - weight_decay)
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        p.addcdiv_(m, v.sqrt().add_(eps), value=-_alpha(step.item(), lr, beta1, beta2))


def _fuse_tensor_adamwtf(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, beta1, beta2, lr,
                         weight_decay, eps, maximize):
    if maximize:
        grads = torch._foreach_neg(grads)
    torch._foreach_add_(state_steps, 1.0)
    torch._foreach_mul_(params, 1.0 - weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    alphas = [-_alpha(s.item(), lr, beta1, beta2) for s in state_steps]
    torch._foreach_addcdiv_(params, exp_avgs, denom, alphas)
