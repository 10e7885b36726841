"""The public API of nnkit: what ``import nnkit`` offers, imported on first use.

``nnkit/__init__.py`` imports this module the first time one of its names is used, so that
commands which need none of it (``nnkit ctl``, ``nnkit watch``) start without the model, the
kernels, the job config and h5py. Importing the config registers the job schema with the model.
"""
from . import checkpoint, initializers, layers, schedules, training, updaters
from .checkpoint import load_model_parameter, save_model_parameter
from .layers import *  # noqa: F401,F403  (the layers are part of the top-level API)
from .layers import __all__ as _layer_names
from .model import Sequential
from .config import Job, load, load_job, model_from_proto, start  # also registers the schema with the model
from .training import Trainer, TrainingRun
from . import experiments  # registers the recorder: every run with a run directory is recorded
from .updaters import SGD, AdaDelta, AdaGrad, Adam, Nesterov, RMSProp, Updater

__all__ = [*_layer_names, "Updater", "SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam",
           "Sequential", "load", "start", "TrainingRun", "Job", "load_job", "model_from_proto", "Trainer",
           "save_model_parameter", "load_model_parameter",
           "checkpoint", "initializers", "layers", "schedules", "training", "updaters"]
