"""Builds nnkit's Cython kernels; every other setting lives in pyproject.toml."""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

# Each kernel module sets its own Cython directives in its header, so a plain
# `cythonize -i nnkit/_kernels/x.pyx` during development compiles it the same way.
kernels = [
    Extension(
        f"nnkit._kernels.{pyx.stem}",
        [str(pyx)],
        extra_compile_args=["-O3", "-fno-math-errno"],
    )
    for pyx in sorted(Path("nnkit/_kernels").glob("*.pyx"))
]

setup(ext_modules=cythonize(kernels, language_level=3))
