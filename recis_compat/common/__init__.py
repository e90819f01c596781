"""``recis.common``: internal helpers (contract §1.12). Use the submodules ``singleton``,
``common_config`` and ``crypto_utils``; nothing is re-exported here."""
