"""Training in a child process, for isolation: ``nnkit.start(job)`` or ``fit(background='process')``.

The child is started with the ``spawn`` method and handed only plain data (for a job: its
config in protobuf text format and, for in-memory arrays, the path of an ``.npz`` file read
with ``allow_pickle=False``; :mod:`nnkit.config.restore` builds the child's run from them).
Commands go down and events come up a pipe as JSON texts, the same commands and events as a
thread run (:mod:`nnkit.training.control`, :mod:`.events`). If the
child dies (a crash, a kill), the parent gets an ``error`` event and a ``failed`` status; the
parent itself is never taken down.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import threading
from pathlib import Path
from typing import Any, Callable

from .control import make_command
from .events import SETTLED, Event, EventBus
from .run import RunHandle, add_run_observer, run_observers


def serve_child(conn: Any, run_id: str | None, make_run: Callable[[EventBus], Any]) -> None:
    """The child's side of a process run: events up the pipe, commands down, then train.

    ``make_run(bus)`` builds the :class:`~nnkit.training.TrainingRun` (whatever builds the
    model, the config layer for instance, supplies it); an error there is reported like a
    training failure. The run lingers after its plan until the parent sends ``shutdown``.
    """
    bus = EventBus(run_id=run_id)

    def send(event: Event) -> None:
        try:
            conn.send_bytes(json.dumps(event).encode())
        except OSError:  # the parent went away: nothing left to tell
            pass
    bus.subscribe("*", send)
    try:
        handle = make_run(bus)
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
            handle.controller.submit_text(raw)
    threading.Thread(target=read_commands, name="nnkit-commands", daemon=True).start()
    try:
        handle.run()
    except BaseException:
        pass  # already reported as error and failed events by the run
    finally:
        conn.close()


def _child_entry(conn: Any, run_id: str, observers: list[Any], target: Callable[..., None], *args: Any) -> None:
    """A child process's first step: the parent's run observers are registered here too (so a
    recorded parent records its children), then ``target`` runs."""
    for observer in observers:
        add_run_observer(observer)
    target(conn, run_id, *args)


def _portable(observer: Any) -> bool:
    try:
        pickle.dumps(observer)
        return True
    except Exception:  # noqa: BLE001  (a lambda, a closure: it stays in this process)
        return False


class ProcessRun(RunHandle):
    """A handle on a job training in a child process; same commands as a thread run.

    The observed values (:attr:`status`, :attr:`global_step`, :attr:`current_epoch`,
    :meth:`interactive_data`, :attr:`history`) come from the child's events.

    Args:
        target: a module-level function run in the child as ``target(conn, run_id, *args)``;
            it builds the run and calls :func:`serve_child` (``nnkit.config.restore`` has the
            one that rebuilds a job from its config text).
        args: plain data for ``target`` (they cross to a ``spawn`` child).
        cleanup: a temporary file to delete when the child has ended.
    """

    def __init__(self, target: Callable[..., None], args: tuple = (),
                 cleanup: str | os.PathLike | None = None) -> None:
        self._init_handle(EventBus())
        self.exception: str | None = None
        self.global_step = 0
        self.current_epoch = 0
        self.current_batch = 0
        self._epochs: list[Event] = []
        self._cleanup = cleanup
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe(duplex=True)
        self._lock = threading.Lock()  # one sender at a time on the pipe
        observers = [observer for observer in run_observers() if _portable(observer)]
        self.process = context.Process(target=_child_entry,
                                       args=(child_conn, self.bus.run_id, observers, target, *args),
                                       name="nnkit-child", daemon=True)
        self.process.start()
        self._launched = True
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
        if self._cleanup is not None:
            Path(self._cleanup).unlink(missing_ok=True)

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
