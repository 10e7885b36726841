"""The per-layer training loop the examples share: feed, compute, gradient, update, by hand.

Written against the public per-layer API only (``Feed``, ``ComputeFeature``,
``ComputeGradient``, ``Update``), so it doubles as a reference for users' own loops.
"""
from __future__ import annotations

import time

import numpy as np

import nnkit
from nnkit import LabelInput, Loss


def train(nn: list[nnkit.Layer], sgd: nnkit.Updater, x: np.ndarray, y: np.ndarray,
          bsize: int = 64, epochs: int = 1, steps: int | None = None, disp_freq: int = 100,
          seed: int = 0) -> int:
    """The per-layer training loop; returns the number of batches run."""
    label, loss = LabelInput(), Loss("softmaxloss")
    order_rng = np.random.default_rng(seed)
    batches_per_epoch = x.shape[0] // bsize
    total = steps if steps is not None else epochs * batches_per_epoch
    step = 0
    while step < total:
        order = order_rng.permutation(x.shape[0])  # a fresh shuffle every epoch
        xs, ys = x[order], y[order]
        for i in range(min(batches_per_epoch, total - step)):
            xb, yb = xs[i * bsize:(i + 1) * bsize, :], ys[i * bsize:(i + 1) * bsize, :]
            nn[0].Feed(xb)
            label.Feed(yb)
            for h in range(1, len(nn)):
                nn[h].ComputeFeature(nn[h - 1])
            loss.ComputeFeature(nn[-1], label)
            step += 1
            if step % disp_freq == 0:
                print(f"step {step:6d}  lr {sgd.lr:.6f}  ", end="")
                loss.display()
            loss.ComputeGradient()
            for h in range(len(nn) - 1, 0, -1):
                nn[h].ComputeGradient()
                sgd.Update(step, nn[h])
    return step


def evaluate(nn: list[nnkit.Layer], x: np.ndarray, y: np.ndarray, bsize: int = 500) -> float:
    """Test accuracy in evaluation mode (the last batch may be smaller)."""
    label, loss = LabelInput(), Loss("softmaxloss")
    for layer in nn:
        layer.eval()
    correct = 0.0
    for start in range(0, x.shape[0], bsize):
        nn[0].Feed(x[start:start + bsize])
        label.Feed(y[start:start + bsize])
        for h in range(1, len(nn)):
            nn[h].ComputeFeature(nn[h - 1])
        loss.ComputeFeature(nn[-1], label)
        correct += loss.accuracy * label.data.shape[0]
    for layer in nn:
        layer.train()
    return correct / x.shape[0]


def train_and_report(nn: list[nnkit.Layer], sgd: nnkit.Updater, train_data: tuple, test_data: tuple,
                     bsize: int, epochs: int, steps: int | None, disp_freq: int, seed: int) -> float:
    """Trains, evaluates on the test set, prints wall time and accuracy; returns the accuracy."""
    start = time.perf_counter()
    steps = train(nn, sgd, *train_data, bsize, epochs, steps, disp_freq, seed)
    elapsed = time.perf_counter() - start
    accuracy = evaluate(nn, *test_data)
    print(f"trained {steps} batches of {bsize} in {elapsed:.1f} s "
          f"({steps * bsize / elapsed:.0f} images/s); test accuracy {accuracy:.4f}")
    return accuracy
