"""What the examples share: their flags, the per-layer training loop, and the ``fit`` path.

The per-layer loop is written against the public per-layer API only (``Feed``,
``ComputeFeature``, ``ComputeGradient``, ``Update``), so it doubles as a reference for
users' own loops. ``--fit`` trains the same layers through ``Sequential.fit`` instead, which
adds exact resume (momentum, data order, RNG states) from ``--run-dir`` checkpoints.

Errors are reported like the ``nnkit`` command line's (:func:`run_main`): one line naming the
problem, exit 2 for a bad argument or missing data, 1 for a failure during the run. A
``--run-dir`` holding another run's checkpoints is refused, as by ``nnkit train``, unless
``--resume`` (``auto``: continue it) or ``--overwrite`` says what to do.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

import nnkit
from nnkit import LabelInput, Loss, Sequential
from nnkit.checkpoint import CheckpointError
from nnkit.training import checkpoints
from nnkit.training.events import EVENTS_FILE

PARAMS_FILE = "params.h5"


class UsageError(Exception):
    """A bad argument (exit status 2)."""


def add_flags(parser: argparse.ArgumentParser, batch_size: int, lr: float | None) -> None:
    """The flags both examples take."""
    parser.add_argument("--data-dir", help="folder holding the dataset (default: $NNKIT_DATA "
                        "or ~/.nnkit/datasets)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, help="stop after this many batches (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--fit", action="store_true",
                        help="train through Sequential.fit instead of the per-layer loop")
    parser.add_argument("--run-dir", help="write checkpoints here (at the end, and on Ctrl-C); "
                        "one holding another run's checkpoints needs --resume or --overwrite")
    parser.add_argument("--resume", metavar="CKPT|RUN_DIR|auto", help="continue from this "
                        "checkpoint (--fit: a checkpoint-<step>.h5 or checkpoint.h5, exact; "
                        "per-layer: a params.h5, parameters and step only), or a run directory's "
                        "latest; 'auto': --run-dir's latest, or a fresh start if it has none")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in --run-dir, deleting its checkpoints first")
    parser.add_argument("--disp-freq", type=int, default=100, help="per-layer loop: batches "
                        "between loss displays when the output is not a terminal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")


def parse_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parses and checks the flags; ``args.resume_from`` is the file to continue from (or None).

    Everything a run could refuse is refused here, before the data is read.
    """
    args = parser.parse_args(argv)
    for name in ("epochs", "steps", "batch_size", "disp_freq"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.resume and args.overwrite:
        raise UsageError("--overwrite starts over and --resume continues: give one of them")
    if (args.resume == "auto" or args.overwrite) and not args.run_dir:
        raise UsageError(f"--{'resume auto' if args.resume else 'overwrite'} needs --run-dir")
    args.resume_from = _resume_from(args)
    return args


def _resume_from(args: argparse.Namespace) -> str | None:
    """The checkpoint (``--fit``) or parameter file (per-layer loop) a run continues from."""
    run_dir = None if args.run_dir is None else Path(args.run_dir)
    if run_dir is not None and not (args.resume or args.overwrite) and (run_dir / PARAMS_FILE).is_file():
        # A per-layer run's parameters count as its checkpoint.
        raise checkpoints.RunDirectoryInUse(f"{run_dir} holds the parameters of an earlier run "
                                            f"({PARAMS_FILE}); {checkpoints.FLAG_CHOICES}")
    if args.fit or not args.resume:
        found = checkpoints.check_run_dir(run_dir, args.resume, args.overwrite, checkpoints.FLAG_CHOICES)
        return None if found is None else str(found)
    path = Path(args.run_dir if args.resume == "auto" else args.resume)
    if path.is_dir():  # the per-layer loop keeps one params.h5 per run directory
        path = path / PARAMS_FILE
    return None if args.resume == "auto" and not path.is_file() else str(path)


def run_main(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Runs an example's ``main`` and reports like the ``nnkit`` command line; returns the exit status.

    A bad argument, missing data or a missing checkpoint: one line and status 2; a failure
    during the run: one line (``--debug``: the traceback too) and status 1; a second Ctrl-C: 130.
    """
    prog = Path(sys.argv[0]).name
    try:
        main(argv)
    except (UsageError, checkpoints.RunDirectoryInUse, FileNotFoundError, CheckpointError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (every failure is reported the same way)
        if "--debug" in (sys.argv[1:] if argv is None else argv):
            traceback.print_exc()
        print(f"{prog}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def train_per_layer(nn: list[nnkit.Layer], sgd: nnkit.Updater, x: np.ndarray, y: np.ndarray,
                    bsize: int = 64, epochs: int = 1, steps: int | None = None, disp_freq: int = 100,
                    seed: int = 0, start_step: int = 0, run_dir: str | None = None) -> int:
    """The per-layer training loop; returns the step reached.

    Runs ``steps`` batches (or ``epochs`` epochs) after ``start_step``. Ctrl-C stops after the
    current batch; with ``run_dir`` the parameters are saved there at the end either way.
    """
    label, loss = LabelInput(), Loss("softmaxloss")
    order_rng = np.random.default_rng(seed)
    batches_per_epoch = x.shape[0] // bsize
    total = steps if steps is not None else epochs * batches_per_epoch
    bar = tqdm(total=total, desc="training", mininterval=0.5, disable=not sys.stderr.isatty())
    step = start_step
    try:
        while step < start_step + total:
            order = order_rng.permutation(x.shape[0])  # a fresh shuffle every epoch
            xs, ys = x[order], y[order]
            for i in range(min(batches_per_epoch, start_step + total - step)):
                xb, yb = xs[i * bsize:(i + 1) * bsize, :], ys[i * bsize:(i + 1) * bsize, :]
                nn[0].Feed(xb)
                label.Feed(yb)
                for h in range(1, len(nn)):
                    nn[h].ComputeFeature(nn[h - 1])
                loss.ComputeFeature(nn[-1], label)
                step += 1
                if bar.disable and step % disp_freq == 0:
                    print(f"step {step:6d}  lr {sgd.lr:.6f}  ", end="")
                    loss.display()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.loss:.4f}", acc=f"{loss.accuracy:.3f}", lr=f"{sgd.lr:.2g}",
                                refresh=False)
                loss.ComputeGradient()
                for h in range(len(nn) - 1, 0, -1):
                    nn[h].ComputeGradient()
                    sgd.Update(step, nn[h])
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {step}", file=sys.stderr)
    finally:
        bar.close()
        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            nnkit.save_model_parameter(step, Path(run_dir) / PARAMS_FILE, nn)
    return step


def evaluate_per_layer(nn: list[nnkit.Layer], x: np.ndarray, y: np.ndarray, bsize: int = 500) -> float:
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


def run(args: argparse.Namespace, nn: list[nnkit.Layer], sgd: nnkit.Updater,
        train_data: tuple[np.ndarray, np.ndarray], test_data: tuple[np.ndarray, np.ndarray]) -> float:
    """Trains ``nn`` (input layer first) as the flags say, evaluates, prints; returns accuracy."""
    (x, y), (xt, yt) = train_data, test_data
    nnkit.name_layers(nn)  # checkpoints name parameters by layer
    if args.overwrite:  # only now that the data is read: a bad start deletes nothing
        checkpoints.clear_run_dir(args.run_dir, also=(EVENTS_FILE, PARAMS_FILE))
    start = time.perf_counter()
    if args.fit:
        model = Sequential(nn, seed=args.seed)
        model.compile(sgd, "softmaxloss", ["accuracy"])
        model.trainer_for_fit().keep_checkpoints = checkpoints.DEFAULT_KEEP  # checkpoint-<step>.h5
        # Test error after every epoch, to watch; the final number below is the same evaluation.
        model.fit(x, y, batch_size=args.batch_size, epochs=None if args.steps else args.epochs,
                  steps=args.steps, validation_data=(xt, yt), run_dir=args.run_dir,
                  resume=args.resume_from, verbose=1)
        steps = model.trainer.global_step
        accuracy = model.evaluate(xt, yt, batch_size=500)["accuracy"]
    else:
        start_step = 0
        if args.resume_from:
            evaluate_per_layer(nn, xt[:1], yt[:1])  # builds the layers so they can take the params
            start_step = nnkit.load_model_parameter(args.resume_from, nn)
        steps = train_per_layer(nn, sgd, x, y, args.batch_size, args.epochs, args.steps,
                                args.disp_freq, args.seed, start_step, args.run_dir)
        accuracy = evaluate_per_layer(nn, xt, yt)
    elapsed = time.perf_counter() - start
    print(f"reached step {steps} (batch {args.batch_size}) in {elapsed:.1f} s; "
          f"test accuracy {accuracy:.4f}")
    return accuracy
