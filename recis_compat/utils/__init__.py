"""``recis.utils``: empty by contract; use the submodules ``logger``, ``data_utils``, ``parser``."""
