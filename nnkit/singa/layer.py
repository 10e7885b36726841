"""SINGA 0.3's layers (``singa.layer``) as nnkit layers with SINGA's rules.

Each class is an nnkit layer (the same ``Feed`` / ``ComputeFeature`` / ``ComputeGradient`` /
``updater.Update`` and the same kernels) constructed with SINGA's signature and defaults, read
from tool/python/singa/layer.py and src/neuralnet/ at tag v0.3.0-rc3. Where they differ from
nnkit's own layers:

* Parameter init (layer.py, ``Dense``/``Convolution2D``): the weight is gaussian (mean 0,
  std 0.01) and the bias constant 0 unless ``init=`` names a kind, which then applies to the
  weight *and* the bias (``Dense(10, init='uniform')`` draws both from U(-0.05, 0.05)).
  ``w_lr``/``w_wd``/``b_lr``/``b_wd`` are the lr and weight-decay multipliers, other
  ``w_``/``b_`` arguments (``w_std=0.0001``) set the init's values. nnkit's ``Dense``
  defaults to a uniform weight and a zero bias.
* ``GetParams()`` returns copies, weight then bias, the bias of shape ``(n, 1)`` (layer.py,
  ``Layer.GetParams``), and a convolution's weight as ``(F, C*kh*kw)``
  (convolution.cc, ``weight_->Setup({num_filters_, col_height_})``). ``SetParams`` takes those
  shapes, or nnkit's ``(n,)`` and ``(F, C, kh, kw)``.
* Pooling rounds the output size down, ``(H + 2*pad - k) // stride + 1`` (pooling.cc,
  ``PoolingLayer::Setup``; average pooling divides by the window's cells inside the padded
  image, common.cc ``ForwardAvgPooling``), the stride defaults to 1 and ``ignore_border=False``
  pads by 1. nnkit's pooling rounds up by default (Caffe).
* ``LRN2D(size, alpha=1, beta=0.75, knorm=1)``: ``x / (knorm + alpha/size * sum x^2)^beta``
  over ``size`` (odd) neighbouring channels (lrn.cc); nnkit's ``LRN2D`` defaults alpha to 1e-4.
* ``Activation`` defaults to ``'stanh'``. ``ImageInput(width, height, nb_channel)`` lays images
  out as SINGA does, ``(nb_channel, width, height)``.
* A ``Parameter`` given as ``w_param=``/``b_param=`` takes the layer's ``w_``/``b_`` values, as
  SINGA's ``set_param_field`` writes them into it: a later layer given the same object starts
  from them.
* ``activation=`` on ``Dense``/``Convolution2D`` is kept as ``layer.mask`` and applied by the
  model API (:mod:`nnkit.singa.model`); a layer driven by hand computes without it, as in
  SINGA, and warns once.

Not provided: ``RGB``, ``Autoencoder``, ``RBM``, ``Embedding``, ``RNNLM`` and
``UserLossRNNLM`` (SINGA's autoencoder, RBM and RNN examples).
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from .. import layers
from ..layers.base import Layer
from ..layers.input import _InputLayer
from .initializations import get_init_values
from .parameter import Parameter
from .store import Store

__all__ = ["Dummy", "ImageInput", "LabelInput", "Data", "Convolution2D", "MaxPooling2D",
           "AvgPooling2D", "LRN2D", "Loss", "Activation", "Dropout", "Accuracy", "Dense",
           "Parameter", "is_data_layer"]

Dummy = layers.Dummy            # Feed(shape, data, aux_data), as SINGA's
LabelInput = layers.LabelInput  # Feed(labels) of shape (batch, 1) or (batch,)
Accuracy = layers.Accuracy
Dropout = layers.Dropout        # Dropout(ratio=0.5): inverted dropout, like SINGA's dropout.cc


def is_data_layer(layer: Any) -> bool:
    """Whether ``layer`` feeds data rather than computing it (SINGA's ``is_datalayer``)."""
    return isinstance(layer, (_InputLayer, Data))


def _param_arguments(owner: str, init: str | None, w_param: Parameter | None,
                     b_param: Parameter | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """nnkit's ``init``, ``w_*`` and ``b_*`` arguments for SINGA's parameter rules (see the
    module docstring); pops the ``w_``/``b_`` entries of ``kwargs``."""
    out: dict[str, Any] = {}
    for prefix, param, default in (("w", w_param, "gaussian"), ("b", b_param, "constant")):
        own = {key[2:]: kwargs.pop(key) for key in list(kwargs) if key.startswith(prefix + "_")}
        lr, wd = own.pop("lr", None), own.pop("wd", None)
        if param is None:
            param = Parameter(init=default if init is None else init)
        elif not isinstance(param, Parameter):
            raise TypeError(f"{owner}: {prefix}_param must be a Parameter, got {type(param).__name__}")
        try:
            spec = param.spec(**own)
        except ValueError as e:
            raise ValueError(f"{owner}: {prefix}_param: {e}") from None
        # As SINGA's set_param_field, the layer's values are written into the Parameter: a
        # later layer given the same object starts from them (cifar10_cnn_parameter.py).
        param.values.update(own)
        param.lr_scale = param.lr_scale if lr is None else float(lr)
        param.wd_scale = param.wd_scale if wd is None else float(wd)
        if prefix == "w":
            out["init"] = spec.kind
        # Every value explicit: nnkit then infers the bias's kind from them, and get_config
        # rebuilds the same init with nnkit's own layer.
        out.update({f"{prefix}_{key}": spec.value(key) for key in get_init_values(spec.kind)})
        out[f"{prefix}_lr"], out[f"{prefix}_wd"] = param.lr_scale, param.wd_scale
    return out


def _xy(value: Any) -> Any:
    """SINGA's ``(x, y)`` pair (width first) as nnkit's ``(h, w)``; an int stays an int."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair (x, y), got {value!r}")
        return (value[1], value[0])
    return value


class _SingaParams:
    """GetParams/SetParams in SINGA's layout, and the ``activation=`` kept for the model API."""

    mask: layers.Activation | None = None
    in_model = False  # set by the model API, which applies ``mask`` itself
    _warned = False

    def _singa_shape(self, array: np.ndarray) -> tuple[int, ...]:
        """The weight's shape as SINGA stores it; the bias is (n, 1)."""
        return array.shape

    def GetParams(self) -> list[np.ndarray]:
        """Copies of the weight (SINGA's shape) and of the bias as ``(n, 1)``."""
        if not self.built:
            raise self.error("GetParams before the layer is built: run ComputeFeature once",
                             RuntimeError)
        weight, bias = (p.data for p in self.params)
        return [weight.reshape(self._singa_shape(weight)).copy(), bias.reshape(-1, 1).copy()]

    def SetParams(self, *arrays: np.ndarray) -> None:
        """Sets weight then bias from SINGA's shapes or nnkit's (checked like nnkit's)."""
        converted = []
        for p, a in zip(self.params, arrays):
            a = np.asarray(a)
            singa = self._singa_shape(p.data) if p.name == "weight" else (p.data.shape[0], 1)
            if a.shape == singa and a.shape != p.data.shape:
                a = a.reshape(p.data.shape)
            elif a.shape != p.data.shape:
                raise self.error(f"SetParams: {p.name} has shape {singa} (SINGA) or "
                                 f"{p.data.shape} (nnkit), got {a.shape}")
            converted.append(a)
        super().SetParams(*converted, *arrays[len(converted):])

    def ComputeFeature(self, *srcs: Layer) -> np.ndarray:
        if self.mask is not None and not self.in_model and not self._warned:
            self._warned = True
            warnings.warn(f"{self.describe()}: activation={self.mask.activation!r} is applied by "
                          f"the model API only (as in SINGA 0.3); driving layers by hand, add "
                          f"Activation({self.mask.activation!r}) after this layer", stacklevel=2)
        return super().ComputeFeature(*srcs)

    def _keep_activation(self, activation: str | None) -> None:
        self.mask = None if not activation else Activation(activation)


class Dense(_SingaParams, layers.Dense, register=False):
    """A fully connected layer (SINGA's ``Dense``, InnerProduct): weight ``(n, in)``.

    ``Dense(output_dim, activation=None, init=None, w_param=None, b_param=None,
    input_dim=None, **kwargs)``; ``input_dim`` is ignored (as in SINGA: the input fixes it).
    """

    def __init__(self, output_dim: int = 0, activation: str | None = None, init: str | None = None,
                 w_param: Parameter | None = None, b_param: Parameter | None = None,
                 input_dim: int | None = None, **kwargs: Any) -> None:
        if output_dim <= 0:
            raise ValueError(f"Dense: output_dim should be a positive int, got {output_dim!r}")
        if kwargs.pop("transpose", False):
            raise ValueError("Dense: transpose=True (SINGA's autoencoder decoders) is not supported")
        name = kwargs.pop("name", None)
        args = _param_arguments("Dense", init, w_param, b_param, kwargs)
        super().__init__(output_dim, name=name, **args, **kwargs)
        self._keep_activation(activation)


class Convolution2D(_SingaParams, layers.Convolution2D, register=False):
    """A 2-D convolution (SINGA's ``Convolution2D``, CConvolution): weight ``(F, C*kh*kw)``
    from ``GetParams``.

    ``Convolution2D(nb_filter, kernel, stride=1, pad=0, init=None, w_param=None,
    b_param=None, activation=None, **kwargs)``; a pair for ``kernel``, ``stride`` or ``pad`` is
    SINGA's ``(x, y)``: width first. Output ``(H + 2*pad - k) // stride + 1``, as nnkit's.
    """

    def __init__(self, nb_filter: int = 0, kernel: Any = 0, stride: Any = 1, pad: Any = 0,
                 init: str | None = None, w_param: Parameter | None = None,
                 b_param: Parameter | None = None, activation: str | None = None,
                 **kwargs: Any) -> None:
        if nb_filter <= 0:
            raise ValueError(f"Convolution2D: nb_filter should be a positive int, got {nb_filter!r}")
        name = kwargs.pop("name", None)
        args = _param_arguments("Convolution2D", init, w_param, b_param, kwargs)
        super().__init__(nb_filter, _xy(kernel), _xy(stride), _xy(pad), name=name, **args, **kwargs)
        self._keep_activation(activation)

    def _singa_shape(self, array: np.ndarray) -> tuple[int, ...]:
        return (array.shape[0], int(np.prod(array.shape[1:])))


def _pool_size(owner: str, pool_size: Any) -> int:
    """SINGA's square pool size as an int (``pool_size`` is required)."""
    if pool_size is None:
        raise ValueError(f"{owner}: pool_size is required")
    if isinstance(pool_size, int):
        return pool_size
    if not (isinstance(pool_size, tuple) and len(pool_size) == 2 and pool_size[0] == pool_size[1]):
        raise ValueError(f"{owner}: pool_size must be an int or a square (k, k) tuple "
                         f"(SINGA pools square windows), got {pool_size!r}")
    return pool_size[0]


class MaxPooling2D(layers.MaxPooling2D, register=False):
    """Max pooling with SINGA's rules: ``MaxPooling2D(pool_size, stride=1, ignore_border=True)``,
    output size rounded down; ``ignore_border=False`` pads by 1."""

    def __init__(self, pool_size: Any = None, stride: int = 1, ignore_border: bool = True,
                 name: str | None = None) -> None:
        super().__init__(_pool_size("MaxPooling2D", pool_size), stride,
                         0 if ignore_border else 1, ceil_mode=False, name=name)


class AvgPooling2D(layers.AvgPooling2D, register=False):
    """Average pooling with SINGA's rules: ``AvgPooling2D(pool_size, stride=1,
    ignore_border=True)``, output size rounded down; ``ignore_border=False`` pads by 1."""

    def __init__(self, pool_size: Any = None, stride: int = 1, ignore_border: bool = True,
                 name: str | None = None) -> None:
        super().__init__(_pool_size("AvgPooling2D", pool_size), stride,
                         0 if ignore_border else 1, ceil_mode=False, name=name)


class LRN2D(layers.LRN2D, register=False):
    """Across-channel LRN with SINGA's defaults: ``LRN2D(size, alpha=1, beta=0.75, knorm=1)``;
    ``size`` must be odd (lrn.cc checks it)."""

    def __init__(self, size: int = 0, name: str | None = None, **kwargs: Any) -> None:
        values = get_init_values("lrn2d", **kwargs)
        unknown = set(kwargs) - set(values)
        if unknown:
            raise TypeError(f"LRN2D: unknown argument(s) {', '.join(sorted(unknown))}")
        if not isinstance(size, int) or size <= 0 or size % 2 == 0:
            raise ValueError(f"LRN2D: size must be a positive odd int (SINGA's LRN), got {size!r}")
        super().__init__(size, alpha=values["alpha"], beta=values["beta"], k=values["knorm"],
                         name=name)


class Activation(layers.Activation, register=False):
    """An activation, ``'stanh'`` by default (SINGA's): relu, sigmoid, tanh, stanh, softmax.

    SINGA 0.3 warns that its CPU build has no tanh; nnkit computes it.
    """

    def __init__(self, activation: str = "stanh", name: str | None = None) -> None:
        super().__init__(activation, name=name)


class Loss(layers.Loss, register=False):
    """``Loss('softmaxloss' | 'euclideanloss', topk=1)``; only top-1 accuracy (``topk=1``)."""

    def __init__(self, lossname: str, topk: int = 1, name: str | None = None) -> None:
        if topk != 1:
            raise ValueError(f"Loss: topk={topk!r}: nnkit.singa's loss reports top-1 accuracy "
                             f"only; add an Accuracy(topk) layer for top-k")
        super().__init__(lossname, name=name)


class ImageInput(layers.ImageInput, register=False):
    """Images fed as rows or arrays: ``ImageInput(width, height, nb_channel=1)``, stored as SINGA
    shapes them, ``(batch, nb_channel, width, height)``."""

    def __init__(self, width: int | None = None, height: int | None = None, nb_channel: int = 1,
                 name: str | None = None) -> None:
        if width is None or height is None:
            raise ValueError("ImageInput: give the width and the height of the images")
        super().__init__(width, height, nb_channel, name=name)


class Data:
    """A data layer of the model API: where ``fit``/``evaluate`` read examples from.

    ``Data(load, phase='train', checkpoint=None, conf=None, **kwargs)``: ``conf`` is a
    :class:`nnkit.singa.model.Store` (or ``kwargs`` are its fields); ``load`` names SINGA's
    record layer (``'recordinput'``) and is kept, not used: the files' format decides.
    ``checkpoint`` (parameters to start from, SINGA's RBM pre-training) is not supported.
    """

    is_datalayer = True

    def __init__(self, load: str, phase: str = "train", checkpoint: Any = None,
                 conf: Any = None, **kwargs: Any) -> None:
        if load is None:
            raise ValueError("Data: load (the type of data layer) should be specified")
        if phase not in ("train", "test", "val"):
            raise ValueError(f"Data: phase must be 'train', 'test' or 'val', got {phase!r}")
        if checkpoint:
            raise ValueError("Data: checkpoint= (parameters of a pre-trained net, loaded by "
                             "name) is not supported by nnkit.singa; use load_model_parameter")
        self.load, self.phase, self.checkpoint = load, phase, checkpoint
        self.store = conf if conf is not None else Store(**kwargs)
        if not isinstance(self.store, Store):
            raise TypeError(f"Data: conf must be a Store, got {type(self.store).__name__}")

    def __repr__(self) -> str:
        return f"Data(load={self.load!r}, phase={self.phase!r}, conf={self.store!r})"


def layer_list(layers_: Sequence[Any]) -> list[Layer]:
    """``layers_`` with each layer's kept activation after it (what the model API trains)."""
    out: list[Layer] = []
    for layer in layers_:
        if not isinstance(layer, Layer):
            raise TypeError(f"expected a layer, got {type(layer).__name__}")
        out.append(layer)
        if isinstance(layer, _SingaParams):
            layer.in_model = True
            if layer.mask is not None:
                out.append(layer.mask)
    return out
