"""Job configs: the protobuf schema (``proto/nnkit.proto``) <-> nnkit objects, with validation.

A job is a :class:`~nnkit.proto.JobConf`, usually written in protobuf text format like Caffe's
prototxt (see ``examples/mnist_mlp.conf``). :func:`load_job` parses and validates one and
returns a :class:`Job`, which builds the model, the updater and the data::

    job = nnkit.load_job("examples/mnist_mlp.conf", overrides=["run.steps=50"])
    model = job.build_model()                # a compiled, seeded Sequential
    x, y = job.load_data("train")            # normalized as the config says
    print(job.to_text())

    text = model.to_proto()                  # any Sequential -> JobConf (model and updater)
    same = nnkit.model_from_proto(text)      # ... and back: same config, same initial weights

Mapping rules: a schema field is named like the Python argument it sets, and an unset field
takes the Python default, so defaults live only in the code. ``Layer.get_config()`` and
``Updater.get_config()`` are converted generically field by field; an argument without a field
is an error, which keeps the schema and the code from drifting apart unnoticed.

Errors are :class:`ConfigError` and name the place (``file:line``, or the ``--set`` item that
put the value there), the field (``model.layer[3].dense.output_dim``) and the problem.
"""
from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from . import datasets
from . import updaters as updaters_module
from .layers import (LRN2D, Accuracy, Activation, AvgPooling2D, Convolution2D, Dense, Dropout,
                     Dummy, ImageInput, Layer, MaxPooling2D)
from .layers.input import _InputLayer
from .model import Sequential
from .proto import JobConf, LayerConf, ModelConf, ParamConf, UpdaterConf

__all__ = ["ConfigError", "Job", "load_job", "parse_job", "model_from_proto", "model_to_proto",
           "apply_override", "DATASET_SHAPES"]

#: Per-example shape and number of classes of the datasets a job may name (checked before any
#: file is read, so that a model that does not fit its data fails at load time).
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
}
DEFAULT_BATCH_SIZE = 32


# ====================================================================================== errors
class ConfigError(ValueError):
    """A job config that cannot be used; the message names the place, the field and the problem.

    Attributes:
        location: ``file:line``, ``file``, or the ``--set key=value`` item responsible.
        field: the dotted field path, e.g. ``model.layer[2].dense.output_dim`` ('' for the job).
        problem: the bare message.
    """

    def __init__(self, location: str, field: str, problem: str) -> None:
        self.location, self.field, self.problem = location, field, problem
        super().__init__(f"{location}: {field + ': ' if field else ''}{problem}")


# A path to a value in a JobConf: ((field name, index), ...); index 0 for singular fields.
FieldPath = tuple[tuple[str, int], ...]


@dataclass
class _Origins:
    """Where each field of a job came from: a line of a file, or a ``--set`` item."""

    source: str                                  # the file (or "<string>", "<checkpoint ...>")
    lines: dict[FieldPath, int] = field(default_factory=dict)
    overrides: dict[FieldPath, str] = field(default_factory=dict)

    def locate(self, path: FieldPath) -> str:
        """The most precise origin of ``path``: itself, else its nearest ancestor, else the file."""
        for end in range(len(path), 0, -1):
            prefix = path[:end]
            if prefix in self.overrides:
                return self.overrides[prefix]
            if prefix in self.lines:
                return f"{self.source}:{self.lines[prefix]}"
        return self.source


@dataclass(frozen=True)
class _Where:
    """A position in the job being converted: makes errors that point at the right line."""

    origins: _Origins
    path: FieldPath = ()
    label: str = ""

    def child(self, name: str, index: int | None = None) -> "_Where":
        """The field ``name`` (element ``index`` of a repeated field) below this position."""
        label = f"{self.label}.{name}" if self.label else name
        if index is not None:
            label += f"[{index}]"
        return _Where(self.origins, self.path + ((name, index or 0),), label)

    def error(self, problem: str, field_name: str | None = None) -> ConfigError:
        """A ConfigError at this position (or at its field ``field_name``)."""
        where = self.child(field_name) if field_name else self
        return ConfigError(self.origins.locate(where.path), where.label, problem)


# ====================================================================== text and locations
_TOKEN = re.compile(r"""\s+|\#[^\n]*|"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|[\w.+-]+|.""")


def _field_lines(text: str) -> dict[FieldPath, int]:
    """The line (1-based) of every field in a text-format message, keyed by field path.

    ``text_format`` keeps no locations, so this walks the (already validated) text again.
    Elements of repeated fields are numbered in order, ``[a, b]`` lists included.
    """
    tokens: list[tuple[str, int]] = []
    line = 1
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if not tok.isspace() and not tok.startswith("#"):
            tokens.append((tok, line))
        line += tok.count("\n")
    lines: dict[FieldPath, int] = {}
    pos = 0

    def peek() -> str:
        return tokens[pos][0] if pos < len(tokens) else ""

    def value(path: FieldPath, tok_line: int) -> None:
        """Consumes one value (scalar, adjacent strings, or a message) of the field at ``path``."""
        nonlocal pos
        lines.setdefault(path, tok_line)
        if peek() in ("{", "<"):
            close = "}" if peek() == "{" else ">"
            pos += 1
            body(path, close)
            pos += 1
        else:
            is_string = peek()[:1] in "\"'"
            pos += 1
            while is_string and peek()[:1] in ("\"", "'"):
                pos += 1

    def body(path: FieldPath, close: str) -> None:
        nonlocal pos
        counts: dict[str, int] = {}
        while pos < len(tokens) and peek() != close:
            name, name_line = tokens[pos]
            pos += 1
            if name == "[":  # an extension or Any type name: [a.b.c]
                parts = []
                while peek() not in ("]", ""):
                    parts.append(peek())
                    pos += 1
                pos += 1
                name = "".join(parts)
            if peek() == ":":
                pos += 1
            if peek() == "[":  # a list: each element is one index of the repeated field
                pos += 1
                while peek() not in ("]", ""):
                    if peek() == ",":
                        pos += 1
                        continue
                    index = counts.get(name, 0)
                    value(path + ((name, index),), tokens[pos][1])
                    counts[name] = index + 1
                pos += 1
            else:
                index = counts.get(name, 0)
                value(path + ((name, index),), name_line)
                counts[name] = index + 1
            if peek() in (";", ","):
                pos += 1

    try:
        body((), "")
    except IndexError:  # unreachable for text that parsed; keep what was found
        pass
    return lines


_PARSE_PREFIX = re.compile(r"^\d+:\d+ : (?:'[^\n]*?': )?")
_NO_FIELD = re.compile(r'Message type "nnkit\.(\w+)" has no field named "([^"]+)"')
_NO_ENUM_VALUE = re.compile(r'Enum type "(nnkit\.[\w.]+)" has no value named (\S+?)\.?$')


def _parse_error_message(error: text_format.ParseError) -> str:
    """A ParseError's message without its ``line:col :`` prefix, with field suggestions."""
    message = _PARSE_PREFIX.sub("", str(error))
    missing = _NO_FIELD.search(message)
    if missing:
        type_name, name = missing.groups()
        descriptor = JobConf.DESCRIPTOR.file.message_types_by_name.get(type_name)
        fields = [f.name for f in descriptor.fields] if descriptor else []
        if type_name == "LayerConf":
            kinds = ", ".join(_LAYER_KINDS)
            return f"unknown layer type or field {name!r}; layer types: {kinds}; other fields: name"
        return f"unknown field {name!r} in {type_name}; its fields: {', '.join(fields)}"
    bad_value = _NO_ENUM_VALUE.search(message)
    if bad_value:
        enum_name, value = bad_value.groups()
        enum = JobConf.DESCRIPTOR.file.pool.FindEnumTypeByName(enum_name)
        return f"unknown value {value!r}; valid: {', '.join(v.name for v in enum.values)}"
    return message


def parse_job(text: str, source: str = "<string>") -> tuple[JobConf, _Origins]:
    """Parses text format into a JobConf; syntax errors become ConfigErrors with file:line:col."""
    job = JobConf()
    try:
        text_format.Parse(text, job)
    except text_format.ParseError as e:
        line, column = e.GetLine(), e.GetColumn()
        location = f"{source}:{line}:{column}" if line is not None else source
        raise ConfigError(location, "", _parse_error_message(e)) from None
    return job, _Origins(source, _field_lines(text))


# ============================================================================ overrides (--set)
_SEGMENT = re.compile(r"(\w+)(?:\[([^\]]+)\])?")


def apply_override(job: JobConf, item: str, origins: _Origins | None = None) -> None:
    """Applies one ``key=value`` (``run.steps=50``, ``model.layer[conv1].convolution.nb_filter=16``).

    ``key`` is a dotted field path; repeated messages take an index or, for layers, a name in
    brackets. ``value`` is text-format: numbers, enum names, strings (quotes optional),
    ``[a, b]`` for repeated fields (which are replaced). Raises ConfigError naming the item.
    """
    label = f"--set {item}"
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(label, "", "expected key=value, e.g. run.steps=100")
    msg: Message = job
    path: FieldPath = ()
    segments = key.strip().split(".")
    for depth, segment in enumerate(segments):
        m = _SEGMENT.fullmatch(segment)
        if m is None:
            raise ConfigError(label, key, f"cannot read {segment!r}: use name or name[index]")
        name, index = m.groups()
        fd = msg.DESCRIPTOR.fields_by_name.get(name)
        if fd is None:
            raise ConfigError(label, key, f"{type(msg).__name__} has no field {name!r}; its "
                              f"fields: {', '.join(f.name for f in msg.DESCRIPTOR.fields)}")
        oneof = fd.containing_oneof
        if oneof is not None and msg.WhichOneof(oneof.name) not in (None, name):
            raise ConfigError(label, key, f"this layer is a {msg.WhichOneof(oneof.name)} layer, "
                              f"not {name}")
        last = depth == len(segments) - 1
        if last:
            if index is not None:
                raise ConfigError(label, key, "give the whole list, e.g. name=[1, 2], not one element")
            if fd.message_type is not None:
                raise ConfigError(label, key, f"{name} is a block: set its fields ({key}.FIELD=...)")
            _merge_value(msg, fd, value.strip(), label, key)
            if origins is not None:
                count = len(getattr(msg, name)) if fd.is_repeated else 1
                for i in range(max(count, 1)):
                    origins.overrides[path + ((name, i),)] = label
            return
        if fd.message_type is None:
            raise ConfigError(label, key, f"{name} is a value, not a block")
        if fd.is_repeated:
            elements = getattr(msg, name)
            i = _element_index(elements, index, label, key, name)
            msg, path = elements[i], path + ((name, i),)
        else:
            if index is not None:
                raise ConfigError(label, key, f"{name} is not repeated: drop [{index}]")
            msg, path = getattr(msg, name), path + ((name, 0),)


def _element_index(elements: Any, index: str | None, label: str, key: str, name: str) -> int:
    """The position of ``name[index]`` among ``elements``: an int, or an element's ``name``."""
    if index is None:
        raise ConfigError(label, key, f"{name} is repeated: pick one, e.g. {name}[0]")
    if re.fullmatch(r"-?\d+", index):
        i = int(index)
        if not -len(elements) <= i < len(elements):
            raise ConfigError(label, key, f"{name}[{i}] does not exist ({len(elements)} given)")
        return i % len(elements)
    for i, element in enumerate(elements):
        if "name" in element.DESCRIPTOR.fields_by_name and element.name == index:
            return i
    raise ConfigError(label, key, f"no {name} is named {index!r}")


def _merge_value(msg: Message, fd: FieldDescriptor, value: str, label: str, key: str) -> None:
    """Sets field ``fd`` of ``msg`` from the text ``value`` (text-format syntax)."""
    if fd.is_repeated and value.replace(" ", "") == "[]":
        msg.ClearField(fd.name)
        return
    if fd.type == FieldDescriptor.TYPE_STRING:
        items = value[1:-1].split(",") if fd.is_repeated and value.startswith("[") else [value]
        quoted = [v.strip() if v.strip()[:1] in "\"'" else json.dumps(v.strip(), ensure_ascii=False)
                  for v in items]
        value = f"[{', '.join(quoted)}]" if fd.is_repeated else quoted[0]
    elif fd.is_repeated and not value.startswith("["):
        value = f"[{value}]"
    backup = type(msg)()
    backup.CopyFrom(msg)
    msg.ClearField(fd.name)
    try:
        text_format.Merge(f"{fd.name}: {value}", msg)
    except text_format.ParseError as e:
        msg.CopyFrom(backup)
        raise ConfigError(label, key, _parse_error_message(e)) from None


# ================================================================= layers, updaters: the tables
@dataclass(frozen=True)
class _LayerKind:
    """One layer type of the schema: its Python class and any field renamed in Python."""

    cls: type[Layer]
    renames: dict[str, str] = field(default_factory=dict)  # schema field -> Python argument

    def argument(self, field_name: str) -> str:
        """The Python argument a schema field sets."""
        return self.renames.get(field_name, field_name)

    def field_of(self, argument: str) -> str:
        """The schema field of a Python argument."""
        return {v: k for k, v in self.renames.items()}.get(argument, argument)


#: Layer types by their field in LayerConf's ``type`` oneof.
_LAYER_KINDS: dict[str, _LayerKind] = {
    "image_input": _LayerKind(ImageInput),
    "dummy": _LayerKind(Dummy),
    "dense": _LayerKind(Dense),
    "convolution": _LayerKind(Convolution2D),
    "max_pooling": _LayerKind(MaxPooling2D),
    "avg_pooling": _LayerKind(AvgPooling2D),
    "lrn": _LayerKind(LRN2D),
    "activation": _LayerKind(Activation, {"type": "activation"}),
    "dropout": _LayerKind(Dropout),
}
_KIND_OF_CLASS = {kind.cls: name for name, kind in _LAYER_KINDS.items()}

#: Updater classes by their UpdaterConf.Type name.
_UPDATERS: dict[str, type[updaters_module.Updater]] = {
    name.lower(): getattr(updaters_module, name) for name in updaters_module.__all__
    if name != "Updater"}

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
    kind_name = _KIND_OF_CLASS.get(type(layer))
    if kind_name is None:
        raise ValueError(f"{layer.describe()}: the job schema has no layer type for class "
                         f"{type(layer).__qualname__}; types: {', '.join(_LAYER_KINDS)}")
    kind = _LAYER_KINDS[kind_name]
    conf = LayerConf()
    if layer.has_explicit_name:
        conf.name = layer.name
    block = getattr(conf, kind_name)
    block.SetInParent()  # a layer with all defaults still needs its (empty) block
    defaults = _defaults(type(layer).__init__)
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
        field_name = kind.field_of(arg)
        fd = block.DESCRIPTOR.fields_by_name.get(field_name)
        if fd is None:
            raise ValueError(f"{layer.describe()}: argument {arg!r} has no field in "
                             f"{block.DESCRIPTOR.name} (proto/nnkit.proto)")
        if not _is_default(fd, value, defaults.get(arg, inspect.Parameter.empty)):
            _set(block, field_name, value)
    return conf


def _layer_from_conf(conf: LayerConf, where: _Where) -> Layer:
    """The layer a LayerConf describes; ConfigError (at the right line) if it cannot be built."""
    kind_name = conf.WhichOneof("type")
    if kind_name is None:
        raise where.error(f"the layer has no type: give one settings block such as "
                          f"dense {{ output_dim: 10 }}; types: {', '.join(_LAYER_KINDS)}")
    kind = _LAYER_KINDS[kind_name]
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
        kwargs[kind.argument(fd.name)] = value
        fields_of_args[kind.argument(fd.name)] = fd.name
    for arg in _required(kind.cls):
        if arg not in kwargs and arg != "name":
            raise at.error("missing value (required)", kind.field_of(arg))
    if conf.HasField("name"):
        kwargs["name"] = conf.name
    try:
        return kind.cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise _blame(at, str(e), fields_of_args) from None


def _param_kwargs(param: ParamConf, prefix: str, at: _Where) -> dict[str, tuple[Any, str]]:
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


def _blame(at: _Where, message: str, fields_of_args: dict[str, str]) -> ConfigError:
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
    """Fills ``conf`` from an updater's get_config (only the values that differ from defaults)."""
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
        if not _is_default(fd, value, defaults.get(arg, inspect.Parameter.empty)):
            _set(conf, arg, value)


def _updater_from_conf(conf: UpdaterConf, where: _Where) -> updaters_module.Updater:
    """The updater an UpdaterConf describes; ConfigError at the offending line otherwise."""
    kwargs = {fd.name: _python_value(conf, fd) for fd, _ in conf.ListFields() if fd.name != "type"}
    cls = _UPDATERS[UpdaterConf.Type.Name(conf.type)]
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


def _metric_from_text(name: str, at: _Where) -> str | Accuracy:
    """What compile() takes for a metric name: 'accuracy', or an Accuracy layer for top<k>."""
    if name == "accuracy":
        return name
    m = _METRIC.fullmatch(name)
    if m is None or int(m.group(1)) < 1:
        raise at.error(f"unknown metric {name!r}: use 'accuracy' or 'top<k>_accuracy'")
    return Accuracy(topk=int(m.group(1)))


def _build_model(job: JobConf, where: _Where, compile_always: bool) -> Sequential:
    """A Sequential from a JobConf: layers, then (if described or asked) loss/metrics/updater."""
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
    if compile_always or conf.HasField("loss") or conf.metric or job.HasField("updater"):
        lossname = ModelConf.Loss.Name(conf.loss)
        metrics = [_metric_from_text(m, mwhere.child("metric", i)) for i, m in enumerate(conf.metric)] \
            if conf.metric else _default_metrics(lossname)
        updater = _updater_from_conf(job.updater, where.child("updater"))
        try:
            model.compile(updater, lossname, metrics)
        except ValueError as e:
            raise mwhere.error(str(e), "metric" if conf.metric else "loss") from None
    model.job = JobConf()
    model.job.CopyFrom(job)  # a snapshot: later edits of ``job`` do not reach the model
    return model


def model_from_proto(proto: JobConf | str | bytes, source: str = "<proto>") -> Sequential:
    """Rebuilds a model from a JobConf (or its text format) as ``Sequential.to_proto()`` gives it.

    The model is compiled when the config has a loss, metrics or an updater; with the same
    seed it gets the same initial weights as the model that was converted. The data and run
    sections, if any, are kept on ``model.job``. ``source`` names the origin in errors. Raises
    ConfigError for an invalid config.
    """
    if isinstance(proto, (str, bytes)):
        text = proto.decode() if isinstance(proto, bytes) else proto
        job, origins = parse_job(text, source)
    elif isinstance(proto, JobConf):
        job, origins = proto, _Origins(source)
    else:
        raise TypeError(f"model_from_proto takes a JobConf or its text, got {type(proto).__name__}")
    return _build_model(job, _Where(origins), compile_always=False)


# ========================================================================================= jobs
class Job:
    """A validated job config: builds the model, updater and data, and prints itself.

    Args:
        proto: the JobConf.
        origins: where its fields came from (for error messages); made by :func:`load_job`.
    """

    def __init__(self, proto: JobConf, origins: _Origins | None = None) -> None:
        self.proto = proto
        self.origins = origins or _Origins("<job>")
        self._where = _Where(self.origins)
        self._raw_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._mean: np.ndarray | None = None

    # ------------------------------------------------------------------ reading
    @property
    def source(self) -> str:
        """The file (or other source) the job was read from."""
        return self.origins.source

    @property
    def name(self) -> str:
        """The job's (and model's) name."""
        return self.proto.name if self.proto.HasField("name") else DEFAULT_MODEL_NAME

    def to_text(self) -> str:
        """The job in protobuf text format (what ``load_job`` reads back)."""
        return text_format.MessageToString(self.proto)

    def batch_size(self, which: str) -> int:
        """The batch size of the ``'train'`` or ``'test'`` source."""
        source = getattr(self.proto.data, which)
        return source.batch_size if source.HasField("batch_size") else DEFAULT_BATCH_SIZE

    def has_source(self, which: str) -> bool:
        """True if the job describes a ``'train'`` or ``'test'`` data source."""
        return self.proto.HasField("data") and self.proto.data.HasField(which)

    def dataset_info(self) -> tuple[tuple[int, ...], int] | None:
        """(per-example shape, classes) of the job's dataset, if it is a known one."""
        if not self.proto.data.HasField("dataset"):
            return None
        return DATASET_SHAPES.get(self.proto.data.dataset.lower())

    def input_shape(self) -> tuple[int, ...] | None:
        """The per-example input shape: the model's, its input layer's, or the dataset's."""
        conf = self.proto.model
        if conf.input_shape:
            return tuple(conf.input_shape)
        if conf.layer and conf.layer[0].WhichOneof("type") == "image_input":
            block = conf.layer[0].image_input
            return (block.nb_channel if block.HasField("nb_channel") else 1, block.height, block.width)
        info = self.dataset_info()
        return None if info is None else info[0]

    # ------------------------------------------------------------------ building
    def build_model(self, build: bool = True) -> Sequential:
        """A compiled, seeded Sequential (built for the input shape unless ``build=False``)."""
        model = _build_model(self.proto, self._where, compile_always=True)
        shape = self.input_shape()
        if build and shape is not None:
            model.build(shape)
        return model

    def build_updater(self) -> updaters_module.Updater:
        """A fresh updater as the job describes it."""
        return _updater_from_conf(self.proto.updater, self._where.child("updater"))

    # ------------------------------------------------------------------ validation
    def validate(self, check_data: bool = True) -> None:
        """Checks everything that can be checked without training; raises ConfigError.

        The model must build and its shapes fit together and fit the data; the updater and
        schedule must be consistent; with ``check_data`` the data folder and files must exist.
        """
        model = _build_model(self.proto, self._where, compile_always=True)
        self._check_shapes(model)
        if self.proto.HasField("data"):
            self._check_data(check_data)
        self._check_run()

    def _check_shapes(self, model: Sequential) -> None:
        """Runs the input shape through every layer's output_shape (no parameters allocated)."""
        mwhere = self._where.child("model")
        shape = self.input_shape()
        if shape is None:
            raise mwhere.error("the input shape is unknown: give model.input_shape, start with "
                               "an image_input layer, or name a known data.dataset", "input_shape")
        info = self.dataset_info()
        if info is not None and int(np.prod(info[0])) != int(np.prod(shape)):
            raise mwhere.error(f"the model takes inputs of shape {shape} but "
                               f"{self.proto.data.dataset} examples have shape {info[0]}",
                               "input_shape" if self.proto.model.input_shape else None)
        named: dict[str, int] = {}
        for i, layer_conf in enumerate(self.proto.model.layer):
            if layer_conf.HasField("name"):
                if layer_conf.name in named:
                    raise mwhere.child("layer", i).error(
                        f"two layers are named {layer_conf.name!r} (layer[{named[layer_conf.name]}] "
                        "too)", "name")
                named[layer_conf.name] = i
        shape = tuple(shape)
        for i, layer in enumerate(model.layers):  # one to one with the config's layers
            at = mwhere.child("layer", i)
            if isinstance(layer, _InputLayer):  # add() keeps input layers first
                if layer.input_shape is not None and tuple(layer.input_shape) != shape:
                    raise at.error(f"the input layer's shape {layer.input_shape} differs from "
                                   f"model.input_shape {shape}")
                continue
            try:
                shape = layer.output_shape(shape)
            except (TypeError, ValueError) as e:
                raise at.error(f"does not fit its input of shape (batch, "
                               f"{', '.join(map(str, shape))}): {e}") from None
        last = mwhere.child("layer", len(self.proto.model.layer) - 1)
        if model.loss_layer.lossname == "softmaxloss":
            if len(shape) != 1:
                raise last.error(f"the model's output (batch, {', '.join(map(str, shape))}) does "
                                 "not fit the softmax loss, which takes (batch, classes)")
            if info is not None and shape[0] != info[1]:
                raise last.error(f"the model outputs {shape[0]} scores but "
                                 f"{self.proto.data.dataset} has {info[1]} classes")
            for i, (_, metric) in enumerate(model.metrics):
                if metric is not None and metric.topk > shape[0]:
                    raise mwhere.child("metric", i).error(
                        f"top{metric.topk}_accuracy needs at least {metric.topk} classes, the model "
                        f"outputs {shape[0]}")

    def _check_data(self, check_paths: bool) -> None:
        data = self.proto.data
        dwhere = self._where.child("data")
        if not data.HasField("dataset"):
            raise dwhere.error(f"missing value: the dataset's name ({', '.join(datasets.DATASETS)})",
                               "dataset")
        if data.dataset.lower() not in datasets.DATASETS:
            raise dwhere.error(f"unknown dataset {data.dataset!r}; known: "
                               f"{', '.join(datasets.DATASETS)}", "dataset")
        if data.mean_image and data.mean_value:
            raise dwhere.error("give mean_image or mean_value, not both", "mean_value")
        if data.mean_image and not data.HasField("train"):
            raise dwhere.error("mean_image is computed on the train source: describe data.train",
                               "mean_image")
        info = self.dataset_info()
        if data.mean_value and info is not None and len(data.mean_value) not in (1, info[0][0]):
            raise dwhere.error(f"takes 1 value or {info[0][0]} (one per channel), got "
                               f"{len(data.mean_value)}", "mean_value")
        if data.HasField("scale") and not data.scale > 0:
            raise dwhere.error(f"must be > 0, got {data.scale}", "scale")
        for which in ("train", "test"):
            if not data.HasField(which):
                continue
            src, swhere = getattr(data, which), dwhere.child(which)
            if src.HasField("split") and src.split not in ("train", "test"):
                raise swhere.error(f"must be 'train' or 'test', got {src.split!r}", "split")
            for name in ("batch_size", "limit"):
                if src.HasField(name) and getattr(src, name) < 1:
                    raise swhere.error(f"must be >= 1, got {getattr(src, name)}", name)
            if which == "test" and src.HasField("shuffle"):
                raise swhere.error("the test source is never shuffled", "shuffle")
            if check_paths:
                for i, path in enumerate(src.file):
                    if not Path(path).is_file():
                        raise swhere.child("file", i).error(f"no such file: {path}")
        needs_folder = any(not getattr(data, w).file for w in ("train", "test") if data.HasField(w))
        if check_paths and needs_folder and not data.download:
            folder = Path(data.dir) if data.HasField("dir") else datasets.default_data_dir()
            if not folder.is_dir():
                hint = "" if data.HasField("dir") else (
                    " (the default: set data.dir, pass --data-dir or set $NNKIT_DATA)")
                raise dwhere.error(f"data folder {folder} does not exist{hint}",
                                   "dir" if data.HasField("dir") else None)

    def _check_run(self) -> None:
        run, rwhere = self.proto.run, self._where.child("run")
        for name in ("epochs", "steps", "test_freq", "display_freq", "checkpoint_freq"):
            if run.HasField(name) and getattr(run, name) < 0:
                raise rwhere.error(f"must be >= 0, got {getattr(run, name)}", name)
        if run.test_freq and not self.has_source("test"):
            raise rwhere.error("testing needs a test source: describe data.test", "test_freq")

    # ------------------------------------------------------------------ data
    def load_data(self, which: str, input_shape: Sequence[int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """The normalized examples and the labels of the ``'train'`` or ``'test'`` source.

        Normalization is Caffe's ``(x - mean) * scale`` (the mean image from the train source),
        through :mod:`nnkit.datasets` helpers. Images come as (N, C, H, W) float32, flattened
        to rows when ``input_shape`` (default: the job's) differs but has as many values.
        """
        if which not in ("train", "test"):
            raise ValueError(f"load_data: which must be 'train' or 'test', got {which!r}")
        if not self.has_source(which):
            raise self._where.child("data").error(f"the job has no {which} source", which)
        x, y = self._raw(which)
        data = self.proto.data
        if data.mean_image:
            if self._mean is None:
                self._mean = datasets.mean_image(self._raw("train")[0])
            x = datasets.subtract_mean(x, self._mean)
        elif data.mean_value:
            values = np.asarray(data.mean_value, dtype=np.float32)
            x = datasets.subtract_mean(x, values if values.size > 1 else values[0])
        x = datasets.scale(x, data.scale) if data.HasField("scale") else x.astype(np.float32)
        shape = tuple(input_shape or self.input_shape() or x.shape[1:])
        if x.shape[1:] != shape:
            x = x.reshape(len(x), -1)
        return x, y

    def _raw(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, C, H, W) and labels (N,) of a source, as read (cached)."""
        if which not in self._raw_cache:
            data = self.proto.data
            src = getattr(data, which)
            if src.file:
                x, y = _read_files(data.dataset, list(src.file))
            else:
                try:
                    x, y = datasets.load(data.dataset, data.dir or None,
                                         split=src.split or which, download=data.download)
                except FileNotFoundError as e:
                    raise self._where.child("data").error(str(e), "dir" if data.dir else None) from None
            if x.ndim == 3:  # (N, H, W) grayscale: one channel
                x = x[:, None]
            if src.HasField("limit"):
                x, y = x[:src.limit], y[:src.limit]
            self._raw_cache[which] = (x, y)
        return self._raw_cache[which]

    def __repr__(self) -> str:
        return f"Job({self.name!r}, source={self.source!r})"


def _read_files(dataset: str, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Examples from explicit files: CIFAR-10 binary batches, or IDX images + labels."""
    if dataset.lower() == "cifar10":
        parts = [datasets.read_cifar_bin(f) for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    arrays = [datasets.read_idx(f) for f in files]
    images = [a for a in arrays if a.ndim > 1]
    labels = [a for a in arrays if a.ndim == 1]
    if len(images) != 1 or len(labels) != 1:
        raise ValueError(f"{dataset}: expected one IDX image file and one IDX label file, got "
                         f"{len(images)} image and {len(labels)} label files: {files}")
    return images[0], labels[0]


def load_job(path: str | os.PathLike, overrides: Iterable[str] = (), data_dir: str | None = None,
             check_data: bool = True) -> Job:
    """Reads, overrides and validates a text-format job config; raises ConfigError if unusable.

    Args:
        path: the config file.
        overrides: ``key=value`` items applied after parsing (see :func:`apply_override`).
        data_dir: if given, replaces ``data.dir``.
        check_data: also check that the data folder and files exist.
    """
    path = os.fspath(path)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, "", f"cannot read the job config: {e.strerror or e}") from None
    return job_from_text(text, path, overrides, data_dir, check_data)


def job_from_text(text: str, source: str = "<string>", overrides: Iterable[str] = (),
                  data_dir: str | None = None, check_data: bool = True) -> Job:
    """Like :func:`load_job` for text already in memory (``source`` names it in errors)."""
    proto, origins = parse_job(text, source)
    for item in overrides:
        apply_override(proto, item, origins)
    if data_dir is not None:
        proto.data.dir = os.fspath(data_dir)
        origins.overrides[(("data", 0), ("dir", 0))] = f"--data-dir {data_dir}"
    job = Job(proto, origins)
    job.validate(check_data=check_data)
    return job
