"""TensorBoard scalar event files, written without TensorFlow (``tensorboard --logdir DIR``).

An event file is a sequence of records: ``uint64 length``, ``uint32 masked CRC32C of the
length``, ``the serialized Event proto``, ``uint32 masked CRC32C of the data`` (little
endian). Only the few proto fields scalars need are encoded, by hand::

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

Three ways in:

- :class:`SummaryWriter`: ``add_scalar(tag, value, step)`` yourself;
- :class:`TensorBoardLogger`: a bus subscriber that writes every point of a channel layout
  (:mod:`nnkit.views.channels`, tag ``"figure/channel"``); ``logger.attach(run)``;
- :class:`TensorBoard`: a Keras-style callback for ``fit`` (what ``nnkit train --tensorboard``
  uses); it follows the run's event bus, or makes its own when the fit has none.
"""
from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from ..training.callbacks import Callback
from ..training.control import Controller, EventReporter
from ..training.events import EventBus
from .channels import Figure, Monitor


# ============================================================================ CRC32C
def _crc_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """The CRC-32C (Castagnoli) checksum of ``data``."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of TFRecord files: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ===================================================================== proto encoding
def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # negative int64 as its two's complement, like protobuf
    out = bytearray()
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    """A serialized ``Event`` proto with a summary of scalar values (or a file version)."""
    out = bytearray(_varint(1 << 3 | 1) + struct.pack("<d", wall_time))
    if step:
        out += _varint(2 << 3 | 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode("utf-8"))
    if scalars:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode("utf-8"))
                         + _varint(2 << 3 | 5) + struct.pack("<f", float(value)))
            for tag, value in scalars.items())
        out += _bytes_field(5, summary)
    return bytes(out)


def encode_record(data: bytes) -> bytes:
    """One record of an event file around the serialized proto ``data``."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


# ============================================================================ writers
class SummaryWriter:
    """Appends scalar summaries to a new event file in ``logdir``.

    The file is ``events.out.tfevents.<seconds>.<host>.<pid>.nnkit``; every record is
    written whole and flushed, so TensorBoard can read a file that is still growing.
    """

    def __init__(self, logdir: str | os.PathLike) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = self.logdir / (f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}."
                                   f"{os.getpid()}.{id(self) % 100000}.nnkit")
        self._file = open(self.path, "ab")
        self._lock = threading.Lock()
        self._write(encode_event(now, file_version="brain.Event:2"))

    def _write(self, data: bytes) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(encode_record(data))
                self._file.flush()

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Writes one scalar ``value`` of ``tag`` at ``step``."""
        self.add_scalars({tag: value}, step, wall_time)

    def add_scalars(self, values: Mapping[str, float], step: int, wall_time: float | None = None) -> None:
        """Writes several scalars (``{tag: value}``) of one step in one record."""
        self._write(encode_event(time.time() if wall_time is None else wall_time, step, values))

    def close(self) -> None:
        """Closes the file; later scalars are dropped."""
        with self._lock:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorBoardLogger:
    """Writes every point of a channel layout as a TensorBoard scalar ``"figure/channel"``.

    Feed it events: ``logger.attach(run)`` (a TrainingRun or an EventBus, past events
    included), or call ``logger(event)`` for each. Values are raw: TensorBoard smooths.
    """

    def __init__(self, logdir: str | os.PathLike,
                 figures: Sequence[Figure] | Mapping[str, Any] | None = None) -> None:
        self.writer = SummaryWriter(logdir)
        self.monitor = Monitor(figures)
        self.monitor.on_point(self._point)

    def _point(self, figure: str, channel: str, step: int, value: float, wall_time: float) -> None:
        self.writer.add_scalar(f"{figure}/{channel}", value, step, wall_time)

    def __call__(self, event: dict[str, Any]) -> None:
        self.monitor.update(event)

    def attach(self, source: Any) -> Callable[[], None]:
        """Follows a bus (or a TrainingRun's bus); returns a function that detaches."""
        return self.monitor.attach(source)

    def close(self) -> None:
        """Closes the event file."""
        self.writer.close()


class TensorBoard(Callback):
    """A ``fit`` callback writing the run's channels as TensorBoard scalars into ``logdir``.

    In a run with an event bus (``run_dir=...``, ``background=True``, ``nnkit train``) it
    follows that bus; otherwise it turns the fit's batch and epoch logs into events itself.
    """

    def __init__(self, logdir: str | os.PathLike,
                 figures: Sequence[Figure] | Mapping[str, Any] | None = None) -> None:
        self.logdir = Path(logdir)
        self.figures = figures
        self.logger: TensorBoardLogger | None = None
        self._bus: EventBus | None = None
        self._detach: Callable[[], None] | None = None
        self._reporter: Any = None  # our own EventReporter, for fits without a bus
        self._own = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.logger is None:
            self.logger = TensorBoardLogger(self.logdir, self.figures)
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
        if self._own:  # the last batch's loss, then stop the epoch clock until the next fit
            self._reporter.on_train_end(logs)
            self._reporter.bus.emit("status", state="stopped", step=self.trainer.global_step)
