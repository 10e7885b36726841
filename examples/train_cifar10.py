"""Train the CIFAR-10 CNN (Caffe's cifar10_full shape: conv-pool-LRN x3, dense) on real CIFAR-10.

Inputs have the training-set mean image subtracted, as in Caffe. The default is the per-layer
loop (examples/common.py); ``--fit`` trains through ``Sequential.fit``. Run:

    python examples/train_cifar10.py --data-dir ../shared/data --epochs 1
    python examples/train_cifar10.py --data-dir ../shared/data --steps 20     # a quick check
    python examples/train_cifar10.py --data-dir ../shared/data --fit --epochs 10 --run-dir runs/cifar
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import nnkit
from nnkit import (SGD, LRN2D, Activation, AvgPooling2D, Convolution2D, Dense, ImageInput,
                   MaxPooling2D)
from common import add_flags, parse_flags, run, run_main
from nnkit.datasets import load_cifar10, mean_image, subtract_mean


def build_cnn(seed: int | None = 0) -> list[nnkit.Layer]:
    """The layers of the CNN, input first; ``seed`` fixes the initial weights."""
    nn = [ImageInput(32, 32, 3),
          Convolution2D(32, 5, 1, 2, w_std=0.0001, b_lr=2), MaxPooling2D(pool_size=(3, 3), stride=2),
          Activation("relu"), LRN2D(3, alpha=0.00005, beta=0.75),
          Convolution2D(32, 5, 1, 2, b_lr=2), Activation("relu"),
          AvgPooling2D(pool_size=(3, 3), stride=2), LRN2D(3, alpha=0.00005, beta=0.75),
          Convolution2D(64, 5, 1, 2), Activation("relu"), AvgPooling2D(pool_size=(3, 3), stride=2),
          Dense(10, w_wd=250, b_lr=2, b_wd=0)]
    if seed is not None:
        nnkit.set_seed(nn, seed)
    return nn


def make_updater(lr: float | None = None) -> SGD:
    """The issue's schedule (0.001, then 1e-4 from step 60000, 1e-5 from 65000), or a fixed lr."""
    if lr is not None:
        return SGD(lr=lr, decay=0.004, momentum=0.9)
    return SGD(decay=0.004, momentum=0.9, lr_type="manual", step=(0, 60000, 65000),
               step_lr=(0.001, 0.0001, 0.00001))


def load(data_dir: str | None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Train and test images (N, 3, 32, 32) minus the training mean image, labels (N, 1)."""
    x, y = load_cifar10(data_dir, "train")
    xt, yt = load_cifar10(data_dir, "test")
    mean = mean_image(x)
    return (subtract_mean(x, mean), y.reshape(-1, 1)), (subtract_mean(xt, mean), yt.reshape(-1, 1))


def main(argv: list[str] | None = None) -> float:
    """Parses the flags, trains, evaluates, and returns the test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(parser, batch_size=100, lr=None)  # no --lr: the manual schedule
    args = parse_flags(parser, argv)
    train_data, test_data = load(args.data_dir)
    return run(args, build_cnn(args.seed), make_updater(args.lr), train_data, test_data)


if __name__ == "__main__":
    sys.exit(run_main(main))
