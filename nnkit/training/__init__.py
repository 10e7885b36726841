"""The training loop (Trainer), its callbacks, and the channel to watch and steer a run."""
from .callbacks import (CSVLogger, Callback, CallbackList, EarlyStopping, History, LambdaCallback,
                        LearningRateScheduler, ModelCheckpoint, NonFiniteLossError, ProgressBar,
                        ReduceLROnPlateau, TerminateOnNaN)
from .channels import DEFAULT_FIGURES, Channel, Figure, Monitor, RunStatus, Series, monitor_file
from .control import COMMANDS, CommandError, Controller, EventReporter, make_command
from .events import EventBus, JsonlWriter, follow, read_jsonl
from .process import ProcessRun, start
from .run import RunHandle, TrainingRun, attach_channel
from .tensorboard import SummaryWriter, TensorBoard, TensorBoardLogger
from .trainer import Trainer, split_validation

__all__ = ["Trainer", "split_validation", "Callback", "CallbackList", "History", "ProgressBar",
           "ModelCheckpoint", "EarlyStopping", "LearningRateScheduler", "ReduceLROnPlateau",
           "CSVLogger", "TerminateOnNaN", "LambdaCallback", "NonFiniteLossError", "TrainingRun", "RunHandle", "ProcessRun", "start",
           "attach_channel", "Controller", "EventReporter", "CommandError", "COMMANDS", "make_command",
           "EventBus", "JsonlWriter", "read_jsonl", "follow", "Channel", "Figure", "Monitor", "Series",
           "RunStatus", "DEFAULT_FIGURES", "monitor_file", "TensorBoard", "TensorBoardLogger",
           "SummaryWriter"]
