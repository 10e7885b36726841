"""Loss and metric layers: they read two sources, the predictions and the labels.

``Loss`` computes a batch-mean loss (softmax cross-entropy, Caffe's Euclidean loss or Keras's
mean squared error), its
gradient with respect to the predictions, and keeps running means for ``display()``.
``Accuracy`` computes a top-k accuracy and sends no gradient.

A final softmax is folded into the criterion: given an ``Activation('softmax')`` over
``(N, K)`` scores as the prediction layer, ``Loss`` (softmax cross-entropy) and ``Accuracy``
read the softmax's *input*, so softmax and cross-entropy are computed once, from the logits,
with the log-sum-exp trick, instead of a second softmax over probabilities (which squashes the
gradient and trained at chance level). The loss then sends its gradient straight to the
softmax's source, and the softmax layer's ``ComputeGradient`` passes (nothing is left for it
to do); its ``data`` still holds the probabilities that ``predict`` returns.

Labels are class indices ``(N,)`` or ``(N, 1)``, or one-hot rows ``(N, K)``.

Top-k convention (the one of ``tf.math.in_top_k`` and Keras ``top_k_categorical_accuracy``):
a row is a hit when fewer than ``k`` scores are strictly greater than the label's score, so
ties at the boundary count in the label's favour. With ``k = 1`` this is "the label's score
is a maximum"; it differs from ``argmax == label`` only on exact ties. A NaN label score is
never a hit.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._kernels import softmax as kernels
from ..means import RunningMeans
from .activation import Activation
from .base import Layer
from .input import one_hot_indices

LOSSES = ("softmaxloss", "euclideanloss", "mse")


class _Criterion(Layer):
    """What Loss and Accuracy share: two sources, (N, K) scores, validated class labels.

    Neither has parameters, so a change of per-example shape or dtype simply rebuilds the
    layer (buffers reallocate) instead of being an error.
    """

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """A criterion reduces the whole batch to one number: its ``data`` is 0-d."""
        return ()

    def folds(self, layer: Layer, input_shape: tuple[int, ...] | None = None) -> bool:
        """Whether this criterion reads ``layer``'s input instead of its output: ``layer`` is
        a softmax over the classes of ``(N, K)`` scores (per-example ``input_shape`` (K,),
        by default the one ``layer`` was built for) and the criterion takes logits."""
        shape = layer.input_shape if input_shape is None else input_shape
        return (isinstance(layer, Activation) and layer.activation == "softmax"
                and shape is not None and len(shape) == 1 and self._takes_logits())

    def _takes_logits(self) -> bool:
        return True

    def _scores(self, prediction_layer: Layer, label_layer: Layer | None) -> np.ndarray:
        """Checks both sources, records them as ``srcs``; returns the predictions as (N, D).

        For a folded softmax (:meth:`folds`) the source recorded, and read, is the softmax's
        own source: the logits.
        """
        if (isinstance(prediction_layer, Layer) and prediction_layer.srcs
                and self.folds(prediction_layer)):
            prediction_layer.folded_into = self
            prediction_layer = prediction_layer.srcs[0]
        if label_layer is None:
            raise self.error("ComputeFeature takes two sources, the prediction layer and the "
                             "label layer; the label layer is missing", TypeError)
        for role, src in (("prediction", prediction_layer), ("label", label_layer)):
            if not isinstance(src, Layer):
                raise self.error(f"the {role} source must be a Layer, got {type(src).__name__}",
                                 TypeError)
            if src.data is None:
                raise self.error(f"{role} layer {src.describe()} has no data: it was never "
                                 f"computed or fed", RuntimeError)
        p = np.asarray(prediction_layer.data)
        if p.ndim < 2 or p.shape[0] == 0 or p[0].size == 0:
            raise self.error(f"predictions from {prediction_layer.describe()} have shape "
                             f"{p.shape}; expected (batch, classes) or (batch, C, H, W)")
        if not self.built or p.shape[1:] != self.input_shape or p.dtype != self.dtype:
            self.build(p.shape[1:], p.dtype)
        self.srcs = (prediction_layer, label_layer)
        self.grad = None
        return np.ascontiguousarray(p).reshape(p.shape[0], -1)

    def _class_labels(self, label_layer: Layer, scores: np.ndarray) -> np.ndarray:
        """The labels as int64 (N,) in the layer's own buffer, checked to be in [0, K)."""
        raw = np.asarray(label_layer.data)
        n, k = scores.shape
        where = f"predictions of shape {self.srcs[0].data.shape} ({n} rows of {k} classes)"
        classes = getattr(label_layer, "classes", None)  # a LabelInput fed one-hot rows
        if raw.ndim == 2 and raw.shape[1] > 1:  # one-hot rows fed to a plain layer
            classes, raw = raw.shape[1], one_hot_indices(raw, self.describe())
        if classes is not None and classes != k:
            raise self.error(f"one-hot labels from {label_layer.describe()} have {classes} "
                             f"columns, for {where}")
        if raw.size != n:
            raise self.error(f"got {raw.size} labels (shape {raw.shape}) from "
                             f"{label_layer.describe()} for {where}")
        raw = raw.reshape(-1)
        if raw.dtype.kind == "f":
            # Labels read from text files are often floats; whole numbers are fine.
            whole = np.isfinite(raw) & (raw == np.round(raw))
            if not whole.all():
                bad = int(np.argmin(whole))
                raise self.error(f"label {raw[bad]} at index {bad} from {label_layer.describe()} "
                                 f"is not a whole number")
        elif raw.dtype.kind not in "iub":
            raise self.error(f"labels from {label_layer.describe()} must be integers, got dtype "
                             f"{raw.dtype}", TypeError)
        outside = (raw < 0) | (raw >= k)
        if outside.any():
            bad = int(np.argmax(outside))
            raise self.error(f"label {raw[bad]} at index {bad} from {label_layer.describe()} is "
                             f"out of range [0, {k}) for {where}")
        labels = self.buffer("labels", (n,), np.int64)
        np.copyto(labels, raw, casting="unsafe")  # whole numbers in range: exact
        return labels

    def _set_output(self, value: float) -> np.ndarray:
        """Stores ``value`` as the 0-d ``data`` array."""
        out = self.buffer("value", ())
        out[...] = value
        self.data = out
        return out


class Loss(_Criterion):
    """A loss over a batch: ``ComputeFeature(prediction_layer, label_layer)``.

    ``lossname`` is ``'softmaxloss'`` (softmax cross-entropy; labels are class indices in
    ``[0, K)`` or one-hot rows; a prediction layer that is itself a softmax is folded in, see
    the module docstring) or ``'euclideanloss'`` (Caffe's ``1/(2N) * sum((p - t)^2)``; the target ``t``
    is the label layer's data as floats, with as many values per row as the predictions) or
    ``'mse'`` (Keras's mean squared error, ``sum((p - t)^2) / (N*D)`` for ``D`` values per row,
    the same targets).
    Predictions are ``(N, K)``; 4-D ``(N, C, H, W)`` ones are flattened to ``(N, C*H*W)``.

    After ``ComputeFeature``: ``loss`` (float, batch mean), ``accuracy`` (top-1 float, None
    for the Euclidean loss) and ``data`` (the loss as a 0-d array). ``ComputeGradient()`` sets
    ``prediction_layer.grad`` (shaped like its data): ``(softmax(p) - onehot) / N``, ``(p - t) / N``
    or ``2 (p - t) / (N*D)``. ``display()`` prints and returns the running means since the last call.
    """

    def __init__(self, lossname: str = "softmaxloss", name: str | None = None) -> None:
        super().__init__(name)
        if lossname not in LOSSES:
            raise self.error(f"unknown loss {lossname!r}; expected one of {', '.join(LOSSES)}")
        self.lossname = lossname
        self.loss: float | None = None
        self.accuracy: float | None = None
        self._reset_running()

    def get_config(self) -> dict[str, Any]:
        return {"lossname": self.lossname, "name": self.name}

    def _takes_logits(self) -> bool:
        return self.lossname == "softmaxloss"  # squared errors compare the probabilities

    def _reset_running(self) -> None:
        self._running = RunningMeans(keys=("loss", "accuracy"))  # since the last display

    def ComputeFeature(self, prediction_layer: Layer,  # type: ignore[override]
                       label_layer: Layer | None = None) -> np.ndarray:
        """Computes the batch loss (and top-1 accuracy) of ``prediction_layer`` against labels."""
        scores = self._scores(prediction_layer, label_layer)
        n = scores.shape[0]
        if self.lossname == "softmaxloss":
            labels = self._class_labels(label_layer, scores)
            self._probs = self.buffer("probs", scores.shape)
            loss_sum, hits = kernels.softmax_loss_forward(scores, labels, self._probs)
            self._labels = labels
            self.accuracy = hits / n
        else:
            self._diff = self.buffer("diff", scores.shape)
            np.subtract(scores, self._targets(label_layer, scores), out=self._diff)
            # Caffe's Euclidean loss halves the sum of squares; Keras's mse averages it over
            # the values of a row as well (its gradient is twice the mean difference).
            squares = float(np.vdot(self._diff, self._diff))
            loss_sum = 0.5 * squares if self.lossname == "euclideanloss" else squares / scores.shape[1]
            self.accuracy = None
        self.loss = loss_sum / n
        self._running.add_row(n, self.loss, self.accuracy)
        return self._set_output(self.loss)

    def _targets(self, label_layer: Layer, scores: np.ndarray) -> np.ndarray:
        """The Euclidean target as an (N, D) array of the layer's dtype (its own buffer)."""
        raw = np.asarray(label_layer.data)
        n, d = scores.shape
        if raw.size != scores.size or raw.ndim == 0 or raw.shape[0] != n:
            raise self.error(f"target of shape {raw.shape} from {label_layer.describe()} does not "
                             f"match predictions of shape {self.srcs[0].data.shape}: need {n} rows "
                             f"of {d} values")
        if raw.dtype.kind not in "fiub":
            raise self.error(f"target from {label_layer.describe()} must be numbers, got dtype "
                             f"{raw.dtype}", TypeError)
        target = self.buffer("target", scores.shape)
        np.copyto(target, raw.reshape(n, d), casting="unsafe")
        return target

    def ComputeGradient(self) -> None:
        """Sets the prediction layer's ``grad``: d(batch-mean loss) / d(predictions)."""
        if self.data is None or not self.srcs:
            raise self.error("ComputeGradient called before ComputeFeature", RuntimeError)
        prediction_layer = self.srcs[0]
        if not prediction_layer.accepts_grad:
            return
        shape = prediction_layer.data.shape
        dx = self.input_grad_buffer(shape)
        dx2 = dx.reshape(shape[0], -1)
        scale = 1.0 / shape[0]
        if self.lossname == "softmaxloss":
            kernels.softmax_loss_backward(self._probs, self._labels, scale, dx2)
        else:
            if self.lossname == "mse":
                scale *= 2.0 / dx2.shape[1]
            np.multiply(self._diff, scale, out=dx2)
        prediction_layer.grad = dx

    def display(self) -> tuple[float | None, float | None]:
        """Prints ``loss = ..., accuracy = ...``, the means since the last display weighted
        by batch size, returns them as ``(loss, accuracy)`` and resets them.

        The accuracy is None for the Euclidean and mse losses (only the loss is printed). With no
        batch since the last display, prints so and returns ``(None, None)``.
        """
        if self._running.count == 0:
            print(f"{self.describe()}: no batch since the last display")
            return None, None
        means = self._running.means()
        loss, accuracy = means["loss"], means.get("accuracy")
        self._reset_running()
        if accuracy is None:
            print(f"loss = {loss:.4f}")
        else:
            print(f"loss = {loss:.4f}, accuracy = {accuracy:.4f}")
        return loss, accuracy


class Accuracy(_Criterion):
    """Top-k accuracy: ``ComputeFeature(prediction_layer, label_layer)`` sets ``accuracy``.

    ``accuracy`` is the fraction of rows whose label is among the ``topk`` highest scores,
    ties in the label's favour (see the module docstring); ``data`` holds it as a 0-d array.
    Accuracy is not differentiable: ``ComputeGradient`` does nothing.
    """

    def __init__(self, topk: int = 1, name: str | None = None) -> None:
        super().__init__(name)
        if int(topk) != topk or topk < 1:
            raise self.error(f"topk must be a positive integer, got {topk!r}")
        self.topk = int(topk)
        self.accuracy: float | None = None

    def get_config(self) -> dict[str, Any]:
        return {"topk": self.topk, "name": self.name}

    def ComputeFeature(self, prediction_layer: Layer,  # type: ignore[override]
                       label_layer: Layer | None = None) -> np.ndarray:
        """Computes the top-k accuracy of ``prediction_layer`` against the labels."""
        scores = self._scores(prediction_layer, label_layer)
        n, k = scores.shape
        if self.topk > k:
            raise self.error(f"topk={self.topk} exceeds the {k} classes of predictions of shape "
                             f"{prediction_layer.data.shape}")
        labels = self._class_labels(label_layer, scores)
        self.accuracy = kernels.topk_hits(scores, labels, self.topk) / n
        return self._set_output(self.accuracy)

    def ComputeGradient(self) -> None:
        """Nothing to do: accuracy sends no gradient to the prediction layer."""
