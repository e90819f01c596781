"""Build and install recis-compat.

Installs four packages:
  * ``recis_compat`` -- the implementation,
  * ``recis_compat.benchmarks`` -- the benchmark modules (from ``benchmarks/``),
  * ``recis`` -- the import package RecIS scripts use (from ``adapters/recis/``), pure aliasing,
  * ``column_io`` -- what RecIS's install check imports (from ``adapters/column_io/``): it says
    that recis-compat (pyarrow) provides the IO and has none of RecIS's native column_io ops.

The C++/CUDA kernels in ``csrc/`` are built into ``recis_compat/_C`` with
``torch.utils.cpp_extension``: a CppExtension always, a CUDAExtension when the installed torch
is a CUDA build and nvcc is found (``FORCE_CUDA=1`` insists, ``FORCE_CUDA=0`` refuses).
Build with ``pip install --no-build-isolation`` so the pinned torch is the one compiled against.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force == "0":
        return False
    has = torch.version.cuda is not None and shutil.which("nvcc") is not None
    if force == "1" and not has:
        raise RuntimeError("FORCE_CUDA=1 but torch is not a CUDA build or nvcc is missing")
    return has


def _extension():
    cpp = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cu = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-DRECIS_COMPAT_CPU"]
    include = [os.path.join(HERE, "csrc")]
    if _want_cuda():
        return CUDAExtension(
            "recis_compat._C",
            cpp + cu,
            include_dirs=include,
            extra_compile_args={"cxx": cxx + ["-DRECIS_COMPAT_WITH_CUDA"],
                                "nvcc": ["-O3", "-std=c++20", "-DRECIS_COMPAT_WITH_CUDA"]},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension("recis_compat._C", cpp, include_dirs=include,
                        extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


packages = [p for p in find_packages(include=["recis_compat", "recis_compat.*"])]
packages += ["recis_compat.benchmarks"]
packages += ["recis"] + ["recis." + p for p in find_packages("adapters/recis")]
packages += ["column_io"]

setup(
    name="recis-compat",
    version="0.1.0",
    description="Run RecIS recommender scripts on TorchRec + FBGEMM, CPU and GPU",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"recis_compat.benchmarks": "benchmarks", "recis": "adapters/recis",
                 "column_io": "adapters/column_io"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    install_requires=[
        "torch==2.13.0", "pyarrow", "numpy", "safetensors", "torchmetrics", "simple-parsing",
        "fsspec", "click", "tqdm", "xxhash>=3.0",
    ],
    entry_points={"console_scripts": ["recis-compat=recis_compat.cli:main"]},
    zip_safe=False,
)
