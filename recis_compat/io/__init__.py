"""``recis.io``: the ORC dataset (open-source RecIS build exports ``OrcDataset`` only)."""
from recis_compat.io.orc_dataset import OrcDataset

__all__ = ["OrcDataset"]
