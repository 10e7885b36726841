"""A training run you can watch and steer while it trains: ``model.fit(..., background=True)``.

The run trains in a thread (the kernels release the GIL, so the caller stays responsive),
publishes events on a bus and takes commands at the Trainer's safe points. When its plan is
done it stays available: ``run_until`` extends it, ``shutdown`` ends it.
"""
from __future__ import annotations

import inspect
import os
import sys
import textwrap
import threading
import weakref
import time
from pathlib import Path
from typing import Any, Callable

from .callbacks import Callback
from .control import COMMANDS, UNSET, Command, Controller, EventReporter, make_command
from .events import COMMANDS_FILE, EVENTS_FILE, SETTLED, Event, EventBus, JsonlWriter, poll_answer, register


#: ``observer(trainer, run_dir, bus) -> closer or None``: told of each run as its channel opens.
RunObserver = Callable[[Any, "Path | None", EventBus], "Callable[[], None] | None"]
_OBSERVERS: list[RunObserver] = []
_OBSERVERS_LOCK = threading.RLock()


def add_run_observer(observer: RunObserver) -> Callable[[], None]:
    """Registers ``observer``, called by :func:`attach_channel` for every run with a run
    directory (``observer(trainer, run_dir, bus)``; it may subscribe to the bus and return a
    closer, called when the run ends). Returns the function that unregisters it.

    This is how a layer above training follows runs without training importing it: the
    experiment store registers its recorder here when imported. Observers that pickle (a
    module-level function, a dataclass instance) are registered in child processes too. An
    observer with an ``observer_key`` attribute replaces the one registered with the same key.
    """
    key = getattr(observer, "observer_key", None)
    with _OBSERVERS_LOCK:
        if key is not None:
            _OBSERVERS[:] = [o for o in _OBSERVERS if getattr(o, "observer_key", None) != key]
        return register(_OBSERVERS_LOCK, _OBSERVERS, observer)


def run_observers() -> list[RunObserver]:
    """The registered run-directory observers, in order."""
    with _OBSERVERS_LOCK:
        return list(_OBSERVERS)


def _observe(observer: RunObserver, trainer: Any, run_dir: Path | None, bus: EventBus) -> Callable | None:
    try:
        return observer(trainer, run_dir, bus)
    except Exception as exc:  # noqa: BLE001  (an observer's failure must not stop the run)
        print(f"nnkit: a run observer failed and was skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def attach_channel(trainer: Any, run_dir: str | os.PathLike | None = None,
                   bus: EventBus | None = None) -> tuple[EventBus, Controller, list[Callable]]:
    """Gives a Trainer an event bus and a controller; with ``run_dir``, also the files.

    In a run directory, events go to ``events.jsonl`` and commands are read from
    ``commands.jsonl`` (what ``nnkit ctl`` appends to). The trainer's own ``observers`` and,
    with a run directory, the registered ones (:func:`add_run_observer`) are told of the run.
    Returns the bus, the controller and the closers to call when the run ends.
    """
    bus = bus or EventBus()
    closers: list[Callable] = []
    command_file = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        writer = JsonlWriter(run_dir / EVENTS_FILE)
        closers += [bus.subscribe("*", writer), writer.close]
        command_file = run_dir / COMMANDS_FILE
    controller = Controller(bus, command_file=command_file, run_dir=run_dir)
    trainer.controller = controller
    observers = list(getattr(trainer, "observers", ())) + (run_observers() if run_dir is not None else [])
    for observer in observers:
        closer = _observe(observer, trainer, run_dir, bus)
        if closer is not None:
            closers.append(closer)
    return bus, controller, closers


class Heartbeat:
    """Emits a ``heartbeat`` event whenever the bus has been quiet for ``period`` seconds."""

    def __init__(self, bus: EventBus, describe: Callable[[], dict], period: float = 1.0) -> None:
        self.bus, self.describe, self.period = bus, describe, period
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="nnkit-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._done.wait(self.period / 4):
            if time.monotonic() - self.bus.last_emit >= self.period * 0.9:
                self.bus.emit("heartbeat", **self.describe())

    def stop(self) -> None:
        """Stops the heartbeat thread."""
        self._done.set()
        self._thread.join()


_HANDLES: "weakref.WeakSet[RunHandle]" = weakref.WeakSet()  # every handle made in this process


def live_runs() -> list["RunHandle"]:
    """The runs (threads and child processes) started in this process that have not ended.

    A background run lingers after its plan until ``shutdown``; this finds the ones a
    caller forgot (a test suite shuts them down after every test).
    """
    return [run for run in list(_HANDLES) if run._launched and not run._ended.is_set()]


class _AnnounceStart(Callback):
    """Calls ``announce()`` from the fit's ``on_train_begin``: after a resume has loaded the
    checkpoint, so that the ``started`` status names the run's real step, not 0."""

    def __init__(self, announce: Callable[[], None]) -> None:
        self.announce = announce

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.announce()


class RunHandle:
    """The commands and event access every kind of run offers (thread or child process).

    Each command of the table (:data:`~nnkit.training.control.COMMANDS`) is a method made
    from its entry (:func:`command_method`), and :meth:`command` sends any by name. Each
    returns the command id; the run answers with an ``ack`` or ``error`` event naming it (see
    :meth:`wait_for`).
    """

    def _init_handle(self, bus: EventBus) -> None:
        """Sets up status tracking from the run's own status, ack and error events."""
        _HANDLES.add(self)
        self._launched = False  # a handle that never started a run is not a live run
        self.bus = bus
        self.status = "starting"
        self._cond = threading.Condition()
        self._extending: set[str] = set()  # run_until ids that may restart a settled run
        self._ended = threading.Event()
        bus.subscribe("*", self._track)

    def _track(self, event: Event) -> None:
        with self._cond:
            kind = event.get("type")
            if kind == "status":
                self.status = event["state"]
                if self.status == "resumed":
                    self._extending.clear()
            elif event.get("id") in self._extending and (
                    kind == "error" or (kind == "ack" and self.status not in SETTLED)):
                self._extending.discard(event["id"])  # answered without restarting anything
            self._cond.notify_all()

    # ------------------------------------------------------------------ commands
    def command(self, name: str, **args: Any) -> str:
        """Sends any command by name; returns its id."""
        command = make_command(name, **args)
        if name == "run_until":
            with self._cond:
                self._extending.add(command["id"])
        self._send(command)
        return command["id"]

    def _send(self, command: dict[str, Any]) -> None:
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> str:
        """Blocks until the run finishes, stops or fails (or ``timeout``); returns the status.

        A ``run_until`` sent to a finished run counts: ``wait`` then waits for the new end.
        """
        with self._cond:
            self._cond.wait_for(lambda: self.status in SETTLED and not self._extending, timeout)
            return self.status

    def join(self, timeout: float | None = None) -> bool:
        """Blocks until the run has ended for good (after a stop, shutdown or failure)."""
        return self._ended.wait(timeout)

    # ------------------------------------------------------------------ observing
    def wait_for(self, command_id: str, timeout: float = 10.0) -> Event:
        """The ``ack`` or ``error`` event answering command ``command_id`` (waits for it)."""
        answer = poll_answer(self.bus.reader(), command_id, timeout, poll=0.005)
        if answer is None:
            raise TimeoutError(f"no answer to command {command_id} within {timeout} s")
        return answer

    def events(self, type: str | None = None, since: int = 0) -> list[Event]:
        """The events so far (of one ``type``), after sequence number ``since``."""
        return self.bus.events(type, since)

    def subscribe(self, topic: str, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Calls ``callback(event)`` for each new event of ``topic`` ('*' for all); returns an
        unsubscribe function. Callbacks run in the thread that receives events: keep them short."""
        return self.bus.subscribe(topic, callback)


def command_method(entry: Command) -> Callable[..., str]:
    """The RunHandle method that sends command ``entry``, named, documented and with the
    signature of its table entry (what ``help(run.set)`` and ``inspect.signature`` show)."""
    names = [arg.name for arg in entry.args]

    def send(self: RunHandle, *args: Any, **kwargs: Any) -> str:
        if len(args) > len(names):
            raise TypeError(f"{entry.name}() takes {len(names)} positional arguments, got {len(args)}")
        given = dict(zip(names, args))
        if given.keys() & kwargs.keys():
            raise TypeError(f"{entry.name}() got multiple values for {sorted(given.keys() & kwargs.keys())}")
        # No checks here: the run checks every command against the table, from any sender, and
        # answers a bad argument (an unknown name too) with an error event.
        return self.command(entry.name, **{k: v for k, v in {**given, **kwargs}.items() if v is not UNSET})

    args_doc = "".join(f"\n    {arg.describe(str)}" for arg in entry.args)
    choose = {"one": " (exactly one)", "some": " (at least one)"}.get(entry.choose or "", "")
    send.__name__ = entry.name
    send.__qualname__ = f"RunHandle.{entry.name}"
    send.__module__ = __name__
    send.__doc__ = (textwrap.fill(entry.doc, 88) + "\n\n"
                    + (f"Args{choose}:{args_doc}\n\n" if entry.args else "")
                    + "Returns the command id at once; the run applies the command at its next\n"
                      "safe point and answers with an ``ack`` or ``error`` event (see :meth:`wait_for`).")
    send.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *entry.parameters()],
        return_annotation=str)
    return send


for _entry in COMMANDS.values():
    if _entry.name in vars(RunHandle):  # a command must not hide wait, events, command...
        raise TypeError(f"command {_entry.name!r} clashes with RunHandle.{_entry.name}")
    setattr(RunHandle, _entry.name, command_method(_entry))


class TrainingRun(RunHandle):
    """A handle on a model training in a background thread.

    Commands: those of :class:`RunHandle` (each returns the command id; the run answers with
    an ``ack`` or ``error`` event).
    Observing: :attr:`status`, :attr:`current_epoch`, :attr:`current_batch`,
    :attr:`history`, :meth:`interactive_data`, :meth:`events`, :meth:`subscribe`,
    :meth:`wait`.
    """

    def __init__(self, model: Any, fit_kwargs: dict[str, Any], run_dir: str | os.PathLike | None = None,
                 linger: bool = True, bus: EventBus | None = None) -> None:
        self.model = model
        self.linger = linger  # after the plan is done, wait for run_until/shutdown
        self.trainer = model.trainer_for_fit()
        self.bus, self.controller, self._closers = attach_channel(self.trainer, run_dir, bus)
        self._fit_kwargs = dict(fit_kwargs)
        self._fit_kwargs["callbacks"] = [_AnnounceStart(self._announce_start),
                                         *fit_kwargs.get("callbacks", ()),
                                         EventReporter(self.bus, self.controller)]
        self._started = False  # whether the started status went out
        self._init_handle(self.bus)
        self.exception: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="nnkit-training", daemon=True)
        self._heartbeat: Heartbeat | None = None

    def start(self) -> "TrainingRun":
        """Starts training in a background thread; returns at once."""
        self._launched = True
        self._thread.start()
        return self

    def run(self) -> Any:
        """Trains in the calling thread; returns the History, re-raises errors.

        Lingers after the plan (waiting for run_until or shutdown) only if built with
        ``linger=True`` and called by a child process; a plain foreground fit returns.
        """
        self._launched = True
        self._main()
        if self.exception is not None:
            raise self.exception
        return self.trainer.history

    # ------------------------------------------------------------------ the thread
    def _set_status(self, state: str, **fields: Any) -> None:
        self.bus.emit("status", state=state, step=self.trainer.global_step, **fields)

    def _announce_start(self) -> None:
        """The ``started`` status, once: at the first fit's start, when ``trainer.global_step``
        is the checkpoint's on a resume (a lingering run's later fits are ``resumed``)."""
        if not self._started:
            self._started = True
            self._set_status("started")

    def _main(self) -> None:
        trainer = self.trainer
        kwargs = self._fit_kwargs
        self._heartbeat = Heartbeat(self.bus, lambda: {"status": self.status, "step": trainer.global_step,
                                                       "epoch": trainer.current_epoch})
        try:
            while True:  # the first fit says "started" from its on_train_begin (_AnnounceStart)
                self.model.fit(**kwargs)
                if trainer.requested in ("shutdown", "interrupt") or not trainer.finished():
                    self._set_status("stopped", **({"reason": "interrupt"} if trainer.interrupted else {}))
                    break
                self._set_status("finished")
                if not self.linger:
                    break
                if not self._wait_for_more():
                    self._set_status("stopped")  # ended by stop or shutdown while waiting
                    break
                self._set_status("resumed")
                # Continue the same data; fit's epochs/steps count "more" from here.
                kwargs = {**kwargs, "epochs": None, "steps": None, "resume": None,
                          **self._remaining()}
        except BaseException as exc:  # reported as an event; the caller's thread lives on
            self.exception = exc
            notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))  # where it saved
            self.bus.emit("error", message=f"{type(exc).__name__}: {exc}{notes}")
            self._set_status("failed")
        finally:
            self._heartbeat.stop()
            trainer.controller = None
            for close in self._closers:
                close()
            self._ended.set()

    def _wait_for_more(self) -> bool:
        """After the plan is done: answers commands until run_until moves it (True) or shutdown."""
        trainer = self.trainer
        trainer.clear_request()
        while True:
            self.controller.idle(trainer)
            if trainer.requested is not None:
                return False
            if not trainer.finished():
                return True

    def _remaining(self) -> dict[str, int]:
        t = self.trainer
        if t.target_step is not None:
            return {"steps": t.target_step - t.global_step}
        return {"epochs": t.target_epoch - t.current_epoch}

    def _send(self, command: dict[str, Any]) -> None:
        self.controller.submit(command)

    @property
    def current_epoch(self) -> int:
        """The epoch in progress (from 0)."""
        return self.trainer.current_epoch

    @property
    def current_batch(self) -> int:
        """Batches done in the current epoch."""
        return self.trainer.current_batch

    @property
    def global_step(self) -> int:
        """Batches done since training began."""
        return self.trainer.global_step

    @property
    def history(self) -> Any:
        """The History of epoch logs so far."""
        return self.trainer.history

    def interactive_data(self) -> list[tuple[int, float | None, float | None]]:
        """``(epoch, train_error, test_error)`` for every finished epoch."""
        return self.trainer.interactive_data()

