"""``keras.models``: ``Sequential`` and ``load_model`` over nnkit's ``Sequential``.

The model *is* an nnkit model (its layers, updater, Trainer, checkpoints), with Keras 2.2.4's
methods on top (keras/engine/training.py, sequential.py at tag 2.2.4):

* ``add`` turns a layer's ``activation=`` into an ``Activation`` layer after it and takes the
  first layer's ``input_shape``; ``padding='same'`` is settled at build (``_settle``);
* ``compile`` takes Keras's loss names and optimizer names or objects; ``metrics=['accuracy']``
  (or ``'acc'``) is top-1 accuracy, logged as ``acc`` (and ``accuracy``);
* ``fit`` returns a ``History`` of this call's epochs with Keras's keys (``loss``, ``acc``,
  ``val_loss``, ``val_acc``; ``accuracy``/``val_accuracy`` too); ``validation_split`` takes the
  *last* fraction of the data, before shuffling, as Keras does;
* ``evaluate`` returns ``loss`` alone without metrics, else ``[loss, acc]`` (a dict with
  ``return_dict=True``); ``predict`` returns the last layer's output (probabilities after a
  final softmax, which the loss folds in while training);
* image arrays are channels last, ``(N, H, W, C)``, converted to nnkit's NCHW once per call;
* ``get_weights``/``set_weights`` use Keras's layouts: Dense kernel ``(in, out)`` (its rows in
  Keras's (H, W, C) order after a ``Flatten`` of images), Conv2D kernel ``(kh, kw, in, out)``,
  BatchNormalization ``[gamma, beta, moving_mean, moving_variance]``.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np

from .. import layers as _layers
from ..config import load as _load
from ..model import Sequential as _Sequential
from . import callbacks as _callbacks, losses as _losses, optimizers as _optimizers

__all__ = ["Sequential", "load_model"]


def _channels_first_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape


def _nchw(x: Any) -> np.ndarray:
    """A channels-last batch of images (N, H, W, C) as NCHW float arrays; other ranks as they are."""
    x = np.asarray(x)
    if x.dtype.kind in "iub":
        x = x.astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after) for one axis: output ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Sequential:
    """``keras.models.Sequential(layers=None, name=None)``: see the module docstring.

    It holds an nnkit ``Sequential`` (:attr:`nnkit_model`), which nnkit's Trainer drives with
    nnkit's own contract; other attributes (``layers``, ``updater``, ``trainer``, ``built``...)
    are that model's.
    """

    def __init__(self, layers: Sequence[_layers.Layer] | None = None, name: str | None = None) -> None:
        # Keras scripts seed with np.random.seed(...): the model's seed is drawn from it.
        self.nnkit_model = _Sequential(name=name or "sequential",
                                       seed=int(np.random.randint(2**31 - 1)))
        for layer in layers or []:
            self.add(layer)

    def __getattr__(self, name: str) -> Any:
        if name == "nnkit_model":  # not set yet (unpickling, a failed __init__)
            raise AttributeError(name)
        return getattr(self.nnkit_model, name)

    @property
    def stop_training(self) -> bool:
        """Set by a callback to end ``fit`` after the current batch."""
        return self.nnkit_model.stop_training

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        self.nnkit_model.stop_training = bool(value)

    # ------------------------------------------------------------------ building
    def add(self, layer: _layers.Layer) -> None:
        """Appends ``layer``, then its ``activation=`` as an Activation layer."""
        model = self.nnkit_model
        if not isinstance(layer, _layers.Layer):
            raise TypeError(f"Sequential.add takes a layer, got {type(layer).__name__}")
        shape = getattr(layer, "keras_input_shape", None)
        if shape is not None and not model.layers:
            model.input_shape = _channels_first_shape(shape)
        model.add(layer)
        activation = getattr(layer, "keras_activation", None)
        if activation is not None:
            model.add(_layers.Activation(activation))

    def build(self, input_shape: Sequence[int] | None = None) -> None:
        """Settles 'same' padding and Keras's shape rules for the input shape (channels last,
        by default the first layer's), then builds the nnkit model."""
        model = self.nnkit_model
        if model.built:
            return
        shape = model.input_shape if input_shape is None else _channels_first_shape(input_shape)
        if not shape:
            raise ValueError(f"{model.name}: the input shape is unknown: give the first layer "
                             f"input_shape=")
        self._settle(tuple(shape))
        model.build(shape)

    def _ready(self, x: np.ndarray) -> None:
        """Builds for the (NCHW) batch ``x`` unless built."""
        if not self.nnkit_model.built:
            shape = self.nnkit_model.input_shape or x.shape[1:]
            self._settle(tuple(shape))
            self.nnkit_model.build(shape)

    def _settle(self, shape: tuple[int, ...], keras_rules: bool = True) -> None:
        """One walk over the layers for what needs the input shape (nnkit's CHW order): the
        'same' paddings and Keras's Dense rule (``keras_rules``), and which Dense layers read
        a flattened image (the row order of their Keras kernel)."""
        layers, flattened = [], None
        for layer in self.nnkit_model.layers:
            padding = getattr(layer, "keras_padding", "valid")
            if not keras_rules:
                pass
            elif isinstance(layer, _layers.Convolution2D) and padding == "same":
                pads = [_same_pads(n, k, s) for n, k, s in zip(shape[1:], layer.kernel, layer.stride)]
                layer.pad = (pads[0][0], pads[1][0])
                extra = tuple(after - before for before, after in pads)
                if any(extra):  # the odd pixel goes at the bottom and right, as in TensorFlow
                    pad = _layers.ZeroPadding2D(((0, extra[0]), (0, extra[1])))
                    layers.append(pad)
                    shape = pad.output_shape(shape)
            elif isinstance(layer, (_layers.MaxPooling2D, _layers.AvgPooling2D)) and padding == "same":
                pads = [_same_pads(n, k, s) for n, k, s in zip(shape[1:], layer.pool_size, layer.stride)]
                if any(before for before, _ in pads):
                    raise ValueError(f"{layer.describe()}: padding='same' for input {shape} pads "
                                     f"{pads} (before, after) per axis; only padding after the "
                                     f"image (ceil mode) is supported")
                layer.ceil_mode = True  # windows clipped at the edge: TensorFlow's 'same' here
            elif getattr(layer, "keras_axis", -1) not in (-1, len(shape)):
                raise ValueError(f"{layer.describe()}: axis={layer.keras_axis} for input {shape} "
                                 f"(channels last); only the channel axis (-1) is supported")
            elif isinstance(layer, _layers.Dense) and len(shape) != 1:
                raise ValueError(f"{layer.describe()}: input of shape {shape}; Keras's Dense acts "
                                 f"on the last axis of such an input: add Flatten() before it")
            if isinstance(layer, _layers.Flatten):
                flattened = shape if len(shape) == 3 else None
            elif isinstance(layer, _layers.Dense):
                layer.keras_flattened = flattened  # the image shape its rows come from, if any
                flattened = None
            elif layer.params:
                flattened = None
            layers.append(layer)
            shape = layer.output_shape(shape)
        self.nnkit_model.layers = layers

    def summary(self, print_fn: Any = print) -> None:
        """nnkit's summary (shapes in nnkit's NCHW order; a folded softmax is named)."""
        self.build()
        self.nnkit_model.summary(print_fn)

    # ------------------------------------------------------------------ compile and train
    def compile(self, optimizer: Any, loss: Any = None, metrics: Sequence[Any] | None = None,
                loss_weights: Any = None, sample_weight_mode: Any = None,
                weighted_metrics: Any = None, **kwargs: Any) -> None:
        """Keras's ``compile``: optimizer object or name, loss name, ``metrics=['accuracy']``."""
        if loss is None:
            raise ValueError("compile: give loss= (e.g. 'categorical_crossentropy')")
        given = {"loss_weights": loss_weights, "sample_weight_mode": sample_weight_mode,
                 "weighted_metrics": weighted_metrics, **kwargs}
        unsupported = sorted(k for k, v in given.items() if v is not None)
        if unsupported:
            raise TypeError(f"compile: unsupported argument(s) {', '.join(unsupported)}")
        lossname = _losses.get(loss)
        names = []
        for metric in metrics or []:
            name = getattr(metric, "__name__", metric)
            if name not in ("accuracy", "acc"):
                raise ValueError(f"compile: metric {metric!r} is not supported (use 'accuracy')")
            if lossname != "softmaxloss":
                raise ValueError(f"compile: metric {metric!r} needs a cross-entropy loss, not {loss!r}")
            names.append("accuracy")
        self.nnkit_model.compile(_optimizers.get(optimizer), lossname, names)

    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: int = 1, callbacks: Sequence[Any] | None = None,
            validation_split: float = 0.0, validation_data: Any = None, shuffle: Any = True,
            class_weight: Any = None, sample_weight: Any = None, initial_epoch: int = 0,
            steps_per_epoch: int | None = None, validation_steps: int | None = None,
            **kwargs: Any) -> _callbacks.History:
        """Keras's ``fit``: trains ``epochs`` more epochs, returns this call's History."""
        if "nb_epoch" in kwargs:  # Keras 1's name, which Keras 2.2.4 still takes with a warning
            warnings.warn("fit: nb_epoch is called epochs in Keras 2", stacklevel=2)
            epochs = kwargs.pop("nb_epoch")
        if kwargs:
            raise TypeError(f"fit: unsupported argument(s) {', '.join(sorted(kwargs))}")
        for name, value in (("class_weight", class_weight), ("sample_weight", sample_weight),
                            ("steps_per_epoch", steps_per_epoch), ("validation_steps", validation_steps)):
            if value is not None:
                raise ValueError(f"fit: {name} is not supported")
        if initial_epoch:
            raise ValueError("fit: initial_epoch is not supported (fit again to continue training)")
        x, y = _nchw(x), np.asarray(y)
        if validation_data is not None:
            if len(validation_data) == 3 and validation_data[2] is not None:
                raise ValueError("fit: validation sample weights are not supported")
            validation_data = (_nchw(validation_data[0]), np.asarray(validation_data[1]))
        elif validation_split:
            if not 0.0 < validation_split < 1.0:
                raise ValueError(f"fit: validation_split must be in (0, 1), got {validation_split}")
            split_at = int(len(x) * (1.0 - validation_split))  # Keras: the last part, unshuffled
            x, y, validation_data = x[:split_at], y[:split_at], (x[split_at:], y[split_at:])
        batch_size = batch_size or 32
        params = {"epochs": epochs, "batch_size": batch_size, "samples": len(x),
                  "verbose": verbose, "do_validation": validation_data is not None,
                  "metrics": ["loss", "acc"] + (["val_loss", "val_acc"] if validation_data else [])}
        wrapped = [_callbacks.KerasLogs(cb, params, self) for cb in callbacks or []]
        self._ready(x)
        model = self.nnkit_model
        seen = len(model.trainer_for_fit().history.epoch)
        model.fit(x, y, batch_size=batch_size, epochs=epochs, validation_data=validation_data,
                  shuffle=bool(shuffle), callbacks=wrapped, verbose=verbose)
        done = model.trainer.history
        history = _callbacks.History()
        for i, epoch in enumerate(done.epoch[seen:], start=seen):
            logs = {k: v[i] for k, v in done.history.items() if len(v) > i and k != "lr"}
            history.on_epoch_end(epoch, _callbacks.keras_logs(logs))
        history.params = params
        return history

    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None,
                 verbose: int = 1, sample_weight: Any = None, steps: int | None = None,
                 return_dict: bool = False) -> Any:
        """Keras's ``evaluate``: the loss, or ``[loss, acc]`` with metrics (a dict with
        ``return_dict=True``, keyed ``loss`` and ``acc``)."""
        if sample_weight is not None or steps is not None:
            raise ValueError("evaluate: sample_weight and steps are not supported")
        x = _nchw(x)
        self._ready(x)
        logs = self.nnkit_model.evaluate(x, np.asarray(y), batch_size=batch_size or 32)
        values = {"loss": logs["loss"]}
        for name, _ in self.nnkit_model.metrics:
            values[_callbacks.ALIASES.get(name, name)] = logs[name]
        if return_dict:
            return values
        return values["loss"] if len(values) == 1 else list(values.values())

    def predict(self, x: Any, batch_size: int | None = None, verbose: int = 0,
                steps: int | None = None) -> np.ndarray:
        """The last layer's output for every example (probabilities after a final softmax)."""
        if steps is not None:
            raise ValueError("predict: steps is not supported")
        x = _nchw(x)
        self._ready(x)
        return self.nnkit_model.predict(x, batch_size=batch_size or 32)

    def predict_classes(self, x: Any, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        """The index of the highest output per example (Keras 2.2.4's Sequential has it)."""
        return np.argmax(self.predict(x, batch_size), axis=-1)

    def train_on_batch(self, x: Any, y: Any) -> Any:
        """One update on one batch; Keras's return form (the loss, or ``[loss, acc]``)."""
        x = _nchw(x)
        self._ready(x)
        logs = self.nnkit_model.train_on_batch(x, np.asarray(y))
        values = [logs["loss"]] + [logs[name] for name, _ in self.nnkit_model.metrics]
        return values[0] if len(values) == 1 else values

    # ------------------------------------------------------------------ weights
    def get_weights(self) -> list[np.ndarray]:
        """Every layer's arrays in Keras's layout and order (module docstring)."""
        self.build()
        return [np.array(a) for layer in self.nnkit_model.layers for a in _to_keras(layer)]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Sets every layer's arrays from a list in Keras's layout (shape-checked)."""
        self.build()
        weights = list(weights)
        layers = self.nnkit_model.layers
        expected = sum(len(_to_keras(layer)) for layer in layers)
        if len(weights) != expected:
            raise ValueError(f"{self.nnkit_model.name}: set_weights got {len(weights)} arrays, "
                             f"the model has {expected} (Keras's layout)")
        for layer in layers:
            count = len(_to_keras(layer))
            if count:
                _from_keras(layer, weights[:count])
                weights = weights[count:]

    # ------------------------------------------------------------------ files
    def save(self, filepath: str | os.PathLike, overwrite: bool = True,
             include_optimizer: bool = True) -> None:
        """nnkit's checkpoint (HDF5): model, weights, optimizer and training state."""
        if not overwrite and os.path.exists(filepath):
            raise FileExistsError(f"save: {filepath} exists and overwrite=False")
        self.build()
        self.nnkit_model.save(filepath)


def _to_keras(layer: _layers.Layer) -> list[np.ndarray]:
    """The layer's arrays as Keras's ``layer.get_weights()`` gives them (views, not copies)."""
    arrays = layer.GetParams()
    if isinstance(layer, _layers.Dense):
        kernel = arrays[0]
        image = getattr(layer, "keras_flattened", None)
        if image is not None:  # rows (C, H, W) -> Keras's (H, W, C) order
            kernel = kernel.reshape(kernel.shape[0], *image).transpose(0, 2, 3, 1).reshape(kernel.shape)
        return [kernel.T, *arrays[1:]]
    if isinstance(layer, _layers.Convolution2D):
        return [arrays[0].transpose(2, 3, 1, 0), *arrays[1:]]
    if isinstance(layer, _layers.BatchNormalization):
        return [*arrays, layer.state["moving_mean"], layer.state["moving_variance"]]
    return list(arrays)


def _from_keras(layer: _layers.Layer, arrays: Sequence[np.ndarray]) -> None:
    """Sets the layer's arrays from Keras's layout (the inverse of :func:`_to_keras`)."""
    current = _to_keras(layer)
    arrays = [np.asarray(a) for a in arrays]
    for have, given in zip(current, arrays):
        if have.shape != given.shape:
            raise ValueError(f"{layer.describe()}: set_weights got an array of shape {given.shape}, "
                             f"expected {have.shape} (Keras's layout)")
    if isinstance(layer, _layers.Dense):
        kernel = arrays[0].T
        image = getattr(layer, "keras_flattened", None)
        if image is not None:  # Keras's (H, W, C) rows back to (C, H, W)
            c, h, w = image
            kernel = kernel.reshape(kernel.shape[0], h, w, c).transpose(0, 3, 1, 2).reshape(kernel.shape)
        layer.SetParams(kernel, *arrays[1:])
    elif isinstance(layer, _layers.Convolution2D):
        layer.SetParams(arrays[0].transpose(3, 2, 0, 1), *arrays[1:])
    elif isinstance(layer, _layers.BatchNormalization):
        layer.SetParams(*arrays[:2])
        layer.SetState(moving_mean=arrays[2], moving_variance=arrays[3])
    else:
        layer.SetParams(*arrays)


def load_model(filepath: str | os.PathLike, custom_objects: Any = None, compile: bool = True) -> Sequential:
    """A model saved by ``model.save`` (or any nnkit checkpoint), with the Keras methods."""
    if custom_objects:
        raise ValueError("load_model: custom_objects are not supported")
    keras_model = Sequential.__new__(Sequential)
    keras_model.nnkit_model = _load(filepath)
    keras_model._settle(keras_model.nnkit_model.input_shape, keras_rules=False)  # Flatten rows
    return keras_model
