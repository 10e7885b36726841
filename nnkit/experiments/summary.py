"""What a run's events say about it, folded into one summary: the one place that reads status,
times, progress and metrics out of events, for the live recorder and for ``reindex`` alike.

Metric names: an ``epoch`` event's fields keep their names (``loss``, ``train_error``,
``test_error``, ``val_loss``...); a ``test`` event's get a ``test_`` prefix and a ``train``
event's a ``train_`` prefix (unless they have it), and their accuracy comes with its error
(``test_error = 1 - test_accuracy``, as epoch events give it). ``loss`` events (every reported batch) move
only the step. The best value of a metric is its minimum when its name says ``loss`` or
``error``, else its maximum (accuracy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: A record's statuses. ``queued``: recorded, not started; ``interrupted``: stopped by Ctrl-C or
#: SIGTERM, or its process ended without a final status (a kill, a crash: found by
#: :meth:`Store.mark_stale`); ``stopped``: by a command (``stop``, ``shutdown``).
STATUSES = ("queued", "running", "paused", "finished", "failed", "stopped", "interrupted")
ENDED = ("finished", "failed", "stopped", "interrupted")

#: An event's ``status`` state -> the record's status.
_STATE = {"started": "running", "resumed": "running", "paused": "paused", "finished": "finished",
          "stopped": "stopped", "failed": "failed"}
_NOT_METRICS = {"schema", "run", "seq", "time", "type", "step", "epoch", "batch", "size", "lr",
                "images_per_s"}
#: How soon an event should reach the store (what :meth:`RunSummary.apply` returns): a status
#: change or an error at once, an epoch, a test, a snapshot or a checkpoint soon (coalesced,
#: see :data:`nnkit.experiments.recorder.SOON`), the rest with the next throttled write.
LATER, SOON, NOW = 0, 1, 2
_PRIORITY = {"status": NOW, "error": NOW, "epoch": SOON, "test": SOON, "snapshot": SOON}


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (losses and errors)."""
    return "loss" in metric or "error" in metric


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def metric_values(event: dict[str, Any]) -> list[tuple[str, float]]:
    """The metrics an event reports, named as the store names them (see the module doc)."""
    prefix = {"epoch": "", "test": "test_", "train": "train_"}.get(event.get("type"))
    if prefix is None:
        return []
    values = {}
    for key, value in event.items():
        number = _number(value)
        if key not in _NOT_METRICS and number is not None:
            values[key if key.startswith(prefix) else prefix + key] = number
    if prefix:  # test_accuracy -> test_error (epoch events carry both already)
        for name, number in list(values.items()):
            if name.endswith("accuracy"):
                values.setdefault(name[:-len("accuracy")] + "error", 1.0 - number)
    return list(values.items())


@dataclass
class RunSummary:
    """A run as its events tell it (and, for the recorder, as its process knows it)."""

    id: str
    name: str | None = None
    owner: str | None = None
    tags: tuple[str, ...] = ()
    notes: str | None = None
    status: str = "queued"
    created: float | None = None
    started: float | None = None
    ended: float | None = None
    heartbeat: float | None = None
    host: str | None = None
    pid: int | None = None
    run_dir: str | None = None
    config_text: str | None = None
    config_hash: str | None = None
    nnkit_version: str | None = None
    git_commit: str | None = None
    step: int = 0
    total_steps: int | None = None
    metrics: dict[str, tuple[float, int]] = field(default_factory=dict)  # latest (value, step)
    best: dict[str, float] = field(default_factory=dict)

    def apply(self, event: dict[str, Any]) -> int:
        """Folds one event in; returns how soon it should be written (``LATER``, ``SOON``, ``NOW``)."""
        kind = event.get("type")
        when = _number(event.get("time"))
        if when is not None:
            self.heartbeat = when if self.heartbeat is None else max(self.heartbeat, when)
        step = event.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            self.step = step
        if kind == "status":
            status = _STATE.get(event.get("state", ""))
            if status is None:
                return LATER
            if status == "stopped" and self.status == "finished":
                return LATER  # a lingering run shut down after its plan: it finished
            if status == "stopped" and event.get("reason") == "interrupt":
                status = "interrupted"  # Ctrl-C or SIGTERM
            self.status = status
            if status == "running":
                self.started = self.started if self.started is not None else when
                self.ended = None
            elif status in ENDED:
                self.ended = when
        else:
            for name, value in metric_values(event):
                self.add_metric(name, value, self.step)
        if kind == "ack" and event.get("command") == "checkpoint":
            return SOON
        return _PRIORITY.get(kind, LATER)

    def add_metric(self, name: str, value: float, step: int) -> None:
        """Records ``value`` as the latest of ``name`` and keeps its best."""
        self.metrics[name] = (value, step)
        best = self.best.get(name)
        if best is None or (value < best if lower_is_better(name) else value > best):
            self.best[name] = value
