"""The Winograd route of the 5x5 convolutions against their im2col route, side by side.

    python benchmarks/winograd.py                  # CIFAR-10 conv1-3, batch 100 and 256
    python benchmarks/winograd.py --rounds 21 --tiles 512

One process; each round times a layer's forward pass (evaluation mode) and its training
pass (forward and backward, the input gradient included except for the first layers)
both ways, one right after the other, so that the machine's drift hits both alike. Prints
the median ms of each route and the median of the per-round ratios (Winograd / im2col,
lower is faster). The layers are the CIFAR-10 CNN's (``examples/cifar10_cnn.conf``) at their
input shapes, float32, on nnkit's threads; the one-channel layer ``gray`` takes the Winograd
route here although the layer keeps its passes on im2col (``WINOGRAD_MIN_FORWARD_CHANNELS``,
``WINOGRAD_MIN_CHANNELS``), so that its cost shows.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import nnkit.layers.convolution as convolution
from nnkit import Activation, Convolution2D, ImageInput

#: (name, input channels, filters, image side) of the CIFAR-10 CNN's 5x5 layers. conv1, the
#: first layer, computes no input gradient.
LAYERS = [("conv1", 3, 32, 32), ("conv2", 32, 32, 16), ("conv3", 32, 64, 8)]
#: A layer of 4x4 outputs (one tile per image), for WINOGRAD_MIN_PIXELS: ``--layers 4x4``.
SMALL = ("4x4", 32, 64, 4)
#: A first layer of one channel (grayscale 32x32 images), for
#: WINOGRAD_MIN_FORWARD_CHANNELS: ``--layers gray``.
GRAY = ("gray", 1, 32, 32)
#: The first layers: they compute no input gradient.
FIRST = ("conv1", "gray")


def timed(fn, reps: int) -> float:
    """Median ms of ``reps`` calls of fn, after one untimed call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    """Times every layer, batch and pass both ways; prints one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--reps", type=int, default=5, help="calls timed per round and route")
    parser.add_argument("--batches", default="100,256")
    parser.add_argument("--layers", default="conv1,conv2,conv3",
                        help="of conv1, conv2, conv3, 4x4 (a layer of 4x4 outputs) and gray "
                             "(a first layer of one channel)")
    parser.add_argument("--tiles", type=int, default=convolution.WINOGRAD_TILES,
                        help="tiles per chunk (WINOGRAD_TILES)")
    args = parser.parse_args()
    convolution.WINOGRAD_TILES = args.tiles
    # Every 5x5 layer takes the route, so that its cost shows where it loses too.
    convolution.WINOGRAD_MIN_PIXELS = 1
    convolution.WINOGRAD_MIN_CHANNELS = 1
    convolution.WINOGRAD_MIN_FORWARD_CHANNELS = 1
    rng = np.random.default_rng(0)
    print("| layer | batch | pass | im2col ms | Winograd ms | Winograd / im2col (median of rounds) |")
    print("|---|---|---|---|---|---|")
    chosen = args.layers.split(",")
    for name, c, f, side in [layer for layer in LAYERS + [SMALL, GRAY] if layer[0] in chosen]:
        for n in map(int, args.batches.split(",")):
            images = ImageInput(side, side, c)
            images.Feed(rng.standard_normal((n, c, side, side)).astype(np.float32))
            source = images
            if name not in FIRST:
                # A layer between: the convolution then computes its input gradient, as
                # conv2 and conv3 do in the network.
                source = Activation("relu")
                source.ComputeFeature(images)
            layer = Convolution2D(f, 5, 1, 2, w_std=0.01)
            layer.ComputeFeature(source)
            dy = rng.standard_normal(layer.data.shape).astype(np.float32)

            def infer():
                layer.ComputeFeature(source)

            def train():
                layer.ComputeFeature(source)
                layer.grad = dy
                layer.ComputeGradient()

            for label, mode, fn in (("forward", False, infer), ("train", True, train)):
                layer.train(mode)
                times: dict[bool, list[float]] = {False: [], True: []}
                for _ in range(args.rounds):
                    for route in (False, True):
                        convolution.WINOGRAD = route
                        times[route].append(timed(fn, args.reps))
                ratio = statistics.median(w / i for i, w in zip(times[False], times[True]))
                print(f"| {name} | {n} | {label} | {statistics.median(times[False]):.2f} | "
                      f"{statistics.median(times[True]):.2f} | {ratio:.3f} |", flush=True)
    convolution.WINOGRAD = True


if __name__ == "__main__":
    main()
