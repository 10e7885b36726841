"""The layer contract every nnkit layer follows, and the parameters layers own.

A layer is driven either by a model or by hand, one call at a time (the per-layer API):

    layer.ComputeFeature(source)   # reads source.data, writes layer.data
    layer.ComputeGradient()        # reads layer.grad, fills param grads and source.grad
    updater.Update(step, layer)    # applies one update to layer.params

Subclasses implement ``build`` (create params from the input shape), ``forward`` and
``backward``; this base class does the bookkeeping: source checks, clear errors that name
the layer, reusable buffers and parameter access.
"""
from __future__ import annotations

import math
import re
import statistics
import time
from typing import Any, Callable, ClassVar, Iterable, NamedTuple, Sequence

import numpy as np

from .. import initializers, parallel

DEFAULT_DTYPE = np.float32
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z])([A-Z])", r"_\1", name).lower()  # Convolution2D -> convolution2d


class DeferredGrad(NamedTuple):
    """A parameter gradient the backward pass described instead of computing (``Param.defer``).

    ``rows(lo, hi, out)`` writes rows ``[lo, hi)`` of the gradient, seen as a 2-D array of the
    param's first axis by the rest, into ``out`` (shape ``(hi - lo, rest)``): an updater can
    then compute the gradient block by block and apply each block while it is in the cache
    (the gradient GEMM and the update fused, ``Updater.Update``). ``bound`` is an upper bound
    on every element's magnitude (NaN when an input is not finite); ``row_values`` is the
    number of input values one row reads, for ``parallel.split``.
    """

    rows: Callable[[int, int, np.ndarray], None]
    bound: float
    row_values: int

    def surely_finite(self, dtype: np.dtype) -> bool:
        """True if no element can be a NaN or an infinity: ``bound`` is below half the
        dtype's largest value (the half covers the rounding of the products' sums)."""
        return self.bound < float(np.finfo(dtype).max) / 2


class Workspace:
    """Scratch memory the layers of one model share, by name.

    A convolution's im2col columns live only within one of its calls, and a layer's input
    gradient (during a model's training step) only until the layer below has read it: such
    arrays need not be one per layer. ``view`` hands out views of a flat buffer per name that
    only grows (to the largest request), so layers asking for the same name share it. A model
    gives its layers one workspace (``Sequential.add``); a layer on its own has its own.
    """

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, np.dtype], np.ndarray] = {}

    def view(self, key: str, capacity: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A contiguous ``shape`` view of the buffer ``key`` (at least ``capacity`` values,
        uninitialized): the same memory as every other view of ``key`` of this dtype."""
        dtype = np.dtype(dtype)
        buf = self._arrays.get((key, dtype))
        if buf is None or buf.size < capacity:
            buf = self._arrays[(key, dtype)] = np.empty(max(capacity, math.prod(shape)), dtype)
        return buf[:math.prod(shape)].reshape(shape)

    @property
    def nbytes(self) -> int:
        """The bytes its buffers hold."""
        return sum(a.nbytes for a in self._arrays.values())


class Param:
    """A trainable array with its gradient and its per-parameter settings.

    ``lr_mult`` and ``wd_mult`` scale the updater's learning rate and weight decay for this
    parameter only (Caffe's ``lr_mult``/``decay_mult``). The full name, ``layer/param``, is
    what checkpoints and updater state use; it follows the owning layer if that is renamed.

    ``grad`` is the gradient of the last backward pass. During ``fit`` a layer may describe
    it instead of computing it (:meth:`defer`, the dense layer's weight gradient) so that
    the updater computes and applies it block by block; reading ``grad`` then computes it
    whole, as long as the inputs it is computed from are there: until the model's next
    forward pass (:meth:`discard_deferred`), after which ``grad`` is None until the next
    backward pass.
    """

    def __init__(self, owner: "Layer", name: str, spec: initializers.InitSpec,
                 lr_mult: float = 1.0, wd_mult: float = 1.0) -> None:
        self.owner = owner
        self.name = name
        self.spec = spec
        self.lr_mult = float(lr_mult)
        self.wd_mult = float(wd_mult)
        self.data: np.ndarray | None = None
        self._grad: np.ndarray | None = None
        self._deferred: DeferredGrad | None = None
        self._grad_lost = False  # a deferred gradient discarded: grad reads None

    @property
    def full_name(self) -> str:
        """``layer_name/param_name``, unique within a model."""
        return f"{self.owner.name}/{self.name}"

    @property
    def grad(self) -> np.ndarray | None:
        """The gradient of the last backward pass (computed now if it was deferred)."""
        if self._deferred is not None:
            deferred, self._deferred = self._deferred, None
            g = self._grad.reshape(self._grad.shape[0], -1)
            # In the parts the layer itself would have used: the same values, bit for bit.
            parallel.split(lambda part, lo, hi: deferred.rows(lo, hi, g[lo:hi]), len(g),
                           deferred.row_values, blas=True)
        return None if self._grad_lost else self._grad

    @grad.setter
    def grad(self, value: np.ndarray | None) -> None:
        self._grad, self._deferred, self._grad_lost = value, None, False

    def grad_buffer(self) -> np.ndarray:
        """The gradient's array, for a backward pass to write this step's gradient into."""
        if self._grad is None:
            raise RuntimeError(f"param {self.full_name!r} has no gradient array: allocate it first")
        self._deferred, self._grad_lost = None, False
        return self._grad

    @property
    def deferred(self) -> DeferredGrad | None:
        """This step's gradient as a description (see :class:`DeferredGrad`), or None."""
        return self._deferred

    def defer(self, deferred: DeferredGrad) -> None:
        """Stands ``deferred`` for this step's gradient: computed when ``grad`` is read."""
        self.grad_buffer()
        self._deferred = deferred

    def discard_deferred(self) -> None:
        """Forgets a deferred gradient whose inputs are about to change (the next forward
        pass): ``grad`` then reads None until a backward pass writes one."""
        if self._deferred is not None:
            self._deferred, self._grad_lost = None, True

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype, fan_in: int, fan_out: int,
                 rng: np.random.Generator) -> None:
        """Creates ``data`` from the init spec and a zeroed ``grad`` of the same shape."""
        self.data = initializers.initialize(self.spec, shape, fan_in, fan_out, rng, dtype)
        self.grad = np.zeros_like(self.data)

    def __repr__(self) -> str:
        shape = None if self.data is None else self.data.shape
        return f"Param({self.full_name!r}, shape={shape}, lr_mult={self.lr_mult}, wd_mult={self.wd_mult})"


class GemmProduct(NamedTuple):
    """One matrix product of a layer's training step, ``op(a) @ op(b)`` (``nnkit time``).

    The shapes are those of the textbook formulation at the layer's shapes (dense: the
    batch's rows; convolution: im2col over the whole batch), whatever the layer itself
    runs: timing these products alone gives the bound the machine's BLAS allows.
    """

    phase: str                  # "forward" or "backward"
    what: str                   # "output", "weight gradient" or "input gradient"
    a_shape: tuple[int, int]    # a as stored; op(a) is a.T if transpose_a
    b_shape: tuple[int, int]
    transpose_a: bool = False
    transpose_b: bool = False

    @property
    def flops(self) -> int:
        """Multiply-adds times two: ``2 * m * k * n`` for op(a) (m, k) and op(b) (k, n)."""
        m, k = self.a_shape[::-1] if self.transpose_a else self.a_shape
        n = self.b_shape[0] if self.transpose_b else self.b_shape[1]
        return 2 * m * k * n

    def operands(self, rng: np.random.Generator, dtype: Any = np.float32
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random ``op(a)``, ``op(b)`` and an output buffer, for ``np.matmul(a, b, out=out)``.

        Transposed operands are views: numpy hands them to sgemm with its transpose flags.
        """
        a = rng.random(self.a_shape, dtype=np.float32).astype(dtype, copy=False)
        b = rng.random(self.b_shape, dtype=np.float32).astype(dtype, copy=False)
        a, b = (a.T if self.transpose_a else a), (b.T if self.transpose_b else b)
        return a, b, np.empty((a.shape[0], b.shape[1]), dtype)

    def swapped(self) -> GemmProduct:
        """The same product the other way round: ``op(b).T @ op(a).T``, its output transposed.

        The two differ only in memory layout (which operand's rows become the output's),
        and BLAS kernels may run one faster: the convolution picks its layout by that
        (``nnkit.layers.convolution``), and the bound takes the faster (``fastest_layout``).
        """
        return GemmProduct(self.phase, self.what, self.b_shape, self.a_shape,
                           transpose_a=not self.transpose_b, transpose_b=not self.transpose_a)


def fastest_layout(product: GemmProduct, rng: np.random.Generator, dtype: Any = np.float32,
                   iterations: int = 5) -> tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(median seconds, operands) of ``product`` or its ``swapped()`` twin, whichever is faster.

    Each layout runs ``iterations`` times after one warm-up, on random operands
    (``GemmProduct.operands``), with numpy's matmul on the BLAS's threads.
    """
    best: tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    for layout in (product, product.swapped()):
        a, b, out = operands = layout.operands(rng, dtype)
        runs = []
        for i in range(iterations + 1):
            start = time.perf_counter()
            np.matmul(a, b, out=out)
            if i:  # the first run warms up the BLAS threads and the caches
                runs.append(time.perf_counter() - start)
        if best is None or statistics.median(runs) < best[0]:
            best = statistics.median(runs), operands
    return best


class Layer:
    """Base class of all layers.

    Attributes:
        name: the layer's name; a model makes default names unique within itself.
        data: the output of the last ``ComputeFeature`` (a buffer reused across batches of
            the same shape: copy it if you keep it).
        grad: the gradient of the loss with respect to ``data``, set by the layer above
            (or the loss) during ``ComputeGradient``.
        params: the trainable parameters, weight first, then bias.
        state: the non-trainable arrays, by name (running statistics): saved in checkpoints
            and by ``save_model_parameter`` as ``layer/name``, restored on resume, carried
            into child-process runs, never touched by updaters. Create them with
            :meth:`add_state` in ``create_params``.
        training: True in training mode (dropout active), False in evaluation mode.
        rng: the generator used for parameter init and any random draw of this layer.
        workspace: the scratch memory this layer shares with the other layers of its model
            (:class:`Workspace`).
        input_grad_slot: while a model runs a training step, the name of the workspace
            buffer this layer writes its input gradient into (two, alternating down the
            stack: a layer's ``grad`` is overwritten two layers further down, so read an
            intermediate ``grad`` in calls by hand, not after ``fit``); None otherwise: the
            layer's own buffer.
        defer_param_grads: True while a model runs a training step whose updater computes
            gradients block by block (``Updater.takes_deferred``): a layer that can may then
            describe a param's gradient (``Param.defer``) rather than compute it. False in
            every call by hand.
    """

    #: Whether a layer below may need ``grad`` from this layer; input layers set False.
    accepts_grad = True
    #: The field of this layer's settings block in the job schema's ``LayerConf`` (``"dense"``
    #: for ``dense { output_dim: 10 }``, proto/nnkit.proto), next to the class like Caffe's
    #: ``REGISTER_LAYER_CREATOR``; None for layers a job config cannot name (losses, labels).
    conf_field: ClassVar[str | None] = None
    #: Schema fields whose Python argument has another name: ``{field: argument}``.
    conf_renames: ClassVar[dict[str, str]] = {}

    #: The registered class configs describe this one as: itself, or for a class declared
    #: ``register=False`` (a compatibility variant such as ``nnkit.singa``'s ``Dense``, whose
    #: ``get_config`` gives its parent's arguments) the registered layer it extends.
    config_class: ClassVar[type["Layer"] | None] = None

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not register:  # keeps its parent's name in the registry configs rebuild layers from
            cls.config_class = next((base for base in cls.__mro__[1:]
                                     if LAYER_CLASSES.get(base.__name__) is base), None)
        elif not cls.__name__.startswith("_"):
            LAYER_CLASSES[cls.__name__] = cls  # a later class of the same name replaces it
            cls.config_class = cls

    def __init__(self, name: str | None = None) -> None:
        self.name = name if name is not None else _snake(type(self).__name__)
        self.has_explicit_name = name is not None
        self.data: np.ndarray | None = None
        self.grad: np.ndarray | None = None
        self.params: list[Param] = []
        self.state: dict[str, np.ndarray] = {}
        self.training = True
        self.rng: np.random.Generator | None = None
        self.defer_param_grads = False
        self.workspace = Workspace()
        self.input_grad_slot: str | None = None
        self.srcs: tuple[Layer, ...] = ()
        self.input_shape: tuple[int, ...] | None = None  # without the batch axis
        self.dtype: np.dtype | None = None
        self._buffers: dict[str, np.ndarray] = {}

    # ----------------------------------------------------------------- description
    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def describe(self) -> str:
        """``Type 'name'``, the prefix of every error this layer raises."""
        return f"{type(self).__name__} '{self.name}'"

    def error(self, message: str, kind: type[Exception] = ValueError) -> Exception:
        """An exception whose message names this layer: ``raise self.error(...)``."""
        return kind(f"{self.describe()}: {message}")

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer (Keras style)."""
        return {"name": self.name}

    # ----------------------------------------------------------------- mode
    def train(self, mode: bool = True) -> "Layer":
        """Puts the layer in training mode (or evaluation mode with ``mode=False``)."""
        self.training = bool(mode)
        return self

    def eval(self) -> "Layer":
        """Puts the layer in evaluation mode: dropout passes inputs through unchanged."""
        return self.train(False)

    def distribute(self, world: Any, step: int) -> None:
        """Called by a model before each training batch with its gradient reducer.

        ``world`` is an :class:`nnkit.distributed.World` under distributed training (duck-typed:
        ``first_example``, ``allreduce``), else None; ``step`` is the batch's updater step.
        Layers whose forward pass depends on the batch beyond each example (BatchNormalization's
        statistics) or draws at random (Dropout) override it so that the result does not depend
        on how the global batch is cut into shards; the others have nothing to do.
        """

    # ----------------------------------------------------------------- building
    @property
    def built(self) -> bool:
        """True once ``build`` has fixed the input shape and created the params."""
        return self.input_shape is not None

    def build(self, input_shape: Sequence[int], dtype: Any = DEFAULT_DTYPE) -> None:
        """Fixes the per-example input shape and dtype and creates the parameters.

        Called by the first ``ComputeFeature``; a model may call it earlier. Subclasses with
        parameters override ``create_params``.
        """
        dtype = np.dtype(dtype)
        if dtype not in SUPPORTED_DTYPES:
            raise self.error(f"dtype {dtype} is not supported (float32 or float64)", TypeError)
        input_shape = tuple(int(d) for d in input_shape)
        self.output_shape(input_shape)  # validates before anything is fixed
        self.input_shape = input_shape
        self.dtype = dtype
        self.create_params(self.input_shape, dtype, self.rng or np.random.default_rng())

    def create_params(self, input_shape: tuple[int, ...], dtype: np.dtype,
                      rng: np.random.Generator) -> None:
        """Allocates ``self.params`` for this input shape; layers without params do nothing."""

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The per-example output shape for a per-example input shape (no batch axis)."""
        return tuple(input_shape)

    def param_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The shape of each parameter ``build`` creates for ``input_shape``, by name, without
        allocating anything (configs size a model before building it). Layers with
        parameters override it, and their ``create_params`` allocates these shapes."""
        return {}

    def require_images(self, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Returns ``(C, H, W)``; raises naming the layer unless the input is a batch of images."""
        if len(input_shape) != 3:
            raise self.error(f"expects 4-D input (batch, channels, height, width), got "
                             f"{len(input_shape) + 1}-D input of shape "
                             f"(batch, {', '.join(map(str, input_shape))})")
        return tuple(input_shape)

    def add_state(self, name: str, value: np.ndarray) -> np.ndarray:
        """Registers a non-trainable array (see :attr:`state`); returns it (the live array)."""
        if any(p.name == name for p in self.params) or "/" in name:
            raise self.error(f"state name {name!r} is taken by a parameter or contains '/'")
        self.state[name] = np.ascontiguousarray(value)
        return self.state[name]

    def GetState(self) -> dict[str, np.ndarray]:
        """The non-trainable arrays by name (the live arrays, not copies)."""
        return dict(self.state)

    def SetState(self, **arrays: np.ndarray) -> None:
        """Copies arrays into the named state arrays, checking every name and shape."""
        for name, a in arrays.items():
            if name not in self.state:
                raise self.error(f"SetState: no state {name!r} (has "
                                 f"{', '.join(self.state) or 'none'})")
            a = np.asarray(a)
            if a.shape != self.state[name].shape:
                raise self.error(f"SetState: {name} has shape {self.state[name].shape}, got {a.shape}")
            self.state[name][...] = a

    def param_count(self) -> int:
        """The number of trainable scalars."""
        return sum(int(p.data.size) for p in self.params if p.data is not None)

    # ----------------------------------------------------------------- the per-layer API
    def ComputeFeature(self, *srcs: "Layer") -> np.ndarray:
        """Computes ``self.data`` from the source layer's ``data``."""
        x = self._source_data(srcs)
        if not self.built:
            self.build(x.shape[1:], x.dtype)
        elif x.shape[1:] != self.input_shape or x.dtype != self.dtype:
            raise self.error(
                f"input of shape {x.shape} and dtype {x.dtype} from {srcs[0].describe()} does not "
                f"match the shape (batch, {', '.join(map(str, self.input_shape))}) and dtype "
                f"{self.dtype} this layer was built for")
        self.srcs = srcs
        self.grad = None
        self.data = self.forward(x)
        return self.data

    def ComputeGradient(self) -> None:
        """Fills each param's ``grad`` and the source layer's ``grad`` from ``self.grad``."""
        if self.data is None or not self.srcs:
            raise self.error("ComputeGradient called before ComputeFeature", RuntimeError)
        if self.grad is None:
            raise self.error(
                "has no gradient: call ComputeGradient on the layer above it (or on the loss) first",
                RuntimeError)
        if self.grad.shape != self.data.shape:
            raise self.error(f"gradient of shape {self.grad.shape} does not match the output "
                             f"shape {self.data.shape}")
        src = self.srcs[0]
        dx = self.backward(self.grad, need_input_grad=src.accepts_grad)
        if src.accepts_grad:
            src.grad = dx

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Returns the output for a batch ``x``; may keep what ``backward`` needs."""
        raise NotImplementedError

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Fills param grads from ``dy`` and returns the input gradient (None if not needed)."""
        raise NotImplementedError

    def gemm_products(self) -> list[GemmProduct]:
        """The matrix products of this layer's training step at its last batch's shapes.

        Forward, then backward: the weight gradient, and the input gradient when the layer
        below takes one. Empty for a layer without matrix products (the default).
        """
        return []

    def GetParams(self) -> list[np.ndarray]:
        """The parameter arrays, weight then bias (the live arrays, not copies)."""
        return [p.data for p in self.params]

    def SetParams(self, *arrays: np.ndarray) -> None:
        """Copies ``arrays`` into the parameters, weight then bias, checking every shape."""
        if not self.built:
            raise self.error("SetParams before the layer is built: run ComputeFeature once or "
                             "call build(input_shape)", RuntimeError)
        if len(arrays) != len(self.params):
            raise self.error(f"SetParams got {len(arrays)} arrays, expected {len(self.params)} "
                             f"({', '.join(p.name for p in self.params)})")
        for p, a in zip(self.params, arrays):
            a = np.asarray(a)
            if a.shape != p.data.shape:
                raise self.error(f"SetParams: {p.name} has shape {p.data.shape}, got {a.shape}")
            p.data[...] = a

    # ----------------------------------------------------------------- helpers for subclasses
    def _source_data(self, srcs: Sequence["Layer"]) -> np.ndarray:
        if len(srcs) != 1:
            raise self.error(f"ComputeFeature takes one source layer, got {len(srcs)}", TypeError)
        src = srcs[0]
        if not isinstance(src, Layer):
            raise self.error(f"source must be a Layer, got {type(src).__name__}", TypeError)
        if src.data is None:
            raise self.error(f"source {src.describe()} has no data: it was never computed or fed",
                             RuntimeError)
        return src.data

    def input_grad_buffer(self, shape: tuple[int, ...], dtype: Any | None = None) -> np.ndarray:
        """The array ``backward`` writes the input gradient into: the workspace's slot named
        by :attr:`input_grad_slot` in a model's training step, else this layer's own."""
        if self.input_grad_slot is None:
            return self.buffer("dx", shape, dtype)
        return self.workspace.view(self.input_grad_slot, math.prod(shape), shape,
                                   dtype or self.dtype)

    def buffer(self, key: str, shape: tuple[int, ...], dtype: Any | None = None) -> np.ndarray:
        """A scratch array reused while ``shape`` and ``dtype`` stay the same (uninitialized)."""
        dtype = np.dtype(dtype or self.dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.empty(shape, dtype)
            self._buffers[key] = buf
        return buf


#: Every public layer class by name: what model configs (``get_config``) and job configs name.
LAYER_CLASSES: dict[str, type[Layer]] = {}


def conf_layer_types() -> dict[str, type[Layer]]:
    """The layer classes a job config can name, by their ``LayerConf`` field (the one registry)."""
    # Only a class that names its field itself: a subclass (a test's variant of Dropout) does
    # not take over its parent's field.
    return {cls.conf_field: cls for cls in LAYER_CLASSES.values()
            if cls.__dict__.get("conf_field") is not None}


def pair(value: Any, what: str, minimum: int, owner: str) -> tuple[int, int]:
    """An int or an ``(h, w)`` pair of ints as ``(h, w)``, every entry ``>= minimum``.

    An int means the same for both axes. Raises TypeError (not ints, bools included) or
    ValueError (too small), both naming ``owner`` and ``what``.
    """
    items = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(items) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  for v in items):
        raise TypeError(f"{owner}: {what} must be an int or a pair (h, w) of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{owner}: {what} must be >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


def param_specs(prefix: str, init: str | None, kwargs: dict[str, Any],
                default: initializers.InitSpec, owner: str = "") -> tuple[initializers.InitSpec, float, float]:
    """Reads ``{prefix}_std``, ``{prefix}_lr`` ... from a layer's keyword arguments.

    Returns the init spec and the lr and wd multipliers. ``init`` applies to the weight
    (``prefix == 'w'``); without it the kind is inferred from the values given
    (``w_std``/``w_mean`` mean gaussian, ``w_value`` constant, ``w_low``/``w_high`` uniform).
    Raises ValueError naming ``owner`` (the layer) and the argument for a value out of range.
    """
    values = {k: kwargs.pop(f"{prefix}_{k}") for k in ("std", "mean", "low", "high", "value")
              if f"{prefix}_{k}" in kwargs}
    lr, wd = kwargs.pop(f"{prefix}_lr", 1.0), kwargs.pop(f"{prefix}_wd", 1.0)
    try:
        lr_mult, wd_mult = _multiplier(f"{prefix}_lr", lr), _multiplier(f"{prefix}_wd", wd)
        spec = initializers.spec_from(init, values, default, prefix)
    except ValueError as e:
        raise ValueError(f"{owner}: {e}" if owner else str(e)) from None
    return spec, lr_mult, wd_mult


def _multiplier(name: str, value: Any) -> float:
    """A learning-rate or weight-decay multiplier: a finite number >= 0 (a negative one
    would climb the loss, or make the decay grow the weights)."""
    v = float(value)
    if not 0.0 <= v < float("inf"):  # also rejects NaN
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def reject_unknown(layer_type: str, kwargs: dict[str, Any]) -> None:
    """Raises a TypeError naming every keyword argument a layer does not know."""
    if kwargs:
        raise TypeError(f"{layer_type}: unknown argument(s) {', '.join(sorted(kwargs))}")


def name_layers(layers: Sequence[Layer], owner: str = "model") -> None:
    """Makes names unique within ``layers``: explicit names stay, default ones become ``type_k``.

    ``k`` counts per type within this list only, so building a second model never shifts the
    names of the first. Raises ValueError naming ``owner`` if two explicit names collide.
    """
    taken: set[str] = set()
    for layer in layers:
        if layer.has_explicit_name:
            if layer.name in taken:
                raise ValueError(f"{owner}: two layers are named {layer.name!r}")
            taken.add(layer.name)
    counts: dict[str, int] = {}
    for layer in layers:
        if not layer.has_explicit_name:
            base = layer.name
            while True:
                counts[base] = counts.get(base, 0) + 1
                candidate = f"{base}_{counts[base]}"
                if candidate not in taken:
                    break
            layer.name = candidate
            layer.has_explicit_name = True
            taken.add(candidate)


def set_seed(layers: Iterable[Layer], seed: int) -> None:
    """Gives each layer its own generator, all derived from one ``seed``.

    Layer i always gets the same stream for the same seed, whatever other models exist.
    """
    layers = list(layers)
    children = np.random.SeedSequence(seed).spawn(len(layers))
    for layer, child in zip(layers, children):
        layer.rng = np.random.default_rng(child)
