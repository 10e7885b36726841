"""Many machines: queued runs trained on a Dask distributed cluster (``nnkit worker --dask ADDRESS``).

The head (``nnkit worker --dask``, on the machine of the store) is the only process that
touches the experiment store: SQLite is not safe over a network filesystem. It loops like a
local :class:`~nnkit.experiments.queue.Worker`: requeues interrupted runs that have retries
left, takes queued runs with the queue's own atomic :func:`~.queue.claim` (up to ``slots`` at
a time) and submits each as one Dask task, :func:`run_task`, handed only plain data (the
claim's fields, queue names, file bytes: never a model).

The task, on a Dask worker, trains the run in a child process exactly as a local worker does
(:func:`~.queue.train_command`: ``nnkit train --run-dir D --resume auto --run-id ID``, in a
process group of its own, dying with the Dask worker process by ``PR_SET_PDEATHSIG``). The
child's recorder writes into a throwaway store in a local temporary folder of the Dask
worker (never the real store, never a shared filesystem); what the head records comes from
the events. Through three ``distributed.Queue`` s per attempt, all held by the scheduler:

- ``events``: the task sends the child's ``events.jsonl`` lines as they come (a batch per
  poll) and a ``started`` note naming its Dask worker; the head folds them into the store's
  record with the same :class:`~.recorder.Recorder` a local run uses, appends them to the
  run's *inbox* (``<head dir>/<id>/events.jsonl``), and keeps the record's heartbeat current
  while the Dask worker lives. Each batch says how far into the file it reaches: on a shared
  filesystem the next attempt first sends what a killed one wrote after its last batch;
- ``commands``: ``nnkit ctl RUN ...`` and the web page append to the inbox's
  ``commands.jsonl`` (the store names the inbox: ``jobs.head``); the head forwards each line,
  the task appends it to the run directory's ``commands.jsonl``, the run applies it at its
  safe point, and the ``ack`` comes back as an event;
- ``start``: one token, taken by the task before it starts. Dask runs a task again when its
  worker dies; the rerun finds no token and ends at once, so a retry is always the head's
  (a new claim, ``--retries``), never Dask's behind the store's back.

A killed Dask worker: the head sees the worker gone from the scheduler (or the task lost),
settles the run ``interrupted`` (:func:`~.queue.settle`) and requeues it if it has retries
left; the next attempt resumes from the run directory's last checkpoint. A killed head: its
runs' records name its pid, so the next head's liveness check marks them ``interrupted``;
their tasks, without a word from the head for :data:`HEAD_PATIENCE` seconds, checkpoint and
end, and the next head resumes them.

Run directories: ``run_root/<name>-<id>`` as the Dask workers see it, on a filesystem they
share with the head (the default); or, with ``copy_back``, in a temporary folder of the Dask
worker, with its events as they come, every new checkpoint and, at the end, all the run
directory's files sent back to the head's ``run_root/<name>-<id>`` (an attempt starts from
the files the head has, so a killed worker's run resumes from the last checkpoint that
reached the head).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from .._version import __version__
from ..training.checkpoints import LATEST_FILE
from ..training.events import COMMANDS_FILE, EVENTS_FILE, JsonlWriter, append_line, read_jsonl
from .queue import (_EXIT_INTERRUPTED, OUTPUT_FILE, Claim, _die_with_parent, claim, prepare_run_dir,
                    requeue_interrupted, settle, train_command)
from .recorder import Recorder
from .rundir import read_run_info
from .store import Store
from .summary import RunSummary

#: Seconds between two looks of the head (at its tasks, the queue) and of a task (at its child).
POLL = 0.2
#: Seconds between two heartbeats the head writes for a run whose Dask worker lives.
HEARTBEAT_EVERY = 5.0
#: Seconds a task goes on without a word from its head (which sends one every HEARTBEAT_EVERY)
#: before it takes the head for dead: its run then checkpoints and ends (a new head resumes it),
#: rather than train on unseen, or beside the next attempt in the same run directory.
HEAD_PATIENCE = 60.0
#: Seconds between two looks of a task at its run's owner (a newer attempt takes the run over).
OWNER_EVERY = 1.0
#: How long a task waits for an earlier attempt, whose end no head saw, to end (its worker may
#: be dead too: then it never says so).
PREVIOUS_WAIT = HEAD_PATIENCE + 30.0
#: How long a task waits for its start token (the head puts it before it submits the task).
TOKEN_WAIT = 2.0
#: The exit status the head settles a run with when its Dask worker is gone (as if killed).
LOST = -signal.SIGKILL
#: What a task reports when it found no start token: a rerun by Dask after its worker died.
RERUN = "rerun"
_INSTALL = "the dask extra: pip install 'nnkit[dask]'"


def _distributed() -> Any:
    """The ``distributed`` package, or ImportError saying which extra brings it."""
    try:
        import distributed
    except ImportError as e:
        raise ImportError(f"nnkit worker --dask needs {_INSTALL} ({e})") from None
    return distributed


def _queue_names(run_id: str, attempt: int) -> dict[str, str]:
    """The names of an attempt's queues on the scheduler (per submission: an old one's late
    words never reach a newer one, even one with the same attempt number after a Ctrl-C)."""
    base = f"nnkit-{run_id}-{attempt}-{uuid.uuid4().hex[:8]}"
    return {"events": f"{base}-events", "commands": f"{base}-commands", "start": f"{base}-start"}


def _files(root: Path, names: list[str] | None = None) -> dict[str, str]:
    """The regular files under ``root`` (or just ``names``), as ``{relative path: base64}``."""
    paths = [root / n for n in names] if names is not None else sorted(root.rglob("*"))
    found = {}
    for path in paths:
        if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
            found[path.relative_to(root).as_posix()] = base64.b64encode(path.read_bytes()).decode()
    return found


def _checkpoint_files(run_dir: Path, checkpoint: str) -> dict[str, str] | None:
    """A new checkpoint for the head (:func:`_files` of it and ``run.json``) with a ``latest``
    naming it, or None if it is gone (rotated away: the next one will do).

    ``latest`` is written here, not read: the run may have moved it on to a newer checkpoint
    since ``checkpoint`` was read from it, and the head must never get a pointer to a file
    it was not sent (it would resume from an older one while ``latest`` named another).
    """
    try:
        files = _files(run_dir, [checkpoint, "run.json"])
    except FileNotFoundError:
        return None
    if checkpoint not in files:
        return None
    files[LATEST_FILE] = base64.b64encode(f"{checkpoint}\n".encode()).decode()
    return files


def _unpack(root: Path, files: dict[str, str]) -> None:
    """Writes ``files`` (from :func:`_files`) under ``root``, each atomically, none outside it.

    ``latest`` goes last: whoever sees the pointer finds what came with it (its checkpoint,
    ``run.json``) already there.
    """
    root = root.resolve()
    for name, data in sorted(files.items(), key=lambda item: item[0] == LATEST_FILE):
        target = (root / name).resolve()
        if not target.is_relative_to(root):  # a name with "..": never written
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        partial.write_bytes(base64.b64decode(data))
        os.replace(partial, target)


def _prune_checkpoints(root: Path, keep: set[str]) -> None:
    """Deletes the rotating checkpoints under ``root`` (``checkpoint-<step>.h5``) not in ``keep``:
    the head's copy keeps what the run directory on the Dask worker keeps, not every one sent."""
    for path in root.glob("checkpoint-*.h5"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def _latest_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint file ``latest`` names, or None (see :mod:`nnkit.training.checkpoints`)."""
    try:
        name = (run_dir / "latest").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return name if name and "/" not in name and (run_dir / name).is_file() else None


# ============================================================================ the task
def _take_over(distributed: Any, taken: Claim, wait_previous: bool) -> tuple[Any, Any]:
    """Makes this attempt the run's owner (a Dask ``Variable`` per run: an older attempt still
    training, whose head died, sees it and ends with a checkpoint) and, with ``wait_previous``
    (no head saw the older attempt end), waits for the older attempt to say it ended. Returns
    the owner and ended variables."""
    owner = distributed.Variable(f"nnkit-run-{taken.run_id}-owner")
    ended = distributed.Variable(f"nnkit-run-{taken.run_id}-ended")
    owner.set(taken.attempt)
    if wait_previous:
        deadline = time.monotonic() + PREVIOUS_WAIT
        while time.monotonic() < deadline:
            try:
                if ended.get(timeout=1) >= taken.attempt - 1:
                    break
            except TimeoutError:  # never set: no earlier attempt on this cluster ever ended
                pass
            time.sleep(0.2)
    return owner, ended


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """The Dask task of one attempt: trains the claimed run in a child process on this Dask
    worker and talks to the head through the attempt's queues (see the module doc).

    ``spec``: plain data from :meth:`DaskHead._submit`. Returns ``{"status": exit status,
    "worker", "host", "files"}`` (``files``: the run directory's, with ``copy_back``), or
    ``{"status": RERUN}`` for a rerun that found no start token.
    """
    distributed = _distributed()
    names = spec["queues"]
    token = distributed.Queue(names["start"])
    try:
        token.get(timeout=TOKEN_WAIT)
    except TimeoutError:  # taken by the first run of this task: this is Dask's rerun
        return {"status": RERUN}
    finally:
        token.close()
    events, commands = distributed.Queue(names["events"]), distributed.Queue(names["commands"])
    taken = Claim(**{**spec["claim"], "tags": tuple(spec["claim"]["tags"])})
    owner, ended = _take_over(distributed, taken, spec.get("wait_previous", False))
    # In the Dask worker's own folder: when the worker is killed, the next one on the machine
    # (the nanny's restart) purges it with the rest of the dead worker's files.
    child = None
    scratch = Path(tempfile.mkdtemp(prefix=f"nnkit-{taken.run_id}-", dir=distributed.get_worker().local_directory))
    try:
        run_dir = Path(taken.run_dir) if not spec["copy_back"] else scratch / Path(taken.run_dir).name
        if spec["copy_back"]:
            _unpack(run_dir, spec["files"])  # what the head has: an earlier attempt's checkpoints
        here = dataclasses.replace(taken, run_dir=str(run_dir))
        prepare_run_dir(here)
        events_path = run_dir / EVENTS_FILE
        size = events_path.stat().st_size if events_path.exists() else 0
        # Earlier attempts' lines were sent, except (a shared run directory) those after the last
        # the head received: an attempt killed between two looks sends its last lines now.
        offset = size if spec.get("events_offset") is None else min(spec["events_offset"], size)
        # The child's recorder needs a store: a throwaway one here, local to this machine.
        command = train_command(here, Store(scratch / "scratch.db"))
        with open(run_dir / OUTPUT_FILE, "ab") as output:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                     preexec_fn=lambda parent=os.getpid(): _die_with_parent(parent))
        worker = distributed.get_worker().address
        events.put({"kind": "started", "worker": worker, "host": socket.gethostname(), "pid": child.pid,
                    "offset": offset})
        sent_checkpoint = _latest_checkpoint(run_dir)
        plan = None
        heard = looked = time.monotonic()  # the head's last word, the last look at the owner
        orphaned = False
        while True:
            status = child.poll()  # before reading: the last lines are read after the end
            items, offset = read_jsonl(events_path, offset) if events_path.exists() else ([], offset)
            batch = [value for _, value in items if isinstance(value, dict)]
            if batch:
                events.put({"kind": "events", "events": batch, "offset": offset})
            info = read_run_info(run_dir)  # the child's recorder writes its plan's length there
            if isinstance(info.get("total_steps"), int) and info["total_steps"] != plan:
                plan = info["total_steps"]
                events.put({"kind": "plan", "total_steps": plan})
            if spec["copy_back"] and (latest := _latest_checkpoint(run_dir)) not in (None, sent_checkpoint) \
                    and (files := _checkpoint_files(run_dir, latest)) is not None:
                events.put({"kind": "files", "files": files})
                sent_checkpoint = latest
            if status is not None:
                break
            for message in commands.get(batch=True):
                heard = time.monotonic()
                if message.get("signal") == "SIGINT":  # the head is stopping: checkpoint and end
                    child.send_signal(signal.SIGINT)
                elif isinstance(message.get("command"), dict):
                    append_line(run_dir / COMMANDS_FILE, json.dumps(message["command"]) + "\n")
            if not orphaned and time.monotonic() - heard > spec.get("head_patience", HEAD_PATIENCE):
                orphaned = True  # the head is gone: checkpoint and end, once
                child.send_signal(signal.SIGINT)
            if not orphaned and time.monotonic() - looked > OWNER_EVERY:
                looked = time.monotonic()
                if owner.get(timeout=30) != taken.attempt:  # a newer attempt took the run over
                    orphaned = True
                    child.send_signal(signal.SIGINT)
            time.sleep(spec.get("poll", POLL))
        files = _files(run_dir) if spec["copy_back"] else None
        return {"status": status, "worker": worker, "host": socket.gethostname(), "files": files}
    finally:
        if child is not None and child.poll() is None:  # an error above (the scheduler gone...):
            child.send_signal(signal.SIGINT)  # the run checkpoints and ends, the next attempt resumes
            child.wait()
        ended.set(taken.attempt)  # a newer attempt waiting for this one may start
        shutil.rmtree(scratch, ignore_errors=True)
        for queue in (events, commands):
            queue.close()  # the scheduler forgets a queue when its last holder closes it


# ============================================================================ the head
@dataclass
class _Attempt:
    """One run the head has on the cluster: its claim, task, queues, recorder and inbox."""

    taken: Claim
    future: Any
    events: Any
    commands: Any
    start: Any
    plan: Any  # what the recorder asks a trainer: the plan's length (from the child's run.json)
    recorder: Recorder
    inbox: Path
    log: JsonlWriter
    copy: JsonlWriter | None  # copy_back: the run directory's events.jsonl here, as they come
    command_offset: int = 0
    relayed: int | None = None  # the run directory's events.jsonl: bytes the head has received
    worker: str | None = None
    beat: float = field(default_factory=time.monotonic)


class DaskHead:
    """``nnkit worker --dask ADDRESS``: the head's loop (see the module doc).

    ``store``: the experiment store (only this process touches it). ``address``: the Dask
    scheduler (``tcp://host:8786``), or a ``distributed.Client`` to use. ``run_root``: where the
    run directories go. ``slots``: runs on the cluster at once (default: the cluster's
    threads when the head starts). ``max_jobs``: take this many runs, then end when they have;
    ``once``: end when nothing is queued or running. ``copy_back``: run directories live on the
    Dask workers and their files come back (see the module doc). ``head_dir``: where the
    inboxes go (default ``<store's folder>/heads/<host>-<pid>``). ``head_patience``: how long a
    task trains on without a word from the head (see :data:`HEAD_PATIENCE`). SIGINT and SIGTERM stop it:
    each run gets one SIGINT (it checkpoints), goes back to the queue, and the head ends (130).
    """

    def __init__(self, store: Store, address: Any, run_root: str | os.PathLike, *, slots: int | None = None,
                 max_jobs: int | None = None, once: bool = False, copy_back: bool = False,
                 head_dir: str | os.PathLike | None = None, poll: float = POLL, head_patience: float = HEAD_PATIENCE,
                 echo: Callable[[str], None] | None = None) -> None:
        if head_patience <= HEARTBEAT_EVERY:
            raise ValueError(f"head_patience must exceed the head's heartbeat ({HEARTBEAT_EVERY:g} s)")
        self.head_patience = head_patience
        self.store, self.address, self.slots, self.max_jobs, self.once = store, address, slots, max_jobs, once
        self.run_root = Path(run_root).expanduser().resolve()
        self.copy_back, self.poll = copy_back, poll
        self.head_dir = Path(head_dir) if head_dir is not None else \
            Path(store.path).expanduser().resolve().parent / "heads" / f"{socket.gethostname()}-{os.getpid()}"
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.stopping = False
        self.taken = 0
        self.active: dict[str, _Attempt] = {}
        self.settled: dict[str, int] = {}  # run id -> the last attempt this head saw end
        self.relayed: dict[str, int | None] = {}  # run id -> its last attempt's ``relayed``
        self.client: Any = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Works until stopped, ``max_jobs`` or (``once``) nothing left; the exit status."""
        distributed = _distributed()
        own = not isinstance(self.address, distributed.Client)
        self.client = distributed.Client(self.address, timeout=60) if own else self.address
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.slots is None:
                self.slots = max(1, sum(w.get("nthreads", 1) for w in self.client.scheduler_info()["workers"].values()))
            self.echo(f"nnkit worker: head of Dask cluster {self.client.scheduler.address}, {self.slots} "
                      f"slot(s), run directories in {self.run_root}" + (" (copied back)" if self.copy_back else ""))
            forwarded = False
            while True:
                if self.stopping and not forwarded:
                    for attempt in self.active.values():
                        attempt.commands.put({"signal": "SIGINT"})
                    forwarded = True
                # One look at the scheduler's workers per round, and only when a run has one.
                workers = set(self.client.scheduler_info()["workers"]) \
                    if any(a.worker for a in self.active.values()) else None
                for run_id in list(self.active):
                    self._tend(self.active[run_id], workers)
                idle = self._take()  # after the ends: a run just interrupted is requeued and taken again
                if not self.active and (self.stopping or (self.once and idle) or
                                        (self.max_jobs is not None and self.taken >= self.max_jobs)):
                    break
                time.sleep(self.poll)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if own:
                self.client.close()
        return _EXIT_INTERRUPTED if self.stopping else 0

    def _take(self) -> bool:
        """Requeues interrupted runs and claims queued ones into free slots; True if the queue
        was found empty."""
        for run_id in requeue_interrupted(self.store):
            self.echo(f"nnkit worker: run {run_id} was interrupted; requeued to resume from its checkpoint")
        while (not self.stopping and len(self.active) < self.slots
               and (self.max_jobs is None or self.taken < self.max_jobs)):
            taken = claim(self.store, self.run_root, head=self.head_dir)
            if taken is None:
                return True
            self.taken += 1
            self._submit(taken)
        return False

    def _submit(self, taken: Claim) -> None:
        distributed = _distributed()
        record = self.store.get(taken.run_id)
        inbox = self.head_dir / taken.run_id
        inbox.mkdir(parents=True, exist_ok=True)
        commands_file = inbox / COMMANDS_FILE
        offset = commands_file.stat().st_size if commands_file.exists() else 0  # earlier ones: done
        summary = RunSummary(id=taken.run_id, name=taken.name, owner=taken.owner, tags=taken.tags,
                             status="running", created=record.created, host=socket.gethostname(), pid=os.getpid(),
                             run_dir=taken.run_dir, config_text=taken.config_text, nnkit_version=__version__,
                             step=record.step, total_steps=record.total_steps)
        # The pid and host are the head's: the liveness check on this machine sees the head.
        plan = SimpleNamespace(target_step=record.total_steps)
        recorder = Recorder(self.store, summary, trainer=plan, claimed=True)
        names = _queue_names(taken.run_id, taken.attempt)
        # The head holds every queue before the task does: none is forgotten while in use.
        queues = {key: distributed.Queue(name, client=self.client) for key, name in names.items()}
        queues["start"].put(True)
        files = _files(Path(taken.run_dir)) if self.copy_back and Path(taken.run_dir).is_dir() else {}
        # An earlier attempt this head did not see end (its head died) may still train: wait for it.
        wait_previous = taken.attempt > 1 and self.settled.get(taken.run_id) != taken.attempt - 1
        # A shared run directory keeps what a killed attempt wrote after its last relay: sent next.
        events_offset = None if self.copy_back else self.relayed.get(taken.run_id)
        spec = {"claim": dataclasses.asdict(taken), "queues": names, "copy_back": self.copy_back, "files": files,
                "poll": self.poll, "head_patience": self.head_patience, "wait_previous": wait_previous,
                "events_offset": events_offset}
        # retries=0: a retry is a new claim of the head's (the start token stops Dask's own reruns).
        future = self.client.submit(run_task, spec, key=names["start"].replace("-start", "-task"), pure=False,
                                    retries=0)
        self.active[taken.run_id] = _Attempt(taken, future, queues["events"], queues["commands"], queues["start"],
                                             plan, recorder, inbox, JsonlWriter(inbox / EVENTS_FILE),
                                             JsonlWriter(Path(taken.run_dir) / EVENTS_FILE) if self.copy_back else None,
                                             offset)
        self.echo(f"nnkit worker: run {taken.run_id} ({taken.name}), attempt {taken.attempt}, in {taken.run_dir}, "
                  "submitted to the cluster")

    def _tend(self, attempt: _Attempt, workers: set[str] | None) -> None:
        """One look at a run: its events in, its commands out, its heartbeat, its end
        (``workers``: the scheduler's, looked at before this round; None: not looked at)."""
        self._receive(attempt)
        items, attempt.command_offset = read_jsonl(attempt.inbox / COMMANDS_FILE, attempt.command_offset) \
            if (attempt.inbox / COMMANDS_FILE).exists() else ([], attempt.command_offset)
        for _, value in items:
            if isinstance(value, dict):
                attempt.commands.put({"command": value})
        gone = workers is not None and attempt.worker is not None and attempt.worker not in workers
        if attempt.future.done() or gone:
            self._end(attempt, gone)
        elif time.monotonic() - attempt.beat >= HEARTBEAT_EVERY:
            # Its worker lives (or the task waits for a free one): not a run to take for dead.
            attempt.beat = time.monotonic()
            attempt.recorder({"type": "heartbeat", "time": time.time()})
            attempt.commands.put({"alive": True})  # and the head lives: the task goes on

    def _receive(self, attempt: _Attempt) -> None:
        for message in attempt.events.get(batch=True):
            kind = message.get("kind")
            if kind in ("started", "events"):
                attempt.relayed = message.get("offset", attempt.relayed)
            if kind == "started":
                attempt.worker = message["worker"]
                self.store._write(lambda db: db.execute("UPDATE jobs SET worker = ? WHERE run_id = ?",
                                                        (attempt.worker, attempt.taken.run_id)))
                self.echo(f"nnkit worker: run {attempt.taken.run_id} started on {message['host']} "
                          f"(Dask worker {attempt.worker}, pid {message['pid']})")
            elif kind == "events":
                for event in message["events"]:
                    attempt.recorder(event)
                    attempt.log(event)
                    if attempt.copy is not None:  # a killed worker's run keeps its log here
                        attempt.copy(event)
            elif kind == "plan":
                attempt.plan.target_step = message["total_steps"]
            elif kind == "files":  # a new checkpoint (and latest): the one to resume from if killed
                _unpack(Path(attempt.taken.run_dir), message["files"])
                _prune_checkpoints(Path(attempt.taken.run_dir), set(message["files"]))

    def _end(self, attempt: _Attempt, gone: bool) -> None:
        status, files = LOST, None
        if not gone:
            try:
                result = attempt.future.result()
            except Exception as e:  # noqa: BLE001  (the task failed or was lost: the run was interrupted)
                self.echo(f"nnkit worker: run {attempt.taken.run_id}: the task ended with "
                          f"{type(e).__name__}: {e}")
            else:
                if result["status"] != RERUN:
                    status, files = result["status"], result.get("files")
        else:
            self.echo(f"nnkit worker: run {attempt.taken.run_id}: Dask worker {attempt.worker} is gone")
        self.client.cancel(attempt.future)
        self._receive(attempt)  # the last events (the task sent them before it returned)
        if attempt.copy is not None:
            attempt.copy.close()  # the task's own copy of the log, complete, replaces it
        if files:
            _unpack(Path(attempt.taken.run_dir), files)
            _prune_checkpoints(Path(attempt.taken.run_dir), set(files))
        attempt.recorder.close()  # its last write before the settling one
        attempt.log.close()
        for queue in (attempt.events, attempt.commands, attempt.start):
            queue.close()
        final = settle(self.store, attempt.taken, status, requeue=self.stopping)
        self.settled[attempt.taken.run_id] = attempt.taken.attempt
        self.relayed[attempt.taken.run_id] = attempt.relayed
        del self.active[attempt.taken.run_id]
        self.echo(f"nnkit worker: run {attempt.taken.run_id}: {final} (exit status {status})")


__all__ = ["DaskHead", "run_task", "POLL", "HEARTBEAT_EVERY", "HEAD_PATIENCE"]
