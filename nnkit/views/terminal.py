"""The terminal side of a run directory: ``nnkit ctl`` steers a run, ``nnkit watch`` shows it.

``nnkit ctl RUN_DIR COMMAND [key=value ...]`` appends one command line to
``RUN_DIR/commands.jsonl`` (one ``write`` on an ``O_APPEND`` descriptor, so concurrent
``ctl`` calls never interleave) after checking the command and its argument names and types
against the command table the run checks against too
(:data:`nnkit.training.control.COMMANDS`), then by default waits for the matching ``ack`` or
``error`` in ``RUN_DIR/events.jsonl`` and prints it, with what the command reported before its
answer (``tell_state``: the ``state`` event, readable).

``nnkit watch RUN_DIR`` follows ``events.jsonl``: on a terminal it keeps a status block of a
few lines redrawn in place (ANSI escapes) under a scrolling log of status changes, epoch
ends, acks and errors; otherwise (a pipe or a file) it prints the log lines and a one-line
progress summary every ``interval`` seconds while the run advances.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from ..training.control import (COMMANDS, CommandError, deliver, find_command, make_command,
                                wait_for_answer)
from ..training.events import EVENTS_FILE, RUNNING_STATES, Event, answer_fields, read_jsonl
from .channels import Channel, Monitor, epoch_label, epoch_text, monitor_file


class CommandLineError(ValueError):
    """A command or argument that ``nnkit ctl`` refuses before writing anything (exit 2)."""


# ==================================================================================== ctl
def parse_value(text: str) -> Any:
    """A ``key=value`` value: JSON when it parses (numbers, true/false, null, "..."), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_command(name: str, raw: dict[str, str]) -> dict[str, Any]:
    """Checks a command's name and ``key=value`` texts against the command table; returns the args.

    Argument names (unknown, missing, "exactly one of") and types come from the table the
    run checks against too (:data:`~nnkit.training.control.COMMANDS`), so this check cannot
    drift from what the run accepts. Value rules (ranges) are left to the run, which answers
    with an ``error`` event. Raises :class:`CommandLineError` with a message naming the
    command and the argument.
    """
    try:
        entry = find_command(name)
        args: dict[str, Any] = {}
        for key, text in raw.items():
            arg, value = entry.arg(key), parse_value(text)
            if not arg.accepts(value) and arg.accepts(text):
                value = text  # e.g. path=123: a text argument takes the raw text
            if not arg.accepts(value):
                raise CommandLineError(f"{name} {key}={text}: expected {arg.kind}")
            args[key] = value
        entry.check_names(args)
    except CommandError as exc:
        raise CommandLineError(str(exc)) from None
    return args


def ctl_help(width: int = 78) -> str:
    """The commands and their arguments as plain text, from the table (``nnkit ctl --help``)."""
    lines = ["commands (arguments as KEY=VALUE):"]
    for entry in COMMANDS.values():
        lines += textwrap.wrap(f"{entry.name}: {entry.doc.replace('``', '')}", width,
                               initial_indent="  ", subsequent_indent="      ")
        for part in entry.describe_args(lambda key: f"{key}=", "\n").splitlines():
            lines += textwrap.wrap(part.replace("``", ""), width, initial_indent="      ",
                                   subsequent_indent="        ")
    return "\n".join(lines)


def parse_assignments(pairs: list[str], command: str | None = None) -> dict[str, str]:
    """``["lr=0.01", ...]`` as ``{"lr": "0.01"}``; CommandLineError for a pair without ``=``,
    except that a bare value is the argument of a ``command`` taking one required argument
    (``load_weights PATH`` is ``load_weights path=PATH``)."""
    raw: dict[str, str] = {}
    entry = COMMANDS.get(command) if command is not None else None
    required = [a.name for a in entry.args if a.required] if entry is not None else []
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq and len(required) == 1 and not pair.startswith("-"):
            key, eq, text = required[0], "=", pair
        if not eq or not key:
            raise CommandLineError(f"expected key=value, got {pair!r}")
        if key in raw:
            raise CommandLineError(f"{key} given twice")
        raw[key] = text
    return raw


def send_command(run_dir: str | os.PathLike, name: str, args: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Appends a command with a fresh id to ``run_dir/commands.jsonl``.

    Returns the command and the size of ``events.jsonl`` before it was sent (where to look
    for the answer).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CommandLineError(f"{run_dir}: no such run directory")
    command = make_command(name, **args)
    return command, deliver(run_dir, command)


def steer(run_dir: str | os.PathLike, name: str, raw: dict[str, str], wait: float | None
          ) -> tuple[dict[str, Any], Event | None, int]:
    """``nnkit ctl``'s one path (also the web dashboard's): checks the command ``name`` and its
    ``key=value`` texts ``raw`` (:func:`check_command`), appends it to the run directory
    (:func:`send_command`) and, unless ``wait`` is None, waits that many seconds for its answer.

    Returns the command, the answer (None if none came or none was awaited) and the size of
    ``events.jsonl`` before sending. CommandLineError for a bad command or a missing directory.
    """
    command, offset = send_command(run_dir, name, check_command(name, raw))
    answer = None if wait is None else wait_for_answer(run_dir, command["id"], wait, offset)
    return command, answer, offset


def describe_silence(run_dir: str | os.PathLike) -> str:
    """Why a run may not answer: its last status and how old its last event is."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return f"{path} does not exist: the run has not started"
    status = monitor_file(path, figures=()).status
    if status.last_time is None:
        return f"{path} has no events yet"
    return (f"its last status is {status.state!r} at step {status.step}, its last event "
            f"{_age(time.time() - status.last_time)} old")


def describe_answer(event: Event) -> str:
    """``set acknowledged at step 120: values={"lr": 0.01}`` or the error message."""
    command = event.get("command")
    if event["type"] == "error":
        return f"{command} refused: {event.get('message')}"
    extra = ", ".join(f"{k}={json.dumps(v)}" for k, v in answer_fields(event).items())
    return f"{command} acknowledged at step {event.get('step')}" + (f": {extra}" if extra else "")


def command_events(run_dir: str | os.PathLike, answer: Event, offset: int = 0) -> list[Event]:
    """The ``state`` and ``snapshot`` events the command answered by ``answer`` made (tell_state).

    The run applies one command at a time and emits what it reports just before the answer,
    so they are those after the previous answer in ``events.jsonl`` (read from byte ``offset``,
    where :func:`send_command` found the file's end).
    """
    found: list[Event] = []
    for _, event in read_jsonl(Path(run_dir) / EVENTS_FILE, offset)[0]:
        if not isinstance(event, dict):
            continue
        if event.get("seq") == answer.get("seq") and event.get("run") == answer.get("run"):
            return found
        if event.get("type") in ("ack", "error"):
            found = []  # an earlier command's answer: what came before it was that command's
        elif event.get("type") in ("state", "snapshot"):
            found.append(event)
    return found


def describe_state(event: Event) -> list[str]:
    """A ``state`` event for people: where the run is, then its hyperparameters, then one line
    per layer with the norms of its parameters and gradients."""
    step, epoch, batch = event.get("step"), event.get("epoch"), event.get("batch") or 0
    where = f"state at step {step}"
    if isinstance(epoch, int):
        where += f" ({epoch_text(epoch, batch)}" + (f", batch {batch}" if batch else "") + ")"
    if event.get("paused"):
        where += ", paused"
    if event.get("target_step") is not None:
        where += f"; training until step {event['target_step']}"
    elif event.get("target_epoch") is not None:
        where += f"; training until {event['target_epoch']} epochs are done"
    hyper = dict(event.get("hyper") or {})
    if hyper.pop("lr_override", None) is not None:
        hyper["lr"] = f"{_fmt(hyper.get('lr'))} (set by hand)"
    lines = [where, "  ".join(f"{k} {_fmt(v)}" for k, v in hyper.items() if v is not None)]
    for layer, params in (event.get("layers") or {}).items():
        lines.append(f"{layer}: " + "; ".join(
            f"{name} norm {_fmt(p.get('norm'))} grad {_fmt(p.get('grad_norm'))} "
            f"{'x'.join(map(str, p.get('shape') or []))}" for name, p in params.items()))
    return lines


def describe_command_events(events: list[Event]) -> list[str]:
    """The lines ``nnkit ctl`` prints for what a command reported (:func:`command_events`)."""
    lines: list[str] = []
    for event in events:
        if event.get("type") == "state":
            lines += describe_state(event)
        else:
            lines.append(f"snapshot at step {event.get('step')}: {event.get('path')}")
    return lines


# ================================================================================== watch
def _fmt(value: Any, spec: str | None = None) -> str:
    """A number for people, in ``spec``; by default a float with 4 significant digits, since
    losses span any magnitude (a diverging run's 1.3e30 stays short), a whole number as it is.
    "-" for None; anything else as it is."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if spec is None:
        spec = "d" if isinstance(value, int) else ".4g"
    return format(value, spec)


def _numbers(fields: Any) -> str:
    """``loss 0.1234  accuracy 0.9561`` for the numeric ``(key, value)`` pairs of ``fields``."""
    return "  ".join(f"{k} {_fmt(v)}" for k, v in fields
                     if isinstance(v, (int, float)) and not isinstance(v, bool))


def _age(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def _clock(event: Event) -> str:
    wall = event.get("time")
    return datetime.fromtimestamp(wall).strftime("%H:%M:%S") if isinstance(wall, (int, float)) else "--:--:--"


#: The event types that may have a log line (:func:`log_line`).
_LOGGED = ("status", "epoch", "test", "ack", "error", "snapshot", "nonfinite", "state")


def log_line(event: Event) -> str | None:
    """The log line of a notable event (status, epoch end, test, ack, error, state, snapshot,
    nonfinite), else None.

    Epochs are counted from 1 here (the events' ``epoch`` from 0): "epoch 1 done".
    """
    kind = event.get("type")
    if kind not in _LOGGED:
        return None  # most events (loss, heartbeat): no clock formatted for nothing
    head = f"[{_clock(event)}]"
    if kind == "status":
        reason = f" ({event['reason']})" if event.get("reason") else ""
        return f"{head} {event.get('state')} at step {event.get('step')}{reason}"
    if kind == "epoch":
        parts = _numbers((k, v) for k, v in event.items()
                         if k in ("loss", "train_error", "test_error") or k.startswith("val_"))
        took = event.get("epoch_time")
        epoch = event.get("epoch")
        label = epoch_label(epoch) if isinstance(epoch, int) else "an epoch"
        return (f"{head} {label} done at step {event.get('step')}: "
                + parts + (f"  ({took:.2f} s)" if took is not None else ""))
    if kind == "test":
        stamp = ("schema", "run", "seq", "time", "type", "step", "epoch")
        return (f"{head} test at step {event.get('step')}: "
                + _numbers((k, v) for k, v in event.items() if k not in stamp))
    if kind in ("ack", "error") and event.get("id") is not None:
        return f"{head} {describe_answer(event)}"
    if kind == "error":
        return f"{head} error: {event.get('message')}"
    if kind == "snapshot":
        return f"{head} snapshot at step {event.get('step')}: {event.get('path')}"
    if kind == "nonfinite":
        return (f"{head} non-finite batch: {event.get('message')}. Paused: `resume` retries the "
                "batch (after `set lr=...`), `skip` drops it")
    if kind == "state":
        return f"{head} " + ": ".join(describe_state(event)[:2])
    return None


class Watcher:
    """Follows a run directory's ``events.jsonl`` and writes the view to ``out``.

    ``tty``: redraw a status block in place (ANSI) under the scrolling log; otherwise print
    the log and a progress line every ``interval`` seconds while the run advances.
    ``window``: batches in the loss moving average.
    """

    STALE = 5.0  # seconds without any event (heartbeats come every second) before a warning

    def __init__(self, run_dir: str | os.PathLike, out: TextIO, tty: bool, interval: float = 0.5,
                 window: int = 50) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / EVENTS_FILE
        self.out = out
        self.tty = tty
        self.interval = interval
        self.monitor = Monitor({"watch": [Channel("loss", "loss.loss", window=window)]})
        self._offset = 0
        self._block = 0           # lines of the status block on screen (tty)
        self._printed_step = -1   # step of the last progress line (plain)

    def poll(self) -> list[str]:
        """Reads the new events; returns their log lines."""
        items, self._offset = read_jsonl(self.path, self._offset)
        lines = []
        for line_offset, event in items:
            if not isinstance(event, dict):
                lines.append(f"[--:--:--] {self.path}: skipped a malformed line at byte {line_offset}")
                continue
            line = log_line(self.monitor.update(event))
            if line:
                lines.append(line)
        return lines

    def status_lines(self, now: float | None = None) -> list[str]:
        """The status block: state and event age, progress, loss and lr, errors."""
        s = self.monitor.status
        now = time.time() if now is None else now
        if s.last_time is None:
            return [f"nnkit watch {self.run_dir}: waiting for {self.path.name}"]
        age = now - s.last_time
        state = "running" if s.state in RUNNING_STATES else s.state
        alive = f"last event {_age(age)} ago"
        if state == "running" and age > self.STALE:
            alive = f"no event for {_age(age)}: is the run still alive?"
        loss = self.monitor.series("loss")
        # Counted from 1, like the progress bar: "epoch 1  batch 3" after the first 3 batches.
        batch = "" if s.batch is None else f"  batch {s.batches_done}"
        lines = [f"run {s.run} ({self.run_dir}): {state}, {alive}",
                 f"{s.epoch_text}{batch}  step {s.step}",
                 (f"loss {_fmt(s.loss)}  avg({loss.channel.window}) {_fmt(loss.last_average)}  "
                  f"lr {_fmt(s.lr, '.6g')}  images/s {_fmt(s.images_per_s, '.0f')}"),
                 f"train error {_fmt(s.train_error)}"
                 + ("" if s.last_epoch is None else f" ({epoch_label(s.last_epoch)})")
                 + f"  test error {_fmt(s.test_error)}"
                 + ("" if s.test_step is None else f" (step {s.test_step})")]
        if s.errors:
            lines.append(f"last error: {s.errors[-1]}")
        return lines

    def progress_line(self, now: float | None = None) -> str:
        """The status block on one line (the plain view's progress line)."""
        return " | ".join(self.status_lines(now))

    def render(self, log: list[str], final: bool = False) -> None:
        """Writes new log lines and the status (in place on a terminal)."""
        if self.tty:
            width = max(shutil.get_terminal_size((100, 24)).columns - 1, 20)
            # Up to the block's first line, clear to the end of the screen, write log + block.
            text = f"\x1b[{self._block}F\x1b[J" if self._block else ""
            block = [line[:width] for line in self.status_lines()]  # no wrapping: the count holds
            text += "".join(f"{line}\n" for line in log) + "".join(f"{line}\n" for line in block)
            self._block = len(block)
            self.out.write(text)
        else:
            for line in log:
                self.out.write(line + "\n")
            s = self.monitor.status
            if s.last_time is not None and (s.step != self._printed_step or final):
                self.out.write(self.progress_line() + "\n")
                self._printed_step = s.step
        self.out.flush()

    def run(self, exit_on_end: bool = True) -> int:
        """Follows the run until it ends (``exit_on_end``) or Ctrl-C.

        Returns 1 if the run failed, else 0.
        """
        if not self.run_dir.is_dir():
            raise CommandLineError(f"{self.run_dir}: no such run directory")
        try:
            while True:
                log = self.poll()
                ended = exit_on_end and self.monitor.status.ended
                self.render(log, final=ended)
                if ended:
                    return 1 if self.monitor.status.state == "failed" else 0
                time.sleep(self.interval)
        except KeyboardInterrupt:
            self.out.write("\n")
            return 0


def watch(run_dir: str | os.PathLike, out: TextIO | None = None, interval: float = 0.5,
          window: int = 50, exit_on_end: bool = True, tty: bool | None = None) -> int:
    """``nnkit watch``: follows ``run_dir`` on ``out`` (stdout); returns the exit status."""
    out = sys.stdout if out is None else out
    tty = out.isatty() if tty is None else tty
    return Watcher(run_dir, out, tty, interval, window).run(exit_on_end)
