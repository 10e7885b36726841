"""ONNX export: a built stack of layers as an ONNX model that computes what ``predict`` does.

``Sequential.to_onnx(path)`` and ``nnkit export CKPT model.onnx`` use :func:`to_model`. The
graph is the evaluation-mode forward pass: its input ``input`` is the batch ``predict``
takes (``(batch, C, H, W)`` images or ``(batch, features)`` rows, float32, any batch size)
and its output ``output`` is the last layer's output, what ``predict`` returns. Dropout is
the identity and BatchNormalization uses its running statistics, as in evaluation mode.
Loss and metric layers are not part of the layer stack and so not of the graph.

Opset 22 (``ai.onnx``): the first whose MaxPool and AveragePool definitions state the
ceil-mode rule nnkit's pooling follows, "sliding windows that would start in the right
padded region are ignored" (ONNX Operators.md); the other operators used (Conv, Gemm,
Flatten, LRN, BatchNormalization, Softmax with one axis since opset 13, Pad, Slice) have the
same semantics there as in earlier opsets. Opset 22 came with ONNX 1.17; the tests run the
exported files in onnxruntime (1.32).

Exactness, layer by layer (a layer that cannot be written exactly is refused with an
:class:`ExportError` naming it and why, never approximated):

- ``LRN2D`` across channels maps onto ONNX ``LRN``, which divides ``alpha`` by ``size`` as
  nnkit does. ONNX's window runs ``floor((size - 1) / 2)`` channels before and
  ``ceil((size - 1) / 2)`` after; nnkit's ``size // 2`` before and ``(size - 1) // 2`` after.
  They agree for odd sizes only, so even sizes are refused, and so is ``within_channel``
  (ONNX's LRN has no spatial window).
- Pooling: ONNX computes the output size as nnkit does (``ceil_mode`` or floor, windows
  starting in the right padding dropped); max pooling ignores padding in both. Average
  pooling's divisor: without padding, ONNX's ``count_include_pad=0`` counts the window's
  cells inside the image, nnkit's rule; with padding, ``count_include_pad=1`` counts the
  padding too, and agrees with nnkit unless a ceil-mode window reaches past the padding,
  where the spec does not say what is counted. Such a layer is written as an explicit zero
  ``Pad``, an unpadded ``AveragePool`` (``count_include_pad=0``: the cells inside the padded
  image, nnkit's divisor) and a ``Slice`` dropping the windows ONNX keeps that nnkit drops.
  (onnxruntime agrees with nnkit on every case; onnx 1.23's reference evaluator does not
  in ceil mode, even on its output sizes, so it is no judge there.)
- ``Activation('stanh')`` is ``1.7159 * Tanh(2/3 * x)``; ``softmax`` normalizes axis 1.
- ``Rescaling`` is ``Mul`` (and ``Add`` for an offset), ``Normalization`` ``Sub`` then ``Div``
  with its mean and std as the layer broadcasts them: a graph of a model that preprocesses
  inside takes the raw values, as its ``predict`` does.

Layer kinds beyond those of :data:`EXPORTED` (a user's own ``Layer`` subclass, say) are
refused; matching is by exact type, since a subclass may compute something else.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ._version import __version__
from .layers import (LRN2D, Activation, AvgPooling2D, BatchNormalization, Convolution2D, Dense,
                     Dropout, Dummy, ImageInput, Layer, MaxPooling2D, Normalization, Rescaling)
from .layers.activation import STANH_A, STANH_B

if TYPE_CHECKING:
    import onnx

#: The ``ai.onnx`` opset of exported models (see the module docstring for why).
OPSET = 22
#: The ONNX IR version of exported models: 10, the one released with opset 22 (ONNX 1.17).
IR_VERSION = 10
#: The names of the graph's input and output.
INPUT, OUTPUT = "input", "output"
#: What to run when the optional dependency is missing.
INSTALL_HINT = "pip install 'nnkit[onnx]'"


class ExportError(ValueError):
    """A model that cannot be exported exactly; the message names the layer and why."""


class MissingOnnxError(ImportError):
    """The optional onnx package is not installed; the message says how to install it."""


def require_onnx() -> Any:
    """The ``onnx`` package; :class:`MissingOnnxError` with the install hint if it is missing."""
    try:
        import onnx
    except ImportError as e:
        raise MissingOnnxError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from e
    return onnx


class _Graph:
    """The nodes and initializers being built, with unique value names."""

    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = {INPUT, OUTPUT}

    def name(self, wanted: str) -> str:
        """``wanted``, or ``wanted_2``, ``wanted_3``...: a value name not used yet."""
        name, i = wanted, 1
        while name in self._names:
            i += 1
            name = f"{wanted}_{i}"
        self._names.add(name)
        return name

    def constant(self, name: str, array: np.ndarray) -> str:
        """Adds ``array`` as an initializer; returns its name."""
        name = self.name(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array),
                                                                   name))
        return name

    def node(self, op: str, inputs: Sequence[str], layer: Layer, suffix: str = "",
             **attrs: Any) -> str:
        """Adds one node computing ``op`` for ``layer``; returns its output's name."""
        out = self.name(layer.name + suffix)
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out


# ---------------------------------------------------------------------- the layer converters
def _dense(g: _Graph, layer: Dense, x: str) -> str:
    if len(layer.input_shape) != 1:  # images: nnkit flattens (C, H, W) in C order, as Flatten does
        x = g.node("Flatten", [x], layer, "/flatten", axis=1)
    inputs = [x, g.constant(f"{layer.name}/weight", layer.params[0].data)]
    if layer.use_bias:
        inputs.append(g.constant(f"{layer.name}/bias", layer.params[1].data))
    return g.node("Gemm", inputs, layer, transB=1)  # y = x W^T + b, W (out, in)


def _convolution(g: _Graph, layer: Convolution2D, x: str) -> str:
    inputs = [x, g.constant(f"{layer.name}/weight", layer.params[0].data)]
    if layer.bias:
        inputs.append(g.constant(f"{layer.name}/bias", layer.params[1].data))
    ph, pw = layer.pad
    return g.node("Conv", inputs, layer, kernel_shape=list(layer.kernel),
                  strides=list(layer.stride), pads=[ph, pw, ph, pw])


def _pool_attrs(layer: Any, pads: Sequence[int]) -> dict[str, Any]:
    ph, pw = pads
    return {"kernel_shape": list(layer.pool_size), "strides": list(layer.stride),
            "pads": [ph, pw, ph, pw], "ceil_mode": int(layer.ceil_mode)}


def _max_pooling(g: _Graph, layer: MaxPooling2D, x: str) -> str:
    return g.node("MaxPool", [x], layer, **_pool_attrs(layer, layer.pad))


def _avg_pooling(g: _Graph, layer: AvgPooling2D, x: str) -> str:
    _, h, w = layer.input_shape
    out = layer.output_shape(layer.input_shape)[1:]
    axes = list(zip((h, w), layer.pool_size, layer.stride, layer.pad, out))
    if not any(pad for _, _, _, pad, _ in axes):
        # No padding: ONNX counts the window's cells inside the image, nnkit's divisor.
        return g.node("AveragePool", [x], layer, count_include_pad=0,
                      **_pool_attrs(layer, (0, 0)))
    if all((n - 1) * s - p + k <= size + p for size, k, s, p, n in axes):
        # Every window lies within the padded image: count_include_pad=1 counts all its cells.
        return g.node("AveragePool", [x], layer, count_include_pad=1,
                      **_pool_attrs(layer, layer.pad))
    # A ceil-mode window reaches past the padding, where the spec leaves the divisor open:
    # pad explicitly, pool without padding (the divisor is then the cells inside the padded
    # image, nnkit's), and drop the windows starting in the right padding, which nnkit drops.
    ph, pw = layer.pad
    pads = g.constant(f"{layer.name}/pads", np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64))
    x = g.node("Pad", [x, pads], layer, "/pad", mode="constant")
    y = g.node("AveragePool", [x], layer, "/pool", count_include_pad=0,
               **_pool_attrs(layer, (0, 0)))
    # ONNX's output size without pads: floor or ceil of (padded size - k) / stride, plus 1.
    spans = [(size + 2 * p - k, s) for size, k, s, p, _ in axes]
    kept = [(-(-span // s) if layer.ceil_mode else span // s) + 1 for span, s in spans]
    if kept == list(out):
        return y
    starts = g.constant(f"{layer.name}/starts", np.array([0, 0], np.int64))
    ends = g.constant(f"{layer.name}/ends", np.array(out, np.int64))
    axes_name = g.constant(f"{layer.name}/axes", np.array([2, 3], np.int64))
    return g.node("Slice", [y, starts, ends, axes_name], layer)


def _lrn(g: _Graph, layer: LRN2D, x: str) -> str:
    if not layer.across:
        raise ExportError(f"{layer.describe()}: norm_region 'within_channel' cannot be exported: "
                          "ONNX's LRN normalizes across channels only")
    if layer.size % 2 == 0:
        raise ExportError(
            f"{layer.describe()}: an even size ({layer.size}) cannot be exported exactly: "
            f"nnkit's window runs {layer.size // 2} channels before and {(layer.size - 1) // 2} "
            f"after, ONNX's LRN {(layer.size - 1) // 2} before and {layer.size // 2} after "
            "(odd sizes agree)")
    # Both divide alpha by size (Caffe's convention), so alpha passes through unchanged.
    return g.node("LRN", [x], layer, size=layer.size, alpha=layer.alpha, beta=layer.beta,
                  bias=layer.k)


def _batch_norm(g: _Graph, layer: BatchNormalization, x: str) -> str:
    # Evaluation mode: a fixed per-channel affine map with the running statistics.
    inputs = [x] + [g.constant(f"{layer.name}/{key}", array) for key, array in (
        ("weight", layer.params[0].data), ("bias", layer.params[1].data),
        ("moving_mean", layer.state["moving_mean"]),
        ("moving_variance", layer.state["moving_variance"]))]
    return g.node("BatchNormalization", inputs, layer, epsilon=layer.epsilon)


_SIMPLE_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "linear": "Identity"}


def _activation(g: _Graph, layer: Activation, x: str) -> str:
    kind = layer.activation
    if kind in _SIMPLE_ACTIVATIONS:
        return g.node(_SIMPLE_ACTIVATIONS[kind], [x], layer)
    if kind == "softmax":
        return g.node("Softmax", [x], layer, axis=1)  # over classes or channels, as nnkit
    if kind == "stanh":
        dtype = layer.dtype
        inner = g.node("Mul", [x, g.constant(f"{layer.name}/b", np.array(STANH_B, dtype))],
                       layer, "/scaled")
        tanh = g.node("Tanh", [inner], layer, "/tanh")
        return g.node("Mul", [tanh, g.constant(f"{layer.name}/a", np.array(STANH_A, dtype))],
                      layer)
    raise ExportError(f"{layer.describe()}: activation {kind!r} has no ONNX translation")


def _dropout(g: _Graph, layer: Dropout, x: str) -> str:
    return g.node("Identity", [x], layer)  # inverted dropout: evaluation needs no rescaling


def _rescaling(g: _Graph, layer: Rescaling, x: str) -> str:
    dtype = layer.dtype
    y = g.node("Mul", [x, g.constant(f"{layer.name}/scale", np.array(layer.scale, dtype))], layer,
               "/scaled" if layer.offset else "")
    if not layer.offset:  # as the layer computes: no addition of 0
        return y
    return g.node("Add", [y, g.constant(f"{layer.name}/offset", np.array(layer.offset, dtype))],
                  layer)


def _normalization(g: _Graph, layer: Normalization, x: str) -> str:
    # Subtract, then divide (not multiply by 1 / std): the layer's own two roundings.
    mean, std = layer.broadcast_stats()
    centred = g.node("Sub", [x, g.constant(f"{layer.name}/mean", mean)], layer, "/centred")
    return g.node("Div", [centred, g.constant(f"{layer.name}/std", std)], layer)


#: The layer kinds exported, each with its converter ``(graph, layer, input name) -> output``.
EXPORTED: dict[type, Callable[[_Graph, Any, str], str]] = {
    Dense: _dense,
    Convolution2D: _convolution,
    MaxPooling2D: _max_pooling,
    AvgPooling2D: _avg_pooling,
    LRN2D: _lrn,
    BatchNormalization: _batch_norm,
    Activation: _activation,
    Dropout: _dropout,
    Rescaling: _rescaling,
    Normalization: _normalization,
}


# ---------------------------------------------------------------------------------- export
def to_model(layers: Sequence[Layer], name: str = "nnkit") -> "onnx.ModelProto":
    """The ONNX model of a built layer stack (an input layer first), checked by the ONNX checker.

    Args:
        layers: a built model's ``layers``: ``ImageInput`` or ``Dummy`` first, then layers of
            the kinds in :data:`EXPORTED`, all float32.
        name: the graph's name.

    Raises:
        ExportError: a layer that cannot be exported exactly (naming it and why), a model
            that is not built or not float32.
        MissingOnnxError: the onnx package is missing (an ImportError with the install hint).
    """
    onnx = require_onnx()
    if not layers or not isinstance(layers[0], (ImageInput, Dummy)):
        raise ExportError(f"{name}: export needs a built model whose first layer is its input "
                          "layer (ImageInput or Dummy): build it first, e.g. model.build(shape)")
    inp = layers[0]
    if inp.input_shape is None or any(not layer.built for layer in layers[1:]):
        raise ExportError(f"{name}: the model is not built: call model.build(input_shape) first")
    if inp.dtype != np.float32:
        raise ExportError(f"{name}: only float32 models are exported; {inp.describe()} is "
                          f"{inp.dtype}")
    for layer in layers[1:]:
        if type(layer) not in EXPORTED:
            kinds = ", ".join(sorted(cls.__name__ for cls in EXPORTED))
            raise ExportError(f"{layer.describe()}: layer kind {type(layer).__name__} cannot be "
                              f"exported to ONNX (exported kinds: {kinds})")
    g = _Graph(onnx)
    x = INPUT
    for layer in layers[1:]:
        x = EXPORTED[type(layer)](g, layer, x)
    if x == INPUT:  # an input layer alone: the graph still needs a node
        x = g.node("Identity", [x], inp)
    g.nodes[-1].output[0] = OUTPUT  # the last node writes the graph's output directly
    helper, float32 = onnx.helper, onnx.TensorProto.FLOAT
    out_shape = layers[-1].output_shape(layers[-1].input_shape) if len(layers) > 1 else inp.input_shape
    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info(INPUT, float32, ["batch", *inp.input_shape])],
        [helper.make_tensor_value_info(OUTPUT, float32, ["batch", *out_shape])],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="nnkit", producer_version=__version__,
                              ir_version=IR_VERSION)
    # full_check adds strict shape inference: the declared output shape must follow from the graph.
    onnx.checker.check_model(model, full_check=True)
    return model

