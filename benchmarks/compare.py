"""nnkit against PyTorch (CPU), side by side: each measurement in its own process, alternating.

    python benchmarks/compare.py                       # every case, 3 pairs, writes RESULTS.md
    python benchmarks/compare.py --cases mlp_train --pairs 5 --no-write
    python benchmarks/compare.py --baseline ../old --no-torch --no-write   # this tree vs another

``--baseline DIR`` adds a third process per pair: nnkit imported from DIR (another checkout,
e.g. an older commit in a git worktree, with its kernels built in place), and a column of
this tree's time over the baseline's: a structural change must not cost speed.

For every case the two frameworks run the same network on the same batch shape, float32,
with the same number of threads (``--threads``, given to every thread pool: OpenMP, MKL,
OpenBLAS, nnkit's), one fresh process each, nnkit first then PyTorch, repeated ``--pairs``
times. Each process builds the network, warms up, then times at least ``--iters`` steps
(and at least ``--min-seconds``) and reports its median ms per step. A training step is
forward, softmax cross-entropy loss, backward and an SGD-momentum update (weight decay
0.004); an inference step is the forward pass in evaluation mode (PyTorch: ``model.eval()``
under ``torch.no_grad()``), without the loss.

The table gives, per case:

* the median over pairs of each framework's ms/step, and images/s from it;
* "GEMM %": the matrix-product work of one step (convolutions and dense layers, counted
  the same for both frameworks: forward, plus weight and input gradients when training,
  no input gradient for the first layer) divided by the step time, as a fraction of the
  float32 GEMM peak measured on this machine (numpy/OpenBLAS, the same thread count: the
  best of all the GEMM checks of the run);
* peak memory: how much the process's peak resident set grew while building the network
  and running its steps (``VmHWM`` reset through ``/proc/self/clear_refs`` after the
  imports, minus the resident set at that moment). It counts parameters, activations,
  gradients, scratch and whatever the allocators keep, and leaves out the interpreter and
  the libraries, whose sizes say nothing about the framework's use of memory;
* the ratio nnkit/PyTorch: the median of the per-pair ratios (lower is better for nnkit).

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
    target: float           # the bound on the time ratio nnkit/PyTorch
    memory_target: float | None = None  # bound on the peak-memory ratio, if any


CASES = {
    "mlp_train": Case("mlp", 64, True, 1.00),
    "mlp_infer": Case("mlp", 64, False, 1.05),
    "cnn_train_100": Case("cnn", 100, True, 1.00, memory_target=1.5),
    "cnn_infer_100": Case("cnn", 100, False, 0.85),
    "cnn_train_256": Case("cnn", 256, True, 1.00),
    "cnn_infer_256": Case("cnn", 256, False, 0.85),
    "cnn_train_1": Case("cnn", 1, True, 1.50),
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
def nnkit_step(network: str, batch: int, train: bool):
    """Builds the network in nnkit; returns (a function running one step, its GEMM flops)."""
    import nnkit
    from nnkit import SGD, Convolution2D, Dense, LabelInput, Loss

    # The examples define the networks; the benchmark times exactly those, from the checkout
    # whose nnkit this process imports (this tree's, or --baseline's).
    sys.path.insert(0, str(Path(nnkit.__file__).resolve().parents[1] / "examples"))
    rng = np.random.default_rng(0)
    if network == "mlp":
        from train_mnist import build_mlp
        nn = build_mlp(seed=0)
        x = rng.random((batch, 784), dtype=np.float32)
    else:
        from train_cifar10 import build_cnn
        nn = build_cnn(seed=0)
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    label, loss = LabelInput(), Loss("softmaxloss")
    sgd = SGD(lr=0.001, momentum=0.9, decay=0.004)
    counter = [0]
    for layer in nn:
        layer.train(train)

    def step():
        nn[0].Feed(x)
        for h in range(1, len(nn)):
            nn[h].ComputeFeature(nn[h - 1])
        if train:
            label.Feed(y)
            loss.ComputeFeature(nn[-1], label)
            counter[0] += 1
            loss.ComputeGradient()
            for h in range(len(nn) - 1, 0, -1):
                nn[h].ComputeGradient()
                sgd.Update(counter[0], nn[h])

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
def torch_step(network: str, batch: int, train: bool):
    """Builds the same network in PyTorch; returns a function running one step."""
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
        model = tnn.Sequential(*layers, tnn.Linear(MLP_WIDTHS[-2], MLP_WIDTHS[-1]))
        x = torch.rand(batch, 784)
    else:
        lrn = dict(size=3, alpha=0.00005, beta=0.75)
        model = tnn.Sequential(
            tnn.Conv2d(3, 32, 5, 1, 2), tnn.MaxPool2d(3, 2, ceil_mode=True), tnn.ReLU(),
            tnn.LocalResponseNorm(**lrn),
            tnn.Conv2d(32, 32, 5, 1, 2), tnn.ReLU(), tnn.AvgPool2d(3, 2, ceil_mode=True),
            tnn.LocalResponseNorm(**lrn),
            tnn.Conv2d(32, 64, 5, 1, 2), tnn.ReLU(), tnn.AvgPool2d(3, 2, ceil_mode=True),
            tnn.Flatten(), tnn.Linear(64 * 4 * 4, 10))
        x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.004)
    loss_fn = tnn.CrossEntropyLoss()
    model.train(train)

    def step():
        if train:
            opt.zero_grad(set_to_none=False)
            loss_fn(model(x), y).backward()
            opt.step()
        else:
            with torch.no_grad():
                model(x)
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


def worker(framework: str, case: str, iters: int, warmup: int, threads: int,
           min_seconds: float) -> dict:
    """Runs in a child process: builds, warms up, times the steps and reports them."""
    c = CASES[case]
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        baseline = reset_peak_memory()
        step, flops = torch_step(c.network, c.batch, c.train), None
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
    ms: dict[str, float]        # framework -> median ms/step over pairs
    peak_mb: dict[str, float]   # framework -> median peak memory over pairs
    ratio: float | None         # median of the pair ratios nnkit/PyTorch
    memory_ratio: float | None
    baseline_ratio: float | None  # median of the pair ratios nnkit/baseline (--baseline)
    gemm_flops: int
    checks: tuple[float, float]  # GEMM GFLOP/s before and after
    slow: bool


def run_case(case: str, frameworks: list[str], peak: float, args: argparse.Namespace) -> Result:
    """Measures one case: GEMM check, ``--pairs`` alternating pairs, GEMM check."""
    before = gemm_check(args)
    runs: dict[str, list[dict]] = {f: [] for f in frameworks}
    for _ in range(args.pairs):
        for f in frameworks:
            root = Path(args.baseline).resolve() if f == "baseline" else ROOT
            runs[f].append(child(args, "--worker", "torch" if f == "torch" else "nnkit",
                                 "--cases", case, "--iters", str(args.iters),
                                 "--warmup", str(args.warmup), "--min-seconds",
                                 str(args.min_seconds), root=root))
    after = gemm_check(args)
    ms = {f: statistics.median(r["median_ms"] for r in runs[f]) for f in frameworks}
    mem = {f: statistics.median(r["peak_mb"] for r in runs[f]) for f in frameworks}
    ratio = memory_ratio = None
    if "torch" in runs:
        ratio = statistics.median(a["median_ms"] / b["median_ms"]
                                  for a, b in zip(runs["nnkit"], runs["torch"]))
        memory_ratio = mem["nnkit"] / mem["torch"]
    baseline_ratio = None
    if "baseline" in runs:
        baseline_ratio = statistics.median(a["median_ms"] / b["median_ms"]
                                           for a, b in zip(runs["nnkit"], runs["baseline"]))
    return Result(case, ms, mem, ratio, memory_ratio, baseline_ratio, runs["nnkit"][0]["gemm_flops"],
                  (before, after), min(before, after) < args.slow_threshold * peak)


def table(results: list[Result], peak: float) -> list[str]:
    """The results as markdown table lines."""
    lines = ["| case | batch | nnkit ms/step | PyTorch ms/step | nnkit img/s | PyTorch img/s "
             "| nnkit GEMM % | PyTorch GEMM % | nnkit peak MB | PyTorch peak MB "
             "| ratio (target) | memory ratio (target) | GEMM check before/after GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = CASES[r.case]
        cells = [r.case, str(c.batch)]
        cells += [f"{r.ms[f]:.2f}" if f in r.ms else "-" for f in ("nnkit", "torch")]
        cells += [f"{c.batch * 1000 / r.ms[f]:.0f}" if f in r.ms else "-" for f in ("nnkit", "torch")]
        cells += [f"{100 * r.gemm_flops / (r.ms[f] / 1000) / (peak * 1e9):.0f}%" if f in r.ms
                  else "-" for f in ("nnkit", "torch")]
        cells += [f"{r.peak_mb[f]:.0f}" if f in r.peak_mb else "-" for f in ("nnkit", "torch")]
        cells.append("-" if r.ratio is None else
                     f"{r.ratio:.2f} (<= {c.target:.2f}) {'ok' if r.ratio <= c.target else 'MISSED'}")
        if r.memory_ratio is None:
            cells.append("-")
        elif c.memory_target is None:
            cells.append(f"{r.memory_ratio:.2f}")
        else:
            ok = "ok" if r.memory_ratio <= c.memory_target else "MISSED"
            cells.append(f"{r.memory_ratio:.2f} (<= {c.memory_target:.1f}) {ok}")
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


def scaling_lines(results: list[Result], frameworks: list[str]) -> list[str]:
    """images/s at batch 256 over images/s at batch 100, for each framework and mode."""
    by_case = {r.case: r for r in results}
    lines = []
    for mode in ("train", "infer"):
        small, big = by_case.get(f"cnn_{mode}_100"), by_case.get(f"cnn_{mode}_256")
        if small is None or big is None:
            continue
        for f in frameworks:
            ratio = (256 / big.ms[f]) / (100 / small.ms[f])
            verdict = f" (>= {SCALING_TARGET}: {'ok' if ratio >= SCALING_TARGET else 'MISSED'})" \
                if f == "nnkit" else ""
            lines.append(f"- CNN {mode}, {f}: images/s at batch 256 / at batch 100 = "
                         f"{ratio:.2f}{verdict}")
    return lines


def write_results(lines: list[str], args: argparse.Namespace, peak: float) -> None:
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
        f"{args.warmup} warm-up steps.",
        "",
        f"Float32 GEMM peak (the best GEMM check of the run, numpy/OpenBLAS, 2048^3, "
        f"{args.threads} threads): {peak:.0f} GFLOP/s. See the docstring of "
        "`benchmarks/compare.py` for what "
        "each column measures (ms/step: median; ratio: median of the per-pair ratios, lower "
        "is better for nnkit; peak MB: growth of the peak resident set over the post-import "
        "baseline).",
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
    parser.add_argument("--worker", choices=["nnkit", "torch", "gemm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.worker == "gemm":
        print(json.dumps({"gflops": gemm_gflops()}))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, cases[0], args.iters, args.warmup, args.threads,
                                args.min_seconds)))
        return
    frameworks = ["nnkit"]
    if args.baseline:
        frameworks.append("baseline")
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            frameworks.append("torch")
        except ImportError:
            print("PyTorch is not installed: timing nnkit alone (pip install torch==2.13.0)")
    # The peak is the best GEMM check so far: the CPU's clock varies with its load.
    peak = max(gemm_check(args) for _ in range(3))
    print(f"float32 GEMM peak at startup: {peak:.0f} GFLOP/s", flush=True)
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
        print(table([result], peak)[-1], flush=True)
    lines = table(results, peak)
    lines += ["", *scaling_lines(results, [f for f in frameworks if f != "baseline"])]
    if args.baseline:
        lines += ["", *baseline_lines(results, args.baseline)]
    print("\n".join(lines))
    if not args.no_write:
        write_results(lines, args, peak)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
