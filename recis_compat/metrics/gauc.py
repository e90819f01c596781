"""``recis.metrics.gauc.Gauc``: group AUC (§1.9.2), vectorised (no per-group Python loop).

Per group (a run of equal, contiguous indicators): sort by prediction ascending, accumulate
``area += (fp_k - fp_{k-1}) * (tp_k + tp_{k-1})`` and take ``auc = 1 - area / (2·clicks·nonclicks)``;
groups that are all-click or all-nonclick are excluded. GAUC = Σ auc_g·n_g / Σ n_g.

RecIS never evaluates the first and the last run of indicators of a batch (quirk Q9). That is
kept by default (``skip_edge_groups=True``) so logged values match RecIS; pass
``skip_edge_groups=False`` to evaluate every group (COMPATIBILITY.md).
"""
from __future__ import annotations

import os
from typing import Tuple

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Gauc"]


def _group_auc_sums(labels: torch.Tensor, preds: torch.Tensor, indicators: torch.Tensor,
                    skip_edge_groups: bool) -> Tuple[float, float]:
    """(Σ auc_g·n_g, Σ n_g) over the evaluated groups of one batch; inputs 1-D, float64 math."""
    n = labels.numel()
    if n == 0:
        return 0.0, 0.0
    new_run = torch.ones(n, dtype=torch.bool)
    new_run[1:] = indicators[1:] != indicators[:-1]
    run_id = torch.cumsum(new_run.to(torch.int64), 0) - 1
    num_runs = int(run_id[-1].item()) + 1
    # order by (run, prediction): stable sort by prediction, then stable sort by run
    by_pred = torch.sort(preds, stable=True).indices
    order = by_pred[torch.sort(run_id[by_pred], stable=True).indices]
    lab = labels[order].to(torch.float64)
    rid = run_id[order]
    sizes = torch.bincount(rid, minlength=num_runs).to(torch.float64)
    clicks = torch.zeros(num_runs, dtype=torch.float64).index_add_(0, rid, lab)
    nonclicks = sizes - clicks
    # cumulative clicks within each run: global cumsum minus the sum before the run starts
    csum = torch.cumsum(lab, 0)
    starts = torch.cumsum(sizes, 0) - sizes
    tp = csum - torch.cat([torch.zeros(1, dtype=torch.float64), csum])[starts.to(torch.int64)][rid]
    area_k = (1.0 - lab) * (2.0 * tp - lab)
    area = torch.zeros(num_runs, dtype=torch.float64).index_add_(0, rid, area_k)
    valid = ((clicks - sizes).abs() >= 1e-3) & ((nonclicks - sizes).abs() >= 1e-3)
    if skip_edge_groups:
        valid[0] = False
        valid[-1] = False
    if not bool(valid.any()):
        return 0.0, 0.0
    auc = 1.0 - area[valid] / (2.0 * clicks[valid] * nonclicks[valid])
    return float((auc * sizes[valid]).sum()), float(sizes[valid].sum())


class Gauc(nn.Module):
    """Group AUC; ``forward(labels, predictions, indicators) -> (batch_gauc, cumulative_gauc)``.

    labels, predictions: floating, same dtype and shape, 1-D ``[N]`` or ``[N, 2]`` (column 1 is
    used); indicators: int32/int64 ``[N]`` group ids whose groups are contiguous runs.
    """

    def __init__(self, skip_edge_groups: bool = True):
        super().__init__()
        self.skip_edge_groups = skip_edge_groups
        self.reset()

    def reset(self) -> None:
        self._auc_sum = 0.0
        self._count = 0.0

    @staticmethod
    def _column(x: torch.Tensor, what: str) -> torch.Tensor:
        if x.dim() == 2 and x.shape[1] == 2:
            return x[:, 1]
        if x.dim() != 1:
            raise ValueError(f"Gauc: {what} must be 1-D [N] or [N, 2], got shape {tuple(x.shape)}")
        return x

    def forward(self, labels: torch.Tensor, predictions: torch.Tensor,
                indicators: torch.Tensor) -> Tuple[float, float]:
        labels, predictions, indicators = (t.detach().cpu() for t in (labels, predictions, indicators))
        if not (labels.is_floating_point() and predictions.is_floating_point()):
            raise TypeError("Gauc: labels and predictions must be floating point, got "
                            f"{labels.dtype} and {predictions.dtype}")
        if labels.dtype != predictions.dtype or labels.shape != predictions.shape:
            raise ValueError("Gauc: labels and predictions must have the same dtype and shape, got "
                             f"{labels.dtype}{tuple(labels.shape)} and "
                             f"{predictions.dtype}{tuple(predictions.shape)}")
        if indicators.dim() != 1 or indicators.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"Gauc: indicators must be 1-D int32/int64, got {indicators.dtype}"
                             f"{tuple(indicators.shape)}")
        labels, predictions = self._column(labels, "labels"), self._column(predictions, "predictions")
        if indicators.numel() != labels.numel():
            raise ValueError(f"Gauc: {indicators.numel()} indicators for {labels.numel()} samples")
        auc_sum, count = _group_auc_sums(labels, predictions, indicators, self.skip_edge_groups)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and dist.is_initialized():
            t = torch.tensor([auc_sum, count], dtype=torch.float64)
            dist.all_reduce(t)
            auc_sum, count = float(t[0]), float(t[1])
        self._auc_sum += auc_sum
        self._count += count
        return auc_sum / max(count, 1.0), self._auc_sum / max(self._count, 1.0)
