"""The command side of a run: commands queued from any thread, process or file, applied by the
Trainer at its safe point between two batches, each answered by an ``ack`` or an ``error``.

A command is a JSON object ``{"id": "...", "command": "set", "args": {"lr": 0.01}}``.

The commands are the one table :data:`COMMANDS` below: each ``@command`` above a
``Controller._do_<name>`` method gives the command's name (from the method's), its
arguments (:class:`Arg`: type, default, value rule, doc) and what it does. Everything else is
derived from it: the Controller's argument checks, the :class:`~nnkit.training.RunHandle`
methods, ``nnkit ctl``'s checks and help, and the reference table in README.md
(:func:`command_reference`).

A learning rate set by hand is the updater's override: it is saved in checkpoints and wins
over the schedule after a resume.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import queue
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

import numpy as np

from .callbacks import Callback
from .events import (COMMANDS_FILE, EVENTS_FILE, Event, EventBus, append_line, jsonl_reader, poll_answer,
                     read_jsonl)


class CommandError(ValueError):
    """A command that cannot be applied; the run reports it and goes on."""


def make_command(command: str, **args: Any) -> dict[str, Any]:
    """A command object with a fresh id; path-like values become text (commands travel as JSON)."""
    args = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in args.items()}
    return {"id": uuid.uuid4().hex[:12], "command": command, "args": args}


# ==================================================================== the command table
class _Marker:
    """A default that is not a value: :data:`REQUIRED` or :data:`UNSET` (named in signatures)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED = _Marker("REQUIRED")
"""The default of an argument that must be given."""
UNSET = _Marker("UNSET")
"""The default of an argument whose absence means "leave it as it is": the handler does not get it."""

Rule = Callable[[Any], "str | None"]
Handler = Callable[..., "dict[str, Any] | None"]


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: The JSON types an argument can have: each one's name in messages and its test.
_TYPES: dict[type, tuple[str, Callable[[Any], bool]]] = {
    bool: ("true/false", lambda value: isinstance(value, bool)),
    int: ("a whole number", _is_whole),
    float: ("a number", _is_number),
    str: ("text", lambda value: isinstance(value, str)),
}


def positive_whole(value: float) -> str | None:
    """A value rule: a whole number >= 1 (for a number-typed argument, 8.0 counts)."""
    return None if value >= 1 and int(value) == value else f"expected a positive whole number, got {value!r}"


def non_negative(value: float) -> str | None:
    """A value rule: >= 0."""
    return None if value >= 0 else f"must be >= 0, got {value}"


def fraction(value: float) -> str | None:
    """A value rule: in [0, 1)."""
    return None if 0 <= value < 1 else f"must be in [0, 1), got {value}"


@dataclass(frozen=True)
class Arg:
    """One argument of a command.

    ``type``: its JSON type (bool, int, float or str). ``default``: what the handler gets when
    the argument is not given; :data:`REQUIRED` (it must be given) or :data:`UNSET` (the
    handler does not get it). A None default means "not given", so None is accepted as such.
    ``doc``: what the value means. ``nullable``: None is a value of its own (``lr=None``: back
    to the schedule). ``rule``: a check of the value beyond its type, made by the run (not by
    ``nnkit ctl``); it returns what is wrong, or None. ``annotation``: the Python type of the
    :class:`~nnkit.training.RunHandle` parameter when it is not ``type``. ``local_path``: a
    file to read that ``nnkit ctl`` names from the shell's folder, so it sends it absolute (the
    run resolves a relative path in its run directory).
    """

    name: str
    type: type
    default: Any = REQUIRED
    doc: str = ""
    nullable: bool = False
    rule: Rule | None = None
    annotation: Any = None
    local_path: bool = False

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise TypeError(f"argument {self.name}: type must be one of {', '.join(t.__name__ for t in _TYPES)}")

    @property
    def required(self) -> bool:
        """True if the argument must be given."""
        return self.default is REQUIRED

    @property
    def kind(self) -> str:
        """What a value must be, in words: ``a number``, ``a number or null``."""
        return _TYPES[self.type][0] + (" or null" if self.nullable else "")

    @property
    def python_annotation(self) -> Any:
        """The annotation of the RunHandle parameter, ``| None`` included when None is accepted."""
        base = self.annotation or self.type
        return base | None if self.nullable or self.default is None else base

    def accepts(self, value: Any) -> bool:
        """True if ``value`` (parsed JSON) is of the argument's type: the check ``nnkit ctl`` makes."""
        if value is None:
            return self.nullable or self.default is None
        return _TYPES[self.type][1](value)

    def complaint(self, value: Any) -> str | None:
        """What is wrong with ``value`` (its type, then its rule), or None: the run's check."""
        if not self.accepts(value):
            return f"expected {self.kind}, got {value!r}"
        if value is None or self.rule is None:
            return None
        return self.rule(value)

    def describe(self, code: Callable[[str], str]) -> str:
        """``batches`` (a whole number): total batches; ``code`` formats the name."""
        extra = ", required" if self.required else ""
        if not (self.required or self.default is UNSET or self.default is None):
            extra = f", default {json.dumps(self.default)}"
        return f"{code(self.name)} ({self.kind}{extra}): {self.doc}"


@dataclass(frozen=True)
class Command:
    """One steering command: its name, arguments, what it does, and the method that applies it.

    ``choose``: ``"one"``, exactly one of the arguments is given; ``"some"``, at least one (an
    argument left at its default does not count). The ``handler`` is a ``Controller._do_<name>``
    method, called at a safe point as ``handler(controller, trainer, **args)`` with the checked
    args and the defaults (but not :data:`UNSET` ones); it returns the ack's fields (or None)
    and raises :class:`CommandError` for what it refuses.
    """

    name: str
    args: tuple[Arg, ...]
    doc: str
    handler: Handler
    choose: Literal["one", "some"] | None = None

    def arg(self, key: str) -> Arg:
        """The argument ``key``; CommandError naming the command and the argument if unknown."""
        for arg in self.args:
            if arg.name == key:
                return arg
        takes = ", ".join(a.name for a in self.args) or "no arguments"
        raise CommandError(f"{self.name}: unknown argument {key!r}; {self.name} takes {takes}")

    def check_names(self, args: Mapping[str, Any]) -> None:
        """CommandError for an unknown or missing argument or a broken ``choose`` rule."""
        for key in args:
            self.arg(key)
        missing = [a.name for a in self.args if a.required and a.name not in args]
        if missing:
            raise CommandError(f"{self.name}: missing {', '.join(f'{m}=' for m in missing)}")
        given = [a for a in self.args if args.get(a.name, a.default) is not a.default]
        options = [f"{a.name}=" for a in self.args]
        if self.choose == "one" and len(given) != 1:
            raise CommandError(f"{self.name} takes exactly one of {' or '.join(options)}")
        if self.choose == "some" and not given:
            raise CommandError(f"{self.name} needs at least one of {', '.join(options)}")

    def check(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The handler's keyword arguments for ``args``, checked (names, types, value rules)
        and with the defaults filled in; CommandError naming the command and the argument."""
        self.check_names(args)
        for key, value in args.items():
            complaint = self.arg(key).complaint(value)
            if complaint is not None:
                raise CommandError(f"{self.name} {key}: {complaint}")
        defaults = {a.name: a.default for a in self.args if not a.required and a.default is not UNSET}
        return {**defaults, **args}

    def parameters(self) -> list[inspect.Parameter]:
        """The arguments as the parameters of a Python method (RunHandle's), in table order."""
        return [inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  default=inspect.Parameter.empty if a.required else a.default,
                                  annotation=a.python_annotation) for a in self.args]

    def handler_fits(self) -> bool:
        """True if the handler takes ``(self, trainer)`` and then the table's arguments by name
        (or ``**values``: only the given ones)."""
        params = list(inspect.signature(self.handler).parameters.values())
        rest = params[2:]
        if [p.kind for p in rest] == [inspect.Parameter.VAR_KEYWORD]:
            return True
        return [p.name for p in rest] == [a.name for a in self.args] and all(
            p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in rest)

    def describe_args(self, code: Callable[[str], str], sep: str) -> str:
        """The arguments in words, ``sep`` between them (after ``exactly one of:`` if so);
        ``code`` formats a name."""
        lead = {"one": ["exactly one of:"], "some": ["at least one of:"]}.get(self.choose or "", [])
        return sep.join([*lead, *(a.describe(code) for a in self.args)])


_TABLE: dict[str, Command] = {}
COMMANDS: Mapping[str, Command] = MappingProxyType(_TABLE)
"""Every command by name, in the order the Controller defines them (``@command`` fills it)."""


def command(doc: str, *args: Arg, choose: Literal["one", "some"] | None = None
            ) -> Callable[[Handler], Handler]:
    """Enters the decorated ``Controller._do_<name>`` method in the table as command ``<name>``."""
    def enter(handler: Handler) -> Handler:
        name = handler.__name__.removeprefix("_do_")
        entry = Command(name, tuple(args), doc, handler, choose)
        if name == handler.__name__ or name in _TABLE or not entry.handler_fits():
            raise TypeError(f"{handler.__qualname__}: a handler is a new _do_<name>(self, trainer, "
                            f"{', '.join(a.name for a in args)})")
        entry.parameters()  # fails now, at import, if a required argument follows an optional one
        _TABLE[name] = entry
        return handler
    return enter


def find_command(name: Any) -> Command:
    """The table entry of command ``name``; CommandError naming the known commands if none."""
    entry = _TABLE.get(name) if isinstance(name, str) else None
    if entry is None:
        raise CommandError(f"unknown command {name!r}; expected one of {', '.join(_TABLE)}")
    return entry


#: How much of the command file's start is remembered to tell a rewritten file from a grown one.
_HEAD_BYTES = 256


# ==================================================================== the controller
class Controller:
    """Queues commands and applies them at the Trainer's safe points.

    ``submit`` is thread-safe. With ``command_file``, lines appended to that JSON-lines file
    (by ``nnkit ctl``) are read at every safe point; a malformed line is reported as an
    ``error`` event and skipped. The ``_do_<name>`` methods below are the commands: each
    ``@command`` says its arguments and what it does.
    """

    def __init__(self, bus: EventBus, command_file: str | os.PathLike | None = None,
                 run_dir: str | os.PathLike | None = None) -> None:
        self.bus = bus
        self.command_file = None if command_file is None else Path(command_file)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        # Commands already in the file belong to an earlier run in this directory: skip them.
        self._file_offset = 0
        self._file_identity: tuple[int, int] | None = None  # (device, inode) read from
        self._file_head = b""  # its first bytes, to notice a truncate-and-rewrite
        if self.command_file is not None and self.command_file.exists():
            stat = self.command_file.stat()
            self._file_offset, self._file_identity = stat.st_size, (stat.st_dev, stat.st_ino)
        self.paused = False
        self.report_every = 1

    # ------------------------------------------------------------------ input
    def submit(self, command: dict[str, Any] | str, **args: Any) -> str:
        """Queues a command (an object, or a name plus keyword args); returns its id.

        Any JSON value may stand in any field: an ``id`` that is not a string is answered under
        its JSON text (so the answer is still findable), and the run goes on whatever it gets.
        """
        if isinstance(command, str):
            command = make_command(command, **args)
        command = dict(command)
        cid = command.setdefault("id", uuid.uuid4().hex[:12])
        if not isinstance(cid, str):
            command["id"] = json.dumps(cid, sort_keys=True, default=repr)
        self._queue.put(command)
        return command["id"]

    def submit_text(self, raw: str | bytes, origin: str = "the parent") -> None:
        """Queues a command given as JSON text (a pipe message); reports what does not parse."""
        try:
            value: Any = json.loads(raw)
        except ValueError as exc:
            value = ValueError(f"not valid JSON ({exc})")
        self._submit_value(value, origin)

    def _submit_value(self, value: Any, origin: str) -> None:
        """The one check of a command's JSON form, wherever it came from."""
        if isinstance(value, Exception):
            self.bus.emit("error", message=f"{origin}: {value}; command skipped")
        elif not isinstance(value, dict):
            self.bus.emit("error", message=f"{origin}: a command must be a JSON object, got "
                                           f"{type(value).__name__}; command skipped")
        else:
            self.submit(value)

    def _poll_file(self) -> None:
        if self.command_file is None:
            return
        try:
            stat = self.command_file.stat()
        except OSError:  # deleted (or not yet made): read it from the start when it is back
            self._file_offset, self._file_identity = 0, None
            return
        identity = (stat.st_dev, stat.st_ino)
        if (identity != self._file_identity or stat.st_size < self._file_offset
                or not self._same_head()):
            # Rotated, replaced or truncated (and perhaps written again) while the run lives:
            # every line there is new.
            self._file_offset, self._file_identity, self._file_head = 0, identity, b""
        items, self._file_offset = read_jsonl(self.command_file, self._file_offset)
        if not self._file_head and self._file_offset:
            self._file_head = self._read_head()
        for _, value in items:
            self._submit_value(value, str(self.command_file))

    def _read_head(self) -> bytes:
        try:
            with open(self.command_file, "rb") as f:
                return f.read(min(self._file_offset, _HEAD_BYTES))
        except OSError:
            return b""

    def _same_head(self) -> bool:
        """Whether the file still starts as it did when read (a truncate-and-rewrite does not)."""
        return not self._file_head or self._read_head().startswith(self._file_head)

    # ------------------------------------------------------------------ the safe point
    def safe_point(self, trainer: Any) -> None:
        """Applies every pending command; while paused, waits here (still answering commands)."""
        self._drain(trainer)
        if self.paused:
            while self.paused and trainer.requested is None:
                self._wait_for_command(trainer, timeout=0.2)

    def idle(self, trainer: Any, timeout: float = 0.2) -> None:
        """Between fits (a finished run): answers commands, waiting up to ``timeout``."""
        self._wait_for_command(trainer, timeout)

    def _wait_for_command(self, trainer: Any, timeout: float) -> None:
        self._poll_file()
        try:
            message = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        self._apply(trainer, message)
        self._drain(trainer)

    def _drain(self, trainer: Any) -> None:
        self._poll_file()
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                return
            self._apply(trainer, message)

    def _apply(self, trainer: Any, message: dict[str, Any]) -> None:
        """Checks a command against the table and runs its handler; every outcome is an event."""
        cid, name = message.get("id"), message.get("command")
        try:
            entry = find_command(name)
            args = message.get("args") or {}
            if not isinstance(args, dict):
                raise CommandError(f"args must be an object, got {type(args).__name__}")
            result = entry.handler(self, trainer, **entry.check(args))
        # A handler's own failure (a path it cannot write...) is an answer too: the run goes on.
        except (CommandError, TypeError, ValueError, OSError) as exc:  # CheckpointError included
            self.bus.emit("error", id=cid, command=name, message=str(exc))
        else:
            self.bus.emit("ack", id=cid, command=name, step=trainer.global_step, **(result or {}))

    # ------------------------------------------------------------------ the commands
    @command("Ends the run after the current batch.")
    def _do_stop(self, trainer: Any) -> None:
        trainer.stop()

    @command("Waits at the next safe point until ``resume``.")
    def _do_pause(self, trainer: Any) -> None:
        if not self.paused:
            self.paused = True
            self.bus.emit("status", state="paused", step=trainer.global_step)

    @command("Continues a paused run.")
    def _do_resume(self, trainer: Any) -> None:
        if self.paused:
            self.paused = False
            self.bus.emit("status", state="resumed", step=trainer.global_step)

    @command("Moves the end of the run to a total of batches or epochs; also extends a finished run.",
             Arg("batches", int, None, "the total number of batches, >= 1", rule=positive_whole),
             Arg("epochs", int, None, "the total number of epochs, >= 1", rule=positive_whole),
             choose="one")
    def _do_run_until(self, trainer: Any, batches: int | None, epochs: int | None) -> dict:
        if batches is not None:
            trainer.target_step, trainer.target_epoch = batches, None
        else:
            trainer.target_epoch, trainer.target_step = epochs, None
        return {"target_step": trainer.target_step, "target_epoch": trainer.target_epoch}

    @command("Changes hyperparameters from the next batch on. A learning rate set by hand is "
             "kept in checkpoints and wins over the schedule after a resume.",
             Arg("lr", float, UNSET, "the learning rate, >= 0; null: back to the schedule",
                 nullable=True, rule=non_negative),
             Arg("momentum", float, UNSET, "in [0, 1); only for an updater built with momentum > 0",
                 rule=fraction),
             Arg("weight_decay", float, UNSET, ">= 0", rule=non_negative),
             Arg("batch_size", float, UNSET, "a whole number >= 1", rule=positive_whole,
                 annotation=int),
             choose="some")
    def _do_set(self, trainer: Any, **values: Any) -> dict:
        updater = trainer.updater
        # Refuse before changing anything: the table checked the values, this needs the updater.
        if "momentum" in values and not getattr(updater, "momentum", 0):
            raise CommandError(f"{type(updater).__name__} has no momentum to change (build it "
                               "with momentum > 0 to change it live)")
        for key, value in values.items():
            if key == "lr":
                updater.lr = value
            elif key == "momentum":
                updater.momentum = float(value)
            elif key == "weight_decay":
                updater.decay = float(value)
            else:
                trainer.batch_size = int(value)
        return {"values": values}

    @command("Answers with a ``state`` event: hyperparameters, counters, per-layer norms.",
             Arg("snapshot", bool, False, "also write every parameter and gradient to an HDF5 "
                 "file named by a ``snapshot`` event"))
    def _do_tell_state(self, trainer: Any, snapshot: bool) -> None:
        model, updater = trainer.model, trainer.updater
        layers = {}
        for layer in getattr(model, "layers", []):
            if layer.params:
                layers[layer.name] = {
                    p.name: {"norm": float(np.linalg.norm(p.data)),
                             "grad_norm": None if p.grad is None else float(np.linalg.norm(p.grad)),
                             "shape": list(p.data.shape)}
                    for p in layer.params}
        hyper = {"lr": updater.lr, "lr_override": updater.lr_override, "base_lr": updater.base_lr,
                 "weight_decay": updater.decay, "momentum": getattr(updater, "momentum", None),
                 "batch_size": trainer.batch_size}
        self.bus.emit("state", step=trainer.global_step, epoch=trainer.current_epoch,
                      batch=trainer.batch_cursor, paused=self.paused, hyper=hyper, layers=layers,
                      target_step=trainer.target_step, target_epoch=trainer.target_epoch)
        if snapshot:
            from .. import checkpoint  # h5py, only here: nnkit ctl reads this table without it
            folder = self.run_dir if self.run_dir is not None else Path.cwd()
            path = folder / f"snapshot-{trainer.global_step}.h5"
            params = {p.full_name: p.data for p in model.params}
            grads = {p.full_name: p.grad for p in model.params if p.grad is not None}
            checkpoint.save_tree(path, {"step": trainer.global_step, "params": params, "grads": grads},
                                 kind="nnkit.snapshot")
            self.bus.emit("snapshot", step=trainer.global_step, path=str(path))

    @command("Sends a ``loss`` event every ``n`` batches (still at most one per 0.05 s).",
             Arg("n", int, REQUIRED, "batches from one loss event to the next, >= 1",
                 rule=positive_whole))
    def _do_report_every(self, trainer: Any, n: int) -> dict:
        self.report_every = n
        return {"n": n}

    @command("Writes a checkpoint.",
             Arg("path", str, None, "where; by default the run directory's checkpoint.h5",
                 annotation=str | os.PathLike))
    def _do_checkpoint(self, trainer: Any, path: str | None) -> dict:
        if path is None:
            if self.run_dir is None:
                raise CommandError("checkpoint: no path given and the run has no run directory")
            path = self.run_dir / "checkpoint.h5"
        return {"path": str(trainer.save_checkpoint(self.checkpoint_target(path)))}

    def checkpoint_target(self, path: str | os.PathLike) -> Path:
        """Where a ``checkpoint path=...`` command may write; CommandError if nowhere.

        In a run with a run directory (commands may come from its command file) a relative
        path resolves inside it and nothing may escape it. Whatever the run, an existing file
        that is not an nnkit checkpoint is never replaced, and parent folders must exist.
        """
        target = Path(path)
        if self.run_dir is not None:
            root = self.run_dir.resolve()
            target = (root / target).resolve()  # an absolute path stays itself
            if not target.is_relative_to(root):
                raise CommandError(f"checkpoint: {path} is outside the run directory {root}")
        if not target.parent.is_dir():
            raise CommandError(f"checkpoint: folder {target.parent} does not exist")
        if target.exists() or target.is_symlink():
            from .. import checkpoint  # h5py, only here: nnkit ctl reads this table without it
            try:
                kind = checkpoint.read_kind(target) if target.is_file() else None
            except checkpoint.CheckpointError:
                kind = None
            if kind != checkpoint.CHECKPOINT_KIND:
                raise CommandError(f"checkpoint: {target} exists and is not an nnkit checkpoint; "
                                   "it is left alone")
        return target

    @command("Loads the parameters and layer state (and by default the updater's slots) of an "
             "nnkit checkpoint; the run keeps its own counters, schedule, learning rate and data "
             "order (change the learning rate with ``set``). In a run with a run directory the "
             "checkpoint must lie in it or in the run's load roots.",
             Arg("path", str, REQUIRED, "the checkpoint, or a run directory (its latest checkpoint)",
                 annotation=str | os.PathLike, local_path=True),
             Arg("slots", bool, True, "also the updater's slots and counts (momentum, Adam's "
                 "moments): the copied weights go on with their own velocity"))
    def _do_load_weights(self, trainer: Any, path: str, slots: bool) -> dict:
        from .. import checkpoint  # h5py, only here: nnkit ctl reads this table without it
        if getattr(trainer, "distributed", None) is not None:
            raise CommandError("load_weights: not in a data-parallel (MPI) run: the other ranks "
                               "would keep their weights")
        source = self.load_source(path, getattr(trainer, "load_roots", ()))
        try:
            tree = checkpoint.load_tree(source)
        except checkpoint.CheckpointError as exc:
            raise CommandError(f"load_weights: {source} is not an nnkit checkpoint ({exc})") from None
        model, updater = trainer.model, trainer.updater
        saved = tree.get("model")
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), dict):
            raise CommandError(f"load_weights: {source} is an nnkit file without a model's parameters")
        # Every check before any change: the parameters (names, shapes), then the slots.
        try:
            checkpoint.check_parameters(saved["params"], model.layers, str(source), saved.get("state", {}))
        except checkpoint.CheckpointError as exc:
            raise CommandError(f"load_weights: {exc}") from None
        state = self._loaded_slots(source, saved.get("updater"), model, updater) if slots else None
        checkpoint.assign_parameters(saved["params"], model.layers, str(source), state=saved.get("state", {}))
        if state is not None:
            updater.load_state_dict(state)
        if hasattr(model, "state_replaced"):  # a Sequential: its next update can be undone
            model.state_replaced()
        stored = tree.get("trainer")
        step = stored.get("global_step") if isinstance(stored, dict) else None
        return {"path": str(source), "source_step": step if isinstance(step, int) else None,
                "slots": slots}

    def load_source(self, path: str | os.PathLike, roots: Any = ()) -> Path:
        """The checkpoint file a ``load_weights path=...`` command may read; CommandError if none.

        A relative path resolves in the run directory. Symlinks and ``..`` are resolved before
        the check, and again after a run directory is turned into its latest checkpoint (its
        ``latest`` file could name a link out). In a run with a run directory the file must lie
        in it or under one of ``roots`` (a sweep's run directories); a run without one (steered
        from its own Python process only) may read any file.
        """
        from . import checkpoints
        base = self.run_dir.resolve() if self.run_dir is not None else Path.cwd()
        allowed = [] if self.run_dir is None else [base, *(Path(r).resolve() for r in roots)]

        def confined(target: Path) -> Path:
            target = (base / target).resolve()  # an absolute path stays itself
            if allowed and not any(target.is_relative_to(root) for root in allowed):
                raise CommandError(f"load_weights: {path} is outside the allowed roots "
                                   f"({', '.join(map(str, allowed))})")
            return target
        target = confined(Path(path))
        if target.is_dir():
            try:
                target = confined(checkpoints.resolve_checkpoint(target))
            except FileNotFoundError as exc:
                raise CommandError(f"load_weights: {exc}") from None
        if not target.is_file():
            raise CommandError(f"load_weights: {target} does not exist or is not a file")
        return target

    @staticmethod
    def _loaded_slots(source: Path, saved: Any, model: Any, updater: Any) -> dict[str, Any] | None:
        """The updater state after loading ``saved``'s slots and counts: the run's own schedule,
        step and learning-rate override with the checkpoint's per-parameter state, checked
        against the parameters; None when the run has no updater."""
        if updater is None:
            return None
        from ..checkpoint import upgrade_names
        own = updater.state_dict()
        if saved is None:  # a checkpoint without updater state: the slots start afresh
            return {**own, "slots": {}, "counts": {}}
        if not isinstance(saved, dict) or saved.get("type") != own["type"]:
            kind = saved.get("type") if isinstance(saved, dict) else type(saved).__name__
            raise CommandError(f"load_weights: {source} has the slots of a {kind} updater and this "
                               f"run's is {own['type']}; give slots=false to load the parameters alone")
        shapes = {p.full_name: p.data.shape for p in model.params}
        slot_state = upgrade_names(saved.get("slots") or {}, shapes)
        counts = upgrade_names(saved.get("counts") or {}, shapes)
        for name, arrays in slot_state.items():
            if name not in shapes:
                raise CommandError(f"load_weights: {source}: updater slots of {name!r}, which is no "
                                   "parameter of this model")
            if not isinstance(arrays, dict) or set(arrays) != set(updater.slot_names):
                raise CommandError(f"load_weights: {source}: updater slots of {name!r} are "
                                   f"{sorted(arrays) if isinstance(arrays, dict) else arrays!r}, this "
                                   f"updater uses {sorted(updater.slot_names)}")
            for key, array in arrays.items():
                if getattr(array, "shape", None) != shapes[name]:
                    raise CommandError(f"load_weights: {source}: updater slot {name}/{key} has shape "
                                       f"{getattr(array, 'shape', None)} but the parameter {shapes[name]}")
        return {**own, "slots": slot_state, "counts": counts}

    @command("Stops and ends the run's thread, also when it is finished and waiting.")
    def _do_shutdown(self, trainer: Any) -> None:
        trainer.request("shutdown")

    @command("Drops the batch a run paused on for a non-finite value and continues with the next "
             "one (``resume`` retries it instead).")
    def _do_skip(self, trainer: Any) -> dict:
        if not self.paused:
            raise CommandError("skip: the run is not paused")
        skipped = trainer.skip_batch()  # refuses when the pause is not for a non-finite batch
        self._do_resume(trainer)
        return {"skipped": skipped}


# ==================================================================== a run directory's channel
def deliver(run_dir: str | os.PathLike, command: dict[str, Any]) -> int:
    """Appends ``command`` (a :func:`make_command` object) to ``run_dir/commands.jsonl``, where
    the run reads it at its next safe point; returns the size of ``events.jsonl`` before (where
    to look for the answer: :func:`wait_for_answer`)."""
    events = Path(run_dir) / EVENTS_FILE
    offset = events.stat().st_size if events.exists() else 0
    append_line(Path(run_dir) / COMMANDS_FILE, json.dumps(command, separators=(",", ":")) + "\n")
    return offset


def wait_for_answer(run_dir: str | os.PathLike, command_id: str, timeout: float, offset: int = 0,
                    poll: float = 0.05) -> Event | None:
    """The ``ack`` or ``error`` answering ``command_id`` in ``events.jsonl`` after byte ``offset``.

    None after ``timeout`` seconds without it.
    """
    return poll_answer(jsonl_reader(Path(run_dir) / EVENTS_FILE, offset), command_id, timeout, poll)


#: The names ``set`` takes (derived from the table; kept for code that imported it).
SETTABLE = tuple(a.name for a in COMMANDS["set"].args)


def command_reference() -> str:
    """The command table as markdown: one row per command (README.md carries a copy)."""
    rows = ["| command | arguments | what it does |", "|---|---|---|"]
    for entry in COMMANDS.values():
        args = entry.describe_args(lambda name: f"`{name}`", "<br>")
        rows.append(f"| `{entry.name}` | {args} | {entry.doc} |".replace("``", "`"))
    return "\n".join(rows) + "\n"


class EventReporter(Callback):
    """Turns the Trainer's hooks into ``loss`` and ``epoch`` events.

    Loss events go out every ``controller.report_every`` batches and at least
    ``min_interval`` seconds apart, so a fast run cannot flood a viewer; the last batch of a
    run is always reported.
    """

    def __init__(self, bus: EventBus, controller: Controller, min_interval: float = 0.05) -> None:
        self.bus = bus
        self.controller = controller
        self.min_interval = min_interval
        self._last = -math.inf
        self._window_start = time.perf_counter()
        self._window_images = 0
        self._held: tuple[int, int, dict] | None = None  # the last batch not yet reported

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self._window_images += logs.get("size", 0)
        t = self.trainer
        now = time.perf_counter()
        self._held = (t.global_step, t.current_epoch, logs)
        if t.global_step % self.controller.report_every or now - self._last < self.min_interval:
            return
        self._emit(now)

    def on_train_end(self, logs: dict | None = None) -> None:
        """The last batch is always reported, so a viewer sees where the run ended."""
        if self._held is not None:
            # Keep the spacing promise even here: waiting under 0.05 s once per run is cheap.
            time.sleep(max(0.0, self._last + self.min_interval - time.perf_counter()))
            self._emit(time.perf_counter())

    def _emit(self, now: float) -> None:
        step, epoch, logs = self._held
        rate = self._window_images / max(now - self._window_start, 1e-9)
        self._last, self._window_start, self._window_images = now, now, 0
        self._held = None
        self.bus.emit("loss", step=step, epoch=epoch, **logs, images_per_s=rate)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        _, train_error, test_error = self.trainer.interactive_data()[-1]
        self.bus.emit("epoch", epoch=epoch, step=self.trainer.global_step, **(logs or {}),
                      train_error=train_error, test_error=test_error)
