"""recis_compat.torchrec: dynamic (hash-table) embedding collections as TorchRec modules.

``DynamicEmbeddingBagCollection`` / ``DynamicEmbeddingCollection`` (``modules.py``) take
TorchRec's ``EmbeddingBagConfig`` / ``EmbeddingConfig`` plus :class:`DynamicTableOptions`;
``distributed.py`` holds their sharders for ``DistributedModelParallel``; ``optim.py`` the fused
row-sparse optimizer; ``checkpoint.py`` DCP save/load. See docs/torchrec.md.
"""
from recis_compat.backend.row_store import StoreConfig
from recis_compat.torchrec.modules import (Constant, DynamicEmbeddingBagCollection, DynamicEmbeddingCollection,
                                           DynamicTableOptions, Normal, Uniform)

__all__ = ["DynamicEmbeddingBagCollection", "DynamicEmbeddingCollection", "DynamicTableOptions", "Uniform",
           "Normal", "Constant", "StoreConfig"]
