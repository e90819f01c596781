"""``recis.optim.sparse_adam.SparseAdam``: row-sparse Adam for dynamic tables (RecIS 1.0; see COMPATIBILITY.md).

Decay factor per touched row: ``1.0`` (no weight decay: RecIS ignores ``weight_decay`` (Q18, kept); beta powers are float64). Update, per table with gradients::

    b1p *= beta1; b2p *= beta2                         (per table, only on steps with gradients)
    theta *= D; m = beta1 m + (1-beta1) g; v = beta2 v + (1-beta2) g^2
    theta += -lr * sqrt(1-b2p) / (1-b1p) * m / (sqrt(v) + eps)

Slots: ``sparse_adam_exp_avg``, ``sparse_adam_exp_avg_sq``; state-dict keys ``sparse_adam_step``,
``sparse_adam_beta1``, ``sparse_adam_beta2`` (see ``sparse_optim``).
"""
from __future__ import annotations

import torch

from recis_compat.optim.sparse_optim import SparseAdamFamily

__all__ = ["SparseAdam"]


class SparseAdam(SparseAdamFamily):
    """Args:
        param_dict: ``filter_out_sparse_param(model)``.
        lr, beta1, beta2, eps, weight_decay: as in torch's Adam family (validated).
        amsgrad: not supported (``True`` raises ValueError, as in RecIS).
    """

    prefix = "sparse_adam_"
    power_dtype = torch.float64

    def __init__(self, param_dict: dict, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False):
        if amsgrad:
            raise ValueError("SparseAdam: amsgrad is not support now")
        super().__init__(param_dict, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)

    def decay_factor(self, lr: float) -> float:
        return 1.0
