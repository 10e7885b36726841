"""Test accuracy of the Keras-style MNIST examples on nnkit.keras: median of 3 seeds.

Runs examples/keras_mnist_mlp.py (20 epochs) and examples/keras_mnist_cnn.py (12 epochs) as
they are, full size, once per seed, each in its own process (``np.random.seed(seed)`` first:
the model's seed is drawn from NumPy's global generator, as Keras scripts expect), and prints
the test accuracy of each run and the median per script, next to the accuracy Keras documents
for its own version of the script (98.40% and 99.25%).

    NNKIT_DATA=../shared/data PYTHONPATH=. python benchmarks/keras_examples.py
    ... --scripts mlp --seeds 0 1 2 --output benchmarks/KERAS.md

A full run takes long on a CPU (the convnet's 12 epochs are 720,000 training images through
two convolutions): minutes for the MLP, about an hour or more for the convnet.
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

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"mlp": ("keras_mnist_mlp", 0.9840), "cnn": ("keras_mnist_cnn", 0.9925)}

#: What each child process runs: the script, unchanged, after seeding NumPy.
CHILD = """
import json, runpy, sys, time
import numpy as np
np.random.seed(int(sys.argv[2]))
start = time.perf_counter()
done = runpy.run_path(sys.argv[1], run_name="__main__")
print("RESULT " + json.dumps({"loss": float(done["score"][0]), "accuracy": float(done["score"][1]),
                              "seconds": time.perf_counter() - start}))
"""


def run_once(script: str, seed: int) -> dict[str, float]:
    """One full run of ``examples/<script>.py`` with ``seed``; its test loss and accuracy."""
    path = ROOT / "examples" / f"{script}.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(seed)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script} (seed {seed}) failed:\n{done.stderr[-4000:]}")
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", nargs="+", choices=sorted(SCRIPTS), default=["mlp", "cnn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output", help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    rows = ["| script | seeds | test accuracy per seed | median | Keras documents | minutes per run |",
            "|---|---|---|---|---|---|"]
    for key in args.scripts:
        script, documented = SCRIPTS[key]
        runs = []
        for seed in args.seeds:
            result = run_once(script, seed)
            print(f"{script} seed {seed}: test accuracy {result['accuracy']:.4f} "
                  f"({result['seconds'] / 60:.1f} min)", flush=True)
            runs.append(result)
        accuracies = [r["accuracy"] for r in runs]
        rows.append(f"| {script} | {' '.join(map(str, args.seeds))} | "
                    f"{', '.join(f'{a:.2%}' for a in accuracies)} | "
                    f"{statistics.median(accuracies):.2%} | {documented:.2%} | "
                    f"{statistics.median(r['seconds'] for r in runs) / 60:.1f} |")
    table = "\n".join(rows)
    print(table)
    if args.output:
        stamp = time.strftime("%Y-%m-%d")
        Path(args.output).write_text(f"# Keras examples on nnkit.keras\n\nProduced by `python "
                                     f"benchmarks/keras_examples.py {' '.join(argv or sys.argv[1:])}` "
                                     f"on {stamp}.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
