"""TensorBoard scalar event files, written by tensorboardX (``tensorboard --logdir DIR``).

Needs the ``tensorboard`` extra (``pip install 'nnkit[tensorboard]'``, which installs
tensorboardX); tensorboardX is imported only when a writer is made, so ``import nnkit``
never needs it. Two ways in:

- :class:`TensorBoardLogger`: a bus subscriber that writes every point of a channel layout
  (:mod:`nnkit.views.channels`, tag ``"figure/channel"``); ``logger.attach(run)``;
- :class:`TensorBoard`: a Keras-style callback for ``fit`` (what ``nnkit train --tensorboard``
  uses); it follows the run's event bus, or makes its own when the fit has none.

For scalars of your own, use ``tensorboardX.SummaryWriter`` (or ``logger.writer``) directly.

tensorboardX writes from a thread of its own and flushes every ``flush_secs``, so a live
TensorBoard sees a growing file; when the run settles (finished, stopped or failed) the
logger closes the file, so everything up to then is on disk. Points after that (a finished
run extended) go to a new file in the same directory.
"""
from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..training.callbacks import Callback
from ..training.control import Controller, EventReporter
from ..training.events import SETTLED, Event, EventBus
from .channels import Figure, Monitor

if TYPE_CHECKING:
    import tensorboardX

INSTALL_HINT = "pip install 'nnkit[tensorboard]'"
#: Events tensorboardX may hold before its writer thread takes them (more would block the caller).
_MAX_QUEUE = 1000
#: Numbers the files of a process: unique names (same second, same directory) that sort in order.
_file_numbers = itertools.count(1)


def require_tensorboardx() -> ModuleType:
    """The ``tensorboardX`` module; an ImportError naming the extra to install if it is missing."""
    try:
        import tensorboardX
    except ImportError as e:
        raise ImportError(f"TensorBoard files need tensorboardX, which could not be imported ({e}); "
                          f"install it with: {INSTALL_HINT}") from e
    return tensorboardX


class _Monitor(Monitor):
    """A Monitor that also tells when the run settles (finished, stopped or failed)."""

    def __init__(self, figures: Any, settled: Callable[[], None]) -> None:
        super().__init__(figures)
        self._settled = settled

    def update(self, event: Event) -> Event:
        event = super().update(event)
        if event.get("type") == "status" and event.get("state") in SETTLED:
            self._settled()
        return event


class TensorBoardLogger:
    """Writes every point of a channel layout as a TensorBoard scalar ``"figure/channel"``.

    Feed it events: ``logger.attach(run)`` (a TrainingRun or an EventBus, past events
    included), or call ``logger(event)`` for each. Values are raw: TensorBoard smooths.
    Tags are the figure and channel names as they are (spaces included), not the
    underscored names ``tensorboardX.SummaryWriter.add_scalar`` would make of them.

    The files are tensorboardX's, ``events.out.tfevents.<seconds>.<host>.<pid>.<nnnn>`` in
    ``logdir``; ``flush_secs`` is how often its writer thread flushes them to disk.
    """

    def __init__(self, logdir: str | os.PathLike,
                 figures: Sequence[Figure] | Mapping[str, Any] | None = None,
                 flush_secs: float = 2.0) -> None:
        self._tbx = require_tensorboardx()
        from tensorboardX.proto.summary_pb2 import Summary
        self._summary = Summary
        self.logdir = Path(logdir)
        self.flush_secs = flush_secs
        self._lock = threading.Lock()
        self._writer: tensorboardX.SummaryWriter | None = None
        self._closed = False
        self._open()  # the file exists from the start, as TensorBoard users expect
        self.monitor: Monitor = _Monitor(figures, self._settle)
        self.monitor.on_point(self._point)

    def _open(self) -> tensorboardX.SummaryWriter:
        if self._writer is None:
            self._writer = self._tbx.SummaryWriter(
                os.fspath(self.logdir), max_queue=_MAX_QUEUE, flush_secs=self.flush_secs,
                filename_suffix=f".{os.getpid()}.{next(_file_numbers):04d}")
        return self._writer

    @property
    def writer(self) -> tensorboardX.SummaryWriter:
        """The tensorboardX writer of the current file (a new file after the run settled)."""
        with self._lock:
            if self._closed:
                raise ValueError("TensorBoardLogger is closed")
            return self._open()

    def _point(self, figure: str, channel: str, step: int, value: float, wall_time: float) -> None:
        # FileWriter.add_summary, not add_scalar: add_scalar rewrites spaces in tags to "_".
        summary = self._summary(value=[self._summary.Value(tag=f"{figure}/{channel}",
                                                           simple_value=float(value))])
        with self._lock:
            if not self._closed:
                self._open().file_writer.add_summary(summary, step, wall_time)

    def _settle(self) -> None:
        """Closes the current file, so all of it is on disk; the next point opens a new one."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def __call__(self, event: dict[str, Any]) -> None:
        self.monitor.update(event)

    def attach(self, source: Any) -> Callable[[], None]:
        """Follows a bus (or a TrainingRun's bus); returns a function that detaches."""
        return self.monitor.attach(source)

    def close(self) -> None:
        """Writes what is pending and closes the file; later points are dropped."""
        with self._lock:
            self._closed = True
        self._settle()


class TensorBoard(Callback):
    """A ``fit`` callback writing the run's channels as TensorBoard scalars into ``logdir``.

    In a run with an event bus (``run_dir=...``, ``background=True``, ``nnkit train``) it
    follows that bus; otherwise it turns the fit's batch and epoch logs into events itself.
    Needs tensorboardX (``pip install 'nnkit[tensorboard]'``): an ImportError saying so
    comes from the constructor, before any training.
    """

    def __init__(self, logdir: str | os.PathLike,
                 figures: Sequence[Figure] | Mapping[str, Any] | None = None,
                 flush_secs: float = 2.0) -> None:
        require_tensorboardx()
        self.logdir = Path(logdir)
        self.figures = figures
        self.flush_secs = flush_secs
        self.logger: TensorBoardLogger | None = None
        self._bus: EventBus | None = None
        self._detach: Callable[[], None] | None = None
        self._reporter: Any = None  # our own EventReporter, for fits without a bus
        self._own = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.logger is None:
            self.logger = TensorBoardLogger(self.logdir, self.figures, self.flush_secs)
        controller = getattr(self.trainer, "controller", None)
        self._own = controller is None
        if self._own:
            if self._reporter is None:
                bus = EventBus()
                self._reporter = EventReporter(bus, Controller(bus))
            self._reporter.set_trainer(self.trainer)
            bus = self._reporter.bus
        else:
            bus = controller.bus
        if bus is not self._bus:  # the same bus again (a lingering run's next fit): stay on it
            if self._detach is not None:
                self._detach()
            self._bus, self._detach = bus, self.logger.attach(bus)
        if self._own:  # starts the epoch clock of the channels
            bus.emit("status", state="started", step=self.trainer.global_step)

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._own:
            self._reporter.on_batch_end(batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._own:
            self._reporter.on_epoch_end(epoch, logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._own:  # the last batch's loss, then stop the epoch clock (and close the file)
            self._reporter.on_train_end(logs)
            self._reporter.bus.emit("status", state="stopped", step=self.trainer.global_step)
