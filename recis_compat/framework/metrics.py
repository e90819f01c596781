"""``recis.framework.metrics``: a process-wide dict of named metric values (§1.7.5).

The Trainer merges it into the metrics passed to hooks on every step. Values persist until
overwritten; nothing clears them.
"""
from typing import Any, Dict

GLOBAL_METRICS: Dict[str, Any] = {}


def add_metric(name: str, metric: Any) -> None:
    """Store ``metric`` (typically a 0-dim tensor such as an AUC) under ``name``."""
    GLOBAL_METRICS[name] = metric


def get_global_metrics() -> Dict[str, Any]:
    """The live dict itself (not a copy), as in RecIS."""
    return GLOBAL_METRICS
