"""The experiment store: an SQLite index of every recorded run (stdlib ``sqlite3``, WAL mode).

The run directory stays the source of truth (its ``events.jsonl``, ``job.conf`` and the
``run.json`` the recorder writes); the store indexes runs across directories for
``nnkit runs`` and the web page, and :meth:`Store.reindex` rebuilds it from run directories.

Concurrency: every thread (and process) opens its own connection; writes take the write lock
up front (``BEGIN IMMEDIATE``, so two writers never deadlock upgrading a read lock), wait on it
(``busy_timeout``) and retry, so many processes training and writing at once plus readers see
no "database is locked". WAL lets readers read while one writer writes.

Schema: ``PRAGMA user_version`` names its version; :data:`MIGRATIONS` brings any older store up
to date when it is opened, and a store from a newer nnkit is refused rather than damaged.
"""
from __future__ import annotations

import math
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
_DURATION_SQL = "(COALESCE(runs.ended, runs.heartbeat) - runs.started)"


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
    """Remote runs (:mod:`nnkit.experiments.cluster`): the run's inbox on the head that handles
    it (``nnkit ctl`` and the web page steer it there), and the cluster worker it runs on."""
    db.execute("ALTER TABLE jobs ADD COLUMN head TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN worker TEXT")


#: Schema version N is made by applying MIGRATIONS[:N] in order to an empty database.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3, _v4)
SCHEMA_VERSION = len(MIGRATIONS)


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
                 since: float | datetime | None, where: str | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
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
             offset: int = 0) -> list[RunRecord]:
        """The recorded runs matching every filter given, sorted, one page of them.

        ``sort``: a column (``created`` by default, ``name``, ``status``, ``duration``,
        ``owner``, ``step``) or a metric name (``test_error``: by its best value); runs without
        the value come last. ``where``: see :mod:`nnkit.experiments.query` (a metric there is
        its latest value). Bad filters raise ``ValueError``.
        """
        condition, params = self._filters(owner, status, tags, since, where)
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
        sql = (f"SELECT {', '.join('runs.' + c for c in _RECORD_COLUMNS)} FROM runs{condition} "
               f"ORDER BY {key} IS NULL, {key} {direction}, runs.created {direction}, runs.id{page}")
        rows = self._read(sql, [*params, *order_params, *order_params, *page_params])
        return self._records(rows)

    def count(self, *, owner: str | None = None, status: str | Iterable[str] | None = None,
              tags: Iterable[str] = (), since: float | datetime | None = None, where: str | None = None) -> int:
        """How many recorded runs match the filters (those of :meth:`runs`)."""
        condition, params = self._filters(owner, status, tags, since, where)
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
            fields = dict(zip(_RECORD_COLUMNS, row))
            records.append(RunRecord(tags=tuple(tags.get(fields["id"], ())), **fields))
        return records

    def get(self, ref: str | os.PathLike) -> RunRecord:
        """The run that ``ref`` names: its id, a unique id prefix, its name or its run directory.

        Raises :class:`RunNotFound` or :class:`AmbiguousRun` (both ``LookupError``).
        """
        text = os.fspath(ref)
        if not text:
            raise RunNotFound("no run named '' (give an id, id prefix, name or run directory)")
        select = f"SELECT {', '.join(_RECORD_COLUMNS)} FROM runs"
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


__all__ = ["Store", "RunRecord", "RunNotFound", "AmbiguousRun", "StoreError", "default_store_path",
           "nnkit_home", "pid_alive", "SCHEMA_VERSION", "MIGRATIONS", "STATUSES", "ENDED"]
