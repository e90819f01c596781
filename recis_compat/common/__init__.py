"""``recis.common``: internal helpers (RecIS 1.0; see COMPATIBILITY.md). Use the submodules ``singleton``,
``common_config`` and ``crypto_utils``; nothing is re-exported here."""
