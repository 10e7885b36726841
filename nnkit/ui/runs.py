"""What the dashboard reads of a run directory, and how: confined, bounded, cached, downsampled.

A store record names a run directory, but the record is not trusted to name a safe one
(anyone who can write the database could point it at ``/etc``): :func:`checked_run_dir` accepts
only a directory holding a regular ``events.jsonl``, and :func:`read_run_file` reads only the
files nnkit writes there (:data:`RUN_FILES`), never through a symlink, never more than a bound.
No request names a path: pages and API calls name a run id, which the store maps to its
record; so nothing outside the recorded run directories can be asked for.

A run's events feed one :class:`~nnkit.views.Monitor` per run (:class:`RunCache`), read
incrementally in bounded chunks as the file grows, so a long run's million batches are parsed
once, and its figures are the Monitor's (the same figure schema and smoothing windows as every
view). :func:`downsample` cuts a series to a few thousand points (the min and max of each
bucket) before it goes to the browser.
"""
from __future__ import annotations

import collections
import math
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..training.events import EVENTS_FILE, parse_jsonl_pieces
from ..views.channels import Monitor, moving_average
from ..views.terminal import log_line

JOB_FILE = "job.conf"
METRICS_FILE = "metrics.json"
#: The files of a run directory the dashboard may read (nnkit writes them), by name.
RUN_FILES = (EVENTS_FILE, JOB_FILE, METRICS_FILE)
#: The most bytes read of a small file (job.conf, metrics.json).
SMALL_FILE_LIMIT = 1 << 20
#: The most bytes of events.jsonl parsed in one go (a huge file is read in chunks).
CHUNK = 16 << 20
#: The most bytes of events.jsonl one request reads: a long run's file is read over several
#: requests (the page shows how far), so no request waits for all of it.
LOAD_BUDGET = 4 << 20
#: The notable events (status changes, epoch ends, answers...) kept per run for the log.
LOG_KEEP = 2000
#: The most points of a series sent to the browser by default, and at most.
DEFAULT_POINTS, MAX_POINTS = 2000, 20000
MAX_WINDOW = 100_000


class UnsafeRunDir(LookupError):
    """A record's run directory that is not one the dashboard will read (says why)."""


def checked_run_dir(run_dir: str | os.PathLike | None) -> Path:
    """The real path of a recorded run directory, if it is one: an absolute path to a
    directory (not a symlink) holding ``events.jsonl`` as a regular file (not a symlink).

    UnsafeRunDir naming the path and what is wrong otherwise.
    """
    if not run_dir:
        raise UnsafeRunDir("the run has no run directory")
    path = Path(os.fspath(run_dir))
    if not path.is_absolute():
        raise UnsafeRunDir(f"{path}: a recorded run directory must be an absolute path")
    try:
        info = os.lstat(path)
    except OSError:
        raise UnsafeRunDir(f"{path}: no such run directory") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeRunDir(f"{path}: not a directory (or a symlink to one)")
    real = Path(os.path.realpath(path))
    try:
        events = os.lstat(real / EVENTS_FILE)
    except OSError:
        raise UnsafeRunDir(f"{path}: no {EVENTS_FILE} there: not a run directory") from None
    if not stat.S_ISREG(events.st_mode):
        raise UnsafeRunDir(f"{path}/{EVENTS_FILE} is not a regular file")
    return real


def _open_regular(path: Path) -> int:
    """A read descriptor of ``path``, refused if it is a symlink or not a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)  # O_NONBLOCK: a FIFO put there does not hang the server
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeRunDir(f"{path} is not a regular file")
    return fd


def read_run_file(run_dir: Path, name: str, limit: int = SMALL_FILE_LIMIT) -> str | None:
    """The text of one of :data:`RUN_FILES` in a checked run directory; None if it is absent.

    UnsafeRunDir for any other name, a symlink, a non-regular file or one over ``limit`` bytes.
    """
    if name not in RUN_FILES:
        raise UnsafeRunDir(f"{name}: not a file the dashboard reads")
    try:
        fd = _open_regular(run_dir / name)
    except FileNotFoundError:
        return None
    except OSError as e:  # ELOOP: a symlink
        raise UnsafeRunDir(f"{run_dir / name}: cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafeRunDir(f"{run_dir / name} is over {limit} bytes")
    return data.decode("utf-8", errors="replace")


# ================================================================================ downsample
def downsample(x: np.ndarray, y: np.ndarray, points: int) -> np.ndarray:
    """The indices of the points to draw: all of them when there are at most ``points``, else
    the first and last and, in each of ``points // 2`` equal buckets, the lowest and highest
    value (non-finite values left out of the choice), in order. A line through them keeps
    every spike and the envelope of the noise (the min/max decimation of plotting tools)."""
    n = len(y)
    if n <= points:
        return np.arange(n)
    buckets = max(points // 2, 1)
    size = n // buckets
    whole = buckets * size
    cells = np.asarray(y[:whole], dtype=np.float64).reshape(buckets, size)
    finite = np.isfinite(cells)
    low = np.where(finite, cells, np.inf).argmin(axis=1)
    high = np.where(finite, cells, -np.inf).argmax(axis=1)
    starts = np.arange(buckets) * size
    keep = np.concatenate([[0, n - 1], starts + low, starts + high, np.arange(whole, n)])
    return np.unique(keep)


def _json_numbers(values: np.ndarray) -> list[float | None]:
    """Floats for JSON, None (a gap in the line) where a value is not finite."""
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


# ================================================================================ the cache
@dataclass
class LogEntry:
    """One line of a run's events log: the event's seq, wall time, type and text."""

    seq: int | None
    time: float | None
    type: str
    text: str


@dataclass
class RunView:
    """A run directory's events, read so far into a Monitor, and its notable events."""

    run_dir: Path
    monitor: Monitor = field(default_factory=Monitor)
    offset: int = 0
    identity: tuple[int, int] | None = None
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LOG_KEEP))
    logged: int = 0       # notable events seen in all (the log keeps the last LOG_KEEP)
    events: int = 0       # events read
    size: int = 0         # the file's size when last looked at
    bad_lines: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)

    def refresh(self, budget: int | None = None) -> int:
        """Reads what was appended to ``events.jsonl`` since the last call (all of it at first,
        or at most ``budget`` bytes: see :attr:`loaded`); returns how many events. A file
        replaced or truncated (a run started over with ``--overwrite``) is read afresh."""
        with self.lock:
            path = self.run_dir / EVENTS_FILE
            try:
                fd = _open_regular(path)
            except FileNotFoundError:
                return 0
            except OSError as e:
                raise UnsafeRunDir(f"{path}: cannot be read ({e.strerror})") from None
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                if (info.st_dev, info.st_ino) != self.identity or info.st_size < self.offset:
                    self._reset((info.st_dev, info.st_ino))
                count, self.size = 0, info.st_size
                end = info.st_size if budget is None else min(info.st_size, self.offset + budget)
                while self.offset < end:
                    f.seek(self.offset)
                    data = f.read(min(CHUNK, end - self.offset))
                    offset, fed = self._parse_feed(data, self.offset)
                    if offset == self.offset and len(data) < CHUNK:
                        # The budget ends inside a line: read on to its end (within a chunk), and stop.
                        f.seek(self.offset)
                        data = f.read(CHUNK)
                        newline = data.find(b"\n")
                        offset, fed = self._parse_feed(data if newline < 0 else data[:newline + 1], self.offset)
                        end = offset
                    if offset == self.offset:  # no complete line in what was read
                        if self.offset + len(data) >= info.st_size:
                            break  # a partial last line: wait for its end
                        offset = self.offset + len(data)  # a monster line: skip it
                        self.bad_lines += 1
                    self.offset = offset
                    count += fed
                return count

    def _parse_feed(self, data: bytes, offset: int) -> tuple[int, int]:
        """Parses the complete lines of ``data`` (read at byte ``offset``) and feeds them, a
        piece at a time (:func:`~nnkit.training.events.parse_jsonl_pieces`); returns the
        offset after the last complete line and how many events were fed."""
        position, count = offset, 0
        for items, position in parse_jsonl_pieces(data, offset):
            count += self._feed(items)
        return position, count

    @property
    def loaded(self) -> float:
        """How much of the file has been read, 0..1 (1 once caught up with its end)."""
        return 1.0 if self.offset >= self.size else self.offset / self.size

    def _reset(self, identity: tuple[int, int]) -> None:
        self.monitor = Monitor(self.monitor.figures)
        self.offset, self.identity, self.logged, self.events, self.bad_lines = 0, identity, 0, 0, 0
        self.log.clear()

    def data(self, name: str, start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps, values, averages)`` of channel ``name`` from point ``start`` on: copies of
        the Monitor's series (one memcpy each; no second copy is kept for requests)."""
        with self.lock:
            return self.monitor.series(name).data(start)

    def _feed(self, items: Iterable[tuple[int, Any]]) -> int:
        count = 0
        for _, value in items:
            if not isinstance(value, dict):
                self.bad_lines += 1
                continue
            event = self.monitor.update(value)
            count += 1
            line = log_line(event)
            if line is not None:
                seq = event.get("seq")
                wall = event.get("time")
                self.log.append(LogEntry(seq if isinstance(seq, int) else None,
                                         float(wall) if isinstance(wall, (int, float)) else None,
                                         str(event.get("type")), line))
                self.logged += 1
        self.events += count
        return count

    # ------------------------------------------------------------------ what pages get
    def status(self) -> dict[str, Any]:
        """The run's latest status from its events: state, step, epoch, loss, lr, errors."""
        with self.lock:
            s = self.monitor.status
            return {"state": s.state, "step": s.step, "epoch": s.epoch_text, "loss": _finite(s.loss),
                    "lr": _finite(s.lr), "images_per_s": _finite(s.images_per_s),
                    "train_error": _finite(s.train_error), "test_error": _finite(s.test_error),
                    "last_time": s.last_time, "events": self.events, "bad_lines": self.bad_lines,
                    "loaded": self.loaded, "size": self.size,
                    "last_error": s.errors[-1] if s.errors else None}

    def log_since(self, logged: int = 0, limit: int = LOG_KEEP) -> tuple[list[dict[str, Any]], int]:
        """The log entries after the first ``logged`` ones (as far as kept), at most ``limit``
        (the latest); and the count to ask from next time."""
        with self.lock:
            new = max(0, min(self.logged - logged, len(self.log)))
            entries = list(self.log)[len(self.log) - new:] if new else []
            return [vars(e) for e in entries[-limit:]], self.logged

    def figures(self, windows: Mapping[str, int] | None = None, points: int = DEFAULT_POINTS
                ) -> list[dict[str, Any]]:
        """Every figure of the layout with its channels' points, downsampled to ``points``:
        ``[{"title", "ylabel", "logy", "channels": [{"name", "window", "count", "steps",
        "values", "avg_steps", "averages"}]}]``. ``windows``: a smoothing window (in points) per
        channel name, instead of the layout's."""
        windows = windows or {}
        out = []
        with self.lock:
            for figure in self.monitor.figures:
                channels = []
                for channel in figure.channels:
                    steps, values, averages = self.data(channel.name)
                    window = windows.get(channel.name, channel.window)
                    if window != channel.window:
                        averages = moving_average(values, window)
                    keep = downsample(steps, values, points)
                    smooth = downsample(steps, averages, points)
                    channels.append({"name": channel.name, "window": window, "count": len(steps),
                                     "steps": steps[keep].tolist(), "values": _json_numbers(values[keep]),
                                     "avg_steps": steps[smooth].tolist(),
                                     "averages": _json_numbers(averages[smooth])})
                out.append({"title": figure.title, "ylabel": figure.ylabel, "logy": figure.logy,
                            "channels": channels})
        return out

    def points_since(self, counts: Mapping[str, int], windows: Mapping[str, int] | None = None
                     ) -> dict[str, dict[str, list]]:
        """The points each channel got after its first ``counts[name]``, with their moving
        averages (of the channel's window, or ``windows[name]``): what a live page appends."""
        windows = windows or {}
        out: dict[str, dict[str, list]] = {}
        with self.lock:
            for name in self.monitor.channels:
                series = self.monitor.series(name)
                start = counts.get(name, 0)
                if len(series) <= start:
                    continue
                window = windows.get(name, series.channel.window)
                # Only the new points are copied (and, for another window, the `window - 1`
                # before them that its first averages need).
                lo = start if window == series.channel.window else max(0, start - window + 1)
                steps, values, averages = self.data(name, lo)
                steps, tail = steps[start - lo:], averages[start - lo:]
                if window != series.channel.window:
                    tail = moving_average(values, window)[start - lo:]
                out[name] = {"steps": steps.tolist(), "values": _json_numbers(values[start - lo:]),
                             "averages": _json_numbers(tail), "count": lo + len(values)}
        return out


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class RunCache:
    """The :class:`RunView` of the most recently used run directories (at most ``size``)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._views: collections.OrderedDict[Path, RunView] = collections.OrderedDict()
        self._lock = threading.Lock()

    def view(self, run_dir: str | os.PathLike | None) -> RunView:
        """The view of a recorded run directory, refreshed by up to :data:`LOAD_BUDGET` bytes;
        UnsafeRunDir if it is not one."""
        real = checked_run_dir(run_dir)
        with self._lock:
            view = self._views.pop(real, None) or RunView(real)
            self._views[real] = view
            while len(self._views) > self.size:
                self._views.popitem(last=False)
        view.refresh(LOAD_BUDGET)
        return view


# ================================================================================ compare
def config_differences(params: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """The flattened config keys whose values are not the same in every run:
    ``[{"key", "values": {run_id: value or None}}]``, sorted by key."""
    keys = sorted(set().union(*(p.keys() for p in params.values()))) if params else []
    rows = []
    for key in keys:
        values = {run: p.get(key) for run, p in params.items()}
        if len(set(values.values())) > 1:
            rows.append({"key": key, "values": values})
    return rows

