"""Build the Cython kernels in quantcore/_ext, with OpenMP when the compiler supports it.

setuptools drives everything else from pyproject.toml; this file exists only because extension
modules with a compile-time feature probe (OpenMP) still need code.
"""

import os
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = ["rolling", "cross_section"]


def _compiler_supports_openmp(compiler) -> bool:
    """Try to compile and link a tiny OpenMP program; False means build without `prange` threads."""
    if os.environ.get("RDQUANT_NO_OPENMP"):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp_probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objs, os.path.join(tmp, "omp_probe"), extra_postargs=["-fopenmp"])
        except Exception:  # any compile/link failure means "no OpenMP here"
            return False
    return True


class BuildExtWithOpenMP(build_ext):
    def build_extensions(self):
        use_omp = sys.platform != "win32" and _compiler_supports_openmp(self.compiler)
        for ext in self.extensions:
            if use_omp:
                ext.extra_compile_args += ["-fopenmp"]
                ext.extra_link_args += ["-fopenmp"]
        print(f"rdquant: building kernels {'with' if use_omp else 'without'} OpenMP")
        super().build_extensions()


extensions = [
    Extension(
        f"quantcore._ext.{name}",
        [f"quantcore/_ext/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # no fused multiply-adds even under -march=native CFLAGS: the four-row AVX2 kernels and the
        # scalar ones must round every step alike (their results are equal bit for bit)
        extra_compile_args=["-O3", "-ffp-contract=off"],
    )
    for name in KERNELS
]

setup(
    ext_modules=cythonize(
        extensions, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True}
    ),
    cmdclass={"build_ext": BuildExtWithOpenMP},
)
