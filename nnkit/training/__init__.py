"""The training loop (Trainer), its callbacks, and the channel to watch and steer a run.

Model-agnostic: nothing here imports a model, a config or a view. The views that read a run's
events (channels and figures, the terminal watch, the notebook, PNG reports, TensorBoard) live
in :mod:`nnkit.views`; ``nnkit.training.Monitor`` moved to ``nnkit.views.Monitor``.

The names below are imported from their modules on first use (PEP 562): a reader of events
(``nnkit ctl``, ``nnkit watch``: ``events`` and the command table of ``control``) does not load
the Trainer, the checkpoint code and h5py.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .callbacks import (CSVLogger, Callback, CallbackList, EarlyStopping, History, LambdaCallback,
                            LearningRateScheduler, ModelCheckpoint, NonFiniteLossError, ProgressBar,
                            ReduceLROnPlateau, TerminateOnNaN)
    from .control import (COMMANDS, Arg, Command, CommandError, Controller, EventReporter,
                          command_reference, find_command, make_command)
    from .events import EventBus, JsonlWriter, find_answer, follow, read_jsonl
    from .process import ProcessRun, serve_child
    from .run import RunHandle, TrainingRun, attach_channel, live_runs
    from .trainer import Trainer, split_validation

#: The module of each public name.
_HOMES = {
    **dict.fromkeys(("CSVLogger", "Callback", "CallbackList", "EarlyStopping", "History",
                     "LambdaCallback", "LearningRateScheduler", "ModelCheckpoint",
                     "NonFiniteLossError", "ProgressBar", "ReduceLROnPlateau", "TerminateOnNaN"),
                    "callbacks"),
    **dict.fromkeys(("COMMANDS", "Arg", "Command", "CommandError", "Controller", "EventReporter",
                     "command_reference", "find_command", "make_command"), "control"),
    **dict.fromkeys(("EventBus", "JsonlWriter", "find_answer", "follow", "read_jsonl"), "events"),
    **dict.fromkeys(("ProcessRun", "serve_child"), "process"),
    **dict.fromkeys(("RunHandle", "TrainingRun", "attach_channel", "live_runs"), "run"),
    **dict.fromkeys(("Trainer", "split_validation"), "trainer"),
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (then a plain attribute); or a
    submodule, as the eager imports used to make them attributes."""
    home = _HOMES.get(name)
    if home is None:
        if name in _HOMES.values():  # a submodule not imported yet: nnkit.training.trainer
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
