"""Keras 2.2.4's optimizers (keras/optimizers.py at tag 2.2.4) as nnkit updaters.

Same names, arguments and defaults; each returns the nnkit updater with the same update rule
(:mod:`nnkit.updaters`, which documents the formulas). ``epsilon=None`` is Keras's
``K.epsilon()``, 1e-7. Keras's ``decay`` is a learning-rate decay, ``lr / (1 + decay * t)``:
nnkit's ``inverse_t`` schedule with ``change_freq = 1 / decay`` (nnkit's ``decay`` is weight
decay, which Keras's optimizers do not have); nnkit counts the first update as step 1 where
Keras counts it as 0, so the decayed rate runs one update ahead. ``clipnorm``/``clipvalue`` are nnkit's
``clip_norm``/``clip_value``.

One difference: Keras's Adam adds epsilon to ``sqrt(v)`` before the bias correction, nnkit's
(the paper's) to ``sqrt(v_hat)``; with epsilon at 1e-7 the steps differ only where
``sqrt(v_hat)`` is itself near 1e-7.
"""
from __future__ import annotations

from typing import Any

from .. import updaters
from .backend import epsilon as _default_epsilon

__all__ = ["SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "Optimizer", "get"]

Optimizer = updaters.Updater


def _common(lr: float, decay: float, epsilon: float | None, kwargs: dict[str, Any],
            where: str) -> dict[str, Any]:
    """nnkit updater arguments for Keras's lr, decay, clipnorm and clipvalue (and epsilon)."""
    args: dict[str, Any] = {"lr": lr}
    if kwargs.get("learning_rate") is not None:  # the later Keras spelling
        args["lr"] = kwargs.pop("learning_rate")
    if decay:
        if decay < 0:
            raise ValueError(f"{where}: decay must be >= 0, got {decay!r}")
        args.update(lr_type="inverse_t", change_freq=1.0 / decay)
    for keras_name, name in (("clipnorm", "clip_norm"), ("clipvalue", "clip_value")):
        if kwargs.get(keras_name) is not None:
            args[name] = kwargs.pop(keras_name)
    kwargs.pop("learning_rate", None)
    if kwargs:
        raise TypeError(f"{where}: unsupported argument(s) {', '.join(sorted(kwargs))}")
    if epsilon is not None or where != "SGD":
        args["epsilon"] = _default_epsilon() if epsilon is None else epsilon
    return args


def SGD(lr: float = 0.01, momentum: float = 0.0, decay: float = 0.0, nesterov: bool = False,
        **kwargs: Any) -> updaters.Updater:
    """``keras.optimizers.SGD``: nnkit's ``SGD`` (or ``Nesterov`` with ``nesterov=True``).

    Keras's ``v = m*v - lr*g; w += v`` is nnkit's (Caffe's) ``v = m*v + lr*g; w -= v``.
    """
    args = _common(lr, decay, None, kwargs, "SGD")
    cls = updaters.Nesterov if nesterov else updaters.SGD
    return cls(momentum=momentum, **args)


def RMSprop(lr: float = 0.001, rho: float = 0.9, epsilon: float | None = None,
            decay: float = 0.0, **kwargs: Any) -> updaters.Updater:
    """``keras.optimizers.RMSprop``: nnkit's ``RMSProp`` with Keras's lr 0.001 (nnkit's own
    default is 0.01)."""
    return updaters.RMSProp(rho=rho, **_common(lr, decay, epsilon, kwargs, "RMSprop"))


def Adagrad(lr: float = 0.01, epsilon: float | None = None, decay: float = 0.0,
            **kwargs: Any) -> updaters.Updater:
    """``keras.optimizers.Adagrad``: nnkit's ``AdaGrad``."""
    return updaters.AdaGrad(**_common(lr, decay, epsilon, kwargs, "Adagrad"))


def Adadelta(lr: float = 1.0, rho: float = 0.95, epsilon: float | None = None,
             decay: float = 0.0, **kwargs: Any) -> updaters.Updater:
    """``keras.optimizers.Adadelta``: nnkit's ``AdaDelta``."""
    return updaters.AdaDelta(rho=rho, **_common(lr, decay, epsilon, kwargs, "Adadelta"))


def Adam(lr: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
         epsilon: float | None = None, decay: float = 0.0, amsgrad: bool = False,
         **kwargs: Any) -> updaters.Updater:
    """``keras.optimizers.Adam``: nnkit's ``Adam`` (see the module docstring on epsilon)."""
    if amsgrad:
        raise ValueError("Adam: amsgrad=True is not supported")
    return updaters.Adam(beta1=beta_1, beta2=beta_2, **_common(lr, decay, epsilon, kwargs, "Adam"))


_BY_NAME = {"sgd": SGD, "rmsprop": RMSprop, "adagrad": Adagrad, "adadelta": Adadelta, "adam": Adam}


def get(identifier: Any) -> updaters.Updater:
    """An updater from an optimizer object (any nnkit updater) or a Keras name ('rmsprop')."""
    if isinstance(identifier, updaters.Updater):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(f"unknown optimizer {identifier!r}; use an optimizer object or one of "
                     f"{', '.join(repr(n) for n in _BY_NAME)}")
