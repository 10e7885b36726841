"""Training in a child process, for isolation: ``nnkit.start(job)`` or ``fit(background='process')``.

The child is started with the ``spawn`` method and handed only plain data: the job config in
protobuf text format and, for in-memory arrays, the path of an ``.npz`` file (read with
``allow_pickle=False``). Commands go down and events come up a pipe as JSON texts, the same
commands and events as a thread run (:mod:`nnkit.training.control`, :mod:`.events`). If the
child dies (a crash, a kill), the parent gets an ``error`` event and a ``failed`` status; the
parent itself is never taken down.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .control import make_command
from .events import SETTLED, Event, EventBus
from .run import RunHandle
PARAM_PREFIX = "param:"  # npz keys of the parent's parameters, by full name


def _child_main(job_text: str, source: str, conn: Any, options: dict[str, Any]) -> None:
    """The child's entry point: build the job, train with a pipe channel, linger for commands."""
    from ..checkpoint import assign_parameters
    from ..config import job_from_text  # imported in the child only
    from .run import TrainingRun

    bus = EventBus(run_id=options.get("run_id"))

    def send(event: Event) -> None:
        try:
            conn.send_bytes(json.dumps(event).encode())
        except OSError:  # the parent went away: nothing left to tell
            pass
    bus.subscribe("*", send)
    try:
        job = job_from_text(job_text, source, data_dir=options.get("data_dir"))
        model = job.build_model()
        if options.get("arrays"):
            with np.load(options["arrays"], allow_pickle=False) as f:
                x, y = f["x"], f["y"]
                validation = (f["xv"], f["yv"]) if "xv" in f else None
                params = {k[len(PARAM_PREFIX):]: f[k] for k in f.files if k.startswith(PARAM_PREFIX)}
            if params:  # continue from the parent's current weights, not from a fresh init
                model.build()
                assign_parameters(params, model.layers, options["arrays"])
        else:
            x, y = job.load_data("train")
            validation = job.load_data("test") if job.has_source("test") else None
        run = job.proto.run
        fit_kwargs = dict(x=x, y=y, batch_size=options.get("batch_size") or job.batch_size("train"),
                          epochs=options.get("epochs", run.epochs if run.HasField("epochs") else None),
                          steps=options.get("steps", run.steps if run.HasField("steps") else None),
                          validation_data=validation, verbose=0, run_dir=options.get("run_dir"))
        handle = TrainingRun(model, fit_kwargs, options.get("run_dir"), linger=True, bus=bus)
    except BaseException as exc:  # a bad job: report it the same way as a training failure
        bus.emit("error", message=f"{type(exc).__name__}: {exc}")
        bus.emit("status", state="failed", step=0)
        conn.close()
        return

    def read_commands() -> None:
        while True:
            try:
                raw = conn.recv_bytes()
            except (EOFError, OSError):  # the parent is gone: stop cleanly
                handle.controller.submit(make_command("shutdown"))
                return
            try:
                command = json.loads(raw)
                if not isinstance(command, dict):
                    raise ValueError("a command must be a JSON object")
            except ValueError as exc:
                bus.emit("error", message=f"malformed command from the parent: {exc}")
                continue
            handle.controller.submit(command)
    threading.Thread(target=read_commands, name="nnkit-commands", daemon=True).start()
    try:
        handle.run()
    except BaseException:
        pass  # already reported as error and failed events by the run
    finally:
        conn.close()


class ProcessRun(RunHandle):
    """A handle on a job training in a child process; same commands as a thread run.

    The observed values (:attr:`status`, :attr:`global_step`, :attr:`current_epoch`,
    :meth:`interactive_data`, :attr:`history`) come from the child's events.
    """

    def __init__(self, job_text: str, source: str = "<job>", run_dir: str | os.PathLike | None = None,
                 data_dir: str | None = None, arrays: str | None = None,
                 epochs: int | None = None, steps: int | None = None,
                 batch_size: int | None = None) -> None:
        self._init_handle(EventBus())
        self.exception: str | None = None
        self.global_step = 0
        self.current_epoch = 0
        self.current_batch = 0
        self._epochs: list[Event] = []
        self._arrays = arrays
        options = {"run_id": self.bus.run_id, "data_dir": data_dir, "arrays": arrays,
                   "batch_size": batch_size, "run_dir": None if run_dir is None else os.fspath(run_dir)}
        if epochs is not None or steps is not None:
            options.update(epochs=epochs, steps=steps)
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe(duplex=True)
        self._lock = threading.Lock()  # one sender at a time on the pipe
        self.process = context.Process(target=_child_main, args=(job_text, source, child_conn, options),
                                       name="nnkit-child", daemon=True)
        self.process.start()
        child_conn.close()
        threading.Thread(target=self._receive, name="nnkit-events", daemon=True).start()

    # ------------------------------------------------------------------ events from the child
    def _receive(self) -> None:
        while True:
            try:
                event = json.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                break
            self._observe(event)
            self.bus.publish(event)
        self.process.join(5)
        if self.status != "failed" and (self.status not in SETTLED or self.process.exitcode != 0):
            # it died without saying goodbye (a crash, a kill)
            message = f"the child process ended unexpectedly (exit code {self.process.exitcode})"
            self.exception = self.exception or message
            self.bus.emit("error", message=message)
            self.bus.emit("status", state="failed", step=self.global_step)
        with self._cond:
            self._extending.clear()
            self._cond.notify_all()
        self._ended.set()
        if self._arrays is not None:
            Path(self._arrays).unlink(missing_ok=True)

    def _observe(self, event: Event) -> None:
        kind = event.get("type")
        for key, attr in (("step", "global_step"), ("epoch", "current_epoch"), ("batch", "current_batch")):
            if isinstance(event.get(key), int) and kind in ("loss", "heartbeat", "status", "state"):
                setattr(self, attr, event[key])
        if kind == "epoch":
            self._epochs.append(event)
            self.current_epoch, self.current_batch = event["epoch"] + 1, 0
        elif kind == "error" and "id" not in event:
            self.exception = event.get("message")

    # ------------------------------------------------------------------ the handle
    def _send(self, command: dict[str, Any]) -> None:
        with self._lock:
            try:
                self._conn.send_bytes(json.dumps(command).encode())
            except OSError:
                self.bus.emit("error", id=command["id"], command=command["command"],
                              message="the child process is gone; command not delivered")

    def interactive_data(self) -> list[tuple[int, float | None, float | None]]:
        """``(epoch, train_error, test_error)`` for every finished epoch."""
        return [(e["epoch"], e.get("train_error"), e.get("test_error")) for e in self._epochs]

    @property
    def history(self) -> dict[str, list[Any]]:
        """The epoch logs so far, as ``{metric: [value per epoch]}``."""
        skip = {"schema", "run", "seq", "time", "type", "epoch", "step"}
        history: dict[str, list[Any]] = {}
        for event in self._epochs:
            for key, value in event.items():
                if key not in skip:
                    history.setdefault(key, []).append(value)
        return history

    def kill(self) -> None:
        """Ends the child at once (SIGKILL); the run reports it as failed."""
        self.process.kill()


def start(job: Any, run_dir: str | os.PathLike | None = None, data_dir: str | None = None,
          epochs: int | None = None, steps: int | None = None) -> ProcessRun:
    """Runs a job (a :class:`~nnkit.config.Job`, a config path, or config text) in a child process."""
    from ..config import Job
    if isinstance(job, Job):
        text, source = job.to_text(), job.source
    elif isinstance(job, (str, os.PathLike)) and Path(job).is_file():
        text, source = Path(job).read_text(), os.fspath(job)
    else:
        text, source = str(job), "<job>"
    return ProcessRun(text, source, run_dir=run_dir, data_dir=data_dir, epochs=epochs, steps=steps)


def start_arrays(model: Any, x: np.ndarray, y: np.ndarray, validation_data: Any = None,
                 run_dir: str | os.PathLike | None = None, epochs: int | None = None,
                 steps: int | None = None, batch_size: int = 32) -> ProcessRun:
    """``fit(background='process')``: the model as a job proto, the arrays through an .npz file.

    The child starts from the model's current parameters (also in the .npz); the updater's
    slots and the training counters start fresh there.
    """
    job = model.to_proto()
    fd, path = tempfile.mkstemp(prefix="nnkit-arrays-", suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        arrays = {"x": x, "y": y}
        if model.built:
            arrays.update({PARAM_PREFIX + p.full_name: p.data for p in model.params})
        if validation_data is not None:
            arrays.update(xv=validation_data[0], yv=validation_data[1])
        np.savez(f, **arrays)
    from google.protobuf import text_format
    return ProcessRun(text_format.MessageToString(job), f"<{model.name}>", run_dir=run_dir, arrays=path,
                      epochs=epochs, steps=steps, batch_size=batch_size)
