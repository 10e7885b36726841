"""Train the MNIST MLP (784-2500-2000-1500-1000-500-10, stanh) on real MNIST.

By default this is nnkit's interactive style: feed a batch, compute every layer's feature,
then every layer's gradient and update, by hand (examples/common.py). ``--fit`` trains the
same layers through ``Sequential.fit``. Run:

    python examples/train_mnist.py --data-dir ../shared/data --epochs 1
    python examples/train_mnist.py --data-dir ../shared/data --steps 50          # a quick check
    python examples/train_mnist.py --data-dir ../shared/data --fit --run-dir runs/mnist
    python examples/train_mnist.py --data-dir ../shared/data --fit --epochs 3 --resume runs/mnist/checkpoint.h5
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import nnkit
from common import add_flags, parse_flags, run, run_main
from nnkit import SGD, Activation, Dense, ImageInput
from nnkit.datasets import load_mnist, scale


def build_mlp(seed: int | None = 0) -> list[nnkit.Layer]:
    """The layers of the MLP, input first; ``seed`` fixes the initial weights."""
    nn = [ImageInput(28, 28)]
    for width in (2500, 2000, 1500, 1000, 500):
        nn += [Dense(width, init="uniform"), Activation("stanh")]
    nn.append(Dense(10, init="uniform"))
    if seed is not None:
        nnkit.set_seed(nn, seed)
    return nn


def load(data_dir: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST rows (N, 784) scaled to [0, 1] and labels (N, 1)."""
    images, labels = load_mnist(data_dir, split)
    return scale(images.reshape(len(images), -1)), labels.reshape(-1, 1)


def make_updater(args: argparse.Namespace) -> SGD:
    """SGD as the flags say (default lr 0.01, momentum 0.9, fixed rate)."""
    return SGD(lr=args.lr, momentum=args.momentum, lr_type=args.lr_type)


def main(argv: list[str] | None = None) -> float:
    """Parses the flags, trains, evaluates, and returns the test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(parser, batch_size=64, lr=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--lr-type", default="fixed", help="learning-rate schedule (e.g. fixed, step)")
    args = parse_flags(parser, argv)
    return run(args, build_mlp(args.seed), make_updater(args), load(args.data_dir, "train"),
               load(args.data_dir, "test"))


if __name__ == "__main__":
    sys.exit(run_main(main))
