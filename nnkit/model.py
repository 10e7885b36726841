"""Sequential: a list of layers with Keras-style compile/fit/evaluate/predict.

A Sequential owns nothing the per-layer API cannot see: ``model.layers`` are ordinary layers
and ``model.updater`` an ordinary updater, so a user may fit for a while, step layer by layer
by hand, and fit again. The training loop itself lives in :mod:`nnkit.training`.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import checkpoint, updaters as updaters_module
from .layers import Accuracy, Dummy, ImageInput, LabelInput, Layer, Loss, name_layers, set_seed
from .layers.base import LAYER_CLASSES, Param, Workspace, fastest_layout
from .layers.input import _InputLayer
from .training import Callback, History, NonFiniteLossError, ProcessRun, Trainer, TrainingRun
from .training.trainer import check_policy

# A stream of the model seed that no layer uses: the data order.
_SHUFFLE_STREAM = 0x5EED


@dataclass(frozen=True)
class ConfigBridge:
    """What the model needs from the job schema, which sits above it (:mod:`nnkit.config`).

    ``to_proto(model)`` describes a model as a JobConf; ``start_process(model, x, y, ...)``
    runs ``fit(background='process')``, whose child rebuilds the model from that JobConf.
    ``nnkit.config`` registers the bridge when it is imported, and ``import nnkit`` imports it,
    so the bridge is always there for users; this module never imports the config layer.
    """

    to_proto: Callable[["Sequential"], Any]
    start_process: Callable[..., ProcessRun]


_bridge: ConfigBridge | None = None


def register_config_bridge(bridge: ConfigBridge) -> None:
    """Installs the job-schema bridge (called once by :mod:`nnkit.config`)."""
    global _bridge
    _bridge = bridge


def _config_bridge() -> ConfigBridge:
    if _bridge is None:  # only if someone imported this module without the nnkit package
        raise RuntimeError("nnkit.config is not loaded: import nnkit first")
    return _bridge


class LayerShapeError(ValueError):
    """A layer of a model does not fit the input the layers below it give it.

    Raised by :meth:`Sequential.shapes` (so by ``build``), from the layer's own error (its
    ``__cause__``). A ValueError, as that error was.

    Attributes:
        layer_name: the layer's name.
        layer_type: its class name.
        layer_index: its index in ``model.layers`` (0 is the input layer).
        input_shape: the per-example shape it was given (without the batch axis).
        reason: what the layer said is wrong.
    """

    def __init__(self, model_name: str, layer_index: int, layer: Layer,
                 input_shape: tuple[int, ...], reason: str) -> None:
        self.layer_name, self.layer_type = layer.name, type(layer).__name__
        self.layer_index, self.input_shape = layer_index, tuple(input_shape)
        self.reason = reason.removeprefix(f"{layer.describe()}: ")  # named once, below
        super().__init__(f"{model_name}: layer {layer_index}, {self.layer}, does not fit its "
                         f"input of shape {self.batch_shape}: {self.reason}")

    @property
    def layer(self) -> str:
        """``Type 'name'``, as layers name themselves in errors."""
        return f"{self.layer_type} '{self.layer_name}'"

    @property
    def batch_shape(self) -> str:
        """The input shape with its batch axis: ``(batch, 1, 28, 28)``."""
        return f"(batch, {', '.join(map(str, self.input_shape))})"


def _class_config(obj: Any) -> dict[str, Any]:
    return {"class_name": type(obj).__name__, "config": obj.get_config()}


def _from_class_config(entry: dict[str, Any], registry: dict[str, type], what: str) -> Any:
    name = entry.get("class_name")
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(sorted(registry))}")
    return registry[name](**entry.get("config", {}))


def _first_nonfinite(params: Iterable[Param], attr: str = "data") -> Param | None:
    """The first parameter whose ``data`` (or ``grad``, with ``attr='grad'``) holds a NaN or an
    infinity, else None."""
    for p in params:
        array = getattr(p, attr)
        if array is None:
            continue
        flat = array.reshape(-1)
        # One read per array: dot(a, a) (BLAS, about twice as fast as np.sum here) is NaN or
        # inf whenever an element is. It also overflows for finite elements above ~1e19 in
        # float32, so a non-finite result is confirmed element by element (the rare path).
        if not math.isfinite(np.dot(flat, flat)) and not np.isfinite(flat).all():
            return p
    return None


def _first_nonfinite_example(data: Any, dtype: np.dtype) -> int | None:
    """The index of the first example of a batch with a value that is not finite as ``dtype``."""
    with np.errstate(over="ignore"):  # float64 data beyond float32's range becomes inf, as fed
        array = np.asarray(data).astype(dtype, copy=False)
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def _untimed(phase: str, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Calls ``fn(*args)``: the step's per-layer calls when nobody times them."""
    return fn(*args)


class _LayerTimer:
    """Calls ``fn(*args)`` and adds its seconds to ``times[phase][name]`` (``profile_step``)."""

    PHASES = ("forward", "backward", "update")

    def __init__(self, names: Iterable[str]) -> None:
        names = list(names)
        self.times = {phase: dict.fromkeys(names, 0.0) for phase in self.PHASES}

    def __call__(self, phase: str, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.times[phase][name] += time.perf_counter() - start


def _hand_settings(updater: updaters_module.Updater) -> tuple:
    """What a user or a command may change between batches: the updater object, the lr
    override, weight decay, clipping and the rule's own arguments (momentum...). A schedule's
    own changes are not in it."""
    return (updater, updater.lr_override, updater.decay, updater.clip_norm, updater.clip_value,
            *(getattr(updater, name) for name in updater.own_args))


def _check_loss(logs: dict[str, Any], step: int) -> None:
    """Raises NonFiniteLossError when the batch's loss is NaN or infinite."""
    if not math.isfinite(logs["loss"]):
        raise NonFiniteLossError(f"loss is {logs['loss']} (step {step})", what="loss",
                                 value=logs["loss"], step=step)


def _check_gradients(params: Iterable[Param], step: int) -> None:
    """Raises NonFiniteLossError naming the first parameter whose gradient is not finite.

    A deferred gradient (``Param.defer``) whose bound proves it finite is not computed; one
    whose bound does not (a NaN or huge values in its inputs) is computed here and checked.
    """
    params = [p for p in params
              if p.deferred is None or not p.deferred.surely_finite(p.data.dtype)]
    bad = _first_nonfinite(params, "grad")
    if bad is not None:
        raise NonFiniteLossError(f"the gradient of {bad.full_name} is not finite (step {step})",
                                 what="gradient", where=bad.full_name, step=step)


class _BatchGuard:
    """What ``train_on_batch`` needs to put the model back as it was before a batch.

    Always (cheap): the layers' RNG states and non-trainable state (running statistics, which
    the forward pass changes). With ``full`` also a copy of every parameter and of the
    updater's state, the only way back from an update that overflowed; that copy costs about
    as much as the update itself, so the model takes it only when the hand settings changed.
    """

    def __init__(self, model: "Sequential", full: bool) -> None:
        self.model = model
        self.rngs = [(layer.rng, layer.rng.bit_generator.state) for layer in model.layers
                     if layer.rng is not None]
        self.state = [(a, a.copy()) for layer in model.layers for a in layer.state.values()]
        self.params = [(p.data, p.data.copy()) for p in model.params] if full else None
        self.updater = model.updater.state_dict() if full else None

    def restore(self, updated: bool) -> bool:
        """Puts the model back; False (nothing restored) if ``updated`` and there is no copy."""
        if updated and self.params is None:
            return False
        for live, saved in self.state:
            np.copyto(live, saved)
        for rng, state in self.rngs:
            rng.bit_generator.state = state
        if updated:
            for live, saved in self.params:
                np.copyto(live, saved)
            self.model.updater.load_state_dict(self.updater)
        return True


class Sequential:
    """A linear stack of layers.

    Args:
        layers: the layers in order; the first may be an input layer (``ImageInput``);
            otherwise one is made from ``input_shape`` (a 3-tuple gives ``ImageInput``),
            or from the shape of the first batch seen.
        name: the model's name.
        input_shape: the per-example input shape, without the batch axis.
        seed: drives parameter init, dropout and the data order; None draws fresh entropy.
    """

    def __init__(self, layers: Iterable[Layer] | None = None, name: str = "sequential",
                 input_shape: Sequence[int] | None = None, seed: int | None = None) -> None:
        self.name = name
        self.seed = seed
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        self.layers: list[Layer] = []
        self.loss_layer: Loss | None = None
        # (log name, Accuracy layer or None for the softmax loss's own top-1 accuracy)
        self.metrics: list[tuple[str, Accuracy | None]] = []
        self.updater: updaters_module.Updater | None = None
        self.label_layer: Layer | None = None
        self.stop_training = False
        self.trainer: Trainer | None = None
        self.built = False
        # True while an exception that escaped train_on_batch's update loop left some layers
        # updated and others not (and no copy could undo it): such a state must not be saved.
        self.half_updated = False
        self._last_settings: tuple | None = None  # _hand_settings of the last good batch
        # Called as reduce(params, logs) between backward and update: nnkit.distributed.World
        # makes the gradients and logs those of the global batch (set by a distributed Trainer).
        self.gradient_reducer: Any = None
        # The JobConf this model was built from (nnkit.config), if any: to_proto() keeps its
        # data and run sections, so a checkpoint can be evaluated without the config file.
        self.job: Any = None
        # The layers' shared scratch: im2col columns, and the input gradients of a training
        # step in two alternating buffers (Layer.input_grad_slot).
        self.workspace = Workspace()
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------ building
    def add(self, layer: Layer) -> None:
        """Appends a layer (an input layer only as the first one)."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add takes a Layer, got {type(layer).__name__}")
        if self.built:
            raise RuntimeError(f"{self.name}: cannot add {layer.describe()} after the model is built")
        if isinstance(layer, _InputLayer) and self.layers:
            raise ValueError(f"{self.name}: input layer {layer.describe()} must come first")
        if isinstance(layer, (Loss, Accuracy)):
            raise ValueError(f"{self.name}: give the loss to compile(loss=...), not add()")
        layer.workspace = self.workspace
        self.layers.append(layer)

    def compile(self, updater: updaters_module.Updater | None = None, loss: str | Loss = "softmaxloss",
                metrics: Sequence[str | Accuracy] = ("accuracy",),
                optimizer: updaters_module.Updater | None = None) -> None:
        """Sets the updater (``optimizer`` is an alias), the loss and the metrics.

        Metrics: ``'accuracy'`` (top-1, from the softmax loss) and ``Accuracy(topk=k)``
        layers, logged as ``top{k}_accuracy``.
        """
        updater = updater or optimizer or updaters_module.SGD()
        if not isinstance(updater, updaters_module.Updater):
            raise TypeError(f"compile: updater must be an nnkit Updater, got {type(updater).__name__}")
        self.updater = updater
        self.loss_layer = loss if isinstance(loss, Loss) else Loss(loss, name="loss")
        self.label_layer = (LabelInput(name="label") if self.loss_layer.lossname == "softmaxloss"
                            else Dummy(name="target"))
        self.metrics = []
        for metric in metrics:
            if metric in ("accuracy", "acc"):
                if self.loss_layer.lossname != "softmaxloss":
                    raise ValueError("compile: 'accuracy' needs the softmax loss")
                self.metrics.append(("accuracy", None))
            elif isinstance(metric, Accuracy):
                self.metrics.append(("accuracy" if metric.topk == 1 else f"top{metric.topk}_accuracy",
                                     metric))
            else:
                raise ValueError(f"compile: unknown metric {metric!r} (use 'accuracy' or Accuracy(topk=k))")

    def build(self, input_shape: Sequence[int] | None = None) -> None:
        """Creates the input layer if needed, names layers uniquely, seeds and builds them."""
        if self.built:
            return
        if not self.layers:
            raise ValueError(f"{self.name}: the model has no layers")
        if not isinstance(self.layers[0], _InputLayer):
            shape = tuple(input_shape or self.input_shape or ())
            if not shape:
                raise ValueError(f"{self.name}: the input shape is unknown: pass input_shape= or "
                                 "start with an input layer such as ImageInput")
            self.layers.insert(0, ImageInput(shape[1], shape[2], shape[0]) if len(shape) == 3
                               else Dummy())
            self.layers[0].input_shape = shape
        elif self.layers[0].input_shape is None:  # a Dummy: take the shape given
            self.layers[0].input_shape = tuple(input_shape or self.input_shape or ())
        self.input_shape = self.layers[0].input_shape
        name_layers(self.layers, self.name)
        if self.seed is not None:
            set_seed(self.layers, self.seed)
        dtype = self.layers[0].dtype
        for layer, (shape, _) in zip(self.layers[1:], self.shapes()[1:]):
            if not layer.built:
                layer.build(shape, dtype)
        self.built = True

    def shapes(self, input_shape: Sequence[int] | None = None) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """``(input shape, output shape)`` per layer, without the batch axis: the one shape walk.

        Works before the model is built (nothing is allocated); ``input_shape`` defaults to the
        model's. A layer that does not fit its input raises :class:`LayerShapeError` naming
        the layer, its index and its input shape.
        """
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError(f"{self.name}: the input shape is unknown: pass input_shape=")
        walk = []
        for i, layer in enumerate(self.layers):
            try:
                out = tuple(layer.output_shape(shape))
            except (TypeError, ValueError) as e:
                raise LayerShapeError(self.name, i, layer, shape, str(e)) from e
            walk.append((shape, out))
            shape = out
        return walk

    def _ensure_ready(self, x: np.ndarray) -> None:
        if self.updater is None or self.loss_layer is None:
            raise RuntimeError(f"{self.name}: call compile(...) before training or evaluating")
        if not self.built:
            self.build(np.asarray(x).shape[1:])

    # ------------------------------------------------------------------ access
    def get_layer(self, name: str) -> Layer:
        """The layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{self.name} has no layer {name!r}; layers: "
                       f"{', '.join(l.name for l in self.layers)}")

    def __getitem__(self, key: int | str) -> Layer:
        return self.get_layer(key) if isinstance(key, str) else self.layers[key]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def params(self) -> list:
        """Every parameter of every layer, in layer order."""
        return [p for layer in self.layers for p in layer.params]

    def nonfinite_param(self) -> str | None:
        """The full name of the first parameter holding a NaN or an infinity, else None."""
        bad = _first_nonfinite(self.params)
        return None if bad is None else bad.full_name

    def state_replaced(self) -> None:
        """Says the parameters or updater state were replaced between two batches (the
        ``load_weights`` command): the next batch keeps a copy to undo an update that goes
        non-finite, as the first batch does."""
        self._last_settings = None

    def get_weights(self) -> list[np.ndarray]:
        """Copies of every parameter array, layer by layer, weight then bias."""
        return [p.data.copy() for p in self.params]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Sets every parameter from a list shaped like ``get_weights()`` (shape-checked)."""
        params = self.params
        if len(weights) != len(params):
            raise ValueError(f"{self.name}: set_weights got {len(weights)} arrays, the model has "
                             f"{len(params)} parameters")
        for layer in self.layers:
            if layer.params:
                layer.SetParams(*weights[:len(layer.params)])
                weights = weights[len(layer.params):]

    def summary(self, print_fn: Callable[[str], None] = print) -> None:
        """Prints every layer's name, type, output shape and parameter count."""
        if not self.built:
            self.build()
        rows = [("Layer (type)", "Output shape", "Params")]
        for layer, (_, shape) in zip(self.layers, self.shapes()):
            rows.append((f"{layer.name} ({type(layer).__name__})", str((None, *shape)),
                         f"{layer.param_count():,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        line = "-" * (sum(widths) + 4)
        print_fn(f'Model "{self.name}"')
        print_fn(line)
        for j, row in enumerate(rows):
            print_fn(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}")
            if j == 0:
                print_fn(line)
        print_fn(line)
        print_fn(f"Total params: {sum(l.param_count() for l in self.layers):,}")
        if self.softmax_folded():
            print_fn(f"{self.layers[-1].name}: folded into the loss (softmax cross-entropy computed "
                     f"once, from its input); predict returns its probabilities")

    def softmax_folded(self) -> bool:
        """Whether the final layer is a softmax the loss folds in (see :mod:`nnkit.layers.loss`):
        training reads the logits below it, ``predict`` still returns the probabilities."""
        if self.loss_layer is None or len(self.layers) < 2:
            return False
        try:
            shape = self.shapes()[-1][0]
        except (TypeError, ValueError):  # no input shape yet, or a layer that does not fit
            shape = self.layers[-1].input_shape
        return self.loss_layer.folds(self.layers[-1], shape)

    # ------------------------------------------------------------------ computing
    def _set_training(self, mode: bool) -> None:
        for layer in self.layers:
            layer.training = mode

    def _feed(self, x: np.ndarray) -> None:
        inp = self.layers[0]
        if isinstance(inp, ImageInput):
            inp.Feed(x)
        else:
            inp.Feed((len(x), *self.input_shape), x)

    def _feed_labels(self, y: np.ndarray) -> None:
        label = self.label_layer
        if isinstance(label, LabelInput):
            label.Feed(y)
        else:
            y = np.asarray(y)
            label.Feed(y.shape if y.ndim > 1 else (len(y), 1), y)

    def _forward(self, x: np.ndarray, training: bool, call: Callable[..., Any] = _untimed) -> np.ndarray:
        """The forward pass; ``call`` runs each layer's ComputeFeature (a timer may wrap it)."""
        self._set_training(training)
        for p in self.params:  # their inputs are about to be overwritten
            p.discard_deferred()
        self._feed(x)
        for below, layer in zip(self.layers, self.layers[1:]):
            call("forward", layer.name, layer.ComputeFeature, below)
        return self.layers[-1].data

    def _criteria(self, y: np.ndarray, call: Callable[..., Any] = _untimed) -> dict[str, Any]:
        """The loss and the metrics of the last forward pass against ``y``, as logs."""
        label = self.label_layer
        self._feed_labels(y)
        top, loss = self.layers[-1], self.loss_layer
        call("forward", loss.name, loss.ComputeFeature, top, label)
        logs: dict[str, Any] = {"size": int(top.data.shape[0]), "loss": loss.loss}
        for name, metric in self.metrics:
            if metric is None:
                logs[name] = loss.accuracy
            else:
                call("forward", metric.name, metric.ComputeFeature, top, label)
                logs[name] = metric.accuracy
        return logs

    def train_on_batch(self, x: np.ndarray, y: np.ndarray, step: int | None = None) -> dict[str, Any]:
        """One forward, backward and update on a batch; returns its logs (size, loss, metrics).

        ``step`` is the updater's step (1-based); by default the one after its last.

        A batch that goes non-finite is not applied: it raises :class:`NonFiniteLossError`
        (``what``, ``where``, ``restored``) and leaves the model as it was before the batch
        (parameters, updater state, layer state, layer RNGs). Checked in order:

        * the data (only when an input layer refuses it) and the loss, right after the forward
          pass (free);
        * every parameter gradient, each layer's right after its ComputeGradient (while it is
          in the cache) and before any update (every gradient is computed first, then every
          layer is updated). A gradient a layer deferred (``Param.defer``: the dense layer's
          weight gradient, which the updater computes block by block while it updates) is
          proven finite by its bound instead, or computed and checked when the bound cannot
          prove it;
        * every parameter, after the update, for an update that overflowed (a huge learning
          rate): the update kernels check each value as they write it (no second read, see
          ``Updater.Update``). Undoing it needs a copy of the parameters and updater state taken
          before the update, which is taken only on the model's first batch and when the hand
          settings changed since the last batch (``updater.lr = ...``, a ``set`` command,
          decay, momentum, clipping). Without a copy the error has ``restored=False``: that
          batch's update is lost and with it the state before it (a checkpoint is the way back).

        Any other exception from the forward or backward pass leaves the parameters untouched
        and restores the layer state and RNGs. One from inside the update loop is undone with
        the copy if there is one; otherwise :attr:`half_updated` is set: some layers are
        updated and others not.
        """
        return self._train_step(x, y, step, _untimed)

    def _train_step(self, x: np.ndarray, y: np.ndarray, step: int | None,
                    call: Callable[..., Any]) -> dict[str, Any]:
        """The one training step (see :meth:`train_on_batch`): ``call(phase, name, fn, *args)``
        runs every layer's ComputeFeature, ComputeGradient and Update (``profile_step`` times
        them), so profiling walks the step exactly as training does, checks included."""
        self._ensure_ready(x)
        if step is None:
            step = (self.updater.last_step or 0) + 1
        settings = _hand_settings(self.updater)
        guard = _BatchGuard(self, full=settings != self._last_settings)
        updating = False
        reducer = self.gradient_reducer
        for layer in self.layers[1:]:  # Dropout's streams and BatchNormalization's statistics
            layer.distribute(reducer, step)
        try:
            try:
                self._forward(x, True, call)
                logs = self._criteria(y, call)
            except ValueError as exc:  # input layers refuse NaN/inf data: a non-finite batch too
                nonfinite = self._nonfinite_data(x, y, step)
                if nonfinite is None:
                    raise
                raise nonfinite from exc
            if reducer is None:
                _check_loss(logs, step)
            call("backward", self.loss_layer.name, self.loss_layer.ComputeGradient)
            # An updater that computes gradients block by block lets layers defer theirs (a
            # reducer needs every gradient whole).
            defer = reducer is None and getattr(self.updater, "takes_deferred", False)
            for index in range(len(self.layers) - 1, 0, -1):
                layer = self.layers[index]
                # Its input gradient is read by the layer below only: two buffers, alternating.
                layer.defer_param_grads, layer.input_grad_slot = defer, f"input_grad{index % 2}"
                try:
                    call("backward", layer.name, layer.ComputeGradient)
                finally:
                    layer.defer_param_grads, layer.input_grad_slot = False, None
                if reducer is None:  # checked while they are still in the cache, before any update
                    _check_gradients(layer.params, step)
            if reducer is not None:  # every rank checks the global batch's loss and gradients: they agree
                reducer.reduce(self.params, logs)
                _check_loss(logs, step)
                _check_gradients(self.params, step)
            updating = True
            self.half_updated = True
            finite = True
            for layer in reversed(self.layers[1:]):
                # Update checks every value it writes: no second read of the parameters.
                wrote_finite = call("update", layer.name, self.updater.Update, step, layer)
                if wrote_finite is None:  # an Update that does not say (a subclass's)
                    wrote_finite = _first_nonfinite(layer.params) is None
                finite = finite and wrote_finite
            self.half_updated = False
            if not finite:
                bad = _first_nonfinite(self.params)
                where = "a parameter" if bad is None else bad.full_name
                raise NonFiniteLossError(f"{where} is not finite after the update (step "
                                         f"{step}, lr {self.updater.lr:g})", what="parameter",
                                         where=where, step=step)
        except BaseException as exc:
            restored = guard.restore(updating)
            if restored:
                self.half_updated = False
            if isinstance(exc, NonFiniteLossError):
                exc.restored = restored
                exc.args = (exc.args[0] + ("; the model is as before the batch" if restored else
                                           "; the update could not be undone (no copy was taken: "
                                           "the settings had not changed)"),)
            raise
        self._last_settings = settings
        return logs

    def _nonfinite_data(self, x: np.ndarray, y: np.ndarray, step: int) -> NonFiniteLossError | None:
        """The error for a batch whose input or target holds a NaN or an infinity, else None."""
        for what, data, layer in (("input", x, self.layers[0]), ("target", y, self.label_layer)):
            example = _first_nonfinite_example(data, layer.dtype or np.float32)
            if example is not None:
                where = f"example {example} of the batch"
                return NonFiniteLossError(f"the {what} is not finite ({where}; step {step})",
                                          what=what, where=where, step=step)
        return None

    def profile_step(self, x: np.ndarray, y: np.ndarray, step: int | None = None
                     ) -> dict[str, dict[str, float]]:
        """One training step, timed layer by layer (``nnkit time``): the step of
        :meth:`train_on_batch`, with its checks in the same order (a non-finite batch raises
        NonFiniteLossError the same way), with a timer around every layer's call.

        Returns ``{"forward": {layer: s}, "backward": {...}, "update": {...}}`` in seconds;
        the loss and the metric layers count as layers. The checks are in no layer's time.
        The step is a real one: parameters are updated.
        """
        self._ensure_ready(x)
        names = [layer.name for layer in self.layers[1:]] + [self.loss_layer.name]
        names += [metric.name for _, metric in self.metrics if metric is not None]
        timer = _LayerTimer(names)
        self._train_step(x, y, step, timer)
        return timer.times

    def profile_gemms(self, iterations: int = 10) -> dict[str, dict[str, float]]:
        """Each layer's matrix products alone (``Layer.gemm_products``), timed with numpy.

        The products of the dense and im2col formulation at the shapes of the last batch
        (run a step first), on random operands of the layer's dtype, with numpy's matmul on
        the BLAS's threads, each product in the faster of its two layouts
        (``fastest_layout``): the time this machine's BLAS needs for the layer's GEMM work,
        whatever the layer itself runs. Returns ``{"forward": {layer: s}, "backward": {...}}``
        for every layer above the input (0 for one without products; the loss and metric
        layers have none): per phase the sum of its products' medians of ``iterations``
        runs after one warm-up.
        """
        rng = np.random.default_rng(0)
        times: dict[str, dict[str, float]] = {"forward": {}, "backward": {}}
        for layer in self.layers[1:]:
            dtype = layer.dtype or np.float32
            spent = {"forward": 0.0, "backward": 0.0}
            for prod in layer.gemm_products():
                spent[prod.phase] += fastest_layout(prod, rng, dtype, iterations)[0]
            for phase, seconds in spent.items():
                times[phase][layer.name] = seconds
        return times

    def test_on_batch(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Loss and metrics on one batch in evaluation mode (no update)."""
        self._ensure_ready(x)
        self._forward(x, training=False)
        return self._criteria(y)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 32) -> dict[str, float]:
        """Loss and metrics over ``(x, y)``, averaged over examples."""
        if len(x) != len(y):
            raise ValueError(f"evaluate: x has {len(x)} examples but y has {len(y)}")
        sums: dict[str, float] = {}
        for start in range(0, len(x), batch_size):
            logs = self.test_on_batch(x[start:start + batch_size], y[start:start + batch_size])
            n = logs.pop("size")
            for key, value in logs.items():
                if value is not None:
                    sums[key] = sums.get(key, 0.0) + value * n
        return {key: value / len(x) for key, value in sums.items()}

    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """The last layer's output for every example (evaluation mode), batch by batch."""
        if not self.built:
            self.build(np.asarray(x).shape[1:])
        outputs = [self._forward(x[start:start + batch_size], training=False).copy()
                   for start in range(0, len(x), batch_size)]
        return np.concatenate(outputs)

    def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int = 32, epochs: int | None = None,
            steps: int | None = None, validation_data: tuple[np.ndarray, np.ndarray] | None = None,
            validation_split: float | tuple[float, int] | None = None, shuffle: bool = True,
            callbacks: Sequence[Callback] = (), verbose: int = 1, seed: int | None = None,
            run_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
            background: bool | str = False, on_nonfinite: str | None = None, distributed: bool = False
            ) -> History | TrainingRun | ProcessRun:
        """Trains the model; see :meth:`nnkit.training.Trainer.fit` for ``epochs``/``steps``/``resume``.

        ``seed`` seeds the model (init, dropout, data order) if it has no seed yet.
        ``run_dir``: the run writes ``events.jsonl`` there, takes commands appended to
        ``commands.jsonl`` (``nnkit ctl``), and checkpoints there when it ends or is interrupted.
        ``background=True`` returns a :class:`~nnkit.training.TrainingRun` at once and trains
        in a thread, steerable through the handle; ``background='process'`` trains in a child
        process instead (a :class:`~nnkit.training.ProcessRun` with the same commands).
        ``on_nonfinite``: what a batch that goes non-finite does (the model is left as before
        it, and a run directory gets a checkpoint of that state): ``'stop'`` raises
        :class:`~nnkit.training.NonFiniteLossError`; ``'pause'`` pauses the run with a
        ``nonfinite`` event until ``resume`` (retry the batch) or ``skip``, sent through the
        handle (or ``nnkit ctl``). By default ``'pause'`` for a background run (a thread or a
        child process), else ``'stop'``.
        ``distributed=True``: data-parallel over the MPI ranks this process is one of (run the
        script with ``mpiexec -n N``; see :mod:`nnkit.distributed`). ``batch_size`` is the
        global batch; rank 0 alone gets the run directory, the callbacks and the output.
        """
        if seed is not None and self.seed is None and not self.built:
            self.seed = seed
        self._ensure_ready(x)
        if on_nonfinite is None:
            on_nonfinite = "pause" if background else "stop"
        if background == "process":
            check_policy(on_nonfinite)  # here, not as a failed child
            if validation_split is not None or resume is not None or callbacks:
                raise ValueError("fit(background='process'): validation_split, resume and callbacks "
                                 "cannot cross to the child process; use validation_data")
            return _config_bridge().start_process(self, x, y, validation_data, run_dir, epochs,
                                                  steps, batch_size, on_nonfinite)
        trainer = self.trainer_for_fit()
        trainer.distributed = None
        if distributed:
            if background:
                raise ValueError("fit: distributed=True runs in the foreground of every rank, not background")
            from .distributed import world
            trainer.distributed = world()
            if trainer.distributed.rank != 0:  # one writer, one reader of commands: rank 0
                run_dir, callbacks, verbose = None, (), 0
        trainer.user_callbacks = list(callbacks)
        trainer.verbose = verbose
        trainer.run_dir = None if run_dir is None else Path(run_dir)
        if background or ((run_dir is not None or trainer.observers) and trainer.controller is None):
            # The run re-enters fit with its channel attached (trainer.controller set).
            kwargs = dict(x=x, y=y, batch_size=batch_size, epochs=epochs, steps=steps,
                          validation_data=validation_data, validation_split=validation_split,
                          shuffle=shuffle, callbacks=callbacks, verbose=verbose, run_dir=run_dir,
                          resume=resume, on_nonfinite=on_nonfinite, distributed=distributed)
            run = TrainingRun(self, kwargs, run_dir, linger=bool(background))
            return run.start() if background else run.run()
        return trainer.fit(x, y, batch_size=batch_size, epochs=epochs, steps=steps,
                           validation_data=validation_data, validation_split=validation_split,
                           shuffle=shuffle, resume=resume, on_nonfinite=on_nonfinite)

    def trainer_for_fit(self) -> Trainer:
        """The model's Trainer (made on first use; it keeps counters across fit calls)."""
        if self.trainer is None:
            seed = None if self.seed is None else np.random.SeedSequence(self.seed, spawn_key=(_SHUFFLE_STREAM,))
            self.trainer = Trainer(self, seed=seed)
        return self.trainer

    # ------------------------------------------------------------------ config and checkpoints
    def get_config(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (layers, loss, metrics, updater), as plain data."""
        return {
            "name": self.name,
            "seed": self.seed,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "layers": [_class_config(layer) for layer in self.layers],
            "loss": None if self.loss_layer is None else _class_config(self.loss_layer),
            "metrics": [name if m is None else _class_config(m) for name, m in self.metrics],
            "updater": None if self.updater is None else _class_config(self.updater),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Sequential":
        """Rebuilds (and compiles, if the config has a loss) a model from ``get_config()``."""
        layer_classes = LAYER_CLASSES
        model = cls([_from_class_config(e, layer_classes, "layer") for e in config["layers"]],
                    name=config.get("name", "sequential"), input_shape=config.get("input_shape"),
                    seed=config.get("seed"))
        if config.get("loss") is not None:
            metrics = [m if isinstance(m, str) else _from_class_config(m, layer_classes, "metric")
                       for m in config.get("metrics", [])]
            updater = None
            if config.get("updater") is not None:
                updater = _from_class_config(config["updater"], updaters_module.UPDATERS,
                                             "updater")
            model.compile(updater, _from_class_config(config["loss"], layer_classes, "loss"), metrics)
        return model

    def to_proto(self) -> Any:
        """The model as a job config (``nnkit.proto.JobConf``); see :func:`nnkit.config.model_to_proto`."""
        return _config_bridge().to_proto(self)

    def _proto_text(self) -> str | None:
        """``to_proto()`` in text format, or None for a model the schema cannot describe."""
        from google.protobuf import text_format
        try:
            return text_format.MessageToString(self.to_proto())
        except ValueError:  # e.g. a user-defined layer class: the dict config still describes it
            return None

    def to_onnx(self, path: str | os.PathLike) -> None:
        """Writes the model as an ONNX file (atomically) computing what :meth:`predict` does.

        The graph's input ``input`` takes the batches ``predict`` takes, as float32
        ``(batch, C, H, W)`` images or ``(batch, features)`` rows; its output ``output`` is
        ``predict``'s. Evaluation mode: Dropout is the identity, BatchNormalization uses its
        running statistics. Opset and layer rules: :mod:`nnkit.onnx_export`. Needs the onnx
        extra (``pip install 'nnkit[onnx]'``).

        Raises:
            nnkit.onnx_export.ExportError: a layer that cannot be exported exactly (the
                message names it and says why); nothing is written then.
            nnkit.onnx_export.MissingOnnxError: the onnx package is missing (an ImportError).
        """
        from . import onnx_export  # imported on use: onnx is an optional dependency
        if not self.built:
            self.build()
        proto = onnx_export.to_model(self.layers, self.name)
        checkpoint.atomic_write(path, proto.SerializeToString())

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every layer's non-trainable arrays (``Layer.state``) by full name, ``layer/name``."""
        return {f"{layer.name}/{key}": array for layer in self.layers for key, array in layer.state.items()}

    def checkpoint_tree(self) -> dict[str, Any]:
        """The model's part of a checkpoint: config (dict and job proto text), parameters,
        layer state, updater state, layer RNG states."""
        if not self.built:
            self.build()
        return {
            "config": self.get_config(),
            "proto": self._proto_text(),
            "params": {p.full_name: p.data for p in self.params},
            "state": self.state_arrays(),
            "updater": None if self.updater is None else self.updater.state_dict(),
            "rngs": {layer.name: layer.rng.bit_generator.state for layer in self.layers
                     if layer.rng is not None},
        }

    def restore_tree(self, tree: dict[str, Any], source: str = "checkpoint") -> None:
        """Loads parameters, updater state and layer RNG states from a checkpoint tree.

        Parameters are all checked before any is copied; ``source`` names the file in errors.
        Values of the wrong type (a damaged or hostile file) raise CheckpointError too.
        """
        if not self.built:
            self.build()
        with checkpoint.restoring(source):
            if not isinstance(tree, dict):
                raise checkpoint.CheckpointError(f"{source}: the model entry is a "
                                                 f"{type(tree).__name__}, not a dict")
            checkpoint.assign_parameters(tree.get("params", {}), self.layers, source,
                                         state=tree.get("state", {}))
            if self.updater is not None and tree.get("updater") is not None:
                state = dict(tree["updater"])
                known = {p.full_name for p in self.params}
                for key in ("slots", "counts"):  # keyed by parameter name, which may be a legacy one
                    if isinstance(state.get(key), dict):
                        state[key] = checkpoint.upgrade_names(state[key], known)
                self.updater.load_state_dict(state)
            for layer in self.layers:
                state = tree.get("rngs", {}).get(layer.name)
                if state is not None:
                    layer.rng = layer.rng or np.random.default_rng()
                    layer.rng.bit_generator.state = state

    def save(self, path: str | os.PathLike) -> None:
        """Writes a checkpoint (atomically): model, parameters, updater and training state."""
        tree = {"model": self.checkpoint_tree(), "trainer": {} if self.trainer is None else self.trainer.state_dict()}
        checkpoint.save_tree(path, tree)
