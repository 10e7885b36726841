"""The training loop (Trainer), its callbacks, and the channel to watch and steer a run.

Model-agnostic: nothing here imports a model, a config or a view. The views that read a run's
events (channels and figures, the terminal watch, the notebook, PNG reports, TensorBoard) live
in :mod:`nnkit.views`; ``nnkit.training.Monitor`` moved to ``nnkit.views.Monitor``.
"""
from .callbacks import (CSVLogger, Callback, CallbackList, EarlyStopping, History, LambdaCallback,
                        LearningRateScheduler, ModelCheckpoint, NonFiniteLossError, ProgressBar,
                        ReduceLROnPlateau, TerminateOnNaN)
from .control import (COMMANDS, Arg, Command, CommandError, Controller, EventReporter,
                      command_reference, find_command, make_command)
from .events import EventBus, JsonlWriter, find_answer, follow, read_jsonl
from .process import ProcessRun, serve_child
from .run import RunHandle, TrainingRun, attach_channel, live_runs
from .trainer import Trainer, split_validation

__all__ = ["Trainer", "split_validation", "Callback", "CallbackList", "History", "ProgressBar",
           "ModelCheckpoint", "EarlyStopping", "LearningRateScheduler", "ReduceLROnPlateau",
           "CSVLogger", "TerminateOnNaN", "LambdaCallback", "NonFiniteLossError", "TrainingRun", "RunHandle", "live_runs", "ProcessRun", "serve_child",
           "attach_channel", "Controller", "EventReporter", "CommandError", "COMMANDS", "make_command",
           "Command", "Arg", "find_command", "command_reference",
           "EventBus", "JsonlWriter", "read_jsonl", "follow", "find_answer"]
