"""Channels and figures: named time series fed from a run's events, for every view.

A :class:`Channel` names one series and where its values come from; a :class:`Figure` groups
channels drawn on one set of axes; a :class:`Monitor` reads events (from a bus, a
:class:`~nnkit.training.TrainingRun` or an ``events.jsonl`` file) and keeps, for each channel,
a :class:`Series` of points with its own moving average. It also keeps the run's latest
status (:class:`RunStatus`) for status lines. The notebook view, ``nnkit watch``,
``nnkit plot`` and the TensorBoard writer all read a Monitor::

    from nnkit.views import Channel, Figure, Monitor

    monitor = Monitor()                                # the default layout, DEFAULT_FIGURES
    unsubscribe = monitor.attach(run)                  # a TrainingRun or an EventBus: past
                                                       # events now, new ones as they come
    monitor.read_file("runs/x/events.jsonl")           # or: the new lines of an event file
                                                       # (call again to poll)
    s = monitor.series("train cost")                   # .steps .times .values .averages
                                                       # (numpy copies), .last, .last_average
    for figure in monitor.figures:                     # Figure(title, channels, ylabel, logy)
        ...
    monitor.status.state, monitor.status.step          # latest status, step, loss, lr, ...
    monitor.version                                    # changes whenever anything changed

A user layout, each channel with its own moving-average window (in points)::

    Monitor(figures={"loss": [Channel("train cost", source="loss.loss", window=50),
                              Channel("validation loss", source="epoch.val_loss")],
                     "speed": [Channel("images/s", source="loss.images_per_s", window=10)]})

A channel's ``source`` is ``"TYPE.FIELD"`` (an event type and one of its fields, see the
schema in :mod:`nnkit.training.events`), a tuple of them (one series fed by several event
types), or a function ``event -> number or None`` called for every event. Points are placed
at the event's ``step`` (batches since training began). A channel with several sources keeps
one point per step: the test pass that ends an epoch is reported by both the ``epoch`` event
and a ``test`` event, at the same step. Besides the events' own fields, the monitor derives:

- ``loss.example_time``: seconds per example, ``1 / images_per_s``;
- ``loss.error``, ``test.error``: ``1 - accuracy`` of the reported batch or test pass;
- ``epoch.epoch_time``: wall seconds the epoch trained, pauses and idle time left out.

The default layout's "test error" and "validation loss" channels take both the epoch ends'
``test_error``/``val_loss`` and the ``test`` events of ``nnkit train`` (every
``run.test_freq`` steps and the final test), so a run shorter than an epoch shows them too.

Epochs: events count them from 0 (``epoch`` is the index of the epoch in progress, see
:mod:`nnkit.training.events`), and so does :class:`RunStatus`; what people read counts from
1 (:func:`epoch_label`, :attr:`RunStatus.epoch_text`), like the progress bar's "epoch 1".

Callbacks given to :meth:`Monitor.on_point` see every new point (the TensorBoard writer uses
this). A Monitor is thread-safe: a bus may feed it from the training thread while a view
reads it from another.
"""
from __future__ import annotations

import array
import collections
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..training.events import RUNNING_STATES, SETTLED, Event, read_jsonl_pieces, register

Source = str | tuple[str, ...] | Callable[[Event], Any]
PointCallback = Callable[[str, str, int, float, float], None]
"""``callback(figure_title, channel_name, step, value, wall_time)``."""
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1



def epoch_label(index: int) -> str:
    """``"epoch 1"`` for the epoch of index 0: events count epochs from 0, people from 1."""
    return f"epoch {index + 1}"


def epoch_text(epoch: int, batches_done: int) -> str:
    """Where a run is, in epochs, for people: ``epoch`` is the index (from 0) of the epoch in
    progress and ``batches_done`` the batches done in it.

    ``"epoch 3"`` while it runs; ``"epoch 2 done"`` between two epochs (the next one has no
    batch done yet); ``"epoch 1"`` before the first batch.
    """
    if epoch > 0 and batches_done == 0:
        return f"{epoch_label(epoch - 1)} done"
    return epoch_label(epoch)


def _number(value: Any) -> float | None:
    """A float from an event field: numbers, and the strings events use for NaN and infinity."""
    if type(value) is float:  # the common case, first
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)
    return None


@dataclass(frozen=True)
class Channel:
    """One named series: where its values come from and its moving-average window (points).

    ``source``: ``"TYPE.FIELD"`` (e.g. ``"loss.loss"``, ``"epoch.val_loss"``), a tuple of
    them (e.g. ``("epoch.test_error", "test.error")``: one point per step from whichever
    comes), or a function ``event -> number or None`` called with every event (None: no point).
    """

    name: str
    source: Source
    window: int = 1

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a channel needs a name")
        if isinstance(self.source, list):
            object.__setattr__(self, "source", tuple(self.source))
        if isinstance(self.source, str) or (isinstance(self.source, tuple) and self.source):
            for source in self._sources():
                kind, dot, key = source.partition(".") if isinstance(source, str) else ("", "", "")
                if not dot or not kind or not key:
                    raise ValueError(f"channel {self.name!r}: source must be 'TYPE.FIELD' "
                                     f"(e.g. 'loss.loss'), got {source!r}")
        elif not callable(self.source):
            raise TypeError(f"channel {self.name!r}: source must be 'TYPE.FIELD', a tuple of "
                            f"them or a function, got {type(self.source).__name__}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"channel {self.name!r}: window must be a whole number >= 1, "
                             f"got {self.window!r}")

    def _sources(self) -> tuple[Any, ...]:
        """The ``"TYPE.FIELD"`` sources as a tuple (not for a function source)."""
        return (self.source,) if isinstance(self.source, str) else self.source

    @property
    def merged(self) -> bool:
        """True for a channel fed by several ``TYPE.FIELD`` sources (one point per step)."""
        return isinstance(self.source, tuple) and len(self.source) > 1

    def field_for(self, kind: str) -> str | None:
        """The field this channel reads from events of type ``kind`` (its first source of that
        type), or None if it reads none; not for a function source."""
        for source in self._sources():
            source_kind, _, key = source.partition(".")
            if source_kind == kind:
                return key
        return None

    def value(self, event: Event) -> float | None:
        """This channel's value in ``event``, or None if the event does not feed it."""
        if callable(self.source):
            return _number(self.source(event))
        for source in self._sources():
            kind, _, key = source.partition(".")
            if event.get("type") == kind:
                return _number(event.get(key))
        return None


@dataclass(frozen=True)
class Figure:
    """Channels drawn together on one set of axes (one PNG in ``nnkit plot``)."""

    title: str
    channels: tuple[Channel, ...]
    ylabel: str = ""
    logy: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        for channel in self.channels:
            if not isinstance(channel, Channel):
                raise TypeError(f"figure {self.title!r}: expected Channel objects, "
                                f"got {type(channel).__name__}")


DEFAULT_FIGURES: tuple[Figure, ...] = (
    Figure("loss", (Channel("train cost", "loss.loss", window=50),
                    Channel("train loss", "epoch.loss"),
                    Channel("validation loss", ("epoch.val_loss", "test.loss"))), ylabel="loss"),
    Figure("error", (Channel("batch error", "loss.error", window=50),
                     Channel("train error", "epoch.train_error"),
                     Channel("test error", ("epoch.test_error", "test.error"))),
           ylabel="error rate"),
    Figure("learning rate", (Channel("learning rate", "loss.lr"),), ylabel="lr"),
    Figure("per-example time", (Channel("per-example time", "loss.example_time", window=20),),
           ylabel="seconds per example"),
    Figure("epoch time", (Channel("epoch time", "epoch.epoch_time"),), ylabel="seconds"),
)
"""The default layout: loss, error, learning rate, per-example time, epoch time.

"validation loss" and "test error" are the held-out set's (``nnkit train``: the test set), from
the epoch ends and from ``test`` events."""


def moving_average(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """The trailing mean of the last ``window`` values at each point: what :class:`Series`
    keeps as ``averages`` for a channel of that window, computed at once for any window (the
    web dashboard's user-chosen smoothing). The first points average the values so far; a
    non-finite value spoils the ``window`` averages that include it, as in the Series."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a whole number >= 1, got {window!r}")
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    magnitude = np.abs(v)
    if n and np.all(np.isfinite(v)) and magnitude.max() <= 1e6 * max(magnitude.mean(), 1e-300):
        # Values of one magnitude: differences of a running sum, in O(n) for any window.
        total = np.concatenate([[0.0], np.cumsum(v)])
        counts = np.minimum(np.arange(1, n + 1), window)
        return (total[1:] - total[np.arange(1, n + 1) - counts]) / counts
    out = np.empty(n)
    for k in range(min(window - 1, n)):  # the first points: fewer than `window` values so far
        out[k] = v[:k + 1].sum() / (k + 1)
    if n >= window:
        # Each window summed on its own: a diverged 1e30 (or a NaN) would swamp a running sum.
        out[window - 1:] = np.lib.stride_tricks.sliding_window_view(v, window).sum(axis=1) / window
    return out


class Series:
    """The points of one channel: step, wall time, value and trailing moving average.

    Read through the properties, which return numpy copies taken under the monitor's lock.
    """

    def __init__(self, channel: Channel, figure: str, lock: threading.RLock) -> None:
        self.channel = channel
        self.figure = figure
        self._lock = lock
        # Machine numbers in arrays (8 bytes a point each, grown geometrically by append), not
        # lists of Python ints and floats (about 32): a million-batch run's series stay small.
        self._steps = array.array("q")
        self._times = array.array("d")
        self._values = array.array("d")
        self._averages = array.array("d")
        self._window: collections.deque[float] = collections.deque(maxlen=channel.window)
        self._merged = channel.merged  # asked at every point

    def _add(self, step: int, time: float, value: float) -> bool:
        """Appends a point; False (nothing added) for a merged channel's second point at a step,
        or a step beyond 64 bits (no step array could hold it)."""
        if self._merged and self._steps and self._steps[-1] == step:
            return False  # the same evaluation, reported by a second event type
        if not _INT64_MIN <= step <= _INT64_MAX:
            return False
        self._window.append(value)
        self._steps.append(step)
        self._times.append(time)
        self._values.append(value)
        # Summed afresh (the window is short): a NaN leaves the average after `window` points.
        self._averages.append(sum(self._window) / len(self._window))
        return True

    @property
    def name(self) -> str:
        """The channel's name."""
        return self.channel.name

    def _array(self, points: array.array, start: int = 0) -> np.ndarray:
        """A numpy copy of one of the point arrays from point ``start`` on, taken under the
        lock (the feeder appends; the copy owns its memory, so appending goes on)."""
        with self._lock:
            dtype = np.int64 if points.typecode == "q" else np.float64
            return np.frombuffer(points, dtype=dtype)[start:].copy() if points else np.empty(0, dtype)

    @property
    def steps(self) -> np.ndarray:
        """The step (batches since training began) of each point."""
        return self._array(self._steps)

    @property
    def times(self) -> np.ndarray:
        """The wall time (seconds since the epoch) of each point."""
        return self._array(self._times)

    @property
    def values(self) -> np.ndarray:
        """The raw values."""
        return self._array(self._values)

    @property
    def averages(self) -> np.ndarray:
        """The trailing mean of the last ``channel.window`` values at each point."""
        return self._array(self._averages)

    def data(self, start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps, values, averages)`` taken together, so their lengths always agree; from
        point ``start`` on (a reader that keeps the earlier ones copies only the new)."""
        with self._lock:
            return (self._array(self._steps, start), self._array(self._values, start),
                    self._array(self._averages, start))

    @property
    def last(self) -> float | None:
        """The latest value (None before the first point)."""
        with self._lock:
            return self._values[-1] if self._values else None

    @property
    def last_average(self) -> float | None:
        """The latest moving average (None before the first point)."""
        with self._lock:
            return self._averages[-1] if self._averages else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def __repr__(self) -> str:
        return f"Series({self.name!r}, {len(self)} points, window {self.channel.window})"


@dataclass
class RunStatus:
    """The latest of everything a status line shows; None where no event said it yet.

    Counters are the events' own: ``epoch`` and ``last_epoch`` count from 0, ``batch`` is an
    index in the epoch. Show them with :attr:`epoch_text` and :attr:`batches_done`, which
    count from 1 as people do.
    """

    run: str | None = None
    state: str = "waiting"            # before the first status event
    step: int = 0
    epoch: int = 0                    # index (from 0) of the epoch in progress
    batch: int | None = None          # index in the epoch of the last reported batch
    loss: float | None = None         # of the last reported batch
    lr: float | None = None
    images_per_s: float | None = None
    train_error: float | None = None  # of the last finished epoch
    test_error: float | None = None   # of the latest test pass (an epoch end or a test event)
    test_step: int | None = None      # the step of that test pass
    last_epoch: int | None = None     # index of the last finished epoch
    epoch_end_step: int | None = None  # the step at which it ended
    last_time: float | None = None    # wall time of the latest event of any type
    errors: list[str] = field(default_factory=list)  # error messages, latest last

    @property
    def batches_done(self) -> int:
        """Batches done in the epoch in progress, as far as the events told (0 before one)."""
        return 0 if self.batch is None else self.batch + 1

    @property
    def epoch_text(self) -> str:
        """``"epoch 3"`` (counted from 1) or ``"epoch 2 done"`` between epochs: :func:`epoch_text`."""
        return epoch_text(self.epoch, self.batches_done)

    @property
    def ended(self) -> bool:
        """True once the run finished, stopped or failed (a finished run may be extended)."""
        return self.state in SETTLED


def _layout(figures: Sequence[Figure] | Mapping[str, Sequence[Channel] | Figure] | None
            ) -> tuple[Figure, ...]:
    if figures is None:
        return DEFAULT_FIGURES
    if isinstance(figures, Mapping):
        return tuple(f if isinstance(f, Figure) else Figure(title, tuple(f))
                     for title, f in figures.items())
    for figure in figures:
        if not isinstance(figure, Figure):
            raise TypeError(f"figures: expected Figure objects or a {{title: [Channel, ...]}} "
                            f"dict, got {type(figure).__name__}")
    return tuple(figures)


class Monitor:
    """Keeps the series of every channel of a figure layout, fed from a run's events.

    ``figures``: a sequence of :class:`Figure`, or a dict ``{title: [Channel, ...]}``;
    default :data:`DEFAULT_FIGURES`. Channel names must be unique across figures.
    """

    def __init__(self, figures: Sequence[Figure] | Mapping[str, Sequence[Channel] | Figure] | None = None
                 ) -> None:
        self.figures: tuple[Figure, ...] = _layout(figures)
        self._lock = threading.RLock()
        self._series: dict[str, Series] = {}
        for figure in self.figures:
            for channel in figure.channels:
                if channel.name in self._series:
                    raise ValueError(f"channel {channel.name!r} appears twice in the figures; "
                                     "channel names must be unique")
                self._series[channel.name] = Series(channel, figure.title, self._lock)
        self.status = RunStatus()
        self.version = 0
        self.bad_lines = 0  # malformed lines met in event files
        self._listeners: list[PointCallback] = []
        self._offsets: dict[str, int] = {}
        self._clock_since: float | None = None  # when the epoch clock last started (wall time)
        self._clock_spent = 0.0                 # active seconds of the epoch before that
        self._clock_valid = False               # False until a status event starts the clock
        # Per event type, the series it may feed and the field each reads (None: a function
        # source, called with every event): a long file is read without asking every channel.
        self._plans: dict[str, list[tuple[Series, str | None]]] = {}

    # ------------------------------------------------------------------ access
    def series(self, name: str) -> Series:
        """The series of the channel called ``name``."""
        try:
            return self._series[name]
        except KeyError:
            raise KeyError(f"no channel {name!r}; channels: {', '.join(self._series)}") from None

    @property
    def channels(self) -> list[str]:
        """Every channel name, in figure order."""
        return list(self._series)

    def on_point(self, callback: PointCallback) -> Callable[[], None]:
        """Calls ``callback(figure, channel, step, value, wall_time)`` for every new point.

        Returns a function that removes the callback.
        """
        return register(self._lock, self._listeners, callback)

    # ------------------------------------------------------------------ input
    def attach(self, source: Any) -> Callable[[], None]:
        """Feeds the monitor from a bus (or a TrainingRun's bus): the events so far, then new ones.

        Returns a function that detaches. No event is lost or counted twice in between, and
        the training thread is not held up while the past is replayed.
        """
        bus = getattr(source, "bus", source)
        gate = threading.Lock()
        pending: list[Event] = []
        replayed: dict[Any, int] = {}  # run id -> last seq of the replayed past
        live = False

        def fresh(event: Event) -> bool:
            seq = event.get("seq")
            return not isinstance(seq, int) or seq > replayed.get(event.get("run"), 0)

        def receive(event: Event) -> None:
            with gate:
                if not live:
                    pending.append(event)
                elif fresh(event):
                    self.update(event)

        # Subscribe first, then read the past: an event is in the past, in `pending`, or both.
        unsubscribe = bus.subscribe("*", receive)
        for event in bus.events():
            self.update(event)
            if isinstance(event.get("seq"), int):
                replayed[event.get("run")] = max(replayed.get(event.get("run"), 0), event["seq"])
        with gate:
            for event in pending:
                if fresh(event):
                    self.update(event)
            pending.clear()
            live = True
        return unsubscribe

    def read_file(self, path: str | os.PathLike) -> int:
        """Feeds the complete lines added to an ``events.jsonl`` file since the last call.

        Returns how many events were read. A malformed line is counted in ``bad_lines`` and
        skipped; a partial last line waits for the next call.
        """
        key = os.fspath(path)
        count = 0
        for items, self._offsets[key] in read_jsonl_pieces(path, self._offsets.get(key, 0)):
            for _, value in items:
                if isinstance(value, dict):
                    self.update(value)
                    count += 1
                else:
                    self.bad_lines += 1
        return count

    def __call__(self, event: Event) -> None:
        """Same as :meth:`update` (so a monitor can be a bus subscriber)."""
        self.update(event)

    def update(self, event: Event) -> Event:
        """Feeds one event; returns it with the derived fields added."""
        with self._lock:
            event = self._derive(event)
            self._update_status(event)
            step = event.get("step")
            points = []
            if isinstance(step, int):
                wall = float(event.get("time") or 0.0)
                listeners = list(self._listeners)
                for series, key in self._plan(event.get("type")):
                    if key is None:
                        value = series.channel.value(event)
                    else:
                        value = event.get(key)
                        if type(value) is not float:  # a float is its own number: no call
                            value = _number(value)
                    if value is not None and series._add(step, wall, value) and listeners:
                        points.append((series.figure, series.channel.name, step, value, wall))
            else:
                listeners = []  # no step: no point
            self.version += 1
        for point in points:  # outside the lock: a slow listener never blocks readers
            for listener in listeners:
                listener(*point)
        return event

    def _plan(self, kind: Any) -> list[tuple[Series, str | None]]:
        """The series events of type ``kind`` may feed, in layout order, with their fields."""
        plan = self._plans.get(kind) if isinstance(kind, str) else None
        if plan is None:
            plan = []
            for series in self._series.values():
                if callable(series.channel.source):
                    plan.append((series, None))
                elif isinstance(kind, str) and series.channel.field_for(kind) is not None:
                    plan.append((series, series.channel.field_for(kind)))
            if isinstance(kind, str):
                self._plans[kind] = plan
        return plan

    # ------------------------------------------------------------------ derived fields
    def _derive(self, event: Event) -> Event:
        kind, wall = event.get("type"), event.get("time")
        if kind in ("loss", "test"):
            extra = {}
            rate = _number(event.get("images_per_s"))
            if rate:
                extra["example_time"] = 1.0 / rate
            accuracy = _number(event.get("accuracy"))
            if accuracy is not None:
                extra["error"] = 1.0 - accuracy
            return {**event, **extra} if extra else event
        if kind == "status" and isinstance(wall, (int, float)):
            self._run_clock(event.get("state"), wall)
        elif kind == "epoch" and isinstance(wall, (int, float)) and self._clock_valid:
            spent = self._clock_spent + (wall - self._clock_since if self._clock_since is not None else 0.0)
            self._clock_spent, self._clock_since = 0.0, wall
            return {**event, "epoch_time": spent}
        return event

    def _run_clock(self, state: str | None, wall: float) -> None:
        """Starts or stops the epoch clock on status changes, so pauses do not count."""
        if state == "started":  # a new run (or a resumed run in the same file): a fresh epoch
            self._clock_spent, self._clock_since, self._clock_valid = 0.0, wall, True
        elif state == "resumed":
            if self._clock_since is None:
                self._clock_since = wall
        elif self._clock_since is not None:  # paused, finished, stopped, failed
            self._clock_spent += wall - self._clock_since
            self._clock_since = None

    def _update_status(self, event: Event) -> None:
        s = self.status
        kind = event.get("type")
        if event.get("run"):
            s.run = event["run"]
        if isinstance(event.get("time"), (int, float)):
            s.last_time = float(event["time"])
        if isinstance(event.get("step"), int):
            s.step = event["step"]
        if kind == "status":
            s.state = event.get("state", s.state)
            if s.state == "started":  # a new run, or one resumed from any checkpoint
                s.epoch_end_step = None
        elif kind == "loss":
            step, ended = event.get("step"), s.epoch_end_step
            # The last batch of a run is reported at its end, after its epoch's end: that
            # epoch stays "done" rather than "in progress with all its batches".
            if not (isinstance(step, int) and ended is not None and step <= ended):
                s.epoch = event.get("epoch", s.epoch)
                s.batch = event.get("batch", s.batch)
            s.loss = _number(event.get("loss"))
            s.lr = _number(event.get("lr"))
            s.images_per_s = _number(event.get("images_per_s"))
        elif kind == "epoch":
            s.last_epoch = event.get("epoch")
            s.epoch_end_step = event.get("step") if isinstance(event.get("step"), int) else None
            if isinstance(s.last_epoch, int):
                s.epoch = s.last_epoch + 1
                s.batch = None  # the next epoch has not reported a batch yet
            s.train_error = _number(event.get("train_error"))
            self._test_result(_number(event.get("test_error")), event.get("step"))
            s.lr = _number(event.get("lr")) if event.get("lr") is not None else s.lr
        elif kind == "test":  # nnkit train's test passes (every test_freq steps, the final one)
            self._test_result(_number(event.get("error")), event.get("step"))
        elif kind == "heartbeat":
            s.epoch = event.get("epoch", s.epoch)
        elif kind == "error":
            s.errors.append(str(event.get("message", "")))
            del s.errors[:-100]  # keep the latest hundred

    def _test_result(self, error: float | None, step: Any) -> None:
        if error is not None:
            self.status.test_error = error
            self.status.test_step = step if isinstance(step, int) else None

    def __repr__(self) -> str:
        return (f"Monitor({len(self.figures)} figures, {len(self._series)} channels, "
                f"status {self.status.state!r} at step {self.status.step})")


def monitor_file(path: str | os.PathLike, figures: Iterable[Figure] | Mapping | None = None) -> Monitor:
    """A Monitor fed with every complete event in the file ``path`` (e.g. ``events.jsonl``)."""
    monitor = Monitor(figures)
    monitor.read_file(path)
    return monitor
