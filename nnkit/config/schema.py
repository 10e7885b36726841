"""The job schema (``proto/nnkit.proto``) <-> nnkit objects: layers, updaters, models.

Mapping rules: a schema field is named like the Python argument it sets, and an unset field
takes the Python default, so defaults live only in the code. ``Layer.get_config()`` and
``Updater.get_config()`` are converted generically field by field; an argument without a field
is an error, which keeps the schema and the code from drifting apart unnoticed.
"""
from __future__ import annotations

import inspect
import math
import os
import re
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .. import updaters as updaters_module
from ..layers import Accuracy, Layer
from ..layers.base import SUPPORTED_DTYPES, conf_layer_types
from ..layers.input import _InputLayer
from ..model import LayerShapeError, Sequential
from ..proto import JobConf, LayerConf, ModelConf, ParamConf, UpdaterConf
from .text import ConfigError, Origins, Where, decode_config, parse_job

#: Batch size of a data source that gives none.
DEFAULT_BATCH_SIZE = 32
#: Models from configs needing more memory than this are refused before anything is
#: allocated (see :func:`check_model_memory`); ``$NNKIT_MAX_MODEL_BYTES`` overrides it.
DEFAULT_MAX_MODEL_BYTES = 4 * 2**30
MAX_MODEL_BYTES_ENV = "NNKIT_MAX_MODEL_BYTES"


# ================================================================= layers, updaters: the tables
def _layer_types() -> dict[str, type[Layer]]:
    """Layer classes by their field in LayerConf's ``type`` oneof: each class names its own
    (``Layer.conf_field``), so a new layer needs no entry here, only its proto message."""
    return conf_layer_types()


def _argument(cls: type[Layer], field_name: str) -> str:
    """The Python argument a schema field sets."""
    return cls.conf_renames.get(field_name, field_name)


def _field_of(cls: type[Layer], argument: str) -> str:
    """The schema field of a Python argument."""
    return {v: k for k, v in cls.conf_renames.items()}.get(argument, argument)


#: Updater classes by their UpdaterConf.Type name.
_UPDATERS: dict[str, type[updaters_module.Updater]] = {
    name.lower(): cls for name, cls in updaters_module.UPDATERS.items()}

# ParamConf fields and the suffix of the layer keyword argument each sets (w_std, b_lr...).
_PARAM_SUFFIX = {"mean": "mean", "std": "std", "low": "low", "high": "high", "value": "value",
                 "lr_mult": "lr", "wd_mult": "wd"}
_PARAM_FIELD = {suffix: name for name, suffix in _PARAM_SUFFIX.items()}
_PARAM_ARG = re.compile(rf"([wb])_({'|'.join(_PARAM_FIELD)})")
_METRIC = re.compile(r"top(\d+)_accuracy")
# Layer fields holding an int or an (h, w) pair: one value in the config means both axes.
_PAIRS = ("kernel", "stride", "pad", "pool_size")


def _defaults(*functions: Any) -> dict[str, Any]:
    """Keyword defaults of ``functions`` (later ones do not override earlier ones)."""
    out: dict[str, Any] = {}
    for fn in functions:
        for p in inspect.signature(fn).parameters.values():
            if p.default is not inspect.Parameter.empty:
                out.setdefault(p.name, p.default)
    return out


DEFAULT_MODEL_NAME: str = _defaults(Sequential.__init__)["name"]


def _required(cls: type) -> list[str]:
    """Constructor arguments of ``cls`` without a default (other than self and **kwargs)."""
    return [p.name for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
            if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]


def _field_value(fd: FieldDescriptor, value: Any) -> Any:
    """A Python value in the form field ``fd`` holds (enum numbers, lists, dtype names)."""
    if fd.is_repeated:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if fd.name in _PAIRS and len(items) == 2 and items[0] == items[1]:
            items = items[:1]  # an (h, w) pair with h == w is written once
        return [_field_value_one(fd, v) for v in items]
    return _field_value_one(fd, value)


def _field_value_one(fd: FieldDescriptor, value: Any) -> Any:
    """One (non-list) value in field form; ValueError for a name the enum does not list."""
    if fd.enum_type is not None:
        entry = fd.enum_type.values_by_name.get(str(value))
        if entry is None:
            raise ValueError(f"{value!r} is not one of {', '.join(fd.enum_type.values_by_name)}")
        return entry.number
    if fd.type == FieldDescriptor.TYPE_STRING and fd.name == "dtype":
        return np.dtype(value).name
    if fd.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64):
        return int(value)
    if fd.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE:
        return float(value)
    return value


def _python_value(msg: Message, fd: FieldDescriptor) -> Any:
    """The Python argument a set field stands for (enum names, pairs, tuples)."""
    value = getattr(msg, fd.name)
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name
    if fd.is_repeated:
        return tuple(value)
    return value


def _set(msg: Message, name: str, value: Any) -> None:
    """Sets field ``name`` of ``msg`` from a Python argument value."""
    fd = msg.DESCRIPTOR.fields_by_name[name]
    converted = _field_value(fd, value)
    if fd.is_repeated:
        getattr(msg, name)[:] = converted
    else:
        setattr(msg, name, converted)


def _is_default(fd: FieldDescriptor, value: Any, default: Any) -> bool:
    """True if ``value`` is what the Python default gives (so the field may stay unset)."""
    if default is inspect.Parameter.empty:
        return False
    if value is None or default is None:
        return value is default
    try:
        return _field_value(fd, value) == _field_value(fd, default)
    except (TypeError, ValueError):
        return False


# ============================================================================ layers <-> proto
def _layer_to_conf(layer: Layer) -> LayerConf:
    """The LayerConf of a layer; ValueError if the schema cannot describe it."""
    cls = type(layer).config_class or type(layer)  # a register=False variant: as its parent
    kind_name = cls.conf_field
    if kind_name is None or _layer_types().get(kind_name) is not cls:
        raise ValueError(f"{layer.describe()}: the job schema has no layer type for class "
                         f"{cls.__qualname__}; types: {', '.join(_layer_types())}")
    conf = LayerConf()
    if layer.has_explicit_name:
        conf.name = layer.name
    block = getattr(conf, kind_name)
    block.SetInParent()  # a layer with all defaults still needs its (empty) block
    defaults = _defaults(cls.__init__)
    for arg, value in layer.get_config().items():
        if arg == "name" or value is None:
            continue
        param = _PARAM_ARG.fullmatch(arg)
        if param:
            prefix, suffix = param.groups()
            _set(getattr(block, prefix), _PARAM_FIELD[suffix], value)
            continue
        if arg == "init":
            _set(block.w, "init", value)
            continue
        field_name = _field_of(cls, arg)
        fd = block.DESCRIPTOR.fields_by_name.get(field_name)
        if fd is None:
            raise ValueError(f"{layer.describe()}: argument {arg!r} has no field in "
                             f"{block.DESCRIPTOR.name} (proto/nnkit.proto)")
        if not _is_default(fd, value, defaults.get(arg, inspect.Parameter.empty)):
            _set(block, field_name, value)
    return conf


def _layer_from_conf(conf: LayerConf, where: Where) -> Layer:
    """The layer a LayerConf describes; ConfigError (at the right line) if it cannot be built."""
    kind_name = conf.WhichOneof("type")
    if kind_name is None:
        raise where.error(f"the layer has no type: give one settings block such as "
                          f"dense {{ output_dim: 10 }}; types: {', '.join(_layer_types())}")
    cls = _layer_types().get(kind_name)
    if cls is None:
        raise where.error(f"no nnkit layer class handles {kind_name!r} (types: "
                          f"{', '.join(_layer_types())})")
    block = getattr(conf, kind_name)
    at = where.child(kind_name)
    kwargs: dict[str, Any] = {}
    fields_of_args: dict[str, str] = {}  # Python argument -> field label, to place errors
    for fd, _ in block.ListFields():
        if fd.message_type is ParamConf.DESCRIPTOR:
            param_args = _param_kwargs(getattr(block, fd.name), fd.name, at.child(fd.name))
            for arg, (value, field_label) in param_args.items():
                kwargs[arg] = value
                fields_of_args[arg] = field_label
            continue
        value = _python_value(block, fd)
        if fd.name in _PAIRS:
            if len(value) not in (1, 2):
                raise at.error(f"takes one value or two ([h, w]), got {len(value)}", fd.name)
            value = value[0] if len(value) == 1 else value
        kwargs[_argument(cls, fd.name)] = value
        fields_of_args[_argument(cls, fd.name)] = fd.name
    for arg in _required(cls):
        if arg not in kwargs and arg != "name":
            raise at.error("missing value (required)", _field_of(cls, arg))
    if conf.HasField("name"):
        kwargs["name"] = conf.name
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise _blame(at, str(e), fields_of_args) from None


def _param_kwargs(param: ParamConf, prefix: str, at: Where) -> dict[str, tuple[Any, str]]:
    """The layer keyword arguments of a ``w``/``b`` block: {argument: (value, field name)}."""
    out: dict[str, tuple[Any, str]] = {}
    for fd, _ in param.ListFields():
        if fd.name == "init":
            if prefix != "w":
                raise at.error("the bias takes no init: its kind follows from its values "
                               "(value: constant, mean/std: gaussian, low/high: uniform)", "init")
            out["init"] = (_python_value(param, fd), f"{prefix}.init")
        else:
            out[f"{prefix}_{_PARAM_SUFFIX[fd.name]}"] = (getattr(param, fd.name), f"{prefix}.{fd.name}")
    return out


def _blame(at: Where, message: str, fields_of_args: dict[str, str]) -> ConfigError:
    """A ConfigError for a Python error message, placed at the field the message names.

    When it names several (``lr_type 'fixed' does not use gamma``), the last one is the culprit.
    """
    named = [(m.start(), label) for arg, label in fields_of_args.items()
             for m in re.finditer(rf"\b{re.escape(arg)}\b", message)]
    if not named:
        return at.error(message)
    where = at
    for part in max(named)[1].split("."):
        where = where.child(part)
    return where.error(message)


# ========================================================================== updater <-> proto
def _updater_to_conf(updater: updaters_module.Updater, conf: UpdaterConf) -> None:
    """Fills ``conf`` from an updater's get_config (the lr, and the values that differ from defaults)."""
    cls = type(updater)
    type_name = cls.__name__.lower()
    if _UPDATERS.get(type_name) is not cls:
        raise ValueError(f"the job schema has no updater type for class {cls.__qualname__}")
    conf.SetInParent()
    _set(conf, "type", type_name)
    defaults = {**_defaults(cls.__init__, updaters_module.Updater.__init__), "lr_type": "fixed"}
    for arg, value in updater.get_config().items():
        if value is None or (isinstance(value, (tuple, list)) and not value):
            continue
        fd = conf.DESCRIPTOR.fields_by_name.get(arg)
        if fd is None:
            raise ValueError(f"{cls.__name__}: argument {arg!r} has no field in UpdaterConf")
        # The learning rate is written even at its default: it is the field runs are compared
        # by (the store's `--where updater.lr < ...`), and its default differs per type.
        if arg == "lr" or not _is_default(fd, value, defaults.get(arg, inspect.Parameter.empty)):
            _set(conf, arg, value)


def updater_from_conf(conf: UpdaterConf, where: Where) -> updaters_module.Updater:
    """The updater an UpdaterConf describes; ConfigError at the offending line otherwise."""
    kwargs = {fd.name: _python_value(conf, fd) for fd, _ in conf.ListFields() if fd.name != "type"}
    type_name = UpdaterConf.Type.Name(conf.type)
    cls = _UPDATERS[type_name]
    takes = set(_defaults(cls.__init__, updaters_module.Updater.__init__))
    for name in kwargs:
        if name not in takes:
            raise where.error(f"updater type {type_name} does not use {name} (it takes "
                              f"{', '.join(sorted(takes))})", name)
    if len(conf.step) != len(conf.step_lr):
        raise where.error(f"step has {len(conf.step)} entries but step_lr has "
                          f"{len(conf.step_lr)}: they pair up (step_lr[i] applies from step[i] on)",
                          "step_lr" if conf.step_lr else "step")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise _blame(where, str(e), {k: k for k in kwargs}) from None


# ============================================================================ model <-> proto
def model_to_proto(model: Sequential) -> JobConf:
    """The JobConf of a model: name, seed, layers, loss, metrics and updater.

    A model built from a job (``Job.build_model``) keeps that job's data and run sections, so
    a checkpoint of it can be evaluated without the original file. Raises ValueError if a layer
    or the updater has no place in the schema (a user-defined class, for instance).
    """
    job = JobConf()
    if model.job is not None:
        job.CopyFrom(model.job)
        for name in ("name", "seed", "model", "updater"):
            job.ClearField(name)
    if model.name != DEFAULT_MODEL_NAME:
        job.name = model.name
    if model.seed is not None:
        job.seed = int(model.seed)
    conf = job.model
    conf.SetInParent()
    if model.input_shape is not None:
        conf.input_shape[:] = [int(d) for d in model.input_shape]
    conf.layer.extend(_layer_to_conf(layer) for layer in model.layers)
    if model.loss_layer is not None:
        _set(conf, "loss", model.loss_layer.lossname)
        metrics = [name if layer is None else f"top{layer.topk}_accuracy"
                   for name, layer in model.metrics]
        if metrics != _default_metrics(model.loss_layer.lossname):
            conf.metric[:] = metrics
    if model.updater is not None:
        _updater_to_conf(model.updater, job.updater)
    return job


def _default_metrics(lossname: str) -> list[str]:
    """Metrics when the config names none: top-1 accuracy with the softmax loss."""
    return ["accuracy"] if lossname == "softmaxloss" else []


def _metric_from_text(name: str, at: Where) -> str | Accuracy:
    """What compile() takes for a metric name: 'accuracy', or an Accuracy layer for top<k>."""
    if name == "accuracy":
        return name
    m = _METRIC.fullmatch(name)
    if m is None or int(m.group(1)) < 1:
        raise at.error(f"unknown metric {name!r}: use 'accuracy' or 'top<k>_accuracy'")
    return Accuracy(topk=int(m.group(1)))


def check_numbers(msg: Message, where: Where) -> None:
    """Raises ConfigError at the first floating-point field of ``msg`` (and the messages in
    it) that is NaN or infinite: no setting of a job means anything as either, and an
    infinite one only turns into NaN later, far from the line that caused it."""
    for fd, value in msg.ListFields():
        items = list(value) if fd.is_repeated else [value]
        for i, item in enumerate(items):
            at = where.child(fd.name, i if fd.is_repeated else None)
            if fd.message_type is not None:
                check_numbers(item, at)
            elif fd.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT) \
                    and not math.isfinite(item):
                raise at.error(f"must be a finite number, got {item}")


def build_model_from_job(job: JobConf, where: Where, compile_always: bool) -> Sequential:
    """A Sequential from a JobConf: layers, then (if described or asked) loss/metrics/updater."""
    check_numbers(job, where)
    if job.HasField("seed") and job.seed < 0:
        raise where.error(f"must be >= 0, got {job.seed}", "seed")
    conf = job.model
    mwhere = where.child("model")
    if not conf.layer:
        raise mwhere.error("the model has no layers: add layer { ... } blocks", "layer")
    model = Sequential(name=job.name if job.HasField("name") else DEFAULT_MODEL_NAME,
                       input_shape=list(conf.input_shape) or None,
                       seed=job.seed if job.HasField("seed") else None)
    for i, layer_conf in enumerate(conf.layer):
        at = mwhere.child("layer", i)
        layer = _layer_from_conf(layer_conf, at)
        try:
            model.add(layer)
        except (TypeError, ValueError) as e:
            raise at.error(str(e)) from None
        if i == 0 and isinstance(layer, _InputLayer) and layer.dtype not in SUPPORTED_DTYPES \
                and len(conf.layer) > 1:  # the layers above take the input layer's dtype
            raise at.child(layer_conf.WhichOneof("type")).error(
                f"the layers after an input layer compute in its dtype, which must be float32 "
                f"or float64, got {layer.dtype}", "dtype")
    if compile_always or conf.HasField("loss") or conf.metric or job.HasField("updater"):
        lossname = ModelConf.Loss.Name(conf.loss)
        metrics = [_metric_from_text(m, mwhere.child("metric", i)) for i, m in enumerate(conf.metric)] \
            if conf.metric else _default_metrics(lossname)
        updater = updater_from_conf(job.updater, where.child("updater"))
        try:
            model.compile(updater, lossname, metrics)
        except ValueError as e:
            raise mwhere.error(str(e), "metric" if conf.metric else "loss") from None
    model.job = JobConf()
    model.job.CopyFrom(job)  # a snapshot: later edits of ``job`` do not reach the model
    return model


def model_from_proto(proto: JobConf | str | bytes, source: str = "<proto>",
                     max_model_bytes: int | None = None) -> Sequential:
    """Rebuilds a model from a JobConf (or its text format) as ``Sequential.to_proto()`` gives it.

    The model is compiled when the config has a loss, metrics or an updater; with the same
    seed it gets the same initial weights as the model that was converted. The data and run
    sections, if any, are kept on ``model.job``. ``source`` names the origin in errors. Raises
    ConfigError for an invalid config, or one whose model would need more memory than
    ``max_model_bytes`` (default: see :func:`model_memory_limit`), before allocating it.
    """
    if isinstance(proto, (str, bytes)):
        text = decode_config(proto, source) if isinstance(proto, bytes) else proto
        job, origins = parse_job(text, source)
    elif isinstance(proto, JobConf):
        job, origins = proto, Origins(source)
    else:
        raise TypeError(f"model_from_proto takes a JobConf or its text, got {type(proto).__name__}")
    where = Where(origins)
    model = build_model_from_job(job, where, compile_always=False)
    shape = model.input_shape or model.layers[0].input_shape
    if shape is not None:  # else the first batch tells it, and the model is sized then
        walk = shape_walk(model, shape, where.child("model"))
        check_model_memory(model, walk, where.child("model"), max_model_bytes)
    return model


# ============================================================================ model size
def check_input_shape(input_shape: tuple[int, ...], mwhere: Where) -> None:
    """ConfigError at ``model.input_shape`` unless every entry is >= 1."""
    if min(input_shape, default=1) < 1:
        raise mwhere.error(f"every entry must be >= 1, got {tuple(input_shape)}", "input_shape")


def shape_walk(model: Sequential, input_shape: tuple[int, ...], mwhere: Where
               ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``model.shapes(input_shape)``, a layer that does not fit its input a ConfigError at
    its line. Nothing is allocated; the model's layers must be one to one with the config's."""
    check_input_shape(input_shape, mwhere)
    try:
        walk = model.shapes(tuple(input_shape))
    except LayerShapeError as e:
        raise mwhere.child("layer", e.layer_index).error(
            f"{e.layer} does not fit its input of shape {e.batch_shape}: {e.reason}") from None
    for i, (layer, (shape_in, _)) in enumerate(zip(model.layers, walk)):
        stride, pad = getattr(layer, "stride", None), getattr(layer, "pad", None)
        if stride is None or pad is None or len(shape_in) != 3:
            continue
        padded = tuple(size + 2 * p for size, p in zip(shape_in[1:], pad))
        if any(s > size for s, size in zip(stride, padded)):
            # One window fits whatever the stride, and pooling's scratch grows with it
            # (a stride of 2**31 would take 64 GiB).
            raise mwhere.child("layer", i).child(layer.conf_field).error(
                f"stride {stride} is larger than the padded input {padded}: one window fits "
                f"whatever the stride; give at most the padded size", "stride")
    return walk


def model_memory_limit(limit: int | None = None) -> int:
    """The memory limit of models from configs: ``limit``, else ``$NNKIT_MAX_MODEL_BYTES``
    (a whole number of bytes), else :data:`DEFAULT_MAX_MODEL_BYTES` (4 GiB)."""
    if limit is not None:
        return int(limit)
    text = os.environ.get(MAX_MODEL_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_MODEL_BYTES
    try:
        value = int(float(text)) if re.fullmatch(r"\d+(\.\d*)?(e\d+)?", text) else -1
    except OverflowError:
        value = -1
    if value < 1:
        raise ConfigError(f"${MAX_MODEL_BYTES_ENV}", "", f"must be a number of bytes >= 1 "
                          f"(e.g. 4e9), got {text!r}")
    return value


def _gib(n: int) -> str:
    """Bytes for a message: ``12.3 GiB``, ``4,096.0 GiB``, ``0.25 GiB``."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**30:.2g} GiB"


def check_model_memory(model: Sequential, walk: list[tuple[tuple[int, ...], tuple[int, ...]]],
                       mwhere: Where, limit: int | None = None) -> int:
    """Refuses (ConfigError) a model that would need more than ``limit`` bytes; returns the need.

    Computed before anything is allocated, from the shape walk ``walk`` (``model.shapes()``)
    and each layer's ``param_shapes``: every parameter value takes its data, its gradient
    and the updater's slots (momentum, Adam's two moments ...), and every layer holds its
    output and its input gradient for one example. So this is a lower bound of a training
    step's memory (a batch multiplies the second part), and exact in the parameters. The
    message points at the layer that needs the most.
    """
    limit = model_memory_limit(limit)
    first = model.layers[0]  # the layers compute in an input layer's dtype, else float32
    itemsize = first.dtype.itemsize if isinstance(first, _InputLayer) else 4
    per_value = itemsize * (2 + len(model.updater.slot_names if model.updater else ()))
    needs, params = [], 0
    for layer, (shape_in, shape_out) in zip(model.layers, walk):
        count = sum(math.prod(s) for s in layer.param_shapes(shape_in).values())
        params += count
        needs.append(count * per_value + (math.prod(shape_in) + math.prod(shape_out)) * itemsize)
    total = sum(needs)
    if total > limit:
        worst = max(range(len(needs)), key=needs.__getitem__)
        raise mwhere.child("layer", worst).error(
            f"the model would need at least {_gib(total)} ({params:,} parameters with their "
            f"gradients and updater slots, and one example's activations), more than the "
            f"limit of {_gib(limit)} (set ${MAX_MODEL_BYTES_ENV} to change it); this layer, "
            f"from {walk[worst][0]} to {walk[worst][1]} per example, needs {_gib(needs[worst])}")
    return total

