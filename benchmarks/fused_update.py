"""Does fusing the MLP's weight-gradient GEMM with its SGD-momentum update pay? (issue #14)

    PYTHONPATH=. python benchmarks/fused_update.py [--rounds 15] [--threads 1]

The MNIST MLP's dense layers (11.97M weights, batch 64), the weight-gradient product and
the momentum update ``v = mu*v + lr*(g + wd*w); w -= v`` of every layer, four ways:

* ``unfused``: nnkit today: ``g = dy.T @ x`` (numpy matmul) into the gradient array, then
  the fused update kernel (``nnkit/_kernels/update.pyx``): the gradient is written out and
  read back; six passes over 48 MB (g written; w, g, v read; w, v written).
* ``blocked``: the same two calls per block of rows small enough for the cache (numpy and
  the existing kernel): the block's gradient is written and read in the cache, so w and v
  are the only passes over memory (four).
* ``beta``: BLAS's beta, what SciPy's ``cython_blas`` would give: ``sgemm`` with
  ``C = v``, ``alpha = lr``, ``beta = mu`` accumulates the product straight into the
  momentum, then one pass adds the decay and applies ``v`` (the update kernel with ``g = v``,
  ``lr = 1``, ``mu = 0``, ``wd = lr*wd``). Called here through numpy's own OpenBLAS
  (``scipy_cblas_sgemm64_``, the ILP64 CBLAS symbol numpy's wheel exports) with ctypes:
  the same library SciPy's wheel would bring a second copy of.
* ``beta blocked``: the same per block of rows.

Each round times every variant once (in a rotated order) and the table gives the median
ms and the median over rounds of each variant's time over ``unfused``'s. BLAS runs on
``--threads`` threads (threadpoolctl); the update kernel on one.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from nnkit._kernels import update as kernel

WIDTHS = (784, 2500, 2000, 1500, 1000, 500, 10)
BATCH, LR, WD, MU = 64, 0.001, 0.004, 0.9
#: Bytes of w, v and the gradient of one block of rows: well inside the 2 MB L2.
BLOCK_BYTES = 1 << 20
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def numpy_sgemm() -> ctypes._CFuncPtr:
    """numpy's OpenBLAS ``cblas_sgemm`` (ILP64, symbol prefix ``scipy_``), found by threadpoolctl."""
    blas = [lib for lib in threadpool_info() if lib["internal_api"] == "openblas"]
    lib = ctypes.CDLL(blas[0]["filepath"])
    fn = lib.scipy_cblas_sgemm64_
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, f32, ptr, i64,
                   ptr, i64, f32, ptr, i64]
    fn.restype = None
    return fn


class Layer:
    """One dense layer's arrays: x (B, K), dy (B, N), w, v, g (N, K)."""

    def __init__(self, k: int, n: int, rng: np.random.Generator) -> None:
        self.x = rng.random((BATCH, k), dtype=np.float32)
        self.dy = rng.standard_normal((BATCH, n), dtype=np.float32) * 1e-3
        self.w = rng.uniform(-0.05, 0.05, (n, k)).astype(np.float32)
        self.v = np.zeros_like(self.w)
        self.g = np.empty_like(self.w)
        rows = max(1, BLOCK_BYTES // (3 * 4 * k))
        self.blocks = [(lo, min(n, lo + rows)) for lo in range(0, n, rows)]
        self.scratch = np.empty((rows, k), np.float32)


def unfused(layers: list[Layer], sgemm) -> None:
    for L in layers:
        np.matmul(L.dy.T, L.x, out=L.g)
        kernel.sgd_momentum(L.w.reshape(-1), L.g.reshape(-1), L.v.reshape(-1), LR, WD, MU)


def blocked(layers: list[Layer], sgemm) -> None:
    for L in layers:
        for lo, hi in L.blocks:
            g = L.scratch[:hi - lo]
            np.matmul(L.dy[:, lo:hi].T, L.x, out=g)
            kernel.sgd_momentum(L.w[lo:hi].reshape(-1), g.reshape(-1), L.v[lo:hi].reshape(-1),
                                LR, WD, MU)


def _beta_rows(L: Layer, sgemm, lo: int, hi: int) -> None:
    n, k = L.w.shape
    # v[lo:hi] = lr * dy[:, lo:hi].T @ x + mu * v[lo:hi]  (row-major, dy's row stride n)
    sgemm(ROW_MAJOR, TRANS, NO_TRANS, hi - lo, k, BATCH, LR, L.dy.ctypes.data + 4 * lo, n,
          L.x.ctypes.data, k, MU, L.v.ctypes.data + 4 * lo * k, k)
    v = L.v[lo:hi].reshape(-1)
    # v += lr*wd*w; w -= v: the update kernel with g = v, lr = 1, mu = 0.
    kernel.sgd_momentum(L.w[lo:hi].reshape(-1), v, v, 1.0, LR * WD, 0.0)


def beta(layers: list[Layer], sgemm) -> None:
    for L in layers:
        _beta_rows(L, sgemm, 0, L.w.shape[0])


def beta_blocked(layers: list[Layer], sgemm) -> None:
    for L in layers:
        for lo, hi in L.blocks:
            _beta_rows(L, sgemm, lo, hi)


VARIANTS = {"unfused": unfused, "blocked": blocked, "beta": beta, "beta blocked": beta_blocked}


def check(sgemm) -> None:
    """Every variant computes the same w and v (float32 rounding apart)."""
    results = {}
    for name, fn in VARIANTS.items():
        layers = [Layer(k, n, np.random.default_rng(0)) for k, n in zip(WIDTHS[:2], WIDTHS[1:3])]
        for _ in range(2):
            fn(layers, sgemm)
        results[name] = [(L.w.copy(), L.v.copy()) for L in layers]
    for name, arrays in results.items():
        for (w, v), (w0, v0) in zip(arrays, results["unfused"]):
            np.testing.assert_allclose(v, v0, rtol=1e-4, atol=1e-7, err_msg=name)
            np.testing.assert_allclose(w, w0, rtol=1e-5, atol=1e-7, err_msg=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads")
    args = parser.parse_args()
    for lib in threadpool_info():
        print(f"thread pool: {lib['user_api']}/{lib['internal_api']} {lib['prefix']} "
              f"{lib.get('version')} {lib['num_threads']} threads: {lib['filepath']}")
    sgemm = numpy_sgemm()
    check(sgemm)
    rng = np.random.default_rng(0)
    layers = [Layer(k, n, rng) for k, n in zip(WIDTHS[:-1], WIDTHS[1:])]
    print(f"{sum(L.w.size for L in layers) / 1e6:.2f}M weights, batch {BATCH}")
    names = list(VARIANTS)
    times: dict[str, list[float]] = {n: [] for n in names}
    with threadpool_limits(args.threads, user_api="blas"):
        for name in names:  # warm-up: pages touched, BLAS threads started
            VARIANTS[name](layers, sgemm)
        for r in range(args.rounds):
            for name in names[r % 4:] + names[:r % 4]:
                start = time.perf_counter()
                VARIANTS[name](layers, sgemm)
                times[name].append((time.perf_counter() - start) * 1000)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.rounds} rounds, BLAS on {args.threads} thread(s), load average {load}")
    print("| variant | median ms | over unfused (median of rounds) |")
    print("|---|---|---|")
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(times[name], times["unfused"]))
        print(f"| {name} | {statistics.median(times[name]):.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
