"""What ``Sequential.train_on_batch``'s non-finite checks cost: checked against unchecked steps.

    python benchmarks/nonfinite.py                          # the MLP, 41 interleaved pairs
    python benchmarks/nonfinite.py --network cnn --batch 100
    python benchmarks/nonfinite.py --callgrind              # instruction counts (valgrind)

Both steps train the same model on the same batch, with compare.py's settings (the examples'
networks, SGD with momentum 0.9 and weight decay 0.004, float32, ``--threads`` threads):

* unchecked: the per-layer loop that ``compare.py`` times (Feed, ComputeFeature, the loss,
  then ComputeGradient and Update layer by layer, top down), with no check at all;
* checked: ``model.train_on_batch``, which also checks the loss, every gradient before any
  update and the parameters after it, keeps the state needed to undo a bad batch and returns
  the batch's logs.

Timing: one process; after the warm-up, ``--pairs`` pairs of one step of each kind, the
order alternating from pair to pair, so that both kinds see the same machine (it is shared
and noisy). Reported: the median ms of each kind and the median of the per-pair ratios
checked/unchecked (the checks' share of a step is that ratio minus 1).

``--callgrind`` counts instructions instead (deterministic, but blind to memory stalls,
which dominate these checks): three runs under ``valgrind --tool=callgrind``, one thread,
each with the same warm-up (one step of each kind), then 0, or ``--steps`` unchecked, or
``--steps`` checked steps; a step's count is its run's total minus the first run's, divided
by ``--steps``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_steps(network: str, batch: int):
    """The model and its two step functions, ``(unchecked, checked)``, each taking the step."""
    import nnkit
    sys.path.insert(0, str(Path(nnkit.__file__).resolve().parents[1] / "examples"))
    rng = np.random.default_rng(0)
    if network == "mlp":
        from train_mnist import build_mlp
        layers, x = build_mlp(seed=0), rng.random((batch, 784), dtype=np.float32)
    else:
        from train_cifar10 import build_cnn
        layers, x = build_cnn(seed=0), rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    model = nnkit.Sequential(layers)
    model.compile(nnkit.SGD(lr=0.001, momentum=0.9, decay=0.004), "softmaxloss", ["accuracy"])
    nn, loss, label, sgd = model.layers, model.loss_layer, model.label_layer, model.updater

    def unchecked(step: int) -> None:
        for layer in nn:
            layer.training = True
        nn[0].Feed(x)
        for h in range(1, len(nn)):
            nn[h].ComputeFeature(nn[h - 1])
        label.Feed(y)
        loss.ComputeFeature(nn[-1], label)
        loss.ComputeGradient()
        for h in range(len(nn) - 1, 0, -1):
            nn[h].ComputeGradient()
            sgd.Update(step, nn[h])

    def checked(step: int) -> None:
        model.train_on_batch(x, y, step=step)

    return model, unchecked, checked


def time_pairs(args: argparse.Namespace) -> dict:
    """Interleaved pairs in this process; medians and the median ratio."""
    _, unchecked, checked = make_steps(args.network, args.batch)
    step = 0
    for _ in range(args.warmup):
        for fn in (unchecked, checked):
            step += 1
            fn(step)
    times: dict[str, list[float]] = {"unchecked": [], "checked": []}
    for i in range(args.pairs):
        order = [("unchecked", unchecked), ("checked", checked)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            step += 1
            start = time.perf_counter()
            fn(step)
            times[name].append((time.perf_counter() - start) * 1000)
    ratios = [c / u for c, u in zip(times["checked"], times["unchecked"])]
    return {"network": args.network, "batch": args.batch, "pairs": args.pairs,
            "unchecked_ms": statistics.median(times["unchecked"]),
            "checked_ms": statistics.median(times["checked"]),
            "ratio": statistics.median(ratios)}


def run_steps(args: argparse.Namespace) -> None:
    """The body of one callgrind run: the warm-up, then ``--steps`` steps of ``--kind``."""
    _, unchecked, checked = make_steps(args.network, args.batch)
    unchecked(1)
    checked(2)
    fn = {"unchecked": unchecked, "checked": checked, "none": None}[args.kind]
    for i in range(args.steps if fn is not None else 0):
        fn(3 + i)


def callgrind(args: argparse.Namespace) -> dict:
    """Instructions per step of each kind (see the module docstring)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               NNKIT_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    totals = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("none", "unchecked", "checked"):
            out = Path(tmp) / f"{kind}.out"
            proc = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                 __file__, "--run-steps", "--kind", kind, "--steps", str(args.steps),
                 "--network", args.network, "--batch", str(args.batch)],
                env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"callgrind run {kind} failed:\n{proc.stderr[-2000:]}")
            summary = re.search(r"^summary: (\d+)", out.read_text(), re.MULTILINE)
            totals[kind] = int(summary.group(1))
    per_step = {k: (totals[k] - totals["none"]) / args.steps for k in ("unchecked", "checked")}
    return {"network": args.network, "batch": args.batch, "steps": args.steps,
            "unchecked_Ir": per_step["unchecked"], "checked_Ir": per_step["checked"],
            "ratio": per_step["checked"] / per_step["unchecked"]}


def main() -> None:
    """Parses the flags; times pairs, or drives (or is one of) the callgrind runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=41)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="for every thread pool (not callgrind)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead")
    parser.add_argument("--steps", type=int, default=2, help="steps per callgrind run")
    parser.add_argument("--run-steps", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=["none", "unchecked", "checked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_steps:
        run_steps(args)
    elif args.callgrind:
        print(json.dumps(callgrind(args)))
    elif os.environ.get("NNKIT_NUM_THREADS") != str(args.threads):
        # The thread pools read their sizes at import: time in a child that has them set.
        threads = str(args.threads)
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   OPENBLAS_NUM_THREADS=threads, NNKIT_NUM_THREADS=threads)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        sys.exit(subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=env).returncode)
    else:
        print(json.dumps(time_pairs(args)))


if __name__ == "__main__":
    main()
