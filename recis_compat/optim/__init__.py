"""``recis.optim``: AdamWTF (dense) and the row-sparse table optimizers (§1.6)."""
from recis_compat.optim.adamw_tf import AdamWTF
from recis_compat.optim.sparse_adam import SparseAdam
from recis_compat.optim.sparse_adamw import SparseAdamW
from recis_compat.optim.sparse_adamw_tf import SparseAdamWTF

__all__ = ["AdamWTF", "SparseAdam", "SparseAdamW", "SparseAdamWTF"]
