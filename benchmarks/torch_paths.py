"""Which PyTorch settings make compare.py's PyTorch side slower or faster, one at a time.

    PYTHONPATH=. python benchmarks/torch_paths.py                    # mlp_train, 5 rounds
    PYTHONPATH=. python benchmarks/torch_paths.py --cases cnn_train_100 --rounds 3

Each variant is a set of ``compare.TorchSettings`` fields (the rest at their defaults,
the fast settings compare.py uses). A round runs every variant once, each in a fresh
process with compare.py's thread settings, in an order rotated from round to round; the
table gives each variant's median ms/step and the median over rounds of its time over
the fast settings' time in the same round (the 2-core machine is shared: only ratios
within a round mean much). Round 1's compare.py ran ``optimizer="default"`` (on the CPU
that is the single-tensor loop: ``foreach`` defaults to CUDA only) with
``set_to_none=False`` and inference under ``no_grad``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (the benchmark's workers)

VARIANTS = {
    "fast (compare.py now)": {},
    "round 1 (default loop, zeroed grads)": {"optimizer": "default", "set_to_none": False},
    "zero_grad(set_to_none=False) only": {"set_to_none": False},
    "default single-tensor SGD only": {"optimizer": "default"},
    "foreach SGD": {"optimizer": "foreach"},
    "input copied from numpy in the step": {"convert_input": True},
}
INFER_VARIANTS = {
    "fast (compare.py now)": {},
    "no_grad instead of inference_mode": {"inference_mode": False},
    "input copied from numpy in the step": {"convert_input": True},
}


def main() -> None:
    """Runs the rounds and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="mlp_train")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layout", default="torch", choices=["torch", "torch_cl"])
    args = parser.parse_args()
    for case in args.cases.split(","):
        variants = VARIANTS if compare.CASES[case].train else INFER_VARIANTS
        names = list(variants)
        runs: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                out = compare.child(args, "--worker", args.layout, "--cases", case, "--iters",
                                    str(args.iters), "--warmup", str(args.warmup),
                                    "--min-seconds", str(args.min_seconds), "--torch-settings",
                                    json.dumps(variants[name]))
                runs[name].append(out["median_ms"])
                print(f"round {r + 1}: {name}: {out['median_ms']:.2f} ms", flush=True)
        fast = runs[names[0]]
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\n{case} ({args.layout}), {args.rounds} rounds, load average at the end {load}")
        print("| variant | median ms/step | over the fast settings (median of rounds) |")
        print("|---|---|---|")
        for name in names:
            ratio = statistics.median(a / b for a, b in zip(runs[name], fast))
            print(f"| {name} | {statistics.median(runs[name]):.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
