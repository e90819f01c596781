"""``recis.optim.sparse_adamw_tf.SparseAdamWTF``: row-sparse Adam for dynamic tables (RecIS 1.0; see COMPATIBILITY.md).

Decay factor per touched row: ``1.0 - self.weight_decay`` (TF-style decoupled weight decay, **not** scaled by the learning rate (TF AdamWOptimizer)). Update, per table with gradients::

    b1p *= beta1; b2p *= beta2                         (per table, only on steps with gradients)
    theta *= D; m = beta1 m + (1-beta1) g; v = beta2 v + (1-beta2) g^2
    theta += -lr * sqrt(1-b2p) / (1-b1p) * m / (sqrt(v) + eps)

Slots: ``sparse_adamw_tf_exp_avg``, ``sparse_adamw_tf_exp_avg_sq``; state-dict keys ``sparse_adamw_tf_step``,
``sparse_adamw_tf_beta1``, ``sparse_adamw_tf_beta2`` (see ``sparse_optim``).
"""
from __future__ import annotations

import torch

from recis_compat.optim.sparse_optim import SparseAdamFamily

__all__ = ["SparseAdamWTF"]


class SparseAdamWTF(SparseAdamFamily):
    """Args:
        param_dict: ``filter_out_sparse_param(model)``.
        lr, beta1, beta2, eps, weight_decay: as in torch's Adam family (validated).
        use_nesterov: not supported (``True`` raises ValueError, as in RecIS).
    """

    prefix = "sparse_adamw_tf_"
    power_dtype = torch.float32

    def __init__(self, param_dict: dict, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 1e-2, use_nesterov: bool = False):
        if use_nesterov:
            raise ValueError("SparseAdamWTF: use_nesterov is not support now")
        super().__init__(param_dict, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)

    def decay_factor(self, lr: float) -> float:
        return 1.0 - self.weight_decay
