"""The experiment store: an SQLite index of every recorded run (stdlib ``sqlite3``, WAL mode).

The run directory stays the source of truth (its ``events.jsonl``, ``job.conf`` and the
``run.json`` the recorder writes); the store indexes runs across directories for
``nnkit runs`` and the web page, and :meth:`Store.reindex` rebuilds it from run directories.

Concurrency: every thread (and process) opens its own connection; writes take the write lock
up front (``BEGIN IMMEDIATE``, so two writers never deadlock upgrading a read lock), wait on it
(``busy_timeout``) and retry, so many processes training and writing at once plus readers see
no "database is locked". WAL lets readers read while one writer writes.

Sweeps: a row of ``sweeps`` (id, name, kind ``grid``/``random``/``optuna``/``pbt``, its spec as
JSON, created, status) groups runs; each run of one carries ``sweep_id`` and ``point`` (the
overrides that made it, a JSON object ``{"updater.lr": 0.01, ...}``). See :meth:`Store.create_sweep`.

Schema: ``PRAGMA user_version`` names its version; :data:`MIGRATIONS` brings any older store up
to date when it is opened, and a store from a newer nnkit is refused rather than damaged.
"""
from __future__ import annotations

import json
import math
import uuid
import os
import shutil
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .query import COLUMNS, compile_where
from .summary import ENDED, STATUSES, RunSummary, lower_is_better

STORE_FILE = "experiments.db"
#: How long a write waits for the lock (in all, over its retries) before it gives up.
LOCK_PATIENCE = 120.0
#: A running run whose heartbeat is older than this (seconds) is taken for dead by mark_stale.
HEARTBEAT_TIMEOUT = 300.0
SORTS = ("created", "name", "status", "duration", "owner", "step")


def nnkit_home() -> Path:
    """``$NNKIT_HOME``, or ``~/.nnkit``: where nnkit keeps what outlives one run."""
    home = os.environ.get("NNKIT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".nnkit"


def default_store_path() -> Path:
    """The store every run is recorded in by default: ``$NNKIT_HOME/experiments.db``."""
    return nnkit_home() / STORE_FILE


class StoreError(Exception):
    """The store cannot be used: not an nnkit store, damaged, from a newer nnkit, or locked."""


class RunNotFound(LookupError):
    """No recorded run matches a reference (id, id prefix, name or run directory)."""


class SweepNotFound(LookupError):
    """No recorded sweep (or several) matches a reference."""


class AmbiguousRun(LookupError):
    """Several recorded runs match a reference; the message names them."""


@dataclass(frozen=True)
class RunRecord:
    """One recorded run, as the store has it (times are epoch seconds)."""

    id: str
    name: str | None
    owner: str | None
    tags: tuple[str, ...]
    notes: str | None
    status: str
    created: float | None
    started: float | None
    ended: float | None
    heartbeat: float | None
    host: str | None
    pid: int | None
    run_dir: str | None
    config_text: str | None
    config_hash: str | None
    nnkit_version: str | None
    git_commit: str | None
    step: int
    total_steps: int | None
    sweep_id: str | None = None  # the sweep the run belongs to (:meth:`Store.create_sweep`)
    point: dict[str, Any] | None = None  # its overrides in the sweep: {"updater.lr": 0.01, ...}

    @property
    def duration(self) -> float | None:
        """Seconds from start to end (to the last heartbeat while it runs), or None."""
        end = self.ended if self.ended is not None else self.heartbeat
        if self.started is None or end is None:
            return None
        return max(0.0, end - self.started)

    @property
    def progress(self) -> float | None:
        """The fraction of the planned steps done (0..1), or None without a plan."""
        if not self.total_steps:
            return None
        return min(1.0, max(0.0, self.step / self.total_steps))


_RECORD_COLUMNS = ("id", "name", "owner", "notes", "status", "created", "started", "ended", "heartbeat",
                   "host", "pid", "run_dir", "config_text", "config_hash", "nnkit_version", "git_commit",
                   "step", "total_steps")
#: What a read selects: the columns save() writes, then the sweep's (set once, by enqueue or
#: add_to_sweep; never by save, so the recorder's writes keep them).
_SELECT_COLUMNS = _RECORD_COLUMNS + ("sweep_id", "point")
_DURATION_SQL = "(COALESCE(runs.ended, runs.heartbeat) - runs.started)"
#: A sweep's kinds, and its statuses (``running`` until its driver, or for a grid or random
#: sweep, which has none, its last run, ends).
SWEEP_KINDS = ("grid", "random", "optuna", "pbt")
SWEEP_STATUSES = ("running", "finished", "stopped", "failed")
_LIVE = ("queued", "running", "paused")


@dataclass(frozen=True)
class SweepRecord:
    """One sweep: a group of runs made from one job by varying some of its fields.

    ``spec``: what the sweep varies and how (its kind's own JSON: the grid's values, the random
    ranges and seed, Optuna's distributions, metric and direction...). ``status``: see
    :data:`SWEEP_STATUSES`.
    """

    id: str
    name: str | None
    kind: str
    spec: dict[str, Any]
    created: float
    status: str


_SWEEP_COLUMNS = ("id", "name", "kind", "spec", "created")
# A grid or random sweep has no driver to mark it finished: it is, once it has runs and none is live.
_SWEEP_STATUS_SQL = (f"CASE WHEN sweeps.status = 'running' AND sweeps.kind IN ('grid', 'random') "
                     f"AND EXISTS (SELECT 1 FROM runs r WHERE r.sweep_id = sweeps.id) "
                     f"AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.sweep_id = sweeps.id "
                     f"AND r.status IN ({', '.join(repr(x) for x in _LIVE)})) "
                     f"THEN 'finished' ELSE sweeps.status END")


# ============================================================================ schema
def _v1(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT, owner TEXT, notes TEXT,
        status TEXT NOT NULL, created REAL, started REAL, ended REAL, heartbeat REAL, host TEXT,
        pid INTEGER, run_dir TEXT, config_text TEXT, config_hash TEXT, nnkit_version TEXT,
        git_commit TEXT, step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER)""")
    db.execute("CREATE TABLE tags (run_id TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (run_id, tag))")
    db.execute("CREATE TABLE params (run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT, "
               "PRIMARY KEY (run_id, key))")
    db.execute("CREATE TABLE metrics (run_id TEXT NOT NULL, key TEXT NOT NULL, value REAL, step INTEGER, "
               "best REAL, PRIMARY KEY (run_id, key))")
    for column in ("created", "owner", "status", "run_dir", "name"):
        db.execute(f"CREATE INDEX runs_{column} ON runs ({column})")


def _number_or_none(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _v2(db: sqlite3.Connection) -> None:
    """Numeric config values get a column of their own (``updater.lr<0.01`` compares numbers),
    and the lookups of a list page by config field or metric an index."""
    db.execute("ALTER TABLE params ADD COLUMN num REAL")
    rows = db.execute("SELECT run_id, key, value FROM params").fetchall()
    db.executemany("UPDATE params SET num = ? WHERE run_id = ? AND key = ?",
                   [(_number_or_none(value), run, key) for run, key, value in rows])
    db.execute("CREATE INDEX params_key_num ON params (key, num)")
    db.execute("CREATE INDEX metrics_key_value ON metrics (key, value)")
    db.execute("CREATE INDEX tags_tag ON tags (tag)")


def _v3(db: sqlite3.Connection) -> None:
    """The work queue (:mod:`nnkit.experiments.queue`): a run put there by ``nnkit queue``, its
    retries and how many times a worker took it (each claim counts one, and names the claim)."""
    db.execute("CREATE TABLE jobs (run_id TEXT PRIMARY KEY, retries INTEGER NOT NULL DEFAULT 0, "
               "attempts INTEGER NOT NULL DEFAULT 0)")


def _v4(db: sqlite3.Connection) -> None:
    """Sweeps: a ``sweeps`` table, and on each run the sweep it belongs to and its point there
    (NULL for the runs of older stores: they belong to none)."""
    db.execute("CREATE TABLE sweeps (id TEXT PRIMARY KEY, name TEXT, kind TEXT NOT NULL, spec TEXT NOT NULL, "
               "created REAL NOT NULL, status TEXT NOT NULL)")
    db.execute("ALTER TABLE runs ADD COLUMN sweep_id TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN point TEXT")
    db.execute("CREATE INDEX runs_sweep_id ON runs (sweep_id)")


def _v5(db: sqlite3.Connection) -> None:
    """A queued run's load roots: the folders its ``load_weights`` commands may read from (a
    sweep's run directories; JSON list, NULL for none), given to ``nnkit train --load-root``;
    and a sweep's log: its driver's decisions (PBT's exploit and explore steps), in order."""
    db.execute("ALTER TABLE jobs ADD COLUMN load_roots TEXT")
    db.execute("CREATE TABLE sweep_log (sweep_id TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL, "
               "entry TEXT NOT NULL, PRIMARY KEY (sweep_id, seq))")


def _v6(db: sqlite3.Connection) -> None:
    """Remote runs (:mod:`nnkit.experiments.cluster`): the run's inbox on the head that handles
    it (``nnkit ctl`` and the web page steer it there), and the cluster worker it runs on."""
    db.execute("ALTER TABLE jobs ADD COLUMN head TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN worker TEXT")


#: Schema version N is made by applying MIGRATIONS[:N] in order to an empty database.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3, _v4, _v5, _v6)
SCHEMA_VERSION = len(MIGRATIONS)


def join_sweep(db: sqlite3.Connection, run_id: str, sweep_id: str, point: dict[str, Any]) -> None:
    """Inside a write transaction: run ``run_id`` belongs to sweep ``sweep_id`` at ``point``
    (JSON data). Raises :class:`SweepNotFound` or :class:`RunNotFound`."""
    text = json.dumps(point)  # in the order given: the sweep's flags' order
    if db.execute("SELECT 1 FROM sweeps WHERE id = ?", (sweep_id,)).fetchone() is None:
        raise SweepNotFound(f"no sweep with id {sweep_id!r}")
    if db.execute("UPDATE runs SET sweep_id = ?, point = ? WHERE id = ?", (sweep_id, text, run_id)).rowcount != 1:
        raise RunNotFound(f"no recorded run with id {run_id!r}")


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


def _host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (a zombie, dead but not yet reaped by
    its parent, does not: a killed worker's child can stay one for a while)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:  # Linux: the state letter follows the parenthesised command name
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _resolved(path: str | os.PathLike) -> str:
    return str(Path(path).expanduser().resolve())


def _since(value: float | datetime | str | None) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(f"since: expected epoch seconds or a datetime, got {value!r}")


class Store:
    """The experiment store at ``path`` (default :func:`default_store_path`); made on first use.

    Thread-safe: each thread of each process gets its own connection.
    """

    def __init__(self, path: str | os.PathLike | None = None, lock_patience: float = LOCK_PATIENCE) -> None:
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self.lock_patience = lock_patience
        self._local = threading.local()
        self._ready = False

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ------------------------------------------------------------------ connections
    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is not None and self._local.pid == os.getpid():
            return db
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not an experiment store")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, timeout=min(10.0, self.lock_patience),
                                 isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open the experiment store ({e})") from None
        self._local.db, self._local.pid = db, os.getpid()
        try:
            self._retry(lambda: db.execute("PRAGMA journal_mode=WAL").fetchone())
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            if not self._ready:
                self._migrate(db)
                self._ready = True
        except BaseException:
            self._local.db = None
            db.close()
            raise
        return db

    def close(self) -> None:
        """Closes this thread's connection (others close when their thread's ends)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            self._local.db = None
            db.close()

    def _retry(self, work: Callable[[], Any]) -> Any:
        """Runs ``work`` again while the database is locked by others, up to ``lock_patience``."""
        deadline = time.monotonic() + self.lock_patience
        pause = 0.005
        while True:
            try:
                return work()
            except sqlite3.OperationalError as e:
                if not _is_busy(e):
                    raise StoreError(f"{self.path}: {e}") from None
                if time.monotonic() >= deadline:
                    raise StoreError(f"{self.path}: still locked after {self.lock_patience:g} s ({e})") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
            except sqlite3.DatabaseError as e:  # "file is not a database", "malformed"
                raise StoreError(f"{self.path}: not a usable experiment store ({e})") from None

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Runs ``work(db)`` in one write transaction (retried as a whole while locked)."""
        db = self._connect()

        def transaction() -> Any:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        return self._retry(transaction)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        db = self._connect()
        return self._retry(lambda: db.execute(sql, params).fetchall())

    def _migrate(self, db: sqlite3.Connection) -> None:
        def migrate(db: sqlite3.Connection) -> None:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {version} is newer than this nnkit's "
                                 f"({SCHEMA_VERSION}); upgrade nnkit to use this store")
            for step in MIGRATIONS[version:]:
                step(db)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # an int we own, not input

        def transaction() -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                migrate(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        self._retry(transaction)

    def schema_version(self) -> int:
        """The schema version of the store file (after opening, always :data:`SCHEMA_VERSION`)."""
        return self._read("PRAGMA user_version")[0][0]

    # ------------------------------------------------------------------ writing runs
    def save(self, summary: RunSummary, params: dict[str, str] | None = None, replace: bool = False) -> str:
        """Writes a run's summary (insert or update); returns its id.

        An existing record keeps its owner, name, tags, notes, created and started times and best metrics
        unless ``replace`` (``reindex`` replaces the metrics it re-read); ``params`` (the
        flattened config), when given, replace the stored ones.
        """
        def work(db: sqlite3.Connection) -> str:
            kept_columns = ("name", "owner", "notes", "created", "started")
            old = db.execute(f"SELECT {', '.join(kept_columns)} FROM runs WHERE id = ?", (summary.id,)).fetchone()
            values = {column: getattr(summary, column) for column in _RECORD_COLUMNS}
            if old is not None:
                for column, kept in zip(kept_columns, old):
                    if kept is not None and (values[column] is None or not replace):
                        values[column] = kept
                assignments = ", ".join(f"{c} = ?" for c in _RECORD_COLUMNS[1:])
                db.execute(f"UPDATE runs SET {assignments} WHERE id = ?",
                           [values[c] for c in _RECORD_COLUMNS[1:]] + [summary.id])
            else:
                db.execute(f"INSERT INTO runs ({', '.join(_RECORD_COLUMNS)}) VALUES "
                           f"({', '.join('?' * len(_RECORD_COLUMNS))})", [values[c] for c in _RECORD_COLUMNS])
            db.executemany("INSERT OR IGNORE INTO tags (run_id, tag) VALUES (?, ?)",
                           [(summary.id, tag) for tag in summary.tags])
            if params is not None:
                db.execute("DELETE FROM params WHERE run_id = ?", (summary.id,))
                db.executemany("INSERT INTO params (run_id, key, value, num) VALUES (?, ?, ?, ?)",
                               [(summary.id, k, v, _number_or_none(v)) for k, v in params.items()])
            if replace:
                db.execute("DELETE FROM metrics WHERE run_id = ?", (summary.id,))
            for pick, lower in (("MIN", True), ("MAX", False)):
                db.executemany(f"""INSERT INTO metrics (run_id, key, value, step, best) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, step = excluded.step,
                    best = {pick}(COALESCE(best, excluded.best), excluded.best)""",
                               [(summary.id, key, value, step, summary.best.get(key, value))
                                for key, (value, step) in summary.metrics.items() if lower_is_better(key) == lower])
            return summary.id
        return self._write(work)

    def find_run_dir(self, run_dir: str | os.PathLike) -> str | None:
        """The id of the run recorded for directory ``run_dir``, or None."""
        rows = self._read("SELECT id FROM runs WHERE run_dir = ? ORDER BY created LIMIT 1", (_resolved(run_dir),))
        return rows[0][0] if rows else None

    # ------------------------------------------------------------------ queries
    def _filters(self, owner: str | None, status: str | Iterable[str] | None, tags: Iterable[str],
                 since: float | datetime | None, where: str | None,
                 sweep: str | None = None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if sweep is not None:
            clauses.append("runs.sweep_id = ?")
            params.append(sweep)
        if owner is not None:
            clauses.append("runs.owner = ?")
            params.append(owner)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            unknown = [s for s in wanted if s not in STATUSES]
            if unknown:
                raise ValueError(f"status {', '.join(map(repr, unknown))}: expected one of {', '.join(STATUSES)}")
            clauses.append(f"runs.status IN ({', '.join('?' * len(wanted))})")
            params += wanted
        for tag in tags:
            clauses.append("EXISTS (SELECT 1 FROM tags t WHERE t.run_id = runs.id AND t.tag = ?)")
            params.append(tag)
        if since is not None:
            clauses.append("runs.created >= ?")
            params.append(_since(since))
        if where is not None:
            sql, more = compile_where(where)
            clauses.append(sql)
            params += more
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def runs(self, *, owner: str | None = None, status: str | Iterable[str] | None = None,
             tags: Iterable[str] = (), since: float | datetime | None = None, where: str | None = None,
             sort: str | None = None, descending: bool = True, limit: int | None = None,
             offset: int = 0, sweep: str | None = None) -> list[RunRecord]:
        """The recorded runs matching every filter given, sorted, one page of them.

        ``sweep``: only the runs of this sweep (its id).
        ``sort``: a column (``created`` by default, ``name``, ``status``, ``duration``,
        ``owner``, ``step``) or a metric name (``test_error``: by its best value); runs without
        the value come last. ``where``: see :mod:`nnkit.experiments.query` (a metric there is
        its latest value). Bad filters raise ``ValueError``.
        """
        condition, params = self._filters(owner, status, tags, since, where, sweep)
        direction = "DESC" if descending else "ASC"
        sort = sort or "created"
        order_params: list[Any] = []
        if sort == "duration":
            key = _DURATION_SQL
        elif sort in SORTS or sort in COLUMNS:
            key = f"runs.{sort}"
        else:  # a metric
            key, order_params = "(SELECT m.best FROM metrics m WHERE m.run_id = runs.id AND m.key = ?)", [sort]
        page = ""
        page_params: list[Any] = []
        if limit is not None:
            if limit < 0 or offset < 0:
                raise ValueError(f"limit {limit} / offset {offset}: must not be negative")
            page, page_params = " LIMIT ? OFFSET ?", [limit, offset]
        elif offset:
            page, page_params = " LIMIT -1 OFFSET ?", [offset]
        sql = (f"SELECT {', '.join('runs.' + c for c in _SELECT_COLUMNS)} FROM runs{condition} "
               f"ORDER BY {key} IS NULL, {key} {direction}, runs.created {direction}, runs.id{page}")
        rows = self._read(sql, [*params, *order_params, *order_params, *page_params])
        return self._records(rows)

    def count(self, *, owner: str | None = None, status: str | Iterable[str] | None = None,
              tags: Iterable[str] = (), since: float | datetime | None = None, where: str | None = None,
              sweep: str | None = None) -> int:
        """How many recorded runs match the filters (those of :meth:`runs`)."""
        condition, params = self._filters(owner, status, tags, since, where, sweep)
        return self._read(f"SELECT COUNT(*) FROM runs{condition}", params)[0][0]

    def _records(self, rows: list[tuple]) -> list[RunRecord]:
        if not rows:
            return []
        ids = [row[0] for row in rows]
        tags: dict[str, list[str]] = {}
        for chunk in range(0, len(ids), 500):  # SQLite's limit on parameters
            part = ids[chunk:chunk + 500]
            for run_id, tag in self._read(f"SELECT run_id, tag FROM tags WHERE run_id IN "
                                          f"({', '.join('?' * len(part))}) ORDER BY tag", part):
                tags.setdefault(run_id, []).append(tag)
        records = []
        for row in rows:
            fields = dict(zip(_SELECT_COLUMNS, row))
            fields["point"] = None if fields["point"] is None else json.loads(fields["point"])
            records.append(RunRecord(tags=tuple(tags.get(fields["id"], ())), **fields))
        return records

    def get(self, ref: str | os.PathLike) -> RunRecord:
        """The run that ``ref`` names: its id, a unique id prefix, its name or its run directory.

        Raises :class:`RunNotFound` or :class:`AmbiguousRun` (both ``LookupError``).
        """
        text = os.fspath(ref)
        if not text:
            raise RunNotFound("no run named '' (give an id, id prefix, name or run directory)")
        select = f"SELECT {', '.join(_SELECT_COLUMNS)} FROM runs"
        # In this order: the id, the run directory, the name, a unique id prefix (a name wins
        # over a prefix: run "b" is not the one whose id starts with b).
        attempts: list[tuple[str, list[Any]]] = [(f"{select} WHERE id = ?", [text])]
        if isinstance(ref, os.PathLike) or os.sep in text or Path(text).is_dir():
            attempts.append((f"{select} WHERE run_dir = ?", [_resolved(text)]))
        attempts += [(f"{select} WHERE name = ?", [text]),
                     (f"{select} WHERE substr(id, 1, ?) = ?", [len(text), text])]
        for sql, params in attempts:
            rows = self._read(sql + " ORDER BY created", params)
            if len(rows) == 1:
                return self._records(rows)[0]
            if len(rows) > 1:
                listed = ", ".join(f"{row[0]} ({row[1]}, {row[11]})" for row in rows[:10])
                raise AmbiguousRun(f"{text!r} matches {len(rows)} runs: {listed}"
                                   + (", ..." if len(rows) > 10 else "") + "; give an id or a longer id prefix")
        raise RunNotFound(f"no recorded run {text!r} in {self.path} (give an id, a unique id prefix, "
                          "a name or a run directory; `nnkit runs list` lists them)")

    def _id(self, run: str | os.PathLike | RunRecord) -> str:
        return run.id if isinstance(run, RunRecord) else self.get(run).id

    def params(self, run_id: str) -> dict[str, str]:
        """The run's job config, flattened (``{"updater.lr": "0.1", ...}``)."""
        return dict(self._read("SELECT key, value FROM params WHERE run_id = ? ORDER BY key", (run_id,)))

    def metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of each of the run's metrics."""
        return dict(self._read("SELECT key, value FROM metrics WHERE run_id = ? ORDER BY key", (run_id,)))

    def best(self, run_id: str) -> dict[str, float]:
        """The best value of each of the run's metrics (the least loss or error, the most accuracy)."""
        return dict(self._read("SELECT key, best FROM metrics WHERE run_id = ? ORDER BY key", (run_id,)))

    def jobs(self, run_ids: Iterable[str]) -> dict[str, dict[str, int | None]]:
        """The queue's word on each of ``run_ids`` that ``nnkit queue`` recorded (others are
        left out): ``{"retries", "attempts", "position"}``, the position (1: the next a worker
        takes, in the claim's order) only while the run is queued."""
        ids = list(dict.fromkeys(run_ids))
        if not ids:
            return {}
        out: dict[str, dict[str, int | None]] = {}
        for chunk in range(0, len(ids), 500):  # SQLite's limit on parameters
            part = ids[chunk:chunk + 500]
            for run_id, retries, attempts in self._read(
                    f"SELECT run_id, retries, attempts FROM jobs WHERE run_id IN ({', '.join('?' * len(part))})",
                    part):
                out[run_id] = {"retries": retries, "attempts": attempts, "position": None}
        if out:
            # The claim's order (queue.claim): oldest first, then by id.
            for run_id, position in self._read(
                    "SELECT runs.id, ROW_NUMBER() OVER (ORDER BY runs.created, runs.id) FROM runs "
                    "JOIN jobs ON jobs.run_id = runs.id WHERE runs.status = 'queued'"):
                if run_id in out:
                    out[run_id]["position"] = position
        return out

    # ------------------------------------------------------------------ editing
    def _existing(self, db: sqlite3.Connection, run_id: str) -> None:
        if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise RunNotFound(f"no recorded run with id {run_id!r} in {self.path}")

    def tag(self, run_id: str, *tags: str) -> None:
        """Adds ``tags`` to the run."""
        bad = [t for t in tags if not t or not t.strip() or any(c.isspace() for c in t) or "," in t]
        if bad:
            raise ValueError(f"tags {bad!r}: a tag is one word (no spaces or commas)")

        def work(db: sqlite3.Connection) -> None:
            self._existing(db, run_id)
            db.executemany("INSERT OR IGNORE INTO tags (run_id, tag) VALUES (?, ?)", [(run_id, t) for t in tags])
        self._write(work)

    def untag(self, run_id: str, *tags: str) -> None:
        """Removes ``tags`` from the run (those it does not have are ignored)."""
        def work(db: sqlite3.Connection) -> None:
            self._existing(db, run_id)
            db.executemany("DELETE FROM tags WHERE run_id = ? AND tag = ?", [(run_id, t) for t in tags])
        self._write(work)

    def note(self, run_id: str, text: str) -> None:
        """Sets the run's notes (replacing what they said)."""
        def work(db: sqlite3.Connection) -> None:
            self._existing(db, run_id)
            db.execute("UPDATE runs SET notes = ? WHERE id = ?", (text, run_id))
        self._write(work)

    def remove(self, run_id: str, delete_files: bool = False) -> None:
        """Forgets the run; with ``delete_files`` also deletes its run directory.

        A directory is deleted only if it is an nnkit run directory (it has ``events.jsonl``).
        """
        record = self.get(run_id)
        if record.id != run_id:
            raise RunNotFound(f"no recorded run with id {run_id!r} in {self.path}")
        if delete_files and record.run_dir:
            from ..training.events import EVENTS_FILE
            path = Path(record.run_dir)
            if path.is_dir():
                if not (path / EVENTS_FILE).is_file():
                    raise ValueError(f"{path}: not an nnkit run directory (no {EVENTS_FILE}); not deleted")
                shutil.rmtree(path)

        def work(db: sqlite3.Connection) -> None:
            for table, column in (("tags", "run_id"), ("params", "run_id"), ("metrics", "run_id"), ("jobs", "run_id"),
                                  ("runs", "id")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (run_id,))
        self._write(work)

    # ------------------------------------------------------------------ sweeps
    def create_sweep(self, kind: str, spec: dict[str, Any], name: str | None = None) -> str:
        """Records a new sweep (status ``running``); returns its id. ``spec`` must be JSON data."""
        if kind not in SWEEP_KINDS:
            raise ValueError(f"sweep kind {kind!r}: expected one of {', '.join(SWEEP_KINDS)}")
        text = json.dumps(spec, sort_keys=True)  # a spec that is not JSON data fails here, before any write
        sweep_id = uuid.uuid4().hex[:12]
        self._write(lambda db: db.execute(
            "INSERT INTO sweeps (id, name, kind, spec, created, status) VALUES (?, ?, ?, ?, ?, 'running')",
            (sweep_id, name, kind, text, time.time())))
        return sweep_id

    def _sweeps(self, condition: str = "", params: Sequence[Any] = ()) -> list[SweepRecord]:
        rows = self._read(f"SELECT {', '.join('sweeps.' + c for c in _SWEEP_COLUMNS)}, {_SWEEP_STATUS_SQL} "
                          f"FROM sweeps{condition} ORDER BY sweeps.created DESC, sweeps.id", params)
        return [SweepRecord(id, name, kind, json.loads(spec), created, status)
                for id, name, kind, spec, created, status in rows]

    def list_sweeps(self) -> list[SweepRecord]:
        """Every recorded sweep, newest first."""
        return self._sweeps()

    def get_sweep(self, ref: str) -> SweepRecord:
        """The sweep ``ref`` names: its id, its name or a unique id prefix (as :meth:`get`).

        Raises :class:`SweepNotFound` (a ``LookupError``) when none or several match.
        """
        for condition, params in ((" WHERE id = ?", [ref]), (" WHERE name = ?", [ref]),
                                  (" WHERE substr(id, 1, ?) = ?", [len(ref), ref])):
            found = self._sweeps(condition, params) if ref else []
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise SweepNotFound(f"{ref!r} matches {len(found)} sweeps: "
                                    f"{', '.join(f'{s.id} ({s.name})' for s in found[:10])}; give an id")
        raise SweepNotFound(f"no sweep {ref!r} in {self.path} (give an id, a unique id prefix or a name; "
                            "`nnkit sweep --list` lists them)")

    def sweep_runs(self, sweep_id: str) -> list[RunRecord]:
        """The runs of sweep ``sweep_id``, oldest first (the order they were queued in)."""
        return self.runs(sweep=sweep_id, sort="created", descending=False)

    def set_sweep_status(self, sweep_id: str, status: str) -> None:
        """Sets the status of a sweep (its driver's word: ``finished``, ``stopped``, ``failed``)."""
        if status not in SWEEP_STATUSES:
            raise ValueError(f"sweep status {status!r}: expected one of {', '.join(SWEEP_STATUSES)}")

        def work(db: sqlite3.Connection) -> None:
            if db.execute("UPDATE sweeps SET status = ? WHERE id = ?", (status, sweep_id)).rowcount != 1:
                raise SweepNotFound(f"no sweep with id {sweep_id!r} in {self.path}")
        self._write(work)

    def add_to_sweep(self, run_id: str, sweep_id: str, point: dict[str, Any]) -> None:
        """Makes run ``run_id`` one of sweep ``sweep_id``'s, made by the overrides ``point``."""
        self._write(lambda db: join_sweep(db, run_id, sweep_id, point))

    def log_sweep(self, sweep_id: str, entry: dict[str, Any]) -> int:
        """Appends ``entry`` (JSON data: a driver's decision) to the sweep's log; its number."""
        text = json.dumps(entry, sort_keys=True)

        def work(db: sqlite3.Connection) -> int:
            if db.execute("SELECT 1 FROM sweeps WHERE id = ?", (sweep_id,)).fetchone() is None:
                raise SweepNotFound(f"no sweep with id {sweep_id!r}")
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM sweep_log WHERE sweep_id = ?",
                             (sweep_id,)).fetchone()[0]
            db.execute("INSERT INTO sweep_log (sweep_id, seq, time, entry) VALUES (?, ?, ?, ?)",
                       (sweep_id, seq, time.time(), text))
            return seq
        return self._write(work)

    def sweep_log(self, sweep_id: str) -> list[dict[str, Any]]:
        """The sweep's log entries in order, each with its ``seq`` and ``time``."""
        rows = self._read("SELECT seq, time, entry FROM sweep_log WHERE sweep_id = ? ORDER BY seq", (sweep_id,))
        return [{"seq": seq, "time": when, **json.loads(entry)} for seq, when, entry in rows]

    def mark_stale(self, heartbeat_timeout: float = HEARTBEAT_TIMEOUT) -> list[str]:
        """Marks ``interrupted`` the runs that say they are queued, running or paused but whose
        process is gone (on this host) or whose heartbeat is older than ``heartbeat_timeout``
        seconds (any host; a queued run that no process has taken, without a pid, waits as long
        as it takes). Returns their ids."""
        now = time.time()
        host = _host()
        stale = []
        for run_id, status, run_host, pid, heartbeat, created in self._read(
                "SELECT id, status, host, pid, heartbeat, created FROM runs "
                "WHERE status IN ('queued', 'running', 'paused')"):
            last = heartbeat if heartbeat is not None else created
            gone = run_host == host and pid is not None and not pid_alive(pid)
            silent = last is not None and now - last > heartbeat_timeout
            if gone or (silent and (status != "queued" or pid is not None)):  # a queued job waits quietly
                stale.append(run_id)

        def work(db: sqlite3.Connection) -> None:
            for run_id in stale:
                db.execute("UPDATE runs SET status = 'interrupted', ended = COALESCE(ended, heartbeat, ?) "
                           "WHERE id = ? AND status IN ('queued', 'running', 'paused')", (now, run_id))
        if stale:
            self._write(work)
        return stale

    def reindex(self, *run_dirs: str | os.PathLike) -> list[str]:
        """(Re)builds the records of run directories from their files; returns the run ids.

        A directory without ``events.jsonl`` raises ``ValueError`` naming it (nothing is
        written for any of them then).
        """
        from .rundir import read_run_dir
        read = [read_run_dir(path) for path in run_dirs]  # all checked before any is written
        ids = []
        for summary, params in read:
            known = self.find_run_dir(summary.run_dir) if summary.run_dir else None
            if known is not None:
                summary.id = known
            ids.append(self.save(summary, params, replace=True))
        return ids


__all__ = ["Store", "RunRecord", "SweepRecord", "RunNotFound", "AmbiguousRun", "SweepNotFound", "StoreError",
           "default_store_path", "nnkit_home", "pid_alive", "join_sweep", "SCHEMA_VERSION", "MIGRATIONS",
           "STATUSES", "ENDED", "SWEEP_KINDS", "SWEEP_STATUSES"]
