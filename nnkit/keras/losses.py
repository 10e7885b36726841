"""Keras's loss names (keras/losses.py, 2.2.4) and the nnkit loss each one compiles to.

``categorical_crossentropy`` (one-hot labels) and ``sparse_categorical_crossentropy`` (class
indices) are nnkit's ``softmaxloss``: softmax cross-entropy on the scores, with a final
``Activation('softmax')`` folded in (:mod:`nnkit.layers.loss`), so it is computed once from
the logits; Keras computes it from the probabilities, the same value and gradient up to
rounding except in one case: Keras clips the probabilities to ``[1e-7, 1 - 1e-7]``
(keras/backend/tensorflow_backend.py), so an example whose label's probability lies outside
that range sends no gradient (and its loss is capped at ``-log(1e-7)``, about 16.1), where
nnkit's sends ``(p - onehot) / N``. Above ``1 - 1e-7`` that is below ``1e-7 / N`` per score;
below 1e-7 (a confidently wrong example) it is not small, but such examples are rare: at most
2 of 60,000 per epoch in the convnet example's training (benchmarks/KERAS.md).
``mean_squared_error``/``mse`` is nnkit's ``mse`` loss, Keras's mean of the squared errors
(not Caffe's ``euclideanloss``, half their sum per example). The functions here are names for
``compile(loss=...)``.
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["categorical_crossentropy", "sparse_categorical_crossentropy", "mean_squared_error",
           "mse", "get"]


def _named(name: str) -> Callable[..., Any]:
    def loss(y_true: Any, y_pred: Any) -> Any:
        raise TypeError(f"nnkit.keras.losses.{name} names a loss for compile(loss=...); it "
                        f"is not a tensor function")
    loss.__name__ = name
    return loss


categorical_crossentropy = _named("categorical_crossentropy")
sparse_categorical_crossentropy = _named("sparse_categorical_crossentropy")
mean_squared_error = _named("mean_squared_error")
mse = mean_squared_error

#: Keras loss name -> nnkit ``Loss`` name.
_NNKIT = {"categorical_crossentropy": "softmaxloss", "sparse_categorical_crossentropy": "softmaxloss",
          "mean_squared_error": "mse", "mse": "mse"}


def get(identifier: Any) -> str:
    """The nnkit loss name for a Keras loss name or one of this module's functions."""
    name = getattr(identifier, "__name__", identifier)
    if name not in _NNKIT:
        raise ValueError(f"unsupported loss {identifier!r}; use one of {', '.join(_NNKIT)}")
    return _NNKIT[name]
