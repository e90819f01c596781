"""``recis.framework``: CheckpointManager and Trainer (``TrainingArguments`` lives in
``recis.framework.trainer``, as in RecIS)."""
from recis_compat.framework.checkpoint_manager import CheckpointManager
from recis_compat.framework.trainer import Trainer

__all__ = ["CheckpointManager", "Trainer"]
