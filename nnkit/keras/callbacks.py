"""``keras.callbacks`` (keras/callbacks.py, 2.2.4) over nnkit's callbacks.

The classes are nnkit's (:mod:`nnkit.training.callbacks`, which already follows Keras's hook
list and ``stop_training`` flag) with Keras's constructor arguments. ``Sequential.fit`` hands
every callback Keras's log names: ``acc``/``val_acc`` next to nnkit's ``accuracy``/
``val_accuracy`` (see :func:`keras_logs`), so ``monitor='val_acc'`` and ``logs['acc']`` work.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from ..training import callbacks as _nn
from ..training.callbacks import CSVLogger, History, LearningRateScheduler, TerminateOnNaN

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "LambdaCallback",
           "TerminateOnNaN", "CSVLogger", "LearningRateScheduler", "ReduceLROnPlateau",
           "keras_logs"]

#: nnkit log name -> Keras's (History keys, callback logs).
ALIASES = {"accuracy": "acc", "val_accuracy": "val_acc"}


def keras_logs(logs: dict[str, Any] | None) -> dict[str, Any] | None:
    """A copy of ``logs`` with Keras's names added next to nnkit's (both are kept)."""
    if logs is None:
        return None
    out = dict(logs)
    for name, alias in ALIASES.items():
        if name in out:
            out[alias] = out[name]
    return out


class Callback(_nn.Callback):
    """Keras's callback base: nnkit's hooks, plus ``params`` and ``set_model``/``set_params``
    (``self.model`` is the model being trained, as in Keras)."""

    params: dict[str, Any] = {}
    _keras_model: Any = None

    @property
    def model(self) -> Any:
        """The Keras model being trained (the nnkit model when used without one)."""
        return self._keras_model if self._keras_model is not None else self.trainer.model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = dict(params)

    def set_model(self, model: Any) -> None:
        self._keras_model = model


class EarlyStopping(_nn.EarlyStopping):
    """``keras.callbacks.EarlyStopping(monitor='val_loss', min_delta=0, patience=0, verbose=0,
    mode='auto', baseline=None, restore_best_weights=False)``; ``baseline`` is not supported."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0, patience: int = 0,
                 verbose: int = 0, mode: str = "auto", baseline: float | None = None,
                 restore_best_weights: bool = False) -> None:
        if baseline is not None:
            raise ValueError("EarlyStopping: baseline is not supported")
        super().__init__(monitor, min_delta, patience, mode, restore_best_weights)
        self.verbose = verbose

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_end(logs)
        if self.verbose and self.stopped_epoch is not None:
            print(f"Epoch {self.stopped_epoch + 1:05d}: early stopping")


class ModelCheckpoint(_nn.ModelCheckpoint):
    """``keras.callbacks.ModelCheckpoint(filepath, monitor='val_loss', verbose=0,
    save_best_only=False, save_weights_only=False, mode='auto', period=1)``.

    Each save is nnkit's full checkpoint (HDF5, ``keras.models.load_model`` reads it), also
    with ``save_weights_only``: the extra training state costs little and lets a run resume.
    """

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, save_weights_only: bool = False,
                 mode: str = "auto", period: int = 1) -> None:
        super().__init__(filepath, monitor, save_best_only, mode, every_n_epochs=period)
        self.verbose = verbose
        self.save_weights_only = save_weights_only


class ReduceLROnPlateau(_nn.ReduceLROnPlateau):
    """``keras.callbacks.ReduceLROnPlateau(monitor='val_loss', factor=0.1, patience=10,
    verbose=0, mode='auto', min_delta=1e-4, cooldown=0, min_lr=0)``."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 verbose: int = 0, mode: str = "auto", min_delta: float = 1e-4,
                 cooldown: int = 0, min_lr: float = 0.0) -> None:
        super().__init__(monitor, factor, patience, mode, min_delta, cooldown, min_lr)
        self.verbose = verbose


_HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
          "on_batch_begin", "on_batch_end")


class LambdaCallback(Callback):
    """``keras.callbacks.LambdaCallback``: functions for the hooks, ``on_epoch_end(epoch,
    logs)``, ``on_batch_end(batch, logs)``, ``on_train_begin(logs)``..."""

    def __init__(self, **hooks: Callable[..., Any] | None) -> None:
        unknown = set(hooks) - set(_HOOKS)
        if unknown:
            raise TypeError(f"LambdaCallback: unknown hook(s) {', '.join(sorted(unknown))}")
        for hook, fn in hooks.items():
            if fn is not None:
                setattr(self, hook, fn)


class KerasLogs(_nn.Callback):
    """Wraps a callback so that it sees Keras's log names (:func:`keras_logs`)."""

    def __init__(self, inner: _nn.Callback, params: dict[str, Any], model: Any) -> None:
        if not isinstance(inner, _nn.Callback):
            raise TypeError(f"callbacks must be keras.callbacks.Callback objects, got "
                            f"{type(inner).__name__}")
        self.inner = inner
        if isinstance(inner, Callback):
            inner.set_params(params)
            inner.set_model(model)

    def set_trainer(self, trainer: Any) -> None:
        self.trainer = trainer
        self.inner.set_trainer(trainer)

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):
            hook = getattr(object.__getattribute__(self, "inner"), name)

            def call(*args: Any) -> None:
                if args and isinstance(args[-1], dict):
                    args = (*args[:-1], keras_logs(args[-1]))
                hook(*args)
            return call
        return object.__getattribute__(self, name)
