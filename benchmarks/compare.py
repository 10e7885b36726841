"""nnkit against PyTorch (CPU), side by side: each measurement in its own process, alternating.

    python benchmarks/compare.py                       # every case, 3 pairs, writes RESULTS.md
    python benchmarks/compare.py --cases mlp_train --pairs 5 --no-write
    python benchmarks/compare.py --baseline ../old --no-torch --no-write   # this tree vs another

``--baseline DIR`` adds a third process per pair: nnkit imported from DIR (another checkout,
e.g. an older commit in a git worktree, with its kernels built in place), and a column of
this tree's time over the baseline's: a structural change must not cost speed.

For every case the frameworks run the same network on the same batch shape, float32,
with the same number of threads (``--threads``, given to every thread pool: OpenMP, MKL,
OpenBLAS, nnkit's, and ``torch.set_num_threads``), one fresh process each, in the order
nnkit, PyTorch NCHW, PyTorch channels_last (CNN cases), onnxruntime (inference cases),
GEMMs alone, repeated ``--pairs`` times. Each process builds the network, warms up, then
times at least ``--iters`` steps (and at least ``--min-seconds``) and reports its median
ms per step. A training step is forward, softmax cross-entropy loss, backward and an
SGD-momentum update (weight decay 0.004): in nnkit ``Sequential.train_on_batch``, what
``fit`` runs per batch, its non-finite checks included; an inference step is the forward
pass in evaluation mode, without the loss (nnkit: the per-layer ``ComputeFeature`` calls).

PyTorch runs as fast as eager PyTorch goes on the CPU (``TorchSettings``): the fused CPU
SGD (``fused=True``; on the CPU ``foreach`` is off by default and ``foreach=True`` runs
the per-tensor ops one by one), ``zero_grad(set_to_none=True)`` (with ``False`` every
gradient is zeroed and then accumulated into: two more passes over the 48 MB of MLP
weights), inference under ``torch.inference_mode()``, the batch a tensor made before the
timing. The CNN cases run both NCHW and ``torch.channels_last`` (model and input): the
faster of the two is the reference (marked ``*``; each pair's ratio takes the faster
layout of that pair). ``benchmarks/torch_paths.py`` times each setting against the others.
onnxruntime runs nnkit's own network exported with ``nnkit/onnx_export.py`` (all graph
optimizations, ``intra_op_num_threads`` = ``--threads``): shown, not a target.

"GEMMs alone" is one process per pair running only the step's matrix products
(``Layer.gemm_products``: the dense and im2col formulation at each layer's shapes, one
product each over the whole batch; forward, and when training the weight gradient and the
input gradient except for the first layer) with numpy's matmul on ``--threads`` BLAS
threads, each product in the faster of its two layouts (``C`` or ``C.T``, chosen by timing
both in that process), whatever algorithm nnkit itself runs: the bound this machine's BLAS
allows. Its
column "nnkit / GEMMs alone" is the median of the per-pair ratios of the step time over it.

numpy's OpenBLAS chooses its kernels for the CPU when it loads, unless the environment
names them (``OPENBLAS_CORETYPE``; some machines set it, with ``OPENBLAS_L2_SIZE``, for older
OpenBLAS builds that misbehave on their CPU). Every process of a run inherits the same
environment; PyTorch brings its own kernels (MKL, oneDNN) and ignores the variables. The
header of the results names the kernels numpy ran and the variables that were set; to
measure OpenBLAS's own choice, unset both for the command alone
(``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/compare.py``).

The table gives, per case:

* the median over pairs of each process's ms/step, and images/s from it;
* "GEMM %": the matrix-product work of one step (convolutions and dense layers, counted
  the same for both frameworks: forward, plus weight and input gradients when training,
  no input gradient for the first layer) divided by the step time, as a fraction of the
  float32 GEMM peak measured on this machine (numpy/OpenBLAS, 2048^3, the same thread
  count: the best of all the GEMM checks of the run);
* peak memory: how much the process's peak resident set grew while building the network
  and running its steps (``VmHWM`` reset through ``/proc/self/clear_refs`` after the
  imports, minus the resident set at that moment). It counts parameters, activations,
  gradients, scratch and whatever the allocators keep, and leaves out the interpreter and
  the libraries, whose sizes say nothing about the framework's use of memory; the memory
  ratio is nnkit's over the reference layout's;
* the ratio nnkit / the faster PyTorch: the median of the per-pair ratios (lower is
  better for nnkit), against issue #14's target.

Around every case a quick GEMM check (a separate process) measures the machine's float32
GEMM speed before and after; a case whose check falls below ``--slow-threshold`` of the
peak (the best check so far, three at startup) was measured while something else ran and
is rerun (``--retries`` times, ``--retry-wait`` seconds later), and flagged "slow" in the
table if it still is.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MLP_WIDTHS = (784, 2500, 2000, 1500, 1000, 500, 10)
ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().with_name("RESULTS.md")


@dataclass(frozen=True)
class Case:
    """One benchmark case: a network, a batch size, training or inference, and its targets."""

    network: str            # "mlp" or "cnn"
    batch: int
    train: bool
    target: float           # the bound on the time ratio nnkit / the faster PyTorch
    memory_target: float | None = None  # bound on the peak-memory ratio, if any
    gemm_target: float | None = None    # bound on nnkit's step time over its GEMMs alone


# Round 2's targets (issue #14). The step-over-GEMMs bound is the issue's "MLP train / CNN
# train"; at batch 1 the GEMMs are a few microseconds and no such bound is set.
CASES = {
    "mlp_train": Case("mlp", 64, True, 0.70, gemm_target=1.25),
    "mlp_infer": Case("mlp", 64, False, 0.85),
    "cnn_train_100": Case("cnn", 100, True, 0.80, memory_target=0.6, gemm_target=1.50),
    "cnn_infer_100": Case("cnn", 100, False, 0.60),
    "cnn_train_256": Case("cnn", 256, True, 0.80, gemm_target=1.50),
    "cnn_infer_256": Case("cnn", 256, False, 0.60),
    "cnn_train_1": Case("cnn", 1, True, 0.60),
}
#: images/s at batch 256 must be at least this fraction of images/s at batch 100.
SCALING_TARGET = 0.9


# ---------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_memory() -> int:
    """Resets the peak resident set to the current one (Linux >= 4.0); returns it in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


# ---------------------------------------------------------------------------- nnkit side
def batch_input(network: str, batch: int) -> np.ndarray:
    """The benchmark's input batch (seed 0): MNIST-like rows or CIFAR-like images."""
    rng = np.random.default_rng(0)
    if network == "mlp":
        return rng.random((batch, 784), dtype=np.float32)
    return rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)


def nnkit_network(network: str, batch: int) -> tuple[list, np.ndarray]:
    """The examples' network (input layer first, seed 0) and the benchmark's input batch."""
    import nnkit

    # The examples define the networks; the benchmark times exactly those, from the checkout
    # whose nnkit this process imports (this tree's, or --baseline's).
    sys.path.insert(0, str(Path(nnkit.__file__).resolve().parents[1] / "examples"))
    if network == "mlp":
        from train_mnist import build_mlp
        return build_mlp(seed=0), batch_input(network, batch)
    from train_cifar10 import build_cnn
    return build_cnn(seed=0), batch_input(network, batch)


def nnkit_step(network: str, batch: int, train: bool):
    """Builds the network in nnkit; returns (a function running one step, its GEMM flops)."""
    from nnkit import SGD, Convolution2D, Dense, Sequential

    nn, x = nnkit_network(network, batch)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, batch)
    for layer in nn:
        layer.train(train)
    if train:
        # What fit runs per batch, its non-finite checks included; in it the dense layers'
        # weight gradients fuse into the update and the input gradients share two buffers.
        model = Sequential(nn)
        model.compile(SGD(lr=0.001, momentum=0.9, decay=0.004), "softmaxloss", [])

        def step():
            model.train_on_batch(x, y)
    else:
        def step():
            nn[0].Feed(x)
            for h in range(1, len(nn)):
                nn[h].ComputeFeature(nn[h - 1])

    step()  # builds the layers, so their shapes are known
    flops = 0
    for h, layer in enumerate(nn):
        if isinstance(layer, (Convolution2D, Dense)):
            w = layer.params[0].data
            forward = 2 * layer.data.size * (w.size // w.shape[0])  # outputs x fan-in MACs
            # Training adds the weight gradient, and the input gradient except for the
            # first layer (its source, the input, takes none).
            flops += forward * ((3 if h > 1 else 2) if train else 1)
    return step, flops


# ---------------------------------------------------------------------------- PyTorch side
@dataclass(frozen=True)
class TorchSettings:
    """How the PyTorch side runs: by default as fast as eager PyTorch goes on this CPU.

    The defaults are what a user who knows PyTorch writes; ``benchmarks/torch_paths.py``
    times the alternatives (round 1's settings among them) against them.
    """

    optimizer: str = "fused"      # SGD implementation: "fused", "foreach" or "default"
    set_to_none: bool = True      # zero_grad(set_to_none=...): False zeroes and accumulates
    inference_mode: bool = True   # inference under torch.inference_mode(), else no_grad()
    channels_last: bool = False   # CNN: model and input in torch.channels_last
    convert_input: bool = False   # the batch made from numpy (a copy) inside the timed step


def torch_model(network: str):
    """The network of the examples in PyTorch, its initial weights drawn from seed 0."""
    import torch
    from torch import nn as tnn

    torch.manual_seed(0)

    class STanh(tnn.Module):
        def forward(self, x):
            return 1.7159 * torch.tanh(x * (2.0 / 3.0))

    if network == "mlp":
        layers = []
        for a, b in zip(MLP_WIDTHS[:-2], MLP_WIDTHS[1:-1]):
            layers += [tnn.Linear(a, b), STanh()]
        return tnn.Sequential(*layers, tnn.Linear(MLP_WIDTHS[-2], MLP_WIDTHS[-1]))
    lrn = dict(size=3, alpha=0.00005, beta=0.75)
    return tnn.Sequential(
        tnn.Conv2d(3, 32, 5, 1, 2), tnn.MaxPool2d(3, 2, ceil_mode=True), tnn.ReLU(),
        tnn.LocalResponseNorm(**lrn),
        tnn.Conv2d(32, 32, 5, 1, 2), tnn.ReLU(), tnn.AvgPool2d(3, 2, ceil_mode=True),
        tnn.LocalResponseNorm(**lrn),
        tnn.Conv2d(32, 64, 5, 1, 2), tnn.ReLU(), tnn.AvgPool2d(3, 2, ceil_mode=True),
        tnn.Flatten(), tnn.Linear(64 * 4 * 4, 10))


def torch_step(network: str, batch: int, train: bool, settings: TorchSettings = TorchSettings()):
    """Builds the same network in PyTorch; returns a function running one step."""
    import torch
    from torch import nn as tnn

    model = torch_model(network)
    x_np = batch_input(network, batch)
    x = torch.from_numpy(x_np)
    fmt = torch.channels_last if settings.channels_last and network == "cnn" else None
    if fmt is not None:
        model = model.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    kind = {"fused": dict(fused=True), "foreach": dict(foreach=True),
            "default": {}}[settings.optimizer]  # default: the single-tensor loop on CPU
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.004, **kind)
    loss_fn = tnn.CrossEntropyLoss()
    model.train(train)
    no_grad = torch.inference_mode if settings.inference_mode else torch.no_grad

    def inputs():
        if not settings.convert_input:
            return x
        t = torch.tensor(x_np)  # a copy, as a loader handing numpy batches makes
        return t if fmt is None else t.contiguous(memory_format=fmt)

    def step():
        if train:
            opt.zero_grad(set_to_none=settings.set_to_none)
            loss_fn(model(inputs()), y).backward()
            opt.step()
        else:
            with no_grad():
                model(inputs())
    return step


# ---------------------------------------------------------------------------- ONNX side
def onnx_step(network: str, batch: int, threads: int):
    """The nnkit network exported to ONNX (nnkit/onnx_export.py), run by onnxruntime."""
    import onnxruntime as ort

    from nnkit import onnx_export

    nn, x = nnkit_network(network, batch)
    for layer in nn:
        layer.train(False)
    nn[0].Feed(x)
    for h in range(1, len(nn)):  # builds the layers
        nn[h].ComputeFeature(nn[h - 1])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx_export.to_model(nn).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    # The graph takes what predict takes: images (batch, C, H, W) or rows, whichever it says.
    feed = {graph_input.name: x.reshape(batch, *graph_input.shape[1:])}

    def step():
        session.run(None, feed)
    return step


# ---------------------------------------------------------------------------- GEMMs alone
def gemm_products(network: str, batch: int, train: bool) -> list:
    """The step's matrix products (``Layer.gemm_products``: dense and im2col formulation).

    Forward, and when training the weight gradient and the input gradient (except for the
    first layer, whose source is the input), at the shapes of the network's layers.
    """
    nn, x = nnkit_network(network, batch)
    nn[0].Feed(x)
    for h in range(1, len(nn)):  # builds the layers: their shapes are known after this
        nn[h].ComputeFeature(nn[h - 1])
    return [prod for layer in nn for prod in layer.gemm_products()
            if train or prod.phase == "forward"]


def gemms_step(network: str, batch: int, train: bool):
    """A function running the step's GEMMs alone (``gemm_products``) with numpy's matmul.

    Each product runs in the faster of its two layouts (``fastest_layout``, timed once here).
    """
    from nnkit.layers.base import fastest_layout

    rng = np.random.default_rng(0)
    calls = [fastest_layout(prod, rng)[1] for prod in gemm_products(network, batch, train)]

    def step():
        for a, b, out in calls:
            np.matmul(a, b, out=out)
    return step


# ---------------------------------------------------------------------------- workers
def gemm_gflops(n: int = 2048, reps: int = 3) -> float:
    """The best of ``reps`` float32 (n, n) @ (n, n) products, in GFLOP/s."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    c = np.empty_like(a)
    np.matmul(a, a, out=c)  # warms up the thread pool
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        np.matmul(a, a, out=c)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


#: The processes a pair runs, in order: nnkit, PyTorch in both layouts, onnxruntime, GEMMs.
KINDS = ("nnkit", "baseline", "torch", "torch_cl", "ort", "gemms")
LABELS = {"nnkit": "nnkit", "baseline": "baseline", "torch": "PyTorch NCHW",
          "torch_cl": "PyTorch channels_last", "ort": "onnxruntime (nnkit's ONNX export)",
          "gemms": "GEMMs alone"}


def kinds_for(case: Case, frameworks: list[str]) -> list[str]:
    """The processes of one pair of ``case``: channels_last for CNNs, onnxruntime for inference."""
    kinds = []
    for f in frameworks:
        if f == "torch_cl" and case.network != "cnn":
            continue
        if f == "ort" and case.train:
            continue
        kinds.append(f)
    return kinds


def worker(framework: str, case: str, iters: int, warmup: int, threads: int,
           min_seconds: float, torch_settings: TorchSettings = TorchSettings()) -> dict:
    """Runs in a child process: builds, warms up, times the steps and reports them."""
    c = CASES[case]
    flops = None
    if framework in ("torch", "torch_cl"):
        import torch
        torch.set_num_threads(threads)  # the same as nnkit's (and the env's OMP_NUM_THREADS)
        if framework == "torch_cl":
            torch_settings = TorchSettings(**{**torch_settings.__dict__, "channels_last": True})
        baseline = reset_peak_memory()
        step = torch_step(c.network, c.batch, c.train, torch_settings)
    elif framework == "ort":
        import nnkit  # noqa: F401
        import onnxruntime  # noqa: F401
        baseline = reset_peak_memory()
        step = onnx_step(c.network, c.batch, threads)
    elif framework == "gemms":
        import nnkit  # noqa: F401  (builds the network to read its shapes)
        baseline = reset_peak_memory()
        step = gemms_step(c.network, c.batch, c.train)
    else:
        import nnkit  # noqa: F401  (imported before the memory baseline, like torch)
        baseline = reset_peak_memory()
        step, flops = nnkit_step(c.network, c.batch, c.train)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    # Fast steps (batch 1) run more often, so that the median is not one timer tick.
    per_step = (time.perf_counter() - start) / max(warmup, 1)
    iters = max(iters, math.ceil(min_seconds / max(per_step, 1e-6)))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return {"framework": framework, "case": case, "median_ms": statistics.median(times),
            "iters": iters, "peak_mb": (_status_kb("VmHWM") - baseline) / 1024,
            "gemm_flops": flops}


def child(args: argparse.Namespace, *extra: str, root: Path = ROOT) -> dict:
    """Runs this script in a fresh process with the thread settings; returns its JSON line.

    ``root`` is the checkout whose nnkit the process imports.
    """
    threads = str(args.threads)  # the same for every thread pool of both frameworks
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               OPENBLAS_NUM_THREADS=threads, NNKIT_NUM_THREADS=threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), *extra],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"benchmark worker {' '.join(extra)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gemm_check(args: argparse.Namespace) -> float:
    """The machine's float32 GEMM speed right now, measured in a fresh process (GFLOP/s)."""
    return child(args, "--worker", "gemm")["gflops"]


# ---------------------------------------------------------------------------- driver
@dataclass
class Result:
    """The measurements of one case."""

    case: str
    ms: dict[str, float]        # kind -> median ms/step over pairs
    peak_mb: dict[str, float]   # kind -> median peak memory over pairs
    reference: str | None       # the faster PyTorch layout ("torch" or "torch_cl"), if any
    ratio: float | None         # median of the pair ratios nnkit / the faster PyTorch
    memory_ratio: float | None  # nnkit's peak memory over the reference layout's
    gemm_ratio: float | None    # median of the pair ratios nnkit / GEMMs alone
    torch_gemm_ratio: float | None  # the same for the faster PyTorch
    baseline_ratio: float | None  # median of the pair ratios nnkit/baseline (--baseline)
    gemm_flops: int
    checks: tuple[float, float]  # GEMM GFLOP/s before and after
    slow: bool


def _pair_median(runs: dict[str, list[dict]], a: str, b: str) -> float | None:
    """The median over pairs of ``a``'s ms/step over ``b``'s, None if either did not run."""
    if a not in runs or b not in runs:
        return None
    return statistics.median(x["median_ms"] / y["median_ms"] for x, y in zip(runs[a], runs[b]))


def run_case(case: str, frameworks: list[str], peak: float, args: argparse.Namespace) -> Result:
    """Measures one case: GEMM check, ``--pairs`` alternating pairs, GEMM check."""
    c = CASES[case]
    kinds = kinds_for(c, frameworks)
    before = gemm_check(args)
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(args.pairs):
        for k in kinds:
            root = Path(args.baseline).resolve() if k == "baseline" else ROOT
            runs[k].append(child(args, "--worker", "nnkit" if k == "baseline" else k,
                                 "--cases", case, "--iters", str(args.iters),
                                 "--warmup", str(args.warmup), "--min-seconds",
                                 str(args.min_seconds), "--torch-settings",
                                 args.torch_settings, root=root))
    after = gemm_check(args)
    ms = {k: statistics.median(r["median_ms"] for r in runs[k]) for k in kinds}
    mem = {k: statistics.median(r["peak_mb"] for r in runs[k]) for k in kinds}
    layouts = [k for k in ("torch", "torch_cl") if k in runs]
    reference = ratio = memory_ratio = torch_gemm_ratio = None
    if layouts:
        # The faster layout of this case is the reference; each pair compares nnkit with the
        # faster of that pair's PyTorch runs (both layouts ran in the pair).
        reference = min(layouts, key=lambda k: ms[k])
        best = [min((runs[k][i] for k in layouts), key=lambda r: r["median_ms"])
                for i in range(args.pairs)]
        runs["torch_best"] = best
        ratio = _pair_median(runs, "nnkit", "torch_best")
        torch_gemm_ratio = _pair_median(runs, "torch_best", "gemms")
        memory_ratio = mem["nnkit"] / mem[reference]
    return Result(case, ms, mem, reference, ratio, memory_ratio, _pair_median(runs, "nnkit", "gemms"),
                  torch_gemm_ratio, _pair_median(runs, "nnkit", "baseline"),
                  runs["nnkit"][0]["gemm_flops"], (before, after),
                  min(before, after) < args.slow_threshold * peak)


def _verdict(value: float | None, target: float | None, digits: int = 2) -> str:
    """``value (<= target) ok`` or ``MISSED``; the bare value without a target; ``-`` without one."""
    if value is None:
        return "-"
    if target is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} (<= {target:.2f}) {'ok' if value <= target else 'MISSED'}"


def table(results: list[Result], peak: float) -> list[str]:
    """The results as markdown table lines."""
    lines = ["| case | batch | nnkit ms/step | PyTorch NCHW ms/step | PyTorch channels_last ms/step "
             "| onnxruntime ms/step | GEMMs alone ms/step | nnkit img/s | PyTorch img/s (faster) "
             "| nnkit GEMM % | PyTorch GEMM % (faster) | nnkit / GEMMs alone (target) "
             "| PyTorch / GEMMs alone | nnkit peak MB | PyTorch peak MB (faster) "
             "| ratio vs faster PyTorch (target) | memory ratio (target) "
             "| GEMM check before/after GFLOP/s |",
             "|" + "---|" * 18]

    def ms(r: Result, k: str | None) -> str:
        return f"{r.ms[k]:.2f}" if k in r.ms else "-"

    for r in results:
        c = CASES[r.case]
        ref = r.reference
        mark = {k: (" *" if k == ref else "") for k in ("torch", "torch_cl")}
        cells = [r.case, str(c.batch), ms(r, "nnkit"), ms(r, "torch") + mark["torch"],
                 ms(r, "torch_cl") + mark["torch_cl"], ms(r, "ort"), ms(r, "gemms")]
        cells += [f"{c.batch * 1000 / r.ms[k]:.0f}" if k in r.ms else "-" for k in ("nnkit", ref)]
        cells += [f"{100 * r.gemm_flops / (r.ms[k] / 1000) / (peak * 1e9):.0f}%" if k in r.ms
                  else "-" for k in ("nnkit", ref)]
        cells += [_verdict(r.gemm_ratio, c.gemm_target), _verdict(r.torch_gemm_ratio, None)]
        cells += [f"{r.peak_mb[k]:.0f}" if k in r.peak_mb else "-" for k in ("nnkit", ref)]
        cells += [_verdict(r.ratio, c.target), _verdict(r.memory_ratio, c.memory_target)]
        cells.append(f"{r.checks[0]:.0f} / {r.checks[1]:.0f}" + (" **slow**" if r.slow else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def baseline_lines(results: list[Result], baseline: str) -> list[str]:
    """This tree against ``--baseline``: ms/step of each and the median pair ratio."""
    lines = [f"| case | this tree ms/step | baseline ({baseline}) ms/step | ratio this/baseline |",
             "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.case} | {r.ms['nnkit']:.2f} | {r.ms['baseline']:.2f} | "
                     f"{r.baseline_ratio:.3f} |")
    return lines


def scaling_lines(results: list[Result]) -> list[str]:
    """images/s at batch 256 over images/s at batch 100, for nnkit and the faster PyTorch."""
    by_case = {r.case: r for r in results}
    lines = []
    for mode in ("train", "infer"):
        small, big = by_case.get(f"cnn_{mode}_100"), by_case.get(f"cnn_{mode}_256")
        if small is None or big is None:
            continue
        for name, kind in (("nnkit", "nnkit"), ("torch", "reference")):
            k_small = small.reference if kind == "reference" else kind
            k_big = big.reference if kind == "reference" else kind
            if k_small is None or k_big is None:
                continue
            ratio = (256 / big.ms[k_big]) / (100 / small.ms[k_small])
            verdict = f" (>= {SCALING_TARGET}: {'ok' if ratio >= SCALING_TARGET else 'MISSED'})" \
                if name == "nnkit" else " (the faster layout of each)"
            lines.append(f"- CNN {mode}, {name}: images/s at batch 256 / at batch 100 = "
                         f"{ratio:.2f}{verdict}")
    return lines


def load_averages() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def blas_description() -> str:
    """numpy's BLAS as threadpoolctl sees it (kernels included), and the OpenBLAS variables set.

    The children inherit this process's environment, so they load the same kernels.
    """
    from threadpoolctl import threadpool_info

    libs = [f"{lib['internal_api']} {lib['version']} ({lib.get('architecture') or '?'} kernels)"
            for lib in threadpool_info() if lib["user_api"] == "blas"]
    settings = [f"{name}={os.environ[name]}" for name in OPENBLAS_VARIABLES if name in os.environ]
    return (f"numpy's BLAS: {', '.join(libs) or 'none found'}; "
            f"{', '.join(settings) if settings else ' and '.join(OPENBLAS_VARIABLES) + ' unset'}")


#: Environment variables that override OpenBLAS's own choice of kernels and blocking.
OPENBLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def write_results(lines: list[str], args: argparse.Namespace, peak: float,
                  loads: tuple[str, str]) -> None:
    """Writes the table, the command and the machine to ``--output``."""
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")),
                   platform.processor())
    command = "PYTHONPATH=. python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    text = [
        "# nnkit against PyTorch on the CPU",
        "",
        f"Produced by `{command}` (from the repository root) on "
        f"{datetime.date.today().isoformat()}: {os.cpu_count()} x {cpu}, Python "
        f"{platform.python_version()}, numpy {np.__version__}, PyTorch {torch_version}, "
        f"float32, {args.threads} threads, {args.pairs} alternating pairs per case, each "
        f"process timing at least {args.iters} steps and {args.min_seconds} s after "
        f"{args.warmup} warm-up steps; {blas_description()}. Load average at the start: "
        f"{loads[0]}; at the end: {loads[1]}.",
        "",
        f"Float32 GEMM peak (the best GEMM check of the run, numpy/OpenBLAS, 2048^3, "
        f"{args.threads} threads): {peak:.0f} GFLOP/s. See the docstring of "
        "`benchmarks/compare.py` for what "
        "each column measures (ms/step: median; ratio: median of the per-pair ratios, lower "
        "is better for nnkit; `*` marks the faster PyTorch layout, the reference; peak MB: "
        "growth of the peak resident set over the post-import baseline).",
        "",
        *lines,
        "",
    ]
    Path(args.output).write_text("\n".join(text))


def main() -> None:
    """Parses the flags and either runs one worker or drives the whole comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20, help="at least this many timed steps")
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="and at least this long (for the fast batch-1 steps)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slow-threshold", type=float, default=0.8,
                        help="flag a case whose GEMM check falls below this fraction of the peak")
    parser.add_argument("--retries", type=int, default=2, help="reruns of a case flagged slow")
    parser.add_argument("--retry-wait", type=float, default=30.0,
                        help="seconds to wait before rerunning a case flagged slow")
    parser.add_argument("--output", default=str(RESULTS), help="where to write the results table")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--baseline", metavar="DIR", help="also time nnkit from this checkout "
                        "(kernels built in place) and report this tree's time over it")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--no-ort", action="store_true", help="leave onnxruntime out")
    parser.add_argument("--no-gemms", action="store_true", help="leave the GEMMs-alone runs out")
    parser.add_argument("--torch-settings", default="{}", metavar="JSON",
                        help="TorchSettings fields for the PyTorch workers, e.g. "
                        "'{\"optimizer\": \"default\", \"set_to_none\": false}' (round 1's)")
    parser.add_argument("--worker", choices=["nnkit", "torch", "torch_cl", "ort", "gemms", "gemm"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.worker == "gemm":
        print(json.dumps({"gflops": gemm_gflops()}))
        return
    if args.worker:
        settings = TorchSettings(**json.loads(args.torch_settings))
        print(json.dumps(worker(args.worker, cases[0], args.iters, args.warmup, args.threads,
                                args.min_seconds, settings)))
        return
    loads = [load_averages()]
    print(blas_description())
    if "OPENBLAS_CORETYPE" in os.environ:
        print("OPENBLAS_CORETYPE is set: numpy's OpenBLAS runs the kernels it names, not its own "
              "choice for this CPU (to measure that: env -u OPENBLAS_CORETYPE -u "
              "OPENBLAS_L2_SIZE before the command)")
    frameworks = ["nnkit"]
    if args.baseline:
        frameworks.append("baseline")
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            frameworks += ["torch", "torch_cl"]
        except ImportError:
            print("PyTorch is not installed: timing nnkit alone (pip install torch==2.13.0)")
    if not args.no_ort:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            frameworks.append("ort")
        except ImportError:
            print("onnx or onnxruntime is not installed: no onnxruntime column")
    if not args.no_gemms:
        frameworks.append("gemms")
    # The peak is the best GEMM check so far: the CPU's clock varies with its load.
    peak = max(gemm_check(args) for _ in range(3))
    print(f"float32 GEMM peak at startup: {peak:.0f} GFLOP/s (load average {loads[0]})", flush=True)
    results = []
    for case in cases:
        for attempt in range(args.retries + 1):
            result = run_case(case, frameworks, peak, args)
            peak = max(peak, *result.checks)
            if not result.slow:
                break
            print(f"{case}: GEMM check {result.checks[0]:.0f}/{result.checks[1]:.0f} GFLOP/s "
                  f"below {args.slow_threshold:.0%} of the peak"
                  + (f": measuring again in {args.retry_wait:.0f} s" if attempt < args.retries
                     else ""), flush=True)
            if attempt < args.retries:
                time.sleep(args.retry_wait)  # give whatever else runs a chance to finish
        results.append(result)
        print(table([result], peak)[-1] + f" (load average {load_averages()})", flush=True)
    loads.append(load_averages())
    lines = table(results, peak)
    lines += ["", *scaling_lines(results)]
    if args.baseline:
        lines += ["", *baseline_lines(results, args.baseline)]
    print("\n".join(lines))
    print(f"load average: {loads[0]} at the start, {loads[1]} at the end")
    if not args.no_write:
        write_results(lines, args, peak, (loads[0], loads[1]))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
