"""Recording runs in the store as they train: a subscriber on the run's events.

Importing :mod:`nnkit.experiments` registers :class:`RunDirRecorder` as a run-directory
observer of :mod:`nnkit.training.run` (the training layer never imports the store): every run
with a run directory is then recorded, in this process and in the child processes it starts
(the registered observers travel to ``background='process'`` children). A run without a
directory is recorded when asked: :func:`record`.

Cost to training: the subscriber only folds the event into a summary in memory (a few dict
operations); a writer thread of its own writes to SQLite: at once after a status change or an
error, within :data:`SOON` seconds after an epoch, test, snapshot or checkpoint event (several
coalesce into one write), and every :data:`WRITE_EVERY` seconds otherwise (batch events and
heartbeats move the step and the heartbeat). A store that fails (locked, full disk, damaged) costs a warning, once:
the run trains on, unrecorded.
"""
from __future__ import annotations

import copy
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from .._version import __version__
from ..training.events import EVENTS_FILE
from ..training.run import add_run_observer
from .rundir import (JOB_FILE, RUN_FILE, config_hash, default_owner, flatten_config, git_commit,
                     read_run_info)
from .store import Store
from .summary import LATER, NOW, RunSummary

#: Seconds between two writes of a run's progress (step, heartbeat, running means).
WRITE_EVERY = 5.0
#: At most this many seconds (and at least as long since the last write) between an epoch,
#: test or checkpoint event and its write: many short epochs make one write a second.
SOON = 1.0
#: How long the end of a run waits for its last write to reach the store.
CLOSE_TIMEOUT = 10.0
#: How long one write waits for the lock before the recorder gives up on it (and warns).
RECORDER_PATIENCE = 30.0


def _total_steps(trainer: Any) -> int | None:
    """The step the trainer's current plan ends at, if it can tell."""
    if trainer is None:
        return None
    target = getattr(trainer, "target_step", None)
    if isinstance(target, int):
        return target
    epochs, per_epoch = getattr(trainer, "target_epoch", None), getattr(trainer, "batches_in_epoch", 0)
    if isinstance(epochs, int) and isinstance(per_epoch, int) and per_epoch > 0:
        return epochs * per_epoch
    return None


def _model_config_text(trainer: Any) -> str | None:
    """The job config of the run: the one that made it (``nnkit.start``), else the model's."""
    if isinstance(getattr(trainer, "config_text", None), str):
        return trainer.config_text
    describe = getattr(getattr(trainer, "model", None), "_proto_text", None)
    if describe is None:
        return None
    try:
        return describe()
    except Exception:  # noqa: BLE001  (a model the schema cannot describe is recorded without config)
        return None


class Recorder:
    """Keeps one run's record current from its events (see the module doc for the costs).

    Call it with each event (it is a bus subscriber); :meth:`close` writes the last state.
    """

    def __init__(self, store: Store, summary: RunSummary, trainer: Any = None,
                 run_dir: str | os.PathLike | None = None, write_every: float = WRITE_EVERY,
                 fresh: bool = False, claimed: bool = False) -> None:
        self.store = store
        self.fresh = fresh  # a new run in its directory (not a resume): a new record
        self.claimed = claimed  # the record exists already (a queued run a worker took): its id wins
        self.summary = summary
        self.trainer = trainer
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.write_every = write_every
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending = True
        self._now = False  # a status or error is waiting: write without delay
        self._closing = False
        self._warned = False
        self._opened = False
        self._prepared = False  # the facts gathered and run.json written
        self._known_id = False  # the id came from run.json (a resume)
        self._params: dict[str, str] = {}
        self.writes = 0
        self._thread = threading.Thread(target=self._loop, name="nnkit-recorder", daemon=True)
        self._thread.start()

    @property
    def run_id(self) -> str:
        """The record's id (a resumed run's is its first session's)."""
        return self.summary.id

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            priority = self.summary.apply(event)
            self._pending = True
            if priority == NOW:
                self._now = True
        if priority != LATER:
            self._wake.set()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Writes the last state and stops the writer thread (waits at most ``timeout``)."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():  # still waiting for the lock: the run ends without it
            self._warn(TimeoutError(f"the store stayed locked for {timeout:g} s at the end of the run"))

    # ------------------------------------------------------------------ the writer thread
    def _loop(self) -> None:
        last = 0.0
        while True:
            self._wake.wait(self.write_every)
            self._wake.clear()
            # An epoch or a test: soon, not at once (more of them coalesce); a status or the end
            # cuts the wait short.
            while not self._now and not self._closing and (delay := last + SOON - time.monotonic()) > 0:
                self._wake.wait(delay)
                self._wake.clear()
            closing = self._closing
            if not self._opened:
                self._guard(self._open)
            if self._pending and self._opened:
                self._guard(self._write)
            last = time.monotonic()
            if closing:
                if self.run_dir is not None:  # the plan's length is known by now
                    self._guard(lambda: self._write_run_info(self._snapshot()))
                self.store.close()
                return

    def _guard(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # noqa: BLE001  (the store must never end or slow a run)
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        where = f" {self.run_dir}" if self.run_dir is not None else ""
        print(f"nnkit: warning: cannot record run {self.summary.id} in the experiment store "
              f"{self.store.path} ({type(exc).__name__}: {exc}); training goes on"
              + (f", `nnkit runs reindex{where}` records it later" if where else ""), file=sys.stderr)

    def _open(self) -> None:
        """The first write: the facts about the run (once, into ``run.json`` too, whatever the
        store does), then its record (a resumed run's is its first session's)."""
        if not self._prepared:
            self._prepare()
            self._prepared = True
        summary = self.summary
        if self.run_dir is not None and self.fresh:
            # Started over (``--overwrite``: the old log is gone): its old record goes with it.
            while (old := self.store.find_run_dir(self.run_dir)) not in (None, summary.id):
                self.store.remove(old)
        elif self.run_dir is not None and not self._known_id:  # a run directory from before run.json
            known = self.store.find_run_dir(self.run_dir)
            if known:
                with self._lock:
                    summary.id = known
        self.store.save(self._snapshot(), self._params)
        self.writes += 1
        self._opened = True

    def _prepare(self) -> None:
        summary = self.summary
        info: dict[str, Any] = {}
        if self.run_dir is not None and not self.fresh:  # a resume: the first session's record
            info = read_run_info(self.run_dir)
            old_tags = info.get("tags") if isinstance(info.get("tags"), list) else []
            with self._lock:
                if isinstance(info.get("id"), str) and not self.claimed:
                    summary.id, self._known_id = info["id"], True
                summary.tags = tuple(dict.fromkeys([*(t for t in old_tags if isinstance(t, str)), *summary.tags]))
                if summary.name is None and isinstance(info.get("name"), str):
                    summary.name = info["name"]
                if isinstance(info.get("created"), (int, float)):
                    summary.created = info["created"]
        if self.run_dir is not None:
            job_file = self.run_dir / JOB_FILE  # nnkit train's job as run, overrides applied
            if job_file.is_file():
                summary.config_text = job_file.read_text(encoding="utf-8", errors="replace")
            if summary.name is None:
                summary.name = self.run_dir.name
        if self.claimed:
            self._known_id = True
        summary.config_hash = config_hash(summary.config_text)
        summary.git_commit = git_commit()
        self._params = flatten_config(summary.config_text)
        if self.run_dir is not None:
            self._write_run_info(self._snapshot())

    def _write_run_info(self, summary: RunSummary) -> None:
        import json

        from ..checkpoint import atomic_write
        info = {key: getattr(summary, key) for key in ("id", "name", "owner", "created", "host", "pid",
                                                        "nnkit_version", "git_commit", "total_steps")}
        info["tags"] = list(summary.tags)
        if not (self.run_dir / JOB_FILE).is_file():
            info["config_text"] = summary.config_text  # fit(run_dir=...) writes no job.conf
        atomic_write(self.run_dir / RUN_FILE, json.dumps(info, indent=1) + "\n")

    def _snapshot(self) -> RunSummary:
        with self._lock:
            snapshot = copy.copy(self.summary)
            snapshot.metrics, snapshot.best = dict(self.summary.metrics), dict(self.summary.best)
            self._pending = self._now = False
        snapshot.total_steps = _total_steps(self.trainer) or snapshot.total_steps
        return snapshot

    def _write(self) -> None:
        self.store.save(self._snapshot())
        self.writes += 1


def start_recording(bus: Any, trainer: Any = None, run_dir: str | os.PathLike | None = None, *,
                    store: Store | str | os.PathLike | None = None, run_id: str | None = None,
                    name: str | None = None, owner: str | None = None, tags: tuple[str, ...] = (),
                    notes: str | None = None, replay: bool = False, claimed: bool = False) -> Recorder:
    """Records the run whose events go over ``bus`` (an :class:`~nnkit.training.EventBus`).

    ``replay``: fold in the events the bus already kept (a run recorded after it started).
    ``claimed``: ``run_id`` names a queued record a worker took (``nnkit train --run-id``): the
    run keeps that record, resumed or not, and says ``running`` from its first write (never
    ``queued`` again, which another worker would take).
    """
    store = store if isinstance(store, Store) else Store(store, lock_patience=RECORDER_PATIENCE)
    summary = RunSummary(id=run_id or bus.run_id, name=name, owner=owner or default_owner(), tags=tuple(tags),
                         notes=notes, created=time.time(), host=socket.gethostname(), pid=os.getpid(),
                         nnkit_version=__version__, config_text=_model_config_text(trainer),
                         run_dir=None if run_dir is None else str(Path(run_dir).resolve()),
                         status="running" if claimed else "queued")
    if summary.name is None and run_dir is None:
        summary.name = getattr(getattr(trainer, "model", None), "name", None)
    fresh = False
    if run_dir is not None:
        events = Path(run_dir) / EVENTS_FILE
        fresh = not events.is_file() or events.stat().st_size == 0  # nothing logged yet: no resume
    recorder = Recorder(store, summary, trainer, run_dir, fresh=fresh, claimed=claimed)
    bus.subscribe("*", recorder, replay=replay)
    return recorder


@dataclass(frozen=True)
class RunDirRecorder:
    """The run-directory observer :mod:`nnkit.experiments` registers: records every run that
    has a run directory, with these settings (None: the default store, the user name, the
    directory's name). Plain data, so it travels to child processes."""

    store: str | None = None
    owner: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()
    run_id: str | None = None  # a queued record a worker took (nnkit train --run-id)
    observer_key: ClassVar[str] = "nnkit.experiments"  # one at a time: the newest settings win

    def __call__(self, trainer: Any, run_dir: Path | None, bus: Any) -> Callable[[], None] | None:
        if run_dir is None or any(isinstance(o, ModelRecorder) for o in getattr(trainer, "observers", ())):
            return None  # no directory, or recorded by record() already
        return start_recording(bus, trainer, run_dir, store=self.store, name=self.name, owner=self.owner,
                               tags=self.tags, run_id=self.run_id, claimed=self.run_id is not None).close


@dataclass
class ModelRecorder:
    """A model's own observer from :func:`record`: each of its fits appends to one record."""

    store: Store
    run_id: str
    name: str | None
    owner: str | None
    tags: tuple[str, ...] = ()
    notes: str | None = None

    def __call__(self, trainer: Any, run_dir: Path | None, bus: Any) -> Callable[[], None]:
        return start_recording(bus, trainer, run_dir, store=self.store, run_id=self.run_id, name=self.name,
                               owner=self.owner, tags=self.tags, notes=self.notes).close


_registered: dict[str, Any] = {}


def configure(store: str | os.PathLike | None = None, owner: str | None = None, name: str | None = None,
              tags: tuple[str, ...] | list[str] = (), run_id: str | None = None) -> None:
    """Sets how this process (and the child processes it starts) records runs with a run
    directory: the store, the owner, the name and the tags (``nnkit train --store --owner
    --name --tag``), and ``run_id``, the queued record to record into (``--run-id``, what a
    worker passes). Without arguments: back to the defaults."""
    remove = _registered.pop("remove", None)
    if remove is not None:
        remove()
    observer = RunDirRecorder(None if store is None else os.fspath(store), owner, name, tuple(tags), run_id)
    _registered.update(observer=observer, remove=add_run_observer(observer))


def record(model_or_handle: Any, store: Store | str | os.PathLike | None = None, name: str | None = None,
           tags: tuple[str, ...] | list[str] = (), owner: str | None = None, notes: str | None = None) -> str:
    """Records a run that has no run directory; returns its record's id.

    ``model_or_handle``: a model (its next fits, in memory or not, are recorded, all in one
    record) or a run handle (``fit(background=True)``'s TrainingRun, a ProcessRun: recorded
    from now, with the events it has kept so far).
    """
    store = store if isinstance(store, Store) else Store(store, lock_patience=RECORDER_PATIENCE)
    if hasattr(model_or_handle, "bus") and hasattr(model_or_handle, "join"):
        handle = model_or_handle
        recorder = start_recording(handle.bus, getattr(handle, "trainer", None), store=store, name=name,
                                   owner=owner, tags=tuple(tags), notes=notes, replay=True)
        threading.Thread(target=lambda: (handle.join(), recorder.close()), name="nnkit-record-end",
                         daemon=True).start()
        return recorder.run_id
    if not hasattr(model_or_handle, "trainer_for_fit"):
        raise TypeError(f"record: expected a model or a run handle, got {type(model_or_handle).__name__}")
    import uuid
    trainer = model_or_handle.trainer_for_fit()
    observer = ModelRecorder(store, uuid.uuid4().hex[:12], name, owner, tuple(tags), notes)
    trainer.observers.append(observer)
    return observer.run_id


configure()
