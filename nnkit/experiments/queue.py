"""The work queue: runs recorded ``queued`` in the store, taken by local worker processes.

``nnkit queue JOB.conf`` records a run as ``queued`` (its validated config text and a row in
the store's ``jobs`` table: its retries and attempts). ``nnkit worker`` loops: it marks the
runs whose process is gone ``interrupted`` (:meth:`Store.mark_stale`), puts those with
retries left back in the queue, claims the oldest queued run and runs it as a child process,
``nnkit train`` of the stored config with ``--run-dir`` (``<runs dir>/<name>-<id>``, or the
directory of an earlier attempt) ``--resume auto`` and ``--run-id`` (the recorder then keeps
this very record current), waits for it and takes the next.

Claims are atomic: one write transaction (``BEGIN IMMEDIATE``, the store's own retry) picks the
oldest queued run and moves it to ``running`` with the worker's pid, on the condition that it
is still queued, and counts the attempt; that count names the claim, so a late word from an
old claim never touches a newer one. Eight workers racing on one store take each run once.

The child lives in a process group of its own (a Ctrl-C at the terminal reaches the worker
only, which forwards one SIGINT: the child finishes its batch, checkpoints, and the worker puts
the run back in the queue without using a retry) and, on Linux, dies with the worker
(``PR_SET_PDEATHSIG``: SIGKILL when the worker is killed), after which the liveness check finds
its pid gone.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .rundir import JOB_FILE, config_hash, default_owner, flatten_config
from .store import Store, join_sweep
from .summary import RunSummary

#: Seconds a worker waits between two looks at an empty queue.
POLL = 1.0
#: The child's output (progress, log lines, errors), appended in its run directory.
OUTPUT_FILE = "worker.log"
#: ``nnkit train``'s exit statuses the worker tells apart.
_EXIT_INTERRUPTED = 130
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Claim:
    """A queued run a worker took: what it needs to run it."""

    run_id: str
    attempt: int
    run_dir: str
    config_text: str
    name: str | None
    owner: str | None
    tags: tuple[str, ...]
    load_roots: tuple[str, ...] = ()


def enqueue(store: Store, config_text: str, *, name: str | None = None, owner: str | None = None,
            tags: tuple[str, ...] = (), retries: int = 0, sweep_id: str | None = None,
            point: dict[str, Any] | None = None, run_dir: str | os.PathLike | None = None,
            load_roots: tuple[str | os.PathLike, ...] = (), run_id: str | None = None) -> str:
    """Records a run of ``config_text`` (a validated job config) as ``queued``; returns its id.

    ``sweep_id``, ``point``: the run is one of that sweep's, made by the overrides ``point``.
    ``run_dir``: where the worker runs it (default ``<its runs dir>/<name>-<id>``);
    ``load_roots``: folders its ``load_weights`` commands may read from besides its run
    directory (``nnkit train --load-root``: a sweep's run directories); ``run_id``: the id to
    record it under (default a fresh one).
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    summary = RunSummary(id=run_id or uuid.uuid4().hex[:12], name=name, owner=owner or default_owner(),
                         tags=tuple(tags), status="queued", created=time.time(), config_text=config_text,
                         config_hash=config_hash(config_text),
                         run_dir=None if run_dir is None else str(Path(run_dir).resolve()))
    run_id = store.save(summary, flatten_config(config_text))
    roots = json.dumps([str(Path(root).resolve()) for root in load_roots]) if load_roots else None
    # After the record: a run is claimable once it has its jobs row, never half-made.
    def work(db: Any) -> None:
        if sweep_id is not None:  # in the same transaction: a claimable run already has its sweep
            join_sweep(db, run_id, sweep_id, point or {})
        db.execute("INSERT INTO jobs (run_id, retries, load_roots) VALUES (?, ?, ?)", (run_id, retries, roots))
    try:
        store._write(work)
    except LookupError:  # no such sweep: no queued record that no worker could ever take
        store.remove(run_id)
        raise
    return run_id


def requeue_interrupted(store: Store) -> list[str]:
    """Marks the runs whose process is gone ``interrupted``, then puts back in the queue the
    queued runs (``nnkit queue``) interrupted with retries left; returns their ids."""
    store.mark_stale()

    def work(db: Any) -> list[str]:
        ids = [row[0] for row in db.execute(
            "SELECT runs.id FROM runs JOIN jobs ON jobs.run_id = runs.id "
            "WHERE runs.status = 'interrupted' AND jobs.attempts <= jobs.retries")]
        for run_id in ids:
            db.execute("UPDATE runs SET status = 'queued', pid = NULL, ended = NULL WHERE id = ?", (run_id,))
        return ids
    return store._write(work)


def claim(store: Store, runs_dir: str | os.PathLike, pid: int | None = None,
          head: str | os.PathLike | None = None) -> Claim | None:
    """Takes the oldest queued run (in one transaction: no other worker can take it too);
    None when nothing is queued. Its run directory: the one an earlier attempt used, else
    ``runs_dir/<name>-<id>``. ``head``: the claimer is a head running it remotely
    (:mod:`.cluster`), whose inbox for the run is ``head/<id>`` (recorded in the same
    transaction; a local claim clears an earlier attempt's)."""
    pid = os.getpid() if pid is None else pid
    runs_dir = Path(runs_dir).expanduser().resolve()

    def work(db: Any) -> Claim | None:
        row = db.execute("SELECT runs.id, runs.name, runs.owner, runs.run_dir, runs.config_text, jobs.attempts, "
                         "jobs.load_roots FROM runs JOIN jobs ON jobs.run_id = runs.id WHERE runs.status = 'queued' "
                         "ORDER BY runs.created, runs.id LIMIT 1").fetchone()
        if row is None:
            return None
        run_id, name, owner, run_dir, text, attempts, roots = row
        run_dir = run_dir or str(runs_dir / f"{_safe(name) or 'run'}-{run_id}")
        taken = db.execute("UPDATE runs SET status = 'running', pid = ?, host = ?, heartbeat = ?, run_dir = ?, "
                           "ended = NULL WHERE id = ?",
                           (pid, socket.gethostname(), time.time(), run_dir, run_id)).rowcount
        if taken != 1:  # cannot happen inside the write lock; kept as the claim's condition
            return None
        inbox = None if head is None else str(Path(head).expanduser().resolve() / run_id)
        db.execute("UPDATE jobs SET attempts = attempts + 1, head = ?, worker = NULL WHERE run_id = ?",
                   (inbox, run_id))
        tags = tuple(t for (t,) in db.execute("SELECT tag FROM tags WHERE run_id = ? ORDER BY tag", (run_id,)))
        return Claim(run_id, attempts + 1, run_dir, text or "", name, owner, tags,
                     tuple(json.loads(roots)) if roots else ())
    return store._write(work)


def settle(store: Store, taken: Claim, exit_status: int, requeue: bool) -> str:
    """After the child of ``taken`` ended: a record the child left running (killed, crashed)
    becomes ``interrupted`` (by a signal) or ``failed``; with ``requeue`` (the worker was
    stopped) an interrupted run goes back to the queue without using a retry. Only while the
    claim is the latest one. Returns the record's status."""
    def work(db: Any) -> str:
        row = db.execute("SELECT runs.status, jobs.attempts FROM runs JOIN jobs ON jobs.run_id = runs.id "
                         "WHERE runs.id = ?", (taken.run_id,)).fetchone()
        if row is None:
            return "removed"
        status, attempts = row
        if attempts != taken.attempt:  # requeued and taken again by another worker meanwhile
            return status
        if status in ("queued", "running", "paused"):
            killed = exit_status < 0 or exit_status == _EXIT_INTERRUPTED
            status = "interrupted" if killed else ("finished" if exit_status == 0 else "failed")
            db.execute("UPDATE runs SET status = ?, ended = COALESCE(ended, ?) WHERE id = ?",
                       (status, time.time(), taken.run_id))
        if requeue and status == "interrupted":
            db.execute("UPDATE runs SET status = 'queued', pid = NULL, ended = NULL WHERE id = ?", (taken.run_id,))
            db.execute("UPDATE jobs SET attempts = attempts - 1 WHERE run_id = ?", (taken.run_id,))
            status = "queued"
        return status
    return store._write(work)


def cancel(store: Store, run_id: str) -> bool:
    """Stops a queued run before any worker takes it; False if it is no longer queued."""
    return store._write(lambda db: db.execute(
        "UPDATE runs SET status = 'stopped', ended = ? WHERE id = ? AND status = 'queued'",
        (time.time(), run_id)).rowcount == 1)


def remote_inbox(store: Store, run_id: str) -> str | None:
    """The inbox directory of a run a head (``nnkit worker --dask``) is running: where ``nnkit
    ctl`` and the web page send its commands and read its live events; None for a local run,
    or one that ended (its run directory then has the whole log)."""
    rows = store._read("SELECT jobs.head FROM jobs JOIN runs ON runs.id = jobs.run_id "
                       "WHERE jobs.run_id = ? AND runs.status IN ('running', 'paused')", (run_id,))
    inbox = rows[0][0] if rows else None
    return inbox if inbox and Path(inbox).is_dir() else None


def remote_of(store: Store, run_id: str) -> tuple[str, str | None] | None:
    """``(head inbox, Dask worker address)`` of a run a head (``nnkit worker --dask``) took
    last, else None (a local run)."""
    rows = store._read("SELECT head, worker FROM jobs WHERE run_id = ? AND head IS NOT NULL", (run_id,))
    return (rows[0][0], rows[0][1]) if rows else None


def command_dir(store: Store, run_id: str, run_dir: str | None) -> str | None:
    """Where a recorded run takes commands: its head's inbox if it runs remotely, else ``run_dir``."""
    return remote_inbox(store, run_id) or run_dir


class NotSteerable(Exception):
    """A recorded run that takes no command now (queued, or without a run directory); says why."""


def steer_target(store: Store, run: Any, command: str) -> str | None:
    """Where a command to the recorded run ``run`` goes (``nnkit ctl RUN`` and the web page):
    its run directory, or for a run on a Dask cluster its head's inbox (:func:`remote_inbox`). ``stop`` of a queued run cancels it instead (:func:`cancel`, atomic
    with the claim) and gives None; if a worker took it meanwhile, the command goes to the run.

    NotSteerable when the run is (still) queued or has no run directory.
    """
    if run.status == "queued" and command == "stop" and cancel(store, run.id):
        return None
    run = store.get(run.id)  # a worker may have taken it meanwhile
    if run.status == "queued":
        raise NotSteerable(f"run {run.id} is queued: no worker has started it yet, so it takes no "
                           "command but stop (which cancels it)")
    inbox = remote_inbox(store, run.id) if isinstance(store, Store) else None  # (a duck-typed store: no queue)
    if inbox is not None:  # a remote run: its head forwards the command and brings the answer back
        return inbox
    if not run.run_dir:
        raise NotSteerable(f"run {run.id} has no run directory (an in-memory fit): nothing to send commands to")
    return run.run_dir


def will_retry(store: Store, run_id: str) -> bool:
    """Whether a worker will put run ``run_id`` back in the queue: it is ``interrupted`` with
    retries left (see :func:`requeue_interrupted`)."""
    return bool(store._read("SELECT 1 FROM runs JOIN jobs ON jobs.run_id = runs.id WHERE runs.id = ? "
                            "AND runs.status = 'interrupted' AND jobs.attempts <= jobs.retries", (run_id,)))


def _safe(name: str | None) -> str:
    """A record's name as a directory name (no separators or control characters)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in (name or "")).strip(".")[:64]


def _die_with_parent(parent: int) -> None:
    """preexec_fn of the child: its own process group, and on Linux SIGKILL when the worker dies."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the worker died before prctl took effect
        os._exit(1)


def prepare_run_dir(taken: Claim, run_dir: str | os.PathLike | None = None) -> Path:
    """Makes the claimed run's directory (``run_dir``, default the claim's) and writes the stored
    job there as ``job.conf``, for :func:`train_command`; returns the directory."""
    path = Path(run_dir if run_dir is not None else taken.run_dir)
    path.mkdir(parents=True, exist_ok=True)
    job = path / JOB_FILE
    partial = job.with_name(f".{JOB_FILE}.{os.getpid()}.tmp")
    partial.write_text(taken.config_text, encoding="utf-8")
    os.replace(partial, job)  # the stored job, as queued: train rewrites it with its header
    return path


def train_command(taken: Claim, store: Store) -> list[str]:
    """The child's command line: ``nnkit train`` of the stored job into the claimed record."""
    command = [sys.executable, "-m", "nnkit.cli", "train", str(Path(taken.run_dir) / JOB_FILE),
               "--run-dir", taken.run_dir, "--resume", "auto", "--store", str(Path(store.path).resolve()),
               "--run-id", taken.run_id]
    if taken.owner:
        command += ["--owner", taken.owner]
    if taken.name:
        command += ["--name", taken.name]
    for tag in taken.tags:
        command += ["--tag", tag]
    for root in taken.load_roots:
        command += ["--load-root", root]
    return command


class Worker:
    """One worker process's loop (``nnkit worker``): see the module doc.

    ``max_jobs``: stop after this many runs; ``once``: stop when nothing is queued (else wait
    for more, every ``poll`` seconds). SIGINT and SIGTERM stop it: forwarded to the child as one
    SIGINT, then the run is requeued and the worker ends.
    """

    def __init__(self, store: Store, runs_dir: str | os.PathLike, max_jobs: int | None = None,
                 once: bool = False, poll: float = POLL, echo: Callable[[str], None] | None = None) -> None:
        self.store, self.runs_dir, self.max_jobs, self.once, self.poll = store, runs_dir, max_jobs, once, poll
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.stopping = False
        self.done = 0
        self._child: subprocess.Popen | None = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)

    def run(self) -> int:
        """Works until stopped, ``max_jobs`` or (``once``) an empty queue; the exit status
        (130 when stopped by a signal)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self.stopping and (self.max_jobs is None or self.done < self.max_jobs):
                back = requeue_interrupted(self.store)
                for run_id in back:
                    self.echo(f"nnkit worker: run {run_id} was interrupted; requeued to resume from its checkpoint")
                taken = claim(self.store, self.runs_dir)
                if taken is None:
                    if self.once:
                        break
                    deadline = time.monotonic() + self.poll
                    while not self.stopping and time.monotonic() < deadline:
                        time.sleep(min(0.1, self.poll))
                    continue
                self._run(taken)
                self.done += 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return _EXIT_INTERRUPTED if self.stopping else 0

    def _run(self, taken: Claim) -> None:
        if self.stopping:  # stopped between the claim and the start: back to the queue at once
            settle(self.store, taken, _EXIT_INTERRUPTED, requeue=True)
            return
        run_dir = prepare_run_dir(taken)
        self.echo(f"nnkit worker: run {taken.run_id} ({taken.name}), attempt {taken.attempt}, in {run_dir}")
        with open(run_dir / OUTPUT_FILE, "ab") as output:
            self._child = subprocess.Popen(train_command(taken, self.store), stdin=subprocess.DEVNULL,
                                           stdout=output, stderr=subprocess.STDOUT,
                                           preexec_fn=lambda parent=os.getpid(): _die_with_parent(parent))
            if self.stopping:  # a signal came while it started
                self._child.send_signal(signal.SIGINT)
            status = self._child.wait()
        self._child = None
        final = settle(self.store, taken, status, requeue=self.stopping)
        self.echo(f"nnkit worker: run {taken.run_id}: {final} (exit status {status}; log in "
                  f"{run_dir / OUTPUT_FILE})")


__all__ = ["enqueue", "claim", "settle", "cancel", "steer_target", "NotSteerable", "requeue_interrupted", "will_retry",
           "Worker", "Claim", "train_command", "prepare_run_dir", "remote_inbox", "remote_of", "command_dir"]
