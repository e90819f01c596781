"""``recis.metrics``. RecIS's ``__init__`` is empty; the documented ``AUROC`` and ``GAUC`` names
(``from recis.metrics import AUROC, GAUC``) are provided as aliases (COMPATIBILITY.md)."""
from recis_compat.metrics.auroc import AUROC
from recis_compat.metrics.gauc import Gauc

GAUC = Gauc

__all__ = ["AUROC", "GAUC", "Gauc"]
