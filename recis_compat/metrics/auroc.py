"""``recis.metrics.auroc.AUROC``: TF1 ``tf.metrics.auc``-style thresholded ROC AUC (§1.9.1).

Counts true/false positives/negatives at ``num_thresholds`` fixed thresholds and integrates the
ROC curve with the trapezoidal rule. RecIS's own formula (the epsilons and threshold grid) is kept
exactly, which torchmetrics' exact AUROC does not reproduce; hence a hand-written module.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["AUROC"]


class AUROC(nn.Module):
    """Thresholded AUROC.

    Args:
        num_thresholds: number of thresholds (> 2): ``[-1e-7, 1/(n-1), ..., (n-2)/(n-1), 1+1e-7]``.
        dist_sync_on_step: all-reduce (SUM) the batch counts across ranks in :meth:`update`.

    ``tp, fp, tn, fn`` are int64 ``[num_thresholds]`` non-trainable parameters, so they appear in
    ``state_dict()`` (saved with the dense model) as in RecIS.
    """

    def __init__(self, num_thresholds: int = 200, dist_sync_on_step: bool = False):
        super().__init__()
        assert num_thresholds > 2, "num_thresholds must be > 2"
        self.num_thresholds = num_thresholds
        self.dist_sync_on_step = dist_sync_on_step
        eps = 1e-7
        inner = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
        self.thresholds = torch.tensor([0.0 - eps] + inner + [1.0 + eps], dtype=torch.float32)
        for name in ("tp", "fp", "tn", "fn"):
            setattr(self, name, nn.Parameter(torch.zeros(num_thresholds, dtype=torch.long),
                                             requires_grad=False))

    def _confusion_matrix_at_thresholds(self, predictions: torch.Tensor, labels: torch.Tensor):
        """(tp, fp, tn, fn) int64 ``[num_thresholds]`` for one batch.

        predictions: probabilities in [0, 1] (any shape); labels: any shape, non-zero = positive.
        """
        preds = predictions.detach().reshape(-1).to(torch.float32)
        if preds.numel() and not bool(((preds >= 0) & (preds <= 1)).all()):
            raise ValueError("AUROC: predictions must be probabilities in [0, 1] "
                             "(apply a sigmoid to logits first)")
        lab = labels.detach().reshape(-1).to(torch.bool)
        if lab.numel() != preds.numel():
            raise ValueError(f"AUROC: {preds.numel()} predictions but {lab.numel()} labels")
        thr = self.thresholds.to(preds.device)
        # pred > t  <=>  t < pred: count thresholds below each prediction with one sort
        above = torch.searchsorted(thr, preds, right=False)   # number of thresholds < pred
        pos_hist = torch.bincount(above[lab], minlength=self.num_thresholds + 1)
        neg_hist = torch.bincount(above[~lab], minlength=self.num_thresholds + 1)
        # prediction counted positive at threshold i iff above > i
        pos_gt = pos_hist.flip(0).cumsum(0).flip(0)[1:]
        neg_gt = neg_hist.flip(0).cumsum(0).flip(0)[1:]
        n_pos, n_neg = lab.sum(), (~lab).sum()
        tp, fp = pos_gt, neg_gt
        return tp, fp, n_neg - fp, n_pos - tp

    @staticmethod
    def _compute_auroc(tp, fp, tn, fn) -> torch.Tensor:
        tp, fp, tn, fn = (x.to(torch.float64) for x in (tp, fp, tn, fn))
        eps = 1e-6
        tpr = (tp + eps) / (tp + fn + eps)
        fpr = fp / (fp + tn + eps)
        auc = ((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2.0).sum()
        return auc.to(torch.float32)

    def forward(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """AUC of this batch only (nothing accumulated); 0-dim float32."""
        return self._compute_auroc(*self._confusion_matrix_at_thresholds(predictions, labels))

    def sync(self, tp, fp, tn, fn):
        """All-reduce (SUM) the counts across ranks when a process group is initialised."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            stacked = torch.stack([tp, fp, tn, fn])
            dist.all_reduce(stacked)
            tp, fp, tn, fn = stacked.unbind(0)
        return tp, fp, tn, fn

    @torch.no_grad()
    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate this batch's counts (all-reduced first with ``dist_sync_on_step``)."""
        counts = self._confusion_matrix_at_thresholds(predictions, labels)
        if self.dist_sync_on_step:
            counts = self.sync(*counts)
        for name, c in zip(("tp", "fp", "tn", "fn"), counts):
            p = getattr(self, name)
            p.add_(c.to(p.device))

    def compute(self) -> torch.Tensor:
        """AUC over everything accumulated since construction or :meth:`reset`."""
        return self._compute_auroc(self.tp, self.fp, self.tn, self.fn)

    @torch.no_grad()
    def reset(self) -> None:
        for name in ("tp", "fp", "tn", "fn"):
            getattr(self, name).zero_()
