"""The Trainer: runs batches with a safe point between every two of them.

The safe point is the only place where stop requests, signals and remote commands take effect,
so a model is never changed in the middle of a batch. Like Caffe's ``Solver::Step`` asking
``GetRequestedAction()`` once per iteration, the loop has one request point and one exit flag:
whoever wants the run to end (``trainer.stop()``, a callback's ``model.stop_training``, a
``stop``/``shutdown`` command, Ctrl-C) calls :meth:`Trainer.request`, and the safe point reads
:attr:`Trainer.requested`. Everything needed to continue
exactly lives in ``state_dict()``: counters, the data-order cursor, the RNG states, the epoch's
running sums and the history; together with the model's own state it makes a checkpoint.

A failing run keeps its work. A batch that goes non-finite (the model raises
:class:`NonFiniteLossError` and is left as before the batch, see
``Sequential.train_on_batch``) writes a checkpoint of that last good state into ``run_dir``,
then, by the ``on_nonfinite`` policy, ends the run with the error (``'stop'``) or pauses it
at the safe point (``'pause'``) with a ``nonfinite`` event: ``resume`` retries the batch with
the settings then in effect, ``skip`` drops it. Any other exception writes an emergency
checkpoint of the last completed batch before it propagates, unless the model says it is
half-updated or holds non-finite parameters.

The Trainer is model-agnostic: it needs ``train_on_batch(x, y, step)``, ``evaluate``,
``updater``, ``stop_training`` and ``checkpoint_tree()``/``restore_tree()`` from the model;
it uses ``half_updated`` and ``nonfinite_param()`` when the model has them. A distributed
trainer (:attr:`Trainer.distributed`, an :class:`nnkit.distributed.World`) gives the model's
``train_on_batch`` this rank's shard of each global batch and sets the model's
``gradient_reducer`` to the world, which the model calls between backward and update.
"""
from __future__ import annotations

import math
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .. import checkpoint
from ..means import RunningMeans
from . import checkpoints
from .callbacks import Callback, CallbackList, History, NonFiniteLossError, ProgressBar, TerminateOnNaN
from .trainer_state import check_checkpoint_tree, check_trainer_state

#: The run directory's checkpoint as the end of ``fit`` and the ``checkpoint`` command name it;
#: :meth:`Trainer.save_checkpoint` writes it as ``checkpoint-<step>.h5`` when rotating.
CHECKPOINT_NAME = checkpoints.LEGACY_NAME
_NOT_UNDONE = "the update could not be undone (no copy is taken when the settings did not change)"

#: What may end a run, weakest first: a stronger request is never downgraded by a weaker one.
#: ``stop`` ends the fit; ``shutdown`` also ends a lingering background run; ``interrupt`` is
#: Ctrl-C or SIGTERM (the run checkpoints and ``nnkit train`` exits 130).
REQUESTS = ("stop", "shutdown", "interrupt")

#: What a run does with a batch that went non-finite: end with the error, or pause for commands.
NONFINITE_POLICIES = ("stop", "pause")


def check_policy(on_nonfinite: str) -> str:
    """``on_nonfinite`` if it is one of :data:`NONFINITE_POLICIES`, else ValueError."""
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, "
                         f"got {on_nonfinite!r}")
    return on_nonfinite


def split_validation(x: np.ndarray, y: np.ndarray, split: float | tuple[float, int]
                     ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Splits off the last ``fraction`` of the examples (after a seeded shuffle if a seed is given).

    ``split`` is a fraction, or ``(fraction, seed)``. Returns ``(train, validation)`` pairs.
    """
    fraction, seed = (split, None) if np.isscalar(split) else split
    if not 0 < fraction < 1:
        raise ValueError(f"validation_split must be a fraction in (0, 1), got {fraction}")
    n = len(x)
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    cut = n - max(1, int(round(n * fraction)))
    train_idx, val_idx = order[:cut], order[cut:]
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


class Trainer:
    """Trains a model batch by batch; stoppable from any thread, resumable exactly.

    Attributes:
        current_epoch: index (from 0) of the epoch in progress, or of the next one.
        batch_cursor: batches already done in the current epoch.
        example_cursor: examples already done in the current epoch (the data-order cursor;
            kept in examples so that the batch size may change mid-epoch).
        global_step: batches done since training began (the updater's step).
        batches_in_epoch: the batches the current epoch will have run when this fit leaves it:
            all of them, or fewer when the fit's step target comes first (what a progress
            bar counts to).
        history: the :class:`History` of epoch logs (continued across fit calls and resumes).
        on_nonfinite: the policy for a batch that goes non-finite, ``'stop'`` or ``'pause'``
            (``'pause'`` needs a controller: a run with a command channel).
        last_checkpoint: ``(path, step)`` of the last checkpoint this Trainer wrote or resumed
            from, the way back from an update that could not be undone.
    """

    def __init__(self, model: Any, callbacks: Iterable[Callback] = (), run_dir: str | os.PathLike | None = None,
                 verbose: int = 1, seed: int | None = None, on_nonfinite: str = "stop") -> None:
        self.model = model
        self.on_nonfinite = check_policy(on_nonfinite)
        self.last_checkpoint: tuple[Path, int] | None = None
        self._bad_batch: dict[str, Any] | None = None  # the non-finite batch a paused run may skip
        self.user_callbacks = list(callbacks)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # None: the run directory keeps one checkpoint.h5 (what fit from Python always wrote);
        # N: checkpoint-<step>.h5 files, the newest N kept (nnkit train and the examples).
        self.keep_checkpoints: int | None = None
        # Where a ``load_weights`` command may read from, besides the run directory (a sweep's
        # run directories: ``nnkit train --load-root``); see Controller.load_source.
        self.load_roots: list[Path] = []
        self.verbose = verbose
        self.current_epoch = 0
        self.batch_cursor = 0
        self.example_cursor = 0
        self.global_step = 0
        self.batches_in_epoch = 0
        self.batch_size = 32
        self.target_epoch: int | None = None  # the current fit's plan; commands may move it
        self.target_step: int | None = None
        self.controller: Any = None  # acts at every safe point (see nnkit.training.control)
        # An nnkit.distributed.World: each batch is sharded over its ranks (rank 0 steers).
        self.distributed: Any = None
        # Told of each run of this trainer as its channel opens (nnkit.experiments.record).
        self.observers: list[Callable[..., Any]] = []
        self.config_text: str | None = None  # the job config this trains, when one made it (for observers)
        self.history = History()
        self._interactive: list[tuple[int, float | None, float | None]] = []
        self._requested: str | None = None
        self._request_lock = threading.Lock()
        self._shuffle_rng = np.random.default_rng(seed)
        self._epoch_rng_state: dict | None = None  # shuffle state at the start of the epoch
        self.epoch_means = RunningMeans(skip=("batch", "size", "lr"))  # this epoch's batches so far

    # ------------------------------------------------------------------ public API
    @property
    def updater(self) -> Any:
        """The model's updater."""
        return self.model.updater

    @property
    def current_batch(self) -> int:
        """Batches done in the current epoch (same as ``batch_cursor``)."""
        return self.batch_cursor

    def request(self, action: str) -> None:
        """Asks the run to end after the current batch (one of :data:`REQUESTS`). Thread-safe."""
        if action not in REQUESTS:
            raise ValueError(f"unknown request {action!r}; expected one of {', '.join(REQUESTS)}")
        with self._request_lock:
            if self._requested is None or REQUESTS.index(action) > REQUESTS.index(self._requested):
                self._requested = action

    @property
    def requested(self) -> str | None:
        """The pending end request (None: keep training); a callback's ``stop_training`` counts."""
        if self._requested is None and getattr(self.model, "stop_training", False):
            self.request("stop")
        return self._requested

    def clear_request(self) -> None:
        """Forgets the end request: a new fit (or a lingering run extended) trains again."""
        with self._request_lock:
            self._requested = None
        if hasattr(self.model, "stop_training"):
            self.model.stop_training = False

    @property
    def interrupted(self) -> bool:
        """True if Ctrl-C or SIGTERM ended (or is ending) the run."""
        return self._requested == "interrupt"

    def stop(self) -> None:
        """Asks the run to end after the current batch. Thread-safe; callable from anywhere."""
        self.request("stop")

    def interactive_data(self) -> list[tuple[int, float | None, float | None]]:
        """``(epoch, train_error, test_error)`` for every finished epoch (errors = 1 - accuracy)."""
        return list(self._interactive)

    def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int = 32, epochs: int | None = None,
            steps: int | None = None, validation_data: tuple[np.ndarray, np.ndarray] | None = None,
            validation_split: float | tuple[float, int] | None = None, shuffle: bool = True,
            resume: str | os.PathLike | None = None, on_nonfinite: str | None = None) -> History:
        """Trains on ``(x, y)``; returns the History.

        Without ``resume``, runs ``epochs`` more epochs and/or ``steps`` more batches (whichever
        ends first; one epoch if neither is given). With ``resume=path`` the checkpoint's
        model and trainer state are loaded first, and ``epochs``/``steps`` are totals counted
        from the start of training, so the same call that was interrupted finishes its plan.
        ``resume='auto'`` continues from the run directory's latest checkpoint (see
        :mod:`nnkit.training.checkpoints`), or starts afresh when it holds none. A new run
        (nothing trained yet) refuses a run directory holding another run's checkpoints
        unless ``resume`` is given (:class:`~nnkit.training.checkpoints.RunDirectoryInUse`).
        ``on_nonfinite`` (``'stop'`` or ``'pause'``) replaces :attr:`on_nonfinite` if given.
        """
        checkpoint.remove_stale_temporaries(self.run_dir)  # what saves killed mid-write left
        resume = self._resume_point(resume)
        if on_nonfinite is not None:
            self.on_nonfinite = check_policy(on_nonfinite)
        if self.on_nonfinite == "pause" and self.controller is None:
            raise ValueError("fit: on_nonfinite='pause' needs a run that takes commands "
                             "(fit with run_dir= or background=True)")
        if resume is not None:
            self._load_checkpoint(resume)
            self.target_epoch, self.target_step = epochs, steps
        else:
            if epochs is None and steps is None:
                epochs = 1
            self.target_epoch = None if epochs is None else self.current_epoch + epochs
            self.target_step = None if steps is None else self.global_step + steps
        if len(x) != len(y):
            raise ValueError(f"fit: x has {len(x)} examples but y has {len(y)}")
        if validation_split is not None:
            if validation_data is not None:
                raise ValueError("fit: give validation_data or validation_split, not both")
            (x, y), validation_data = split_validation(x, y, validation_split)
        if batch_size < 1:
            raise ValueError(f"fit: batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.clear_request()
        if self.distributed is not None or getattr(self.model, "gradient_reducer", None) is not None:
            self.model.gradient_reducer = self.distributed  # also unset after a distributed fit
        if self.distributed is not None:
            self.distributed.start(self)

        callbacks = [TerminateOnNaN()] if not any(isinstance(c, TerminateOnNaN) for c in self.user_callbacks) else []
        callbacks += [self.history]
        if self.verbose and not any(isinstance(c, ProgressBar) for c in self.user_callbacks):
            callbacks.append(ProgressBar())
        cbs = CallbackList(callbacks + self.user_callbacks, self)

        previous_handlers = self._install_signal_handlers()
        cbs.on_train_begin({})
        epoch_open = False
        failed = True  # until the loop ends without an exception
        try:
            while True:
                self._safe_point()
                if self.finished() or self.requested is not None:
                    break
                if not epoch_open:
                    order = self._epoch_order(len(x), shuffle)
                    self._count_batches(len(x))
                    cbs.on_epoch_begin(self.current_epoch, {})
                    epoch_open = True
                elif self.example_cursor >= len(x):  # ``skip`` dropped the epoch's last batch
                    self._end_epoch(cbs, validation_data, self.batch_size)
                    epoch_open = False
                    continue
                self._count_batches(len(x))  # the batch size may have changed at the safe point
                idx = order[self.example_cursor:self.example_cursor + self.batch_size]
                batch = self.batch_cursor
                cbs.on_batch_begin(batch, {"batch": batch, "size": len(idx)})
                mine = idx if self.distributed is None else self.distributed.shard(idx)
                # The non-finite check reports an overflow (lr=1e300); numpy's RuntimeWarnings
                # would only print the same news first, from deep inside.
                try:
                    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                        logs = self.model.train_on_batch(x[mine], y[mine], step=self.global_step + 1)
                except NonFiniteLossError as exc:
                    if self._nonfinite(exc, batch, len(idx)):  # went back to a checkpoint
                        epoch_open = False
                    continue  # paused: the safe point waits for resume (retry) or skip
                self._bad_batch = None
                self.global_step += 1
                self.batch_cursor += 1
                self.example_cursor += len(idx)
                logs = {"batch": batch, **logs, "lr": self.updater.lr}
                self.epoch_means.add(logs, logs.get("size", 1))
                cbs.on_batch_end(batch, logs)
                if self.example_cursor >= len(x):
                    self._end_epoch(cbs, validation_data, self.batch_size)
                    epoch_open = False
            if self.run_dir is not None:
                self.save_checkpoint(self.run_dir / CHECKPOINT_NAME)
            failed = False
        except NonFiniteLossError:
            raise  # _nonfinite saved what could be saved; from TerminateOnNaN the state is bad
        except Exception as exc:  # not KeyboardInterrupt: a second Ctrl-C aborts at once
            self._emergency_checkpoint(exc)
            raise
        finally:
            self._restore_signal_handlers(previous_handlers)
            # Keras passes logs here too: whether the run failed, and what ended it early.
            cbs.on_train_end({"failed": failed, "requested": self._requested})
        return self.history

    def finished(self) -> bool:
        """True once the plan of the current ``fit`` (its target epoch or step) is reached."""
        return ((self.target_epoch is not None and self.current_epoch >= self.target_epoch)
                or (self.target_step is not None and self.global_step >= self.target_step))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Counters, data-order cursor, RNG states, epoch sums and history (no model state)."""
        return {
            "current_epoch": self.current_epoch,
            "batch_cursor": self.batch_cursor,
            "example_cursor": self.example_cursor,
            "global_step": self.global_step,
            "shuffle_rng": self._shuffle_rng.bit_generator.state,
            "epoch_rng": self._epoch_rng_state,
            "epoch_sums": self.epoch_means.state_dict(),
            "history": self.history.state_dict(),
            "interactive": [list(row) for row in self._interactive],
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "trainer state") -> None:
        """Restores what ``state_dict`` returned (an empty dict: a fresh trainer).

        Everything is checked first (:func:`~nnkit.training.trainer_state.check_trainer_state`),
        so a bad state changes nothing and raises :class:`~nnkit.checkpoint.CheckpointError`
        naming ``source`` and the field.
        """
        state = check_trainer_state(state, source, type(self._shuffle_rng.bit_generator))
        if not state:
            return
        self.current_epoch = state["current_epoch"]
        self.batch_cursor = state["batch_cursor"]
        self.example_cursor = state["example_cursor"]
        self.global_step = state["global_step"]
        if state["shuffle_rng"] is not None:
            self._shuffle_rng.bit_generator.state = state["shuffle_rng"]
        self._epoch_rng_state = state["epoch_rng"]
        self.epoch_means.load_state_dict(state["epoch_sums"])
        self.history.load_state_dict(state["history"])
        self._interactive = [tuple(row) for row in state["interactive"]]

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Writes model and trainer state to ``path`` atomically; returns the path written.

        Without ``path``, or with the run directory's ``checkpoint.h5`` (:data:`CHECKPOINT_NAME`,
        what the end of ``fit`` and the ``checkpoint`` command pass), it writes the run
        directory's checkpoint: ``checkpoint-<step>.h5`` rotated to the newest
        :attr:`keep_checkpoints` when that is set, else ``checkpoint.h5``. A checkpoint written
        into the run directory becomes its ``latest`` (:mod:`nnkit.training.checkpoints`).
        """
        if path is None or self._is_run_checkpoint(path):
            if self.run_dir is None:
                raise ValueError("save_checkpoint: no path given and the trainer has no run directory")
            path = checkpoints.run_checkpoint_path(self.run_dir, self.global_step, self.keep_checkpoints)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save_tree(path, {"model": self.model.checkpoint_tree(), "trainer": self.state_dict()})
        if self.run_dir is not None and path.resolve().parent == self.run_dir.resolve():
            checkpoints.record_checkpoint(self.run_dir, path, self.keep_checkpoints)
        self.last_checkpoint = (path, self.global_step)
        return path

    def _is_run_checkpoint(self, path: str | os.PathLike) -> bool:
        """True for ``run_dir/checkpoint.h5``: callers outside this module (the ``checkpoint``
        command) name the run directory's checkpoint that way."""
        return self.run_dir is not None and Path(path).resolve() == (self.run_dir / CHECKPOINT_NAME).resolve()

    def _resume_point(self, resume: str | os.PathLike | None) -> str | os.PathLike | None:
        """The checkpoint ``fit`` continues from: ``'auto'`` resolved, a run directory's
        files checked (see :meth:`fit`)."""
        fresh = self.global_step == 0  # a trainer that ran or was loaded continues its own run
        if resume is None and not fresh:
            return None
        return checkpoints.check_run_dir(self.run_dir, resume)

    def _load_checkpoint(self, path: str | os.PathLike) -> None:
        """Loads model and trainer state from a checkpoint (``fit(resume=...)``, a rewind).

        The trainer section is checked before the model is touched; anything wrong in the
        file is a CheckpointError naming it."""
        source = os.fspath(path)
        tree = checkpoint.load_tree(path)
        state = check_checkpoint_tree(tree, source, type(self._shuffle_rng.bit_generator))
        with checkpoint.restoring(source):
            self.model.restore_tree(tree["model"], source)
            self.load_state_dict(state, source)
        self.last_checkpoint = (Path(path), self.global_step)

    # ------------------------------------------------------------------ non-finite batches and failures
    def skip_batch(self) -> dict[str, Any]:
        """Drops the batch a paused run refused as non-finite: the ``skip`` command, at a safe
        point. The epoch goes on with the next batch; no step is counted. Returns where the
        dropped batch was (epoch, batch, step, size). ValueError if there is none."""
        if self._bad_batch is None:
            raise ValueError("skip: the run is not paused on a non-finite batch")
        bad, self._bad_batch = self._bad_batch, None
        self.example_cursor += bad["size"]
        self.batch_cursor += 1
        return bad

    def _bad_params(self) -> str | None:
        """The first non-finite parameter, if the model can tell (None: finite or unknown)."""
        find = getattr(self.model, "nonfinite_param", None)
        return None if find is None else find()

    def _describe_last_checkpoint(self) -> str:
        if self.last_checkpoint is None:
            return "the run has no checkpoint to go back to"
        path, step = self.last_checkpoint
        return f"the last checkpoint, {path} (step {step}), is the last good state"

    def _nonfinite(self, exc: NonFiniteLossError, batch: int, size: int) -> bool:
        """Applies the ``on_nonfinite`` policy to a batch the model refused.

        Saves the last good state into the run directory, then raises (``'stop'``, or when
        the state is lost) or pauses the run with a ``nonfinite`` event. Returns True if the
        run went back to its last checkpoint (the epoch's order must be rebuilt).
        """
        step, epoch = self.global_step + 1, self.current_epoch
        message = f"{exc.problem()} at epoch {epoch}, batch {batch} (step {step})"
        if exc.what == "parameter":
            message += f" with learning rate {self.updater.lr:g}"
        saved: Path | None = None
        good = rewound = False  # good: the model holds the last good state
        if exc.restored:
            bad = self._bad_params()
            if bad is not None:  # e.g. changed by a callback: not a state to save
                message += (f"; the parameters were not finite before this batch ({bad}), so no "
                            f"checkpoint was written; {self._describe_last_checkpoint()}")
            else:
                good = True
                message += f"; the parameters are the last good ones (step {self.global_step})"
                if self.run_dir is not None:
                    saved = self.save_checkpoint(self.run_dir / CHECKPOINT_NAME)
                    message += f", saved in {saved}"
                else:
                    message += "; no checkpoint was written (the run has no run directory)"
        elif self.on_nonfinite == "pause" and self.last_checkpoint is not None:
            path, _ = self.last_checkpoint
            self._load_checkpoint(path)
            good = rewound = True
            message += (f"; {_NOT_UNDONE}, so the run went back to its last checkpoint, {path} "
                        f"(step {self.global_step})")
        else:
            message += f"; {_NOT_UNDONE}: {self._describe_last_checkpoint()}"
        fields = {"what": exc.what, "where": exc.where, "value": exc.value, "step": step}
        if self.on_nonfinite == "stop" or not good:
            raise NonFiniteLossError(message, **fields, restored=exc.restored or rewound,
                                     checkpoint=None if saved is None else str(saved)) from exc
        self._bad_batch = None if rewound else {"epoch": epoch, "batch": batch, "step": step,
                                                "size": size}
        bus = self.controller.bus
        bus.emit("nonfinite", **fields, epoch=epoch, batch=batch,
                 last_good_step=self.global_step, lr=self.updater.lr, rewound=rewound,
                 checkpoint=None if saved is None else str(saved), message=message)
        self.controller.paused = True  # as a ``pause`` command would; resume retries, skip drops
        bus.emit("status", state="paused", step=self.global_step, reason="nonfinite")
        return rewound

    def _emergency_checkpoint(self, exc: Exception) -> None:
        """Saves the last completed batch into the run directory before ``exc`` ends the run;
        a note on ``exc`` says where, or why not (a half-updated or non-finite model)."""
        if self.run_dir is None:
            return
        if getattr(self.model, "half_updated", False):
            note = ("no emergency checkpoint: the exception came from inside the update, some "
                    f"layers are updated and others not; {self._describe_last_checkpoint()}")
        elif (bad := self._bad_params()) is not None:
            note = (f"no emergency checkpoint: {bad} is not finite; "
                    f"{self._describe_last_checkpoint()}")
        else:
            try:
                path = self.save_checkpoint(self.run_dir / CHECKPOINT_NAME)
            except Exception as failure:  # noqa: BLE001  (report the first failure, not this one)
                note = f"the emergency checkpoint failed: {type(failure).__name__}: {failure}"
            else:
                note = f"emergency checkpoint of step {self.global_step}: {path}"
        exc.add_note(note)

    # ------------------------------------------------------------------ internals
    def _safe_point(self) -> None:
        """Between two batches: where a controller (commands, pause) may act on the run."""
        if self.controller is not None:
            self.controller.safe_point(self)
        if self.distributed is not None:  # rank 0's commands reach every rank at this batch
            self.distributed.sync(self)

    def _count_batches(self, n: int) -> None:
        left = math.ceil((n - self.example_cursor) / self.batch_size)
        if self.target_step is not None:  # run.steps=300 of a 938-batch epoch runs 300 of them
            left = max(0, min(left, self.target_step - self.global_step))
        self.batches_in_epoch = self.batch_cursor + left

    def _epoch_order(self, n: int, shuffle: bool) -> np.ndarray:
        """The example order of the current epoch, rebuilt identically when resuming mid-epoch."""
        if self.example_cursor >= n:  # the data changed size: the old epoch cannot continue
            self.batch_cursor = self.example_cursor = 0
        if self.example_cursor == 0:
            self._epoch_rng_state = self._shuffle_rng.bit_generator.state
            self.epoch_means.reset()
        elif self._epoch_rng_state is not None:
            self._shuffle_rng.bit_generator.state = self._epoch_rng_state
        if not shuffle:
            return np.arange(n)
        return self._shuffle_rng.permutation(n)

    def _end_epoch(self, cbs: CallbackList, validation_data, batch_size: int) -> None:
        logs = self.epoch_means.means()
        logs["lr"] = self.updater.lr
        if validation_data is not None:
            cbs.on_test_begin({})
            val = self.model.evaluate(*validation_data, batch_size=batch_size)
            cbs.on_test_end(val)
            logs.update({f"val_{k}": v for k, v in val.items()})
        train_acc, val_acc = logs.get("accuracy"), logs.get("val_accuracy")
        self._interactive.append((self.current_epoch,
                                  None if train_acc is None else 1.0 - train_acc,
                                  None if val_acc is None else 1.0 - val_acc))
        cbs.on_epoch_end(self.current_epoch, logs)
        self.current_epoch += 1
        self.batch_cursor = self.example_cursor = 0

    def _install_signal_handlers(self) -> dict[int, Any]:
        """First Ctrl-C (or SIGTERM) stops at the next safe point; a second Ctrl-C aborts at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def first(signum: int, frame: Any) -> None:
            self.request("interrupt")
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, first)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
