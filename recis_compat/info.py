"""``recis.info``: RecIS generates this at build time; the open-source build returns 0."""


def is_internal_enabled() -> int:
    """0: internal-only features (ODPS, Lake, MOS) are not available."""
    return 0
