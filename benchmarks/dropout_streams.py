"""Dropout's forward pass: the layer generator's draws (a plain fit) against the per-example
streams of distributed training (nnkit.layers.Dropout, ``example_stream``).

    PYTHONPATH=. python benchmarks/dropout_streams.py                  # (64, 1024) float32
    PYTHONPATH=. python benchmarks/dropout_streams.py --shape 128 4096 --rounds 60

The two layers run interleaved, ``--calls`` forward passes per round, so load on a shared
machine hits both alike; the medians and minima over the rounds are printed in microseconds.
Not a test: the ratio is what to read.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from nnkit.layers import Dropout, Layer, set_seed


class _Source(Layer):
    """A layer whose ``data`` is a fixed batch (what Dropout reads from)."""

    def __init__(self, x: np.ndarray) -> None:
        super().__init__("source")
        self.data = x
        self.accepts_grad = False


class _Shard:
    """What Dropout.distribute reads from a World: where this rank's shard starts."""

    first_example = 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=2, default=(64, 1024), metavar=("BATCH", "UNITS"))
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--calls", type=int, default=50)
    args = p.parse_args()
    src = _Source(np.random.default_rng(0).standard_normal(args.shape).astype(np.float32))
    layers = {"layer generator": Dropout(0.5), "example streams": Dropout(0.5)}
    for layer in layers.values():
        set_seed([layer], 0)
        layer.ComputeFeature(src)  # buffers allocated before timing
    times: dict[str, list[float]] = {name: [] for name in layers}
    for round_ in range(args.rounds):
        for name, layer in layers.items():
            start = time.perf_counter()
            for call in range(args.calls):
                if name == "example streams":  # what the model does before each batch
                    layer.distribute(_Shard(), round_ * args.calls + call + 1)
                layer.ComputeFeature(src)
            times[name].append((time.perf_counter() - start) / args.calls * 1e6)
    print(f"Dropout(0.5) forward, {args.shape[0]} x {args.shape[1]} float32, {args.rounds} rounds of "
          f"{args.calls} calls")
    for name, values in times.items():
        print(f"{name:16s} median {statistics.median(values):7.1f} us, min {min(values):7.1f} us")
    plain, streams = (statistics.median(times[n]) for n in layers)
    print(f"example streams / layer generator: {streams / plain:.2f}x (medians)")


if __name__ == "__main__":
    main()
