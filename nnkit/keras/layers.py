"""Keras 2.2.4's layer constructors, returning nnkit's own layers.

Each function takes the arguments of the Keras layer of the same name, with Keras's defaults
(keras/layers/core.py, convolutional.py, pooling.py, normalization.py at tag 2.2.4), and
returns the nnkit layer that computes the same thing. What only a model can settle is left on
the layer for :class:`nnkit.keras.models.Sequential`:

* ``keras_activation``: the ``activation=`` argument, which the model adds as an
  ``Activation`` layer right after this one;
* ``keras_input_shape``: the ``input_shape=`` (or ``input_dim=``) of a first layer, channels
  last as Keras writes it;
* ``keras_padding``: ``'same'`` for a convolution or pooling; the pads are computed when the
  input shape is known (TensorFlow's rule: output ``ceil(size / stride)``, the extra
  odd pixel at the bottom and right, through a ``ZeroPadding2D`` for a convolution).

Kernels are glorot_uniform and biases zeros unless told otherwise; pooling strides default
to the pool size; ``padding='valid'`` pools round down (nnkit's own default rounds up).
"""
from __future__ import annotations

from typing import Any, Sequence

from .. import layers as _layers
from ..layers import Layer

__all__ = ["Dense", "Activation", "Dropout", "Conv2D", "Convolution2D", "MaxPooling2D",
           "MaxPool2D", "AveragePooling2D", "AvgPool2D", "Flatten", "BatchNormalization",
           "ZeroPadding2D", "Layer"]

#: Keras initializer names -> nnkit init arguments for a parameter with prefix ``w``/``b``.
#: he_normal: nnkit draws N(0, 2/fan_in) where Keras truncates the normal at 2 std.
_INITIALIZERS = {
    "glorot_uniform": ("glorot_uniform", {}),
    "he_normal": ("he_normal", {}),
    "zeros": ("constant", {"value": 0.0}),
    "ones": ("constant", {"value": 1.0}),
    "random_normal": ("gaussian", {"std": 0.05}),
    "random_uniform": ("uniform", {"low": -0.05, "high": 0.05}),
}
_ACTIVATIONS = ("relu", "sigmoid", "tanh", "softmax", "linear")


def _init_args(prefix: str, initializer: Any, where: str) -> dict[str, Any]:
    """``{'init': ..., 'w_std': ...}`` (``init`` only for the weight) for a Keras initializer name."""
    key = str(initializer).lower() if isinstance(initializer, str) else None
    if key in ("zero", "one"):
        key += "s"
    if key not in _INITIALIZERS:
        raise ValueError(f"{where}: initializer {initializer!r} is not supported; use one of "
                         f"{', '.join(_INITIALIZERS)}")
    kind, values = _INITIALIZERS[key]
    args = {f"{prefix}_{k}": v for k, v in values.items()}
    if prefix == "w":
        args["init"] = kind
    elif kind not in ("constant",):
        raise ValueError(f"{where}: bias_initializer {initializer!r} is not supported; use "
                         f"'zeros' or 'ones'")
    return args


def _activation(activation: Any, where: str) -> str | None:
    if activation is None:
        return None
    name = getattr(activation, "__name__", activation)
    if name not in _ACTIVATIONS:
        raise ValueError(f"{where}: activation {activation!r} is not supported; use one of "
                         f"{', '.join(_ACTIVATIONS)}")
    return None if name == "linear" else name


def _mark(layer: Layer, activation: Any = None, input_shape: Sequence[int] | None = None,
          input_dim: int | None = None, padding: str | None = None) -> Layer:
    """Leaves the Keras arguments a model settles on the nnkit layer (module docstring)."""
    where = f"{layer.describe()}"
    layer.keras_activation = _activation(activation, where)
    if input_dim is not None and input_shape is None:
        input_shape = (input_dim,)
    layer.keras_input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
    if padding is not None:
        if padding not in ("valid", "same"):
            raise ValueError(f"{where}: padding must be 'valid' or 'same', got {padding!r}")
        layer.keras_padding = padding
    return layer


def _data_format(data_format: str | None, where: str) -> None:
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{where}: only data_format='channels_last' is supported (Keras's "
                         f"default); got {data_format!r}")


def _common(kwargs: dict[str, Any], where: str) -> tuple[Sequence[int] | None, int | None, str | None]:
    """Pops the arguments every Keras layer takes (input_shape, input_dim, name); refuses the rest."""
    input_shape = kwargs.pop("input_shape", None)
    batch_input_shape = kwargs.pop("batch_input_shape", None)
    if input_shape is None and batch_input_shape is not None:
        input_shape = tuple(batch_input_shape)[1:]
    input_dim = kwargs.pop("input_dim", None)
    name = kwargs.pop("name", None)
    if kwargs.get("trainable", True) is True:
        kwargs.pop("trainable", None)  # trainable=False (frozen layers) is not supported
    for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                "kernel_constraint", "bias_constraint"):
        if kwargs.get(key, None) is None:
            kwargs.pop(key, None)
    if kwargs:
        raise TypeError(f"{where}: unsupported argument(s) {', '.join(sorted(kwargs))}")
    return input_shape, input_dim, name


def Dense(units: int, activation: Any = None, use_bias: bool = True,
          kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
          **kwargs: Any) -> Layer:
    """``keras.layers.Dense``: nnkit's ``Dense`` (weight stored as (units, in); Keras's
    kernel is its transpose, see ``Sequential.get_weights``)."""
    input_shape, input_dim, name = _common(kwargs, "Dense")
    args = {**_init_args("w", kernel_initializer, "Dense"),
            **(_init_args("b", bias_initializer, "Dense") if use_bias else {})}
    layer = _layers.Dense(units, bias=use_bias, name=name, **args)
    return _mark(layer, activation, input_shape, input_dim)


def Activation(activation: Any, **kwargs: Any) -> Layer:
    """``keras.layers.Activation``: relu, sigmoid, tanh, softmax or linear."""
    input_shape, input_dim, name = _common(kwargs, "Activation")
    act = _activation(activation, "Activation") or "linear"
    return _mark(_layers.Activation(act, name=name), None, input_shape, input_dim)


def Dropout(rate: float, noise_shape: Any = None, seed: int | None = None, **kwargs: Any) -> Layer:
    """``keras.layers.Dropout``: inverted dropout dropping a fraction ``rate``; the draws
    follow the model's seed (``seed`` is refused, like ``noise_shape``)."""
    input_shape, input_dim, name = _common(kwargs, "Dropout")
    if noise_shape is not None or seed is not None:
        raise ValueError("Dropout: noise_shape and seed are not supported (the model's seed "
                         "drives dropout)")
    return _mark(_layers.Dropout(rate, name=name), None, input_shape, input_dim)


def Conv2D(filters: int, kernel_size: Any, strides: Any = (1, 1), padding: str = "valid",
           data_format: str | None = None, dilation_rate: Any = (1, 1), activation: Any = None,
           use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
           bias_initializer: Any = "zeros", **kwargs: Any) -> Layer:
    """``keras.layers.Conv2D``: nnkit's ``Convolution2D`` (weight (F, C, kh, kw); Keras's
    kernel is (kh, kw, C, F)). ``padding='same'`` is settled at build (module docstring)."""
    input_shape, input_dim, name = _common(kwargs, "Conv2D")
    _data_format(data_format, "Conv2D")
    if dilation_rate not in (1, (1, 1), [1, 1]):
        raise ValueError(f"Conv2D: dilation_rate {dilation_rate!r} is not supported")
    kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    stride = (strides, strides) if isinstance(strides, int) else tuple(strides)
    args = {**_init_args("w", kernel_initializer, "Conv2D"),
            **(_init_args("b", bias_initializer, "Conv2D") if use_bias else {})}
    layer = _layers.Convolution2D(filters, kernel, stride, 0, bias=use_bias, name=name, **args)
    return _mark(layer, activation, input_shape, input_dim, padding)


def Convolution2D(*args: Any, **kwargs: Any) -> Layer:
    """Keras 2's alias of :func:`Conv2D`."""
    return Conv2D(*args, **kwargs)


def _pooling(cls: type, what: str, pool_size: Any, strides: Any, padding: str,
             data_format: str | None, kwargs: dict[str, Any]) -> Layer:
    input_shape, input_dim, name = _common(kwargs, what)
    _data_format(data_format, what)
    stride = pool_size if strides is None else strides
    # 'valid' rounds down; 'same' is settled at build (ceil_mode, see the model)
    layer = cls(pool_size, stride, 0, ceil_mode=False, name=name)
    return _mark(layer, None, input_shape, input_dim, padding)


def MaxPooling2D(pool_size: Any = (2, 2), strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, **kwargs: Any) -> Layer:
    """``keras.layers.MaxPooling2D``: nnkit's ``MaxPooling2D``, stride = pool size by default."""
    return _pooling(_layers.MaxPooling2D, "MaxPooling2D", pool_size, strides, padding,
                    data_format, kwargs)


def AveragePooling2D(pool_size: Any = (2, 2), strides: Any = None, padding: str = "valid",
                     data_format: str | None = None, **kwargs: Any) -> Layer:
    """``keras.layers.AveragePooling2D``: nnkit's ``AvgPooling2D``, stride = pool size by default."""
    return _pooling(_layers.AvgPooling2D, "AveragePooling2D", pool_size, strides, padding,
                    data_format, kwargs)


MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D


def Flatten(data_format: str | None = None, **kwargs: Any) -> Layer:
    """``keras.layers.Flatten``: nnkit's ``Flatten``. nnkit flattens (C, H, W) where Keras
    flattens (H, W, C): the next Dense's kernel rows are permuted in ``get_weights``."""
    input_shape, input_dim, name = _common(kwargs, "Flatten")
    _data_format(data_format, "Flatten")
    return _mark(_layers.Flatten(name=name), None, input_shape, input_dim)


def ZeroPadding2D(padding: Any = (1, 1), data_format: str | None = None, **kwargs: Any) -> Layer:
    """``keras.layers.ZeroPadding2D``: nnkit's ``ZeroPadding2D``."""
    input_shape, input_dim, name = _common(kwargs, "ZeroPadding2D")
    _data_format(data_format, "ZeroPadding2D")
    return _mark(_layers.ZeroPadding2D(padding, name=name), None, input_shape, input_dim)


def BatchNormalization(axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-3,
                       center: bool = True, scale: bool = True,
                       beta_initializer: Any = "zeros", gamma_initializer: Any = "ones",
                       moving_mean_initializer: Any = "zeros",
                       moving_variance_initializer: Any = "ones", **kwargs: Any) -> Layer:
    """``keras.layers.BatchNormalization`` over the channels (the last axis, channels last):
    nnkit's ``BatchNormalization`` (per channel of NCHW images, per feature of rows)."""
    input_shape, input_dim, name = _common(kwargs, "BatchNormalization")
    defaults = (beta_initializer, gamma_initializer, moving_mean_initializer,
                moving_variance_initializer) == ("zeros", "ones", "zeros", "ones")
    if not (center and scale) or not defaults:
        raise ValueError("BatchNormalization: only center=scale=True and the default "
                         "initializers are supported")
    layer = _layers.BatchNormalization(momentum, epsilon, name=name)
    layer.keras_axis = axis  # the model checks it names the channels (the last axis)
    return _mark(layer, None, input_shape, input_dim)
