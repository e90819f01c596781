"""``recis.framework``: CheckpointManager, Trainer and TrainingArguments (RecIS keeps
``TrainingArguments`` only in ``recis.framework.trainer``; its Trainer docstring imports it from
here, so both work: COMPATIBILITY.md)."""
from recis_compat.framework.checkpoint_manager import CheckpointManager
from recis_compat.framework.trainer import Trainer, TrainingArguments

__all__ = ["CheckpointManager", "Trainer", "TrainingArguments"]
