"""Callbacks: a flat list of hooks the Trainer calls at its safe points (Keras style).

Every hook takes ``logs``, a dict of plain numbers. Batch logs carry ``batch`` (index in the
epoch), ``size``, ``loss``, the metrics (``accuracy``) and ``lr``; epoch logs carry the epoch
means of those and, with validation data, ``val_loss`` and ``val_<metric>``.

A callback sees ``self.trainer`` (counters, ``save_checkpoint``, ``stop()``) and
``self.model``; setting ``self.model.stop_training = True`` ends the run after the current
batch.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from . import checkpoints

if TYPE_CHECKING:
    from .trainer import Trainer

Logs = dict[str, Any]


class NonFiniteLossError(FloatingPointError):
    """Training stopped because a batch's loss, a gradient or an updated parameter became NaN
    or infinite.

    Attributes (None when the raiser did not know them):
        what: ``'input'`` or ``'target'`` (the batch's data), ``'loss'``, ``'gradient'`` (before
            any update) or ``'parameter'`` (after the update).
        where: the full name (``layer/param``) of the first non-finite gradient or parameter,
            or the example of the batch (``example 5 of the batch``).
        value: the non-finite loss.
        step: the updater step of the bad batch (1-based).
        restored: True if the model is as it was before the bad batch (parameters, updater
            state, layer state and RNGs); False if the bad update could not be undone (or the
            raiser does not say).
        checkpoint: the checkpoint of the last good state written for this failure, if any.
    """

    def __init__(self, message: str, *, what: str | None = None, where: str | None = None,
                 value: float | None = None, step: int | None = None, restored: bool = False,
                 checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.what, self.where, self.value, self.step = what, where, value, step
        self.restored, self.checkpoint = restored, checkpoint

    def problem(self) -> str:
        """What went non-finite, in words: ``loss is nan``, ``the gradient of dense_1/weight is
        not finite``, ``dense_1/weight is not finite after the update``."""
        if self.what in ("input", "target"):
            return f"the {self.what} is not finite ({self.where})"
        if self.what == "gradient":
            return f"the gradient of {self.where} is not finite"
        if self.what == "parameter":
            return f"{self.where} is not finite after the update"
        return f"loss is {self.value}" if self.value is not None else str(self)


class Callback:
    """Base class: override the hooks you need; each receives the ``logs`` dict."""

    trainer: "Trainer"

    @property
    def model(self) -> Any:
        """The model being trained."""
        return self.trainer.model

    def set_trainer(self, trainer: "Trainer") -> None:
        """Called once by the Trainer before ``on_train_begin``."""
        self.trainer = trainer

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """At the start of ``fit``."""

    def on_train_end(self, logs: Logs | None = None) -> None:
        """At the end of ``fit``, also when it was stopped."""

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Before the first batch of an epoch."""

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """After the last batch of an epoch and its validation."""

    def on_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Before a training batch."""

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """After a training batch and its update."""

    def on_test_begin(self, logs: Logs | None = None) -> None:
        """Before a validation pass."""

    def on_test_end(self, logs: Logs | None = None) -> None:
        """After a validation pass; ``logs`` holds its metrics."""


class CallbackList:
    """Calls every hook of every callback, in order."""

    def __init__(self, callbacks: Iterable[Callback], trainer: "Trainer") -> None:
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.set_trainer(trainer)

    def __getattr__(self, hook: str) -> Callable[..., None]:
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args: Any) -> None:
            for cb in self.callbacks:
                getattr(cb, hook)(*args)
        return call


def _monitor_mode(monitor: str, mode: str) -> Callable[[float, float], bool]:
    """``better(new, best)`` for a monitored metric: lower is better for losses/errors."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.startswith("fmeasure")) else "min"
    return (lambda new, best: new > best) if mode == "max" else (lambda new, best: new < best)


class _BestValue:
    """Tracks the best value of one metric with a minimum improvement ``min_delta``."""

    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        self.monitor = monitor
        self._better = _monitor_mode(monitor, mode)
        self.min_delta = abs(min_delta)
        self.sign = 1.0 if self._better(1.0, 0.0) else -1.0
        self.best = -math.inf * self.sign

    def value(self, logs: Logs | None) -> float | None:
        """The monitored value in ``logs``, or None (with a warning) when it is absent."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            print(f"warning: monitored metric {self.monitor!r} is not in the logs "
                  f"(available: {', '.join(sorted(logs or {}))})", file=sys.stderr)
        return value

    def improved(self, value: float) -> bool:
        """True, and records the new best, when ``value`` beats the best by ``min_delta``."""
        if self._better(value - self.sign * self.min_delta, self.best):
            self.best = value
            return True
        return False


class History(Callback):
    """Records the epoch logs: ``history.history['loss']`` is the list of epoch losses."""

    def __init__(self) -> None:
        self.epoch: list[int] = []
        self.history: dict[str, list[float]] = {}

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def state_dict(self) -> dict[str, Any]:
        """The recorded epochs and metrics, for checkpoints."""
        return {"epoch": list(self.epoch), "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""
        self.epoch = list(state.get("epoch", []))
        self.history = {k: list(v) for k, v in state.get("history", {}).items()}


class TerminateOnNaN(Callback):
    """Stops the run with :class:`NonFiniteLossError` when a batch loss is NaN or infinite.

    A safety net for models whose ``train_on_batch`` does not check itself: a
    :class:`~nnkit.Sequential` raises before its update (and the Trainer then applies its
    ``on_nonfinite`` policy), so this hook never sees a non-finite loss from one. Here the
    update has already happened: the error names the epoch and batch, and is raised from the
    batch hook, so no checkpoint is written after the bad batch.
    """

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            t = self.trainer
            raise NonFiniteLossError(
                f"loss is {loss} at epoch {t.current_epoch}, batch {batch} (step "
                f"{t.global_step}); training stopped and no checkpoint was written after it")


class ProgressBar(Callback):
    """A progress bar per epoch (``tqdm.auto``: a terminal bar, or a widget in a notebook).

    Shows loss, accuracy, learning rate and images/s, refreshed at most every ``mininterval``
    seconds. When the output is not a terminal (a log file, CI) it prints a plain line every
    ``log_every`` seconds and at the end of each epoch instead. Epochs and batches count from 1
    ("epoch 1", "batch 3/300"); the bar counts to the batches the epoch will run
    (``Trainer.batches_in_epoch``: fewer than the epoch's when a step target ends it first).
    Numbers have 4 significant digits, so a diverging loss (1.3e30) stays short.
    """

    def __init__(self, mininterval: float = 0.2, log_every: float = 10.0, file: Any = None) -> None:
        self.mininterval = mininterval
        self.log_every = log_every
        self.file = file

    def _out(self) -> Any:
        return self.file if self.file is not None else sys.stderr

    def on_train_begin(self, logs: Logs | None = None) -> None:
        out = self._out()
        self.interactive = hasattr(out, "isatty") and out.isatty() or _in_notebook()
        self.bar = None

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self.seen = 0  # images this bar has seen, for images/s (the means are the trainer's)
        self.start = self.last_line = time.perf_counter()
        total = self.trainer.batches_in_epoch
        if self.interactive:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=self.trainer.batch_cursor, desc=f"epoch {epoch + 1}",
                            mininterval=self.mininterval, file=self.file, leave=True,
                            dynamic_ncols=True)

    def _summary(self, logs: Logs) -> dict[str, str]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        means = self.trainer.epoch_means
        summary = {"loss": f"{means.mean('loss'):.4g}"}
        if "accuracy" in logs:
            summary["acc"] = f"{means.mean('accuracy'):.4g}"
        if "lr" in logs:
            summary["lr"] = f"{logs['lr']:.3g}"
        summary["img/s"] = f"{self.seen / elapsed:.0f}"
        return summary

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        logs = logs or {}
        n = logs.get("size", 1)
        self.seen += n
        if self.bar is not None:
            if self.bar.total != self.trainer.batches_in_epoch:  # run_until or set batch_size
                self.bar.total = self.trainer.batches_in_epoch
            self.bar.update(1)
            if self.bar.n == self.bar.total or time.perf_counter() - self.last_line > self.mininterval:
                self.bar.set_postfix(self._summary(logs), refresh=False)
                self.last_line = time.perf_counter()
        elif time.perf_counter() - self.last_line >= self.log_every:
            self._line(f"epoch {self.trainer.current_epoch + 1} batch {batch + 1}/"
                       f"{self.trainer.batches_in_epoch}", self._summary(logs))
            self.last_line = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        logs = logs or {}
        extra = {k: f"{v:.4g}" for k, v in logs.items() if k.startswith("val_") and v is not None}
        if self.bar is not None:
            self.bar.set_postfix({**self._summary(logs), **extra})
            self.bar.close()
            self.bar = None
        else:
            self._line(f"epoch {epoch + 1} done", {**self._summary(logs), **extra})

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self.bar is not None:  # stopped mid-epoch
            self.bar.close()
            self.bar = None

    def _line(self, head: str, fields: dict[str, str]) -> None:
        print(head + "  " + "  ".join(f"{k} {v}" for k, v in fields.items()), file=self._out(),
              flush=True)


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where tqdm.auto draws a widget)."""
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except AttributeError:
        return False


class ModelCheckpoint(Callback):
    """Writes a full, resumable checkpoint every ``every_n_batches`` or ``every_n_epochs``.

    ``filepath`` may use ``{epoch}``, ``{batch}``, ``{step}`` and any epoch log key, e.g.
    ``"ckpt-{epoch:03d}-{val_loss:.3f}.h5"`` (epochs count from 1 here). Without ``filepath``
    the checkpoints go into the run directory (``fit(run_dir=...)``): the run directory's
    checkpoint (``checkpoint-<step>.h5``, rotated, when the trainer has ``keep_checkpoints``),
    or with ``save_best_only`` a ``best-<step>.h5`` file, kept apart and never rotated away
    (:mod:`nnkit.training.checkpoints`). With ``save_best_only``, an epoch checkpoint is
    written only when ``monitor`` improved. Writes are atomic: a crash mid-save leaves the
    previous file intact.
    """

    def __init__(self, filepath: str | os.PathLike | None = None, monitor: str = "val_loss",
                 save_best_only: bool = False, mode: str = "auto",
                 every_n_epochs: int | None = 1, every_n_batches: int | None = None) -> None:
        self.filepath = None if filepath is None else os.fspath(filepath)
        self.save_best_only = save_best_only
        self.every_n_epochs = every_n_epochs
        self.every_n_batches = every_n_batches
        self._monitor = _BestValue(monitor, mode, 0.0)
        self.last_saved: str | None = None

    def on_train_begin(self, logs: Logs | None = None) -> None:
        # Fail before training, not at the first save.
        if self.filepath is None and self.trainer.run_dir is None:
            raise ValueError("ModelCheckpoint() without a filepath writes into the run directory: "
                             "give fit run_dir=..., or a filepath")

    def _save(self, fields: Logs, best: bool = False) -> None:
        t = self.trainer
        if self.filepath is not None:
            path = self.filepath.format(epoch=t.current_epoch + 1, batch=t.batch_cursor,
                                        step=t.global_step, **fields)
        elif best:
            path = checkpoints.best_checkpoint_path(t.run_dir, t.global_step)
        else:
            path = None  # the trainer names and rotates the run directory's checkpoint
        saved = t.save_checkpoint(path)
        self.last_saved = path if isinstance(path, str) else str(saved)  # the formatted name as given

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if self.every_n_batches and self.trainer.global_step % self.every_n_batches == 0:
            self._save({k: v for k, v in (logs or {}).items() if k != "batch"})

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if not self.every_n_epochs or (epoch + 1) % self.every_n_epochs:
            return
        if self.save_best_only:
            value = self._monitor.value(logs)
            if value is None or not self._monitor.improved(value):
                return
        self._save(logs or {}, best=self.save_best_only)


class EarlyStopping(Callback):
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights`` the parameters of the best epoch are put back at the end.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", restore_best_weights: bool = False) -> None:
        self._monitor = _BestValue(monitor, mode, min_delta)
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: list[np.ndarray] | None = None

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self.wait = 0
        self.stopped_epoch = None

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        value = self._monitor.value(logs)
        if value is None:
            return
        if self._monitor.improved(value):
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = [w.copy() for w in self.model.get_weights()]
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self.restore_best_weights and self.best_weights is not None and self.stopped_epoch is not None:
            self.model.set_weights(self.best_weights)


class LearningRateScheduler(Callback):
    """Sets the learning rate at each epoch start to ``schedule(epoch, lr)`` (an override)."""

    def __init__(self, schedule: Callable[[int, float], float]) -> None:
        self.schedule = schedule

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        updater = self.trainer.updater
        updater.lr = float(self.schedule(epoch, updater.lr))


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when ``monitor`` stalls for ``patience`` epochs.

    After a reduction it waits ``cooldown`` epochs; the rate never goes below ``min_lr``.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0,
                 min_lr: float = 0.0) -> None:
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        self._monitor = _BestValue(monitor, mode, min_delta)
        self.factor, self.patience, self.cooldown, self.min_lr = factor, patience, cooldown, min_lr
        self.wait = self.cooldown_left = 0

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        value = self._monitor.value(logs)
        if value is None:
            return
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.wait = 0
        if self._monitor.improved(value):
            self.wait = 0
            return
        if self.cooldown_left == 0:
            self.wait += 1
            if self.wait >= self.patience:
                updater = self.trainer.updater
                updater.lr = max(updater.lr * self.factor, self.min_lr)
                self.cooldown_left = self.cooldown
                self.wait = 0


class CSVLogger(Callback):
    """Appends one row per epoch (epoch and every epoch log) to a CSV file, flushed each time."""

    def __init__(self, filename: str | os.PathLike, separator: str = ",", append: bool = False) -> None:
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = append
        self.keys: list[str] | None = None

    def on_train_begin(self, logs: Logs | None = None) -> None:
        exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        if exists:
            with open(self.filename, newline="") as f:
                header = f.readline().strip()
            self.keys = header.split(self.separator)[1:] if header else None
        self.file = open(self.filename, "a" if self.append else "w", newline="")
        self.writer = csv.writer(self.file, delimiter=self.separator)
        self.header_written = exists

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        if not self.header_written:
            self.writer.writerow(["epoch", *self.keys])
            self.header_written = True
        self.writer.writerow([epoch, *("" if logs.get(k) is None else logs[k] for k in self.keys)])
        self.file.flush()

    def on_train_end(self, logs: Logs | None = None) -> None:
        self.file.close()


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_batch_end=lambda batch, logs: ...)``."""

    HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_batch_begin",
             "on_batch_end", "on_test_begin", "on_test_end")

    def __init__(self, **hooks: Callable[..., None]) -> None:
        unknown = set(hooks) - set(self.HOOKS)
        if unknown:
            raise TypeError(f"LambdaCallback: unknown hook(s) {sorted(unknown)}; "
                            f"valid: {', '.join(self.HOOKS)}")
        for name, fn in hooks.items():
            setattr(self, name, fn)
