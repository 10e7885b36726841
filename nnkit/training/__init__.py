"""The training loop (Trainer) and its callbacks; model-agnostic."""
from .callbacks import (CSVLogger, Callback, CallbackList, EarlyStopping, History, LambdaCallback,
                        LearningRateScheduler, ModelCheckpoint, NonFiniteLossError, ProgressBar,
                        ReduceLROnPlateau, TerminateOnNaN)
from .trainer import Trainer, split_validation

__all__ = ["Trainer", "split_validation", "Callback", "CallbackList", "History", "ProgressBar",
           "ModelCheckpoint", "EarlyStopping", "LearningRateScheduler", "ReduceLROnPlateau",
           "CSVLogger", "TerminateOnNaN", "LambdaCallback", "NonFiniteLossError"]
