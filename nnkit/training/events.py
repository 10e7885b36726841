"""The event side of a run: one message schema, a bus that stamps and fans out events, and
JSON-lines files that survive being killed mid-write.

Every event is a flat JSON object::

    {"schema": 1, "run": "3f2a9c1b7e4d", "seq": 17, "time": 1763690000.123, "type": "loss", ...}

| type        | fields (besides the stamp)                                                  |
|-------------|------------------------------------------------------------------------------|
| ``status``  | ``state``: started, paused, resumed, stopped, finished, failed; ``step``;   |
|             | ``reason``: ``nonfinite`` on a pause for a non-finite batch, ``interrupt``   |
|             | on a stop by Ctrl-C or SIGTERM                                               |
| ``loss``    | ``step``, ``epoch``, ``batch``, ``loss``, metrics, ``lr``, ``images_per_s`` |
| ``train``   | ``step``, ``epoch``, ``lr``, means of loss and metrics since the last one    |
| ``test``    | ``step``, ``epoch``, test loss and metrics (``nnkit train``'s test passes)  |
| ``epoch``   | ``epoch``, ``step``, epoch means, ``train_error``, ``test_error``, ``val_*`` |
| ``state``   | ``step``, ``epoch``, ``hyper`` (lr, momentum, ...), ``layers`` (norms)      |
| ``snapshot``| ``step``, ``path`` of an HDF5 file with the full parameter and grad arrays  |
| ``heartbeat``| ``status``, ``step``, ``epoch``                                            |
| ``nonfinite``| ``step`` (of the bad batch), ``epoch``, ``batch``, ``what`` (loss, gradient, |
|             | parameter), ``where`` (``layer/param``), ``value``, ``last_good_step``, ``lr``, |
|             | ``checkpoint`` (of the last good state), ``rewound``, ``message``            |
| ``ack``     | ``id``, ``command``, ``step`` (the batch count when it took effect), result |
| ``error``   | ``message``, and ``id``/``command`` when a command caused it                |

Counters, the same in every event, in ``metrics.json`` and in checkpoints:

- ``step``: batches done since training began (the Trainer's ``global_step``; the updater's
  step). It goes on across resumes: a resumed run's ``started`` status names the step of its
  checkpoint.
- ``epoch``: the index, counted from 0, of the epoch in progress (``Trainer.current_epoch``):
  0 during the first epoch; once an epoch ends it is the next one's, so between epochs it is
  the number of epochs done (what ``metrics.json`` says at the end). An ``epoch`` event names
  the epoch that ended: its first is ``epoch: 0``.
- ``batch``: in a ``loss`` event the index (from 0) in its epoch of the reported batch; in a
  ``state`` event the batches done in the epoch in progress.

What people read counts from 1: the progress bar, ``nnkit watch``, ``nnkit plot``, the notebook
view, ``nnkit show`` and the console say "epoch 1" for ``epoch: 0`` and "epoch 1 done" for its
``epoch`` event, and count the batches done in an epoch from 1 ("batch 3/300" after three);
:func:`nnkit.views.epoch_label` and :func:`nnkit.views.epoch_text` make these labels.
"""
from __future__ import annotations

import collections
import json
import math
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

SCHEMA_VERSION = 1
EVENT_TYPES = ("status", "loss", "train", "test", "epoch", "state", "snapshot", "heartbeat", "ack", "error",
               "nonfinite")

#: The states a ``status`` event names; a run in a settled one trains no more (unless extended).
RUNNING_STATES = ("started", "resumed")
SETTLED = ("finished", "stopped", "failed")

#: The files of a run directory: its one log of events, and the commands appended for it.
EVENTS_FILE = "events.jsonl"
COMMANDS_FILE = "commands.jsonl"

Event = dict[str, Any]


def find_answer(events: Iterable[Any], command_id: str) -> Event | None:
    """The ``ack`` or ``error`` answering command ``command_id`` among ``events``, or None.

    The one rule matching answers to commands; anything that is not an event object (a
    malformed line of a file) is skipped.
    """
    for event in events:
        if (isinstance(event, dict) and event.get("type") in ("ack", "error")
                and event.get("id") == command_id):
            return event
    return None


def poll_answer(read_new: Callable[[], Iterable[Any]], command_id: str, timeout: float,
                poll: float) -> Event | None:
    """Calls ``read_new()`` (the events since its last call: :meth:`EventBus.reader`,
    :func:`jsonl_reader`) every ``poll`` seconds until one answers ``command_id``.

    None after ``timeout`` seconds without it (it reads at least once).
    """
    deadline = time.monotonic() + timeout
    while True:
        answer = find_answer(read_new(), command_id)
        if answer is not None:
            return answer
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)


def answer_fields(event: Event) -> dict[str, Any]:
    """What an ``ack`` says a command did: its fields besides the stamp, id, command and step."""
    stamp = ("schema", "run", "seq", "time", "type", "id", "command", "step")
    return {k: v for k, v in event.items() if k not in stamp}


def _jsonable(value: Any) -> Any:
    """Plain JSON for an event field: numpy scalars become numbers, non-finite floats strings."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the lines strictly valid
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def register(lock: threading.RLock, registry: list[Any], entry: Any) -> Callable[[], None]:
    """Appends ``entry`` to ``registry`` under ``lock``; returns the function that removes it."""
    with lock:
        registry.append(entry)

    def remove() -> None:
        with lock:
            if entry in registry:
                registry.remove(entry)
    return remove


class EventBus:
    """Stamps events (schema, run id, sequence number, time) and hands them to subscribers.

    Subscribers are called in the thread that emits (usually the training thread), one event
    at a time in ``seq`` order: keep them short, or hand the event to your own thread or
    event loop. The last ``keep``
    events stay available through :meth:`events`.
    """

    def __init__(self, run_id: str | None = None, keep: int = 100_000) -> None:
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._lock = threading.RLock()
        self._seq = 0
        self._recent: collections.deque[Event] = collections.deque(maxlen=keep)
        self._subscribers: list[tuple[str, Callable[[Event], None]]] = []
        self.last_emit = 0.0

    def emit(self, type: str, **fields: Any) -> Event:
        """Publishes one event of ``type`` and returns it."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}; expected one of {', '.join(EVENT_TYPES)}")
        # Under one (re-entrant) lock: subscribers and files see events in seq order, even with
        # several threads emitting (the training thread, the heartbeat, a command thread).
        with self._lock:
            self._seq += 1
            event = {"schema": SCHEMA_VERSION, "run": self.run_id, "seq": self._seq,
                     "time": time.time(), "type": type, **_jsonable(fields)}
            self._deliver(event)
        return event

    def publish(self, event: Event) -> None:
        """Keeps and fans out an event stamped elsewhere (a child process's), unchanged."""
        with self._lock:
            self._seq = max(self._seq, int(event.get("seq", 0)))  # our own events follow on
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        self._recent.append(event)
        self.last_emit = time.monotonic()
        for topic, callback in list(self._subscribers):
            if topic in ("*", event.get("type")):
                try:
                    callback(event)
                except Exception as exc:  # noqa: BLE001  (a viewer's bug must not end the run)
                    print(f"nnkit: an event subscriber failed and was skipped for this event "
                          f"({type(exc).__name__}: {exc})", file=sys.stderr)

    def subscribe(self, topic: str, callback: Callable[[Event], None], replay: bool = False) -> Callable[[], None]:
        """Calls ``callback(event)`` for every event of type ``topic`` ('*' for all).

        ``replay``: first with the kept events of that topic, so that a subscriber joining a
        run late misses none and sees none twice. Returns a function that unsubscribes.
        """
        if topic != "*" and topic not in EVENT_TYPES:
            raise ValueError(f"unknown topic {topic!r}; expected '*' or one of {', '.join(EVENT_TYPES)}")
        with self._lock:  # no event comes between the replay and the subscription
            if replay:
                for event in self.events(None if topic == "*" else topic):
                    callback(event)
            return register(self._lock, self._subscribers, (topic, callback))

    def events(self, type: str | None = None, since: int = 0) -> list[Event]:
        """The kept events (of one ``type`` if given) with ``seq`` greater than ``since``."""
        with self._lock:
            newer = []
            for event in reversed(self._recent):  # seq grows: stop at the first old one
                if event["seq"] <= since:
                    break
                if type is None or event["type"] == type:
                    newer.append(event)
        newer.reverse()
        return newer

    def reader(self) -> Callable[[], list[Event]]:
        """A function returning the kept events that came since its last call (all, at first)."""
        seen = 0

        def read_new() -> list[Event]:
            nonlocal seen
            new = self.events(since=seen)
            if new:
                seen = new[-1]["seq"]
            return new
        return read_new


def append_line(path: str | os.PathLike, line: str) -> None:
    """Appends ``line`` (ending in a newline) with one ``write`` on an ``O_APPEND`` descriptor.

    Appends of a single write do not interleave with other appenders. If the file ends in
    a partial line (a writer killed mid-line), a newline goes first, so that garbage stays
    on its own line (reported and skipped by the run) and this line stays intact.
    """
    data = line.encode("utf-8")
    # O_NOFOLLOW: a command file that is a symlink is refused, never written through.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        written = os.write(fd, data)
        if written != len(data):  # regular files only do this when the disk is full
            raise OSError(f"{path}: short write ({written} of {len(data)} bytes)")
    finally:
        os.close(fd)


class JsonlWriter:
    """Appends events to a JSON-lines file, one ``write`` and flush per line.

    A process killed mid-write leaves at most a partial last line, which readers skip.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        """Closes the file; later events are dropped."""
        with self._lock:
            self._file.close()


def read_jsonl(path: str | os.PathLike, offset: int = 0) -> tuple[list[tuple[int, Any]], int]:
    """Reads the complete lines of a JSON-lines file from byte ``offset``.

    Returns ``([(line_offset, value_or_error), ...], new_offset)``. A partial last line (no
    newline yet) is left for the next call; a complete line that is not valid JSON comes
    back as a ``ValueError`` in place of its value, so callers can report and skip it.
    """
    return parse_jsonl(_read_from(path, offset), offset)


def read_jsonl_pieces(path: str | os.PathLike, offset: int = 0
                      ) -> Iterator[tuple[list[tuple[int, Any]], int]]:
    """:func:`read_jsonl`'s result a piece at a time (:func:`parse_jsonl_pieces`), for a reader
    that uses each piece's events before the next: ``(items, offset after them)``."""
    return parse_jsonl_pieces(_read_from(path, offset), offset)


def _read_from(path: str | os.PathLike, offset: int) -> bytes:
    """The bytes of a file from ``offset`` on; none for a missing file."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


#: The bytes :func:`parse_jsonl_pieces` parses at a time (some 300 lines of a training run).
PIECE = 64 << 10


def parse_jsonl_pieces(data: bytes, offset: int = 0, piece: int = PIECE
                       ) -> Iterator[tuple[list[tuple[int, Any]], int]]:
    """:func:`parse_jsonl`'s result for ``data`` cut at newlines into pieces of about ``piece``
    bytes: ``(items, offset after them)`` for each, in order (nothing for no data).

    For a reader that uses each piece's events before asking for the next: a long file's
    events then die young, instead of tens of thousands being held at once and walked over
    again and again by the garbage collector (a third of the time of reading them)."""
    start = 0
    while start < len(data):
        cut = data.find(b"\n", start + piece)
        stop = len(data) if cut < 0 else cut + 1
        yield parse_jsonl(data[start:stop], offset + start)
        start = stop


def parse_jsonl(data: bytes, offset: int = 0) -> tuple[list[tuple[int, Any]], int]:
    """The complete lines of ``data``, bytes read from a JSON-lines file at byte ``offset``:
    :func:`read_jsonl`'s result for them (a reader that bounds or checks its reads itself)."""
    if data.isascii() and b"\x00" not in data:
        return _parse_ascii(data, offset)
    items: list[tuple[int, Any]] = []
    position = offset
    for raw in data.split(b"\n")[:-1]:  # the last piece is empty or a partial line
        _parse_line(raw, position, items)
        position += len(raw) + 1
    return items, position


def _parse_ascii(data: bytes, offset: int) -> tuple[list[tuple[int, Any]], int]:
    """:func:`parse_jsonl` for ASCII text without NUL (what nnkit writes: ``json.dumps``
    escapes the rest): decoded once, each line that is one object and nothing else scanned in
    place by json's C scanner, so a character is a byte and no line is cut out or decoded on
    its own. Any other line goes the general way (:func:`_parse_line`)."""
    text = data.decode("ascii")
    items: list[tuple[int, Any]] = []
    append = items.append
    scan, find = _DECODER.scan_once, text.find
    position, last = 0, text.rfind("\n")
    while position <= last:
        newline = find("\n", position)
        if text[position] == "{":
            try:
                value, end = scan(text, position)
            except (ValueError, StopIteration):
                end = -1
            if end == newline:  # the object ends its line (not one spanning lines)
                append((offset + position, value))
                position = newline + 1
                continue
        _parse_line(data[position:newline], offset + position, items)
        position = newline + 1
    return items, offset + last + 1


def _parse_line(raw: bytes, line_offset: int, items: list[tuple[int, Any]]) -> None:
    """Appends ``(line_offset, value)`` for one line (without its newline) to ``items``: the
    value ``json.loads`` gives, or a ValueError saying where the line is not JSON; nothing for
    a blank line."""
    # The common line, an object in UTF-8, goes straight to json's C scanner: json.loads
    # spends most of its time guessing the encoding and matching white space around it.
    if raw[:1] == b"{" and raw[1:2] != b"\x00":
        try:
            text = raw.decode("utf-8", "surrogatepass")  # as json.loads decodes it
            value, end = _DECODER.scan_once(text, 0)
            if end == len(text) or not text[end:].strip(" \t\r"):
                items.append((line_offset, value))
                return
        except (ValueError, StopIteration):
            pass  # json.loads below says what is wrong
    if not raw.strip():
        return
    try:
        items.append((line_offset, json.loads(raw)))
    except ValueError as exc:
        items.append((line_offset, ValueError(f"byte {line_offset}: not valid JSON ({exc})")))


_DECODER = json.JSONDecoder()


def jsonl_reader(path: str | os.PathLike, offset: int = 0) -> Callable[[], list[Any]]:
    """A function returning the values of the lines completed in ``path`` since its last call
    (from byte ``offset`` at first); a malformed line comes back as a ValueError."""
    def read_new() -> list[Any]:
        nonlocal offset
        items, offset = read_jsonl(path, offset)
        return [value for _, value in items]
    return read_new


def follow(path: str | os.PathLike, poll: float = 0.2, stop: Callable[[], bool] = lambda: False
           ) -> Iterator[Any]:
    """Yields the values of a JSON-lines file as it grows (like ``tail -f``) until ``stop()``."""
    offset = 0
    while True:
        items, offset = read_jsonl(path, offset)
        for _, value in items:
            yield value
        if stop():
            return
        if not items:
            time.sleep(poll)
