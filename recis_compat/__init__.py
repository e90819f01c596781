"""recis-compat: RecIS's API on TorchRec + FBGEMM.

The module tree mirrors RecIS's ``recis/`` so that the ``recis`` import package can alias it
one to one. Importing this package stays light: the C++ extension loads with ``recis_compat.ops``.
"""
from recis_compat.version import RECIS_API_VERSION, __version__

__all__ = ["__version__", "RECIS_API_VERSION"]
