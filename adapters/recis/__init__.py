"""The ``recis`` import package of recis-compat: pure aliasing onto ``recis_compat``.

Every ``recis.<path>`` module is the ``recis_compat.<path>`` module object itself.
"""
from recis_compat._alias import install_alias

install_alias("recis", "recis_compat")

from recis_compat.recis_root import (  # noqa: E402
    __build_info__, __version__, get_build_info, lib_path, pkg_path)

__all__ = ["__version__", "pkg_path", "lib_path", "__build_info__", "get_build_info"]
