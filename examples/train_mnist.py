"""Train the MNIST MLP (784-2500-2000-1500-1000-500-10, stanh) layer by layer.

This is nnkit's interactive style: feed a batch, compute every layer's feature, then every
layer's gradient and update, by hand. Run:

    python examples/train_mnist.py --data-dir ../shared/data --epochs 1
    python examples/train_mnist.py --data-dir ../shared/data --steps 50     # a quick check
"""
from __future__ import annotations

import argparse

import numpy as np

import nnkit
from nnkit import SGD, Activation, Dense, ImageInput
from nnkit.datasets import load_mnist
from perlayer import train_and_report


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
    return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels.reshape(-1, 1)


def main(argv: list[str] | None = None) -> float:
    """Parses the flags, trains, evaluates, and returns the test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder holding mnist/ (default: $NNKIT_DATA or "
                        "~/.nnkit/datasets)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, help="stop after this many batches (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--lr-type", default="fixed", help="learning-rate schedule (e.g. fixed, step)")
    parser.add_argument("--disp-freq", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    nn = build_mlp(args.seed)
    sgd = SGD(lr=args.lr, momentum=args.momentum, lr_type=args.lr_type)
    return train_and_report(nn, sgd, load(args.data_dir, "train"), load(args.data_dir, "test"),
                            args.batch_size, args.epochs, args.steps, args.disp_freq, args.seed)


if __name__ == "__main__":
    main()
