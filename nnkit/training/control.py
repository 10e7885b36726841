"""The command side of a run: commands queued from any thread, process or file, applied by the
Trainer at its safe point between two batches, each answered by an ``ack`` or an ``error``.

A command is a JSON object ``{"id": "...", "command": "set", "args": {"lr": 0.01}}``:

| command        | args                                              | effect                        |
|----------------|---------------------------------------------------|-------------------------------|
| ``stop``       |                                                   | ends the run after this point |
| ``pause``      |                                                   | waits at the safe point       |
| ``resume``     |                                                   | continues a paused run        |
| ``run_until``  | ``batches=N`` or ``epochs=E`` (totals)            | moves the end of the run      |
| ``set``        | ``lr``, ``momentum``, ``weight_decay``, ``batch_size`` | from the next batch on   |
| ``tell_state`` | ``snapshot=false``                                | a ``state`` event (and file)  |
| ``report_every`` | ``n``                                           | a loss event every n batches  |
| ``checkpoint`` | ``path`` (default: the run directory's)           | writes a checkpoint           |
| ``shutdown``   |                                                   | stops and ends the run thread |

A learning rate set by hand is the updater's override: it is saved in checkpoints and wins
over the schedule after a resume.
"""
from __future__ import annotations

import json
import math
import os
import queue
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint
from .callbacks import Callback
from .events import EventBus, read_jsonl

COMMANDS = ("stop", "pause", "resume", "run_until", "set", "tell_state", "report_every",
            "checkpoint", "shutdown")
SETTABLE = ("lr", "momentum", "weight_decay", "batch_size")


class CommandError(ValueError):
    """A command that cannot be applied; the run reports it and goes on."""


def make_command(command: str, **args: Any) -> dict[str, Any]:
    """A command object with a fresh id."""
    return {"id": uuid.uuid4().hex[:12], "command": command, "args": args}


class Controller:
    """Queues commands and applies them at the Trainer's safe points.

    ``submit`` is thread-safe. With ``command_file``, lines appended to that JSON-lines file
    (by ``nnkit ctl``) are read at every safe point; a malformed line is reported as an
    ``error`` event and skipped.
    """

    def __init__(self, bus: EventBus, command_file: str | os.PathLike | None = None,
                 run_dir: str | os.PathLike | None = None) -> None:
        self.bus = bus
        self.command_file = None if command_file is None else Path(command_file)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        # Commands already in the file belong to an earlier run in this directory: skip them.
        self._file_offset = 0
        if self.command_file is not None and self.command_file.exists():
            self._file_offset = self.command_file.stat().st_size
        self.paused = False
        self.report_every = 1

    # ------------------------------------------------------------------ input
    def submit(self, command: dict[str, Any] | str, **args: Any) -> str:
        """Queues a command (an object, or a name plus keyword args); returns its id."""
        if isinstance(command, str):
            command = make_command(command, **args)
        command.setdefault("id", uuid.uuid4().hex[:12])
        self._queue.put(command)
        return command["id"]

    def submit_text(self, raw: str | bytes, origin: str = "the parent") -> None:
        """Queues a command given as JSON text (a pipe message); reports what does not parse."""
        try:
            value: Any = json.loads(raw)
        except ValueError as exc:
            value = ValueError(f"not valid JSON ({exc})")
        self._submit_value(value, origin)

    def _submit_value(self, value: Any, origin: str) -> None:
        """The one check of a command's JSON form, wherever it came from."""
        if isinstance(value, Exception):
            self.bus.emit("error", message=f"{origin}: {value}; command skipped")
        elif not isinstance(value, dict):
            self.bus.emit("error", message=f"{origin}: a command must be a JSON object, got "
                                           f"{type(value).__name__}; command skipped")
        else:
            self.submit(value)

    def _poll_file(self) -> None:
        if self.command_file is None:
            return
        items, self._file_offset = read_jsonl(self.command_file, self._file_offset)
        for _, value in items:
            self._submit_value(value, str(self.command_file))

    # ------------------------------------------------------------------ the safe point
    def safe_point(self, trainer: Any) -> None:
        """Applies every pending command; while paused, waits here (still answering commands)."""
        self._drain(trainer)
        if self.paused:
            while self.paused and trainer.requested is None:
                self._wait_for_command(trainer, timeout=0.2)

    def idle(self, trainer: Any, timeout: float = 0.2) -> None:
        """Between fits (a finished run): answers commands, waiting up to ``timeout``."""
        self._wait_for_command(trainer, timeout)

    def _wait_for_command(self, trainer: Any, timeout: float) -> None:
        self._poll_file()
        try:
            command = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        self._apply(trainer, command)
        self._drain(trainer)

    def _drain(self, trainer: Any) -> None:
        self._poll_file()
        while True:
            try:
                command = self._queue.get_nowait()
            except queue.Empty:
                return
            self._apply(trainer, command)

    def _apply(self, trainer: Any, command: dict[str, Any]) -> None:
        cid, name = command.get("id"), command.get("command")
        try:
            if name not in COMMANDS:
                raise CommandError(f"unknown command {name!r}; expected one of {', '.join(COMMANDS)}")
            args = command.get("args") or {}
            if not isinstance(args, dict):
                raise CommandError(f"args must be an object, got {type(args).__name__}")
            result = getattr(self, f"_do_{name}")(trainer, **args)
        except TypeError as exc:  # unexpected or missing keyword arguments
            self.bus.emit("error", id=cid, command=name, message=f"bad arguments for {name!r}: {exc}")
        except (CommandError, ValueError, OSError) as exc:
            self.bus.emit("error", id=cid, command=name, message=str(exc))
        else:
            self.bus.emit("ack", id=cid, command=name, step=trainer.global_step, **(result or {}))

    # ------------------------------------------------------------------ the commands
    def _do_stop(self, trainer: Any) -> None:
        trainer.stop()

    def _do_shutdown(self, trainer: Any) -> None:
        trainer.request("shutdown")

    def _do_pause(self, trainer: Any) -> None:
        if not self.paused:
            self.paused = True
            self.bus.emit("status", state="paused", step=trainer.global_step)

    def _do_resume(self, trainer: Any) -> None:
        if self.paused:
            self.paused = False
            self.bus.emit("status", state="resumed", step=trainer.global_step)

    def _do_run_until(self, trainer: Any, batches: int | None = None, epochs: int | None = None) -> dict:
        if (batches is None) == (epochs is None):
            raise CommandError("run_until takes exactly one of batches= or epochs=")
        value = batches if batches is not None else epochs
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CommandError(f"run_until: expected a positive whole number, got {value!r}")
        if batches is not None:
            trainer.target_step, trainer.target_epoch = batches, None
        else:
            trainer.target_epoch, trainer.target_step = epochs, None
        return {"target_step": trainer.target_step, "target_epoch": trainer.target_epoch}

    def _do_set(self, trainer: Any, **values: Any) -> dict:
        unknown = sorted(set(values) - set(SETTABLE))
        if unknown or not values:
            raise CommandError(f"set takes {', '.join(SETTABLE)}; got {', '.join(unknown) or 'nothing'}")
        updater = trainer.updater
        checked = {}
        for key, value in values.items():  # validate everything before changing anything
            if key == "lr" and value is None:
                checked[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CommandError(f"set {key}: expected a number, got {value!r}")
            if key == "batch_size" and (value < 1 or int(value) != value):
                raise CommandError(f"set batch_size: expected a positive whole number, got {value!r}")
            if key in ("lr", "weight_decay") and value < 0:
                raise CommandError(f"set {key}: must be >= 0, got {value}")
            if key == "momentum":
                if not 0 <= value < 1:
                    raise CommandError(f"set momentum: must be in [0, 1), got {value}")
                if not getattr(updater, "momentum", 0):
                    raise CommandError(f"{type(updater).__name__} has no momentum to change (build it "
                                       "with momentum > 0 to change it live)")
            checked[key] = value
        for key, value in checked.items():
            if key == "lr":
                updater.lr = value
            elif key == "momentum":
                updater.momentum = float(value)
            elif key == "weight_decay":
                updater.decay = float(value)
            else:
                trainer.batch_size = int(value)
        return {"values": checked}

    def _do_report_every(self, trainer: Any, n: int) -> dict:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise CommandError(f"report_every: expected a positive whole number, got {n!r}")
        self.report_every = n
        return {"n": n}

    def _do_checkpoint(self, trainer: Any, path: str | None = None) -> dict:
        if path is None:
            if self.run_dir is None:
                raise CommandError("checkpoint: no path given and the run has no run directory")
            path = self.run_dir / "checkpoint.h5"
        return {"path": str(trainer.save_checkpoint(path))}

    def _do_tell_state(self, trainer: Any, snapshot: bool = False) -> None:
        model, updater = trainer.model, trainer.updater
        layers = {}
        for layer in getattr(model, "layers", []):
            if layer.params:
                layers[layer.name] = {
                    p.name: {"norm": float(np.linalg.norm(p.data)),
                             "grad_norm": None if p.grad is None else float(np.linalg.norm(p.grad)),
                             "shape": list(p.data.shape)}
                    for p in layer.params}
        hyper = {"lr": updater.lr, "lr_override": updater.lr_override, "base_lr": updater.base_lr,
                 "weight_decay": updater.decay, "momentum": getattr(updater, "momentum", None),
                 "batch_size": trainer.batch_size}
        self.bus.emit("state", step=trainer.global_step, epoch=trainer.current_epoch,
                      batch=trainer.batch_cursor, paused=self.paused, hyper=hyper, layers=layers,
                      target_step=trainer.target_step, target_epoch=trainer.target_epoch)
        if snapshot:
            folder = self.run_dir if self.run_dir is not None else Path.cwd()
            path = folder / f"snapshot-{trainer.global_step}.h5"
            params = {p.full_name: p.data for p in model.params}
            grads = {p.full_name: p.grad for p in model.params if p.grad is not None}
            checkpoint.save_tree(path, {"step": trainer.global_step, "params": params, "grads": grads},
                                 kind="nnkit.snapshot")
            self.bus.emit("snapshot", step=trainer.global_step, path=str(path))


class EventReporter(Callback):
    """Turns the Trainer's hooks into ``loss`` and ``epoch`` events.

    Loss events go out every ``controller.report_every`` batches and at least
    ``min_interval`` seconds apart, so a fast run cannot flood a viewer; the last batch of a
    run is always reported.
    """

    def __init__(self, bus: EventBus, controller: Controller, min_interval: float = 0.05) -> None:
        self.bus = bus
        self.controller = controller
        self.min_interval = min_interval
        self._last = -math.inf
        self._window_start = time.perf_counter()
        self._window_images = 0
        self._held: tuple[int, int, dict] | None = None  # the last batch not yet reported

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self._window_images += logs.get("size", 0)
        t = self.trainer
        now = time.perf_counter()
        self._held = (t.global_step, t.current_epoch, logs)
        if t.global_step % self.controller.report_every or now - self._last < self.min_interval:
            return
        self._emit(now)

    def on_train_end(self, logs: dict | None = None) -> None:
        """The last batch is always reported, so a viewer sees where the run ended."""
        if self._held is not None:
            # Keep the spacing promise even here: waiting under 0.05 s once per run is cheap.
            time.sleep(max(0.0, self._last + self.min_interval - time.perf_counter()))
            self._emit(time.perf_counter())

    def _emit(self, now: float) -> None:
        step, epoch, logs = self._held
        rate = self._window_images / max(now - self._window_start, 1e-9)
        self._last, self._window_start, self._window_images = now, now, 0
        self._held = None
        self.bus.emit("loss", step=step, epoch=epoch, **logs, images_per_s=rate)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        _, train_error, test_error = self.trainer.interactive_data()[-1]
        self.bus.emit("epoch", epoch=epoch, step=self.trainer.global_step, **(logs or {}),
                      train_error=train_error, test_error=test_error)
