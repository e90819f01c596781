"""The ``recis`` import package of recis-compat: pure aliasing onto ``recis_compat``.

Every ``recis.<path>`` module is the ``recis_compat.<path>`` module object itself.

Importing it also prepares the process for an unchanged RecIS script:

* ``recis_compat/utils/cpu_mode.py``: with ``RECIS_COMPAT_DEVICE=cpu`` the plain torch CUDA calls
  RecIS scripts make (``torch.cuda.set_device``, ``model.cuda()``, ``torch.autocast("cuda")``,
  thread counts of 0, ...) land on the CPU, with one warning listing them; without it, on a host
  without CUDA, those calls fail with an error naming the variable.
* ``recis_compat/utils/dist_timeout.py``: the script's own ``dist.init_process_group()`` gets
  ``RECIS_COMPAT_DIST_TIMEOUT`` and, on the CPU, gloo instead of nccl.
"""
from recis_compat._alias import install_alias

install_alias("recis", "recis_compat")

from recis_compat.recis_root import (  # noqa: E402
    __build_info__, __version__, get_build_info, lib_path, pkg_path)
from recis_compat.utils import cpu_mode as _cpu_mode  # noqa: E402
from recis_compat.utils import dist_timeout as _dist_timeout  # noqa: E402

_cpu_mode.maybe_install()
_dist_timeout.install()

__all__ = ["__version__", "pkg_path", "lib_path", "__build_info__", "get_build_info"]
