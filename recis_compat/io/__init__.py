"""``recis.io``: the ORC dataset (the open-source RecIS build exports ``OrcDataset`` only) and
our Parquet dataset with the same API."""
from recis_compat.io.orc_dataset import OrcDataset
from recis_compat.io.parquet_dataset import ParquetDataset

__all__ = ["OrcDataset", "ParquetDataset"]
