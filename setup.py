"""Builds nnkit's Cython kernels; every other setting lives in pyproject.toml."""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

# Each kernel module sets its Cython directives in its header; the C flags live here only.
# -fno-math-errno lets gcc vectorize sqrt loops (LRN, updaters: 3-4x). Rebuild in place
# with `pip install -e .` or `python setup.py build_ext --inplace`.
kernels = [
    Extension(
        f"nnkit._kernels.{pyx.stem}",
        [str(pyx)],
        # The C headers the kernels include: a changed header rebuilds them.
        depends=[str(h) for h in sorted(Path("nnkit/_kernels").glob("*.h"))],
        # No kernel reads the floating-point exception flags, so gcc may evaluate both arms
        # of a select (a division or a NaN comparison among them): the loops with selects
        # then vectorize (the float32 tanh kernel: 3.5 -> 0.8 ns per value, timed alone in C on
        # a Zen 3 core). Neither flag changes a computed value.
        extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"],
    )
    for pyx in sorted(Path("nnkit/_kernels").glob("*.pyx"))
]

setup(ext_modules=cythonize(kernels, language_level=3))
