"""nnkit against PyTorch (CPU), side by side: each measurement in its own process, alternating.

    python benchmarks/compare.py                 # all cases, 3 pairs each
    python benchmarks/compare.py --cases mlp_train --pairs 5

For every case, the two frameworks run the same network on the same batch shape, one fresh
process each, nnkit first then PyTorch, repeated ``--pairs`` times. Each process warms up,
then times ``--iters`` steps and reports its median ms per step. The table gives the median
over pairs of each framework and the median of the per-pair ratios nnkit/PyTorch (lower is
better for nnkit). Both use float32 and the same thread count.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MLP_WIDTHS = (784, 2500, 2000, 1500, 1000, 500, 10)
CASES = {
    # name: (network, batch, train?)
    "mlp_train": ("mlp", 64, True),
    "cnn_train": ("cnn", 100, True),
}


# ---------------------------------------------------------------------------- nnkit side
def nnkit_step(network: str, batch: int, train: bool):
    """Builds the network in nnkit; returns a function running one step."""
    from nnkit import SGD, LabelInput, Loss

    # The examples define the networks; the benchmark times exactly those.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from train_cifar10 import build_cnn
    from train_mnist import build_mlp

    rng = np.random.default_rng(0)
    if network == "mlp":
        nn = build_mlp(seed=0)
        x = rng.random((batch, 784), dtype=np.float32)
    else:
        nn = build_cnn(seed=0)
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    label, loss = LabelInput(), Loss("softmaxloss")
    sgd = SGD(lr=0.001, momentum=0.9, decay=0.004)
    counter = [0]

    def step():
        nn[0].Feed(x)
        label.Feed(y)
        for h in range(1, len(nn)):
            nn[h].ComputeFeature(nn[h - 1])
        loss.ComputeFeature(nn[-1], label)
        if train:
            counter[0] += 1
            loss.ComputeGradient()
            for h in range(len(nn) - 1, 0, -1):
                nn[h].ComputeGradient()
                sgd.Update(counter[0], nn[h])
    return step


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

    def step():
        if train:
            opt.zero_grad(set_to_none=False)
            loss_fn(model(x), y).backward()
            opt.step()
        else:
            with torch.no_grad():
                loss_fn(model(x), y)
    return step


# ---------------------------------------------------------------------------- driver
def worker(framework: str, case: str, iters: int, warmup: int, threads: int) -> dict:
    """Runs in a child process: times ``iters`` steps after ``warmup`` and reports them."""
    network, batch, train = CASES[case]
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        step = torch_step(network, batch, train)
    else:
        step = nnkit_step(network, batch, train)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return {"framework": framework, "case": case, "median_ms": statistics.median(times)}


def measure(framework: str, case: str, args: argparse.Namespace) -> float:
    """Starts one worker process and returns its median ms per step."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    out = subprocess.run(
        [sys.executable, __file__, "--worker", framework, "--cases", case, "--iters",
         str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads)],
        check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["median_ms"]


def main() -> None:
    """Parses the flags and either runs one worker or drives the whole comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=["nnkit", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = args.cases.split(",")
    if args.worker:
        print(json.dumps(worker(args.worker, cases[0], args.iters, args.warmup, args.threads)))
        return
    try:
        import torch  # noqa: F401
        frameworks = ["nnkit", "torch"]
    except ImportError:
        print("PyTorch is not installed: timing nnkit alone (pip install torch==2.13.0)")
        frameworks = ["nnkit"]
    print(f"| case | batch | nnkit ms/step | PyTorch ms/step | ratio nnkit/PyTorch (median of {args.pairs} pairs) |")
    print("|---|---|---|---|---|")
    for case in cases:
        runs = {f: [] for f in frameworks}
        for _ in range(args.pairs):
            for f in frameworks:
                runs[f].append(measure(f, case, args))
        nn_ms = statistics.median(runs["nnkit"])
        if "torch" in runs:
            ratio = statistics.median(a / b for a, b in zip(runs["nnkit"], runs["torch"]))
            torch_ms = f"{statistics.median(runs['torch']):.1f}"
            ratio_s = f"{ratio:.2f}"
        else:
            torch_ms = ratio_s = "-"
        print(f"| {case} | {CASES[case][1]} | {nn_ms:.1f} | {torch_ms} | {ratio_s} |", flush=True)


if __name__ == "__main__":
    main()
