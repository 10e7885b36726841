"""Caffe nets in: a Caffe net (and solver) in prototxt text format becomes an nnkit job.

    result = nnkit.config.from_caffe("lenet_train_test.prototxt", "lenet_solver.prototxt",
                                     dataset="mnist")
    print(result.to_text())          # the job, in nnkit's text format (proto/nnkit.proto)
    job = result.load()              # a validated nnkit.config.Job
    result.notes                     # what was ignored or mapped with a remark

The format read is Caffe's ``NetParameter`` and ``SolverParameter`` (field names and numbers
of BVLC/caffe ``src/caffe/proto/caffe.proto``), declared for the subset read here in
``proto/caffe_import.proto``. Anything this module cannot map exactly is a
:class:`~nnkit.config.ConfigError` naming ``file:line``; what changes nothing for training on
the CPU is ignored with a note.

Net. The layers must form a chain: one data layer (``Data``, ``ImageData``, ``HDF5Data``,
``MemoryData``, ``Input`` or net-level ``input``) per phase, then layers that each read the
previous layer's output (in place or not), then ``SoftmaxWithLoss`` and ``Accuracy`` reading
the last output and the labels. ``include``/``exclude`` phase rules select the TRAIN and the
TEST net; both must have the same computing layers (one nnkit model trains and tests). Data
sources (LMDB, LevelDB, HDF5 or image lists) are replaced by a named nnkit dataset
(``dataset=``; inferred from the input dims when only one dataset has them).

| Caffe                          | nnkit                                                       |
|--------------------------------|-------------------------------------------------------------|
| Convolution                    | ``convolution`` (floor output size, as Caffe)               |
| Pooling MAX / AVE              | ``max_pooling`` / ``avg_pooling``, ``ceil_mode`` from       |
|                                | ``round_mode``; refused where the sizes would differ (1)    |
| LRN ACROSS / WITHIN_CHANNEL    | ``lrn``, alpha / n with n = size or size^2, as Caffe (2)    |
| InnerProduct                   | ``dense`` (weights (out, in), as Caffe's)                    |
| ReLU, Sigmoid, TanH, Dropout   | ``activation``, ``dropout`` (both inverted dropout)          |
| SoftmaxWithLoss, Accuracy      | the softmax loss, metrics ``accuracy`` / ``top<k>_accuracy`` |
| fillers                        | constant, gaussian, uniform as they are; xavier and msra    |
|                                | as glorot_uniform / he_normal where those are the same      |
|                                | rule, else as the uniform / gaussian they draw from (3)     |
| ``param { lr_mult decay_mult }`` | ``lr_mult`` / ``wd_mult`` of the weight, then the bias     |
| transform_param                | ``data.scale``, ``data.mean_value``; ``mean_file``: the     |
|                                | train mean image (``data.mean_image``), with a note         |

(1) Caffe clips the last window only when there is padding; nnkit (like PyTorch) always drops
a window that starts past the input. They differ only for an unpadded window smaller than
its stride, which Caffe computes as an empty window; that is refused. (2) Caffe's
WITHIN_CHANNEL ignores ``k`` (it is 1), so the job gets ``k: 1``. (3) Caffe's fans: a weight
blob of shape ``(n, c, ...)`` has fan_in ``count / n`` and fan_out ``count / c``.

Solver. ``type`` (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam) maps onto nnkit's updater
of the same rule: momentum, ``delta`` (epsilon), ``rms_decay`` (rho), ``momentum`` as
AdaDelta's rho and Adam's beta1, ``momentum2`` (beta2), ``weight_decay``; ``max_iter``,
``test_interval``, ``display``, ``snapshot``, ``random_seed`` and ``test_iter`` (the test
limit) go to the run. Caffe's first update is iteration 0, nnkit's is step 1, so each
``lr_policy`` becomes the nnkit schedule giving Caffe's rate at iteration ``s - 1`` for step
``s``, exactly:

| lr_policy   | Caffe at iteration i               | nnkit schedule                                       |
|-------------|------------------------------------|------------------------------------------------------|
| fixed       | base_lr                            | fixed                                                |
| step        | base_lr gamma^floor(i / stepsize)  | manual: steps k stepsize + 1 up to max_iter          |
| multistep   | base_lr gamma^#(stepvalue <= i)    | manual: steps stepvalue + 1                          |
| exp         | base_lr gamma^i                    | exponential, lr = base_lr / gamma                    |
| inv         | base_lr (1 + gamma i)^-power       | inverse, lr = base_lr (1 - gamma)^-power,            |
|             |                                    | gamma' = gamma / (1 - gamma) (gamma < 1)             |
| poly        | base_lr (1 - i / max_iter)^power   | poly, final_step = max_iter + 1,                     |
|             |                                    | lr = base_lr ((max_iter + 1) / max_iter)^power       |

A ``step`` policy is unrolled up to ``max_iter``: a run extended past it (``nnkit ctl
run_until``) keeps the last rate, where Caffe would go on dividing it.

Weights. ``weights=`` reads a binary ``.caffemodel`` (a NetParameter with blobs); its blobs are
matched to the net's layers by name and copied as they are (Caffe's convolution weights are
``(F, C, kh, kw)`` and InnerProduct weights ``(out, in)``, nnkit's layouts; a ``transpose``
InnerProduct's ``(in, out)`` blob is transposed). :meth:`CaffeImport.build_model` gives the
model with them, :meth:`CaffeImport.save_checkpoint` an nnkit checkpoint of it.
"""
from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message

from .. import datasets
from ..layers.pooling import pooled_size
from ..model import Sequential
from ..proto import JobConf, LayerConf, ModelConf, ParamConf, Schedule, UpdaterConf
from ..proto import caffe_import_pb2 as caffe_pb
from .job import DEFAULT_BATCH_SIZE, Job, job_from_text
from .text import ConfigError, Origins, Where, _field_lines, decode_config, open_regular_file

__all__ = ["CaffeImport", "from_caffe", "read_caffemodel", "SUPPORTED_LAYERS"]

#: A prototxt larger than this is refused unread (real ones are kilobytes).
MAX_PROTOTXT_BYTES = 16 * 2**20

_DATA_PARAMS = {"Data": "data_param", "ImageData": "image_data_param",
                "HDF5Data": "hdf5_data_param", "MemoryData": "memory_data_param",
                "Input": "input_param"}
_COMPUTE = ("Convolution", "Pooling", "LRN", "InnerProduct", "ReLU", "Sigmoid", "TanH", "Dropout")
_CRITERIA = ("SoftmaxWithLoss", "Accuracy")
#: Every Caffe layer type the importer maps.
SUPPORTED_LAYERS = (*_DATA_PARAMS, *_COMPUTE, *_CRITERIA, "Softmax")

_UPDATER_OF = {"SGD": "sgd", "Nesterov": "nesterov", "AdaGrad": "adagrad", "RMSProp": "rmsprop",
               "AdaDelta": "adadelta", "Adam": "adam"}
#: The solver field behind each updater and run field (for errors found in the converted job).
_SOLVER_FIELD_OF = {"lr": "base_lr", "decay": "weight_decay", "momentum": "momentum",
                    "rho": "rms_decay", "epsilon": "delta", "beta1": "momentum",
                    "beta2": "momentum2", "gamma": "gamma", "power": "power",
                    "step": "stepvalue", "step_lr": "base_lr", "steps": "max_iter",
                    "test_freq": "test_interval", "display_freq": "display",
                    "checkpoint_freq": "snapshot"}
#: Longest list a ``step`` policy may unroll into (max_iter / stepsize changes).
MAX_STEP_CHANGES = 10000
_PHASES = ("TRAIN", "TEST")
#: The datasets --dataset names (without the spelling aliases).
_DATASET_NAMES = [name for name in datasets.SHAPES if "-" not in name]

Echo = Callable[[str], None]


def _stderr_note(text: str) -> None:
    print(f"nnkit import-caffe: note: {text}", file=sys.stderr)


def _f32(value: float) -> float:
    """A float32 field of Caffe's as the decimal it was written as (0.01, not 0.0099999998)."""
    return float(str(np.float32(value)))


# ============================================================================ reading files
def _read_prototxt(path: str | os.PathLike, message: Message, what: str) -> Where:
    """Parses a prototxt into ``message``; returns the position for errors (file:line)."""
    shown = os.fspath(path)
    with open_regular_file(shown, what) as f:
        data = f.read(MAX_PROTOTXT_BYTES + 1)
    if len(data) > MAX_PROTOTXT_BYTES:
        raise ConfigError(shown, "", f"larger than {MAX_PROTOTXT_BYTES} bytes: not a {what}")
    text = decode_config(data, shown)
    lines = _field_lines(text)
    where = Where(Origins(shown, lines))
    if isinstance(message, caffe_pb.NetParameter) and (("layers", 0),) in lines:
        raise where.error("the net is in Caffe's old V1 format (layers { type: CONVOLUTION ... }): "
                          "convert it with Caffe's tool first: upgrade_net_proto_text "
                          f"{shown} upgraded.prototxt", "layers")
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line, column = e.GetLine(), e.GetColumn()
        location = f"{shown}:{line}:{column}" if line is not None else shown
        raise ConfigError(location, "", _parse_problem(str(e), message, what)) from None
    return where


def _parse_problem(error: str, message: Message, what: str) -> str:
    """A ParseError's text, with a reason when it names a field this subset does not read."""
    problem = error.split(" : ", 1)[-1]
    marker = 'has no field named "'
    if marker not in problem:
        return problem
    name = problem.split(marker, 1)[1].split('"', 1)[0]
    owner = problem.split('Message type "', 1)[-1].split('"', 1)[0].rpartition(".")[2]
    if isinstance(message, caffe_pb.NetParameter) and name in caffe_pb.SolverParameter.DESCRIPTOR.fields_by_name \
            and owner == "NetParameter":
        return (f"{name!r} is a solver field, not a net field: give the net first, then the "
                "solver (nnkit import-caffe NET.prototxt SOLVER.prototxt)")
    if owner == "LayerParameter" and name.endswith("_param"):
        return (f"{name!r} belongs to a Caffe layer type nnkit cannot import; supported layer "
                f"types: {', '.join(SUPPORTED_LAYERS)}")
    return (f"{owner}.{name} is not a field nnkit's Caffe importer reads (the fields it maps "
            "are in proto/caffe_import.proto)")


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """The parameter blobs of a binary ``.caffemodel`` by layer name, as float32 arrays of
    their stored shapes. ConfigError for a file that is not a current-format NetParameter."""
    shown = os.fspath(path)
    with open_regular_file(shown, "caffemodel") as f:
        data = f.read()
    net = caffe_pb.NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError as e:
        raise ConfigError(shown, "", f"not a binary Caffe NetParameter (.caffemodel): {e}") from None
    if net.layers and not net.layer:
        raise ConfigError(shown, "", "the caffemodel is in Caffe's old V1 format: convert it "
                          f"with Caffe's tool first: upgrade_net_proto_binary {shown} upgraded.caffemodel")
    out: dict[str, list[np.ndarray]] = {}
    for layer in net.layer:
        if layer.blobs:
            out[layer.name] = [_blob_array(b, f"{shown}: layer {layer.name!r}") for b in layer.blobs]
    return out


def _blob_array(blob: Message, what: str) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:  # the legacy 4-D fields
        shape = (blob.num, blob.channels, blob.height, blob.width)
    values = blob.data if len(blob.data) else blob.double_data
    if math.prod(shape) != len(values):
        raise ConfigError(what, "", f"a blob of shape {shape} holds {len(values)} values")
    return np.asarray(values, dtype=np.float32).reshape(shape)


# ============================================================================ the result
@dataclass
class CaffeImport:
    """A converted Caffe net: the job, the notes made on the way, and imported weights.

    Attributes:
        job: the nnkit job (``JobConf``).
        notes: what was ignored or mapped with a remark (also echoed when converting).
        weights: nnkit layer name -> [weight, bias] in nnkit's layouts, from ``weights=``.
        source: the files converted, for messages.
    """

    job: JobConf
    notes: list[str] = field(default_factory=list)
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)
    source: str = "<caffe>"

    def to_text(self) -> str:
        """The job in nnkit's text format, notes first as comments."""
        header = [f"# Converted by nnkit import-caffe from {self.source}"]
        header += [f"# note: {n}" for n in self.notes]
        return "\n".join(header) + "\n" + text_format.MessageToString(self.job)

    def load(self, data_dir: str | None = None) -> Job:
        """The job, parsed and validated as ``nnkit.load_job`` would read it back."""
        return job_from_text(self.to_text(), f"<job converted from {self.source}>", data_dir=data_dir)

    def build_model(self) -> Sequential:
        """The job's compiled model, holding the imported weights (if any)."""
        model = self.load().build_model()
        for layer in model.layers:
            if layer.name in self.weights:
                layer.SetParams(*self.weights[layer.name])
        return model

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Writes an nnkit checkpoint (``nnkit.load``, ``nnkit eval``) of :meth:`build_model`."""
        self.build_model().save(path)


# ============================================================================ conversion
def from_caffe(net: str | os.PathLike, solver: str | os.PathLike | None = None, *,
               dataset: str | None = None, weights: str | os.PathLike | None = None,
               echo: Echo | None = _stderr_note) -> CaffeImport:
    """Converts a Caffe net prototxt (and solver prototxt) into an nnkit job.

    Args:
        net: the net (``NetParameter`` in text format; the current ``layer { }`` format).
        solver: the solver (``SolverParameter``); without one the job has nnkit's default
            updater and run length.
        dataset: the nnkit dataset (``mnist``, ``fashion_mnist``, ``cifar10``) standing for the
            net's data layers; inferred from the input dims when only one dataset has them.
        weights: a trained ``.caffemodel`` whose blobs become :attr:`CaffeImport.weights`.
        echo: called with each note as it is made (default: printed on stderr; None: quiet).

    Raises ConfigError (naming file:line) for anything that has no exact nnkit equivalent.
    """
    net_msg = caffe_pb.NetParameter()
    nwhere = _read_prototxt(net, net_msg, "Caffe net")
    sources = os.fspath(net) + ("" if solver is None else f" and {os.fspath(solver)}")
    converter = _Converter(net_msg, nwhere, echo)
    converter.convert_net(dataset)
    if solver is not None:
        solver_msg = caffe_pb.SolverParameter()
        swhere = _read_prototxt(solver, solver_msg, "Caffe solver")
        converter.solver_where = swhere
        converter.convert_solver(solver_msg, swhere)
    else:
        converter.note("no solver given: the job trains with nnkit's default updater (SGD, "
                       "lr 0.01) for one epoch")
    result = CaffeImport(converter.job, converter.notes, source=sources)
    try:
        result.load()
    except ConfigError as e:  # e.g. a net whose output does not fit its dataset's classes
        raise converter.blame(e) from None
    if weights is not None:
        result.weights = converter.import_weights(read_caffemodel(weights), os.fspath(weights))
    return result


@dataclass
class _Chain:
    """One phase's net: the data layer, the computing layers, loss, metrics (indices)."""

    data: int | None = None
    compute: list[int] = field(default_factory=list)
    loss: int | None = None
    metrics: list[int] = field(default_factory=list)
    softmax: int | None = None


@dataclass
class _Learnable:
    """What weight import needs to know about a converted Convolution or InnerProduct."""

    nnkit_name: str
    shapes: list[tuple[int, ...]]  # nnkit's weight (and bias) shapes
    transpose: bool = False


class _Converter:
    """Fills a JobConf from a NetParameter and a SolverParameter, one section at a time."""

    def __init__(self, net: Message, where: Where, echo: Echo | None) -> None:
        self.net, self.where, self.echo = net, where, echo
        self.job = JobConf()
        self.notes: list[str] = []
        self.learnable: dict[str, _Learnable] = {}  # by Caffe layer name
        self.chains: dict[str, _Chain] = {}
        self.solver_where: Where | None = None

    def blame(self, error: ConfigError) -> ConfigError:
        """An error of the converted job, put at the Caffe layer or solver field it came from."""
        layer = re.match(r"model\.layer\[(\d+)\]", error.field)
        section = error.field.partition(".")[0]
        if layer is not None:
            i = self.chains["TRAIN"].compute[int(layer.group(1))]
            return self.at(i).error(f"{self.label(i)}: {error.problem}")
        if section in ("updater", "run") and self.solver_where is not None:
            name = _SOLVER_FIELD_OF.get(error.field.rpartition(".")[2])
            return self.solver_where.error(error.problem, name)
        return self.where.error(f"the converted job is not valid: {error}")

    def note(self, text: str) -> None:
        if text in self.notes:  # the TRAIN and TEST data layers say the same
            return
        self.notes.append(text)
        if self.echo is not None:
            self.echo(text)

    def at(self, i: int) -> Where:
        return self.where.child("layer", i)

    def label(self, i: int) -> str:
        layer = self.net.layer[i]
        return f"layer {layer.name or f'#{i}'!r} ({layer.type})"

    # ------------------------------------------------------------------ the graph
    def convert_net(self, dataset: str | None) -> None:
        net = self.net
        if not net.layer:
            raise self.where.error("the net has no layer { } blocks")
        phases = [self._phases(i) for i in range(len(net.layer))]
        for i, layer in enumerate(net.layer):
            if layer.type not in SUPPORTED_LAYERS:
                raise self.at(i).error(f"{self.label(i)}: Caffe layer type {layer.type!r} has no "
                                       f"nnkit equivalent; supported: {', '.join(SUPPORTED_LAYERS)}",
                                       "type")
        self._note_ignored_fields()
        for phase in _PHASES:
            self.chains[phase] = self._chain([i for i, p in enumerate(phases) if phase in p], phase)
        train, test = self.chains["TRAIN"], self.chains["TEST"]
        if train.compute != test.compute:
            only = sorted(set(train.compute) ^ set(test.compute))[0]
            which = "TRAIN" if only in train.compute else "TEST"
            raise self.at(only).error(f"{self.label(only)} is in the {which} net only: nnkit trains "
                                      "and tests one model, so phase rules may select only data, "
                                      "loss and Accuracy layers")
        if not train.compute:
            raise self.where.error("the net has no computing layers (Convolution, InnerProduct, ...)")
        self.job.name = net.name or Path(self.where.origins.source).stem
        shape = self._data(dataset)
        for i in train.compute:
            conf = self.job.model.layer.add()
            conf.name = net.layer[i].name or f"{net.layer[i].type.lower()}_{i}"
            shape = _LAYERS[net.layer[i].type](self, i, conf, shape)
        self._criteria()

    def _note_ignored_fields(self) -> None:
        """Notes for the net's fields that change nothing for nnkit on the CPU."""
        net = self.net
        for name in ("force_backward", "debug_info"):
            if net.HasField(name):
                self.note(f"net {name} ignored: no effect on nnkit's training")
        for i, layer in enumerate(net.layer):
            if layer.propagate_down:
                self.note(f"{self.label(i)}: propagate_down ignored: nnkit backpropagates through "
                          "every layer")
            for fd, block in layer.ListFields():
                if fd.message_type is not None and "engine" in fd.message_type.fields_by_name \
                        and block.HasField("engine"):
                    self.note(f"{self.label(i)}: engine ignored: nnkit has one CPU implementation")

    def _phases(self, i: int) -> set[str]:
        """The phases whose net holds layer ``i``, by its include / exclude rules."""
        layer, at = self.net.layer[i], self.at(i)
        if layer.include and layer.exclude:
            raise at.error(f"{self.label(i)}: give include or exclude rules, not both (as Caffe)")
        for key in ("include", "exclude"):
            for j, rule in enumerate(getattr(layer, key)):
                for name in ("min_level", "max_level", "stage", "not_stage"):
                    if rule.HasField(name) if name.endswith("level") else getattr(rule, name):
                        raise at.child(key, j).error(f"{self.label(i)}: net levels and stages are "
                                                     "not supported, only phase: TRAIN / TEST", name)

        def matches(rule: Message, phase: str) -> bool:
            return not rule.HasField("phase") or caffe_pb.Phase.Name(rule.phase) == phase

        if layer.include:
            return {p for p in _PHASES if any(matches(r, p) for r in layer.include)}
        return {p for p in _PHASES if not any(matches(r, p) for r in layer.exclude)}

    def _chain(self, indices: Sequence[int], phase: str) -> _Chain:
        """Checks that one phase's layers form a chain and sorts them by role."""
        net, chain = self.net, _Chain()
        current = net.input[0] if net.input else None
        labels = net.input[1] if len(net.input) > 1 else None
        if len(net.input) > 2:
            raise self.where.error(f"the net declares {len(net.input)} inputs: nnkit models take "
                                   "data and labels", "input")
        for i in indices:
            layer, at, name = net.layer[i], self.at(i), self.label(i)
            kind = layer.type
            if kind in _DATA_PARAMS:
                if current is not None:
                    raise at.error(f"{name}: a second input in the {phase} net: nnkit models have "
                                   "one data input")
                if layer.bottom or not 1 <= len(layer.top) <= 2:
                    raise at.error(f"{name}: a data layer takes no bottom and gives one or two "
                                   f"tops (data, labels), got {len(layer.bottom)} and {len(layer.top)}")
                current, chain.data = layer.top[0], i
                labels = layer.top[1] if len(layer.top) == 2 else None
                continue
            if current is None:
                raise at.error(f"{name}: comes before any data layer or net input in the {phase} net")
            if chain.softmax is not None:
                raise at.error(f"{name}: follows the final Softmax of the {phase} net")
            if len(layer.top) > 1:
                raise at.error(f"{name}: has {len(layer.top)} tops ({', '.join(layer.top)}): nnkit "
                               "layers have one output, in place or new", "top")
            if kind in _CRITERIA:
                if labels is None:
                    raise at.error(f"{name}: needs labels, but the {phase} net's data layer gives "
                                   "no second top")
                if list(layer.bottom) != [current, labels]:
                    raise at.error(f"{name}: must read the last layer's output and the labels "
                                   f"(bottom: {current!r}, bottom: {labels!r}), got "
                                   f"{list(layer.bottom)}: the net is not a chain", "bottom")
                if kind == "Accuracy":
                    chain.metrics.append(i)
                elif chain.loss is not None:
                    raise at.error(f"{name}: a second loss: nnkit models have one")
                else:
                    chain.loss = i
                continue
            if chain.loss is not None or chain.metrics:
                raise at.error(f"{name}: follows the loss or an Accuracy layer: nnkit models end "
                               "there")
            if list(layer.bottom) != [current] or not layer.top:
                got = ", ".join(repr(b) for b in layer.bottom) or "none"
                raise at.error(f"{name}: must read only the previous layer's output {current!r} "
                               f"and give one top, got bottoms {got}: branches and merges have "
                               "no nnkit equivalent (nnkit models are chains)",
                               "bottom" if layer.bottom else None)
            current = layer.top[0]
            if kind == "Softmax":
                chain.softmax = i
            else:
                chain.compute.append(i)
        return chain

    # ------------------------------------------------------------------ data
    def _data(self, dataset: str | None) -> tuple[int, ...]:
        """Fills the data section; returns the per-example input shape."""
        net, train, test = self.net, self.chains["TRAIN"], self.chains["TEST"]
        dims = self._input_dims()
        with_source = [c.data for c in (train, test) if c.data is not None
                       and net.layer[c.data].type != "Input"]
        if dataset is None and dims is not None:
            matching = sorted({name.replace("-", "_") for name, (shape, _) in datasets.SHAPES.items()
                               if shape == dims})
            if len(matching) == 1:
                dataset = matching[0]
                self.note(f"dataset {dataset!r} inferred from the input dims {dims}")
            elif with_source:
                raise self.at(with_source[0]).error(
                    f"{self.label(with_source[0])}: its data cannot be read by nnkit; name the "
                    f"nnkit dataset standing for it with --dataset (input dims {dims} fit "
                    f"{' and '.join(matching) or 'no known dataset'})")
        if dataset is None:
            if with_source:
                raise self.at(with_source[0]).error(
                    f"{self.label(with_source[0])}: its source cannot be read by nnkit: name the "
                    f"nnkit dataset standing for it with --dataset ({', '.join(_DATASET_NAMES)})")
            if dims is None:
                raise self.where.error("the input shape is unknown: give the net an Input layer or "
                                       "input_shape, or name a dataset with --dataset")
            self.note("no dataset named: the job has no data section (name one with --dataset "
                      "to train or evaluate it)")
            self.job.model.input_shape[:] = dims
            return dims
        key = dataset.lower()
        if key not in datasets.SHAPES:
            raise ConfigError("--dataset", "", f"unknown dataset {dataset!r}; known: "
                              f"{', '.join(datasets.SHAPES)}")
        shape = datasets.SHAPES[key][0]
        if dims is not None and math.prod(dims) != math.prod(shape):
            raise self.where.error(f"the net's input dims {dims} do not fit {dataset} examples "
                                   f"of shape {shape}")
        shape = dims or shape
        self.job.model.input_shape[:] = shape
        data = self.job.data
        data.dataset = key
        transforms = []
        for phase, chain in (("train", train), ("test", test)):
            if chain.data is not None and net.layer[chain.data].type != "Input":
                transforms.append((chain.data, self._source(chain.data, getattr(data, phase), phase == "train")))
            elif not with_source:  # a deploy net: the dataset's own splits
                getattr(data, phase).SetInParent()
        if transforms:
            first = transforms[0][1]
            for i, transform in transforms[1:]:
                if transform != first:
                    raise self.at(i).error(f"{self.label(i)}: normalizes differently from the TRAIN "
                                           f"data layer ({transform} vs {first}): nnkit normalizes "
                                           "train and test data alike")
            scale, mean_value, mean_file = first
            if scale != 1.0:
                data.scale = scale
            data.mean_value[:] = mean_value
            if mean_file:
                data.mean_image = True
                self.note(f"mean_file {mean_file!r} becomes data.mean_image: nnkit computes the "
                          "mean image of the train split, as Caffe's compute_image_mean does")
        return shape

    def _input_dims(self) -> tuple[int, ...] | None:
        """The per-example input dims the net states (Input, MemoryData or net-level input)."""
        net = self.net
        if net.input_shape:
            return tuple(int(d) for d in net.input_shape[0].dim[1:])
        if net.input_dim:
            return tuple(net.input_dim[1:4])
        for chain in self.chains.values():
            if chain.data is None:
                continue
            layer = net.layer[chain.data]
            if layer.type == "Input" and layer.input_param.shape:
                return tuple(int(d) for d in layer.input_param.shape[0].dim[1:])
            if layer.type == "MemoryData":
                p = layer.memory_data_param
                return (p.channels, p.height, p.width)
        return None

    def _source(self, i: int, source: Message, train: bool) -> tuple[float, tuple[float, ...], str]:
        """Fills a SourceConf from data layer ``i``; returns its (scale, mean_value, mean_file)."""
        layer, at, name = self.net.layer[i], self.at(i), self.label(i)
        block = getattr(layer, _DATA_PARAMS[layer.type])
        source.SetInParent()
        if block.HasField("batch_size"):
            source.batch_size = block.batch_size
        if train and layer.type == "Data":
            source.shuffle = False  # Caffe reads a database in order
        elif train and layer.type in ("ImageData", "HDF5Data"):
            source.shuffle = block.shuffle
        t = layer.transform_param
        legacy = block if layer.type in ("Data", "ImageData") else None
        for field_name in ("crop_size", "mirror"):
            for holder, key in ((t, "transform_param"), (legacy, _DATA_PARAMS[layer.type])):
                if holder is not None and getattr(holder, field_name):
                    raise at.child(key).error(f"{name}: random {field_name.split('_')[0]}s have no "
                                              "nnkit equivalent (nnkit does not augment data)",
                                              field_name)
        if layer.type == "ImageData" and (block.new_height or block.new_width):
            raise at.error(f"{name}: resizing images has no nnkit equivalent", "image_data_param")
        scale = _f32(t.scale) if t.HasField("scale") else (
            _f32(legacy.scale) if legacy is not None and legacy.HasField("scale") else 1.0)
        mean_file = t.mean_file or (legacy.mean_file if legacy is not None else "")
        if mean_file and t.mean_value:
            raise at.error(f"{name}: mean_file and mean_value together (Caffe refuses them too)",
                           "transform_param")
        ignored = [f"{field_name}" for field_name in ("rand_skip", "backend", "prefetch", "source")
                   if field_name in block.DESCRIPTOR.fields_by_name and block.HasField(field_name)]
        if ignored:
            self.note(f"{name}: {', '.join(ignored)} ignored: the data comes from the nnkit "
                      f"dataset {self.job.data.dataset!r}")
        return scale, tuple(_f32(v) for v in t.mean_value), mean_file

    # ------------------------------------------------------------------ loss and metrics
    def _criteria(self) -> None:
        net, train, test = self.net, self.chains["TRAIN"], self.chains["TEST"]
        if train.loss is not None:
            self._check_loss(train.loss)
        elif test.loss is not None:
            self._check_loss(test.loss)
        else:
            self.note("the net has no SoftmaxWithLoss: the job uses nnkit's softmax loss")
        for chain in (train, test):
            if chain.softmax is not None:
                self.note(f"{self.label(chain.softmax)}: the final Softmax is the softmax loss's "
                          "own; predict returns the scores before it")
        metrics: list[str] = []
        for i in sorted(set(train.metrics) | set(test.metrics)):
            p, at = net.layer[i].accuracy_param, self.at(i).child("accuracy_param")
            if p.axis != 1:
                raise at.error(f"{self.label(i)}: axis {p.axis}: nnkit classifies along axis 1", "axis")
            if p.HasField("ignore_label"):
                raise at.error(f"{self.label(i)}: ignore_label has no nnkit equivalent", "ignore_label")
            metric = "accuracy" if p.top_k == 1 else f"top{p.top_k}_accuracy"
            if metric not in metrics:
                metrics.append(metric)
        self.job.model.loss = ModelConf.Loss.Value("softmaxloss")
        self.job.model.metric[:] = metrics or ["accuracy"]

    def _check_loss(self, i: int) -> None:
        layer, at, name = self.net.layer[i], self.at(i), self.label(i)
        if any(w != 1 for w in layer.loss_weight):
            raise at.error(f"{name}: loss_weight {list(layer.loss_weight)}: nnkit's loss has weight 1",
                           "loss_weight")
        lp = layer.loss_param
        if lp.HasField("ignore_label"):
            raise at.child("loss_param").error(f"{name}: ignore_label has no nnkit equivalent",
                                               "ignore_label")
        if lp.normalization == lp.NONE:
            raise at.child("loss_param").error(f"{name}: normalization NONE (a sum over the batch): "
                                               "nnkit's loss is the batch mean", "normalization")
        if layer.softmax_param.axis != 1:
            raise at.child("softmax_param").error(f"{name}: axis {layer.softmax_param.axis}: nnkit's "
                                                  "softmax runs along axis 1", "axis")

    # ------------------------------------------------------------------ parameters
    def _params(self, i: int, conf_w: ParamConf, conf_b: ParamConf | None, block: Message,
                blob_shape: tuple[int, ...], block_field: str) -> None:
        """Fillers and ``param { }`` multipliers of a learnable layer's weight and bias."""
        layer, at, name = self.net.layer[i], self.at(i), self.label(i)
        fan_in = math.prod(blob_shape) // blob_shape[0]
        fan_out = math.prod(blob_shape) // blob_shape[1]
        bwhere = at.child(block_field)
        self._filler(conf_w, block.weight_filler, fan_in, fan_out, False,
                     bwhere.child("weight_filler"), f"{name} weight")
        if conf_b is not None:
            count = blob_shape[0] if not block.DESCRIPTOR.fields_by_name.get("transpose") \
                or not block.transpose else blob_shape[1]
            self._filler(conf_b, block.bias_filler, 1, count, True, bwhere.child("bias_filler"),
                         f"{name} bias")
        targets = [conf_w] + ([conf_b] if conf_b is not None else [])
        if len(layer.param) > len(targets):
            raise at.child("param", len(targets)).error(
                f"{name}: {len(layer.param)} param blocks for {len(targets)} parameters")
        for j, (spec, conf) in enumerate(zip(layer.param, targets)):
            if spec.name:
                raise at.child("param", j).error(f"{name}: shared parameters (param name "
                                                 f"{spec.name!r}) have no nnkit equivalent", "name")
            if spec.HasField("lr_mult"):
                conf.lr_mult = _f32(spec.lr_mult)
            if spec.HasField("decay_mult"):
                conf.wd_mult = _f32(spec.decay_mult)

    def _filler(self, conf: ParamConf, filler: Message, fan_in: int, fan_out: int,
                is_bias: bool, at: Where, what: str) -> None:
        """A Caffe filler as a ParamConf (the bias names no init: its values imply the kind)."""
        kind = filler.type
        if filler.sparse != -1:
            raise at.error(f"{what}: sparse fillers have no nnkit equivalent", "sparse")
        init: str | None = None
        if kind == "constant":
            init, values = "constant", {"value": _f32(filler.value)}
        elif kind == "gaussian":
            init, values = "gaussian", {"mean": _f32(filler.mean), "std": _f32(filler.std)}
        elif kind == "uniform":
            init, values = "uniform", {"low": _f32(filler.min), "high": _f32(filler.max)}
        elif kind in ("xavier", "msra"):
            norm = caffe_pb.FillerParameter.VarianceNorm.Name(filler.variance_norm)
            n = {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[norm]
            named = "glorot_uniform" if kind == "xavier" else "he_normal"
            if (norm == ("AVERAGE" if kind == "xavier" else "FAN_IN")) and not is_bias:
                init, values = named, {}  # nnkit's rule of that name is exactly this one
            elif kind == "xavier":
                a = math.sqrt(3.0 / n)
                init, values = "uniform", {"low": -a, "high": a}
                self.note(f"{what}: xavier filler ({norm}) written as uniform +-{a:.6g} "
                          f"(sqrt(3 / {n:g}))")
            else:
                std = math.sqrt(2.0 / n)
                init, values = "gaussian", {"mean": 0.0, "std": std}
                self.note(f"{what}: msra filler ({norm}) written as gaussian std {std:.6g} "
                          f"(sqrt(2 / {n:g}))")
        else:
            raise at.error(f"{what}: Caffe filler {kind!r} has no nnkit equivalent (constant, "
                           "gaussian, uniform, xavier and msra do)", "type")
        if kind == "uniform" and values["low"] > values["high"]:
            raise at.error(f"{what}: uniform filler with min > max", "min")
        if not is_bias:
            conf.init = ParamConf.Init.Value(init)
        for key, value in values.items():
            setattr(conf, key, value)

    # ------------------------------------------------------------------ solver
    def convert_solver(self, sp: Message, where: Where) -> None:
        """Fills the updater and run sections from a SolverParameter."""
        for name, why in (("solver_mode", "nnkit runs on the CPU"), ("device_id", "nnkit runs on the CPU"),
                          ("debug_info", "no effect on training"),
                          ("layer_wise_reduce", "no effect on training"),
                          ("snapshot_prefix", "checkpoints go into the run directory"),
                          ("snapshot_format", "checkpoints are nnkit's HDF5 files"),
                          ("snapshot_diff", "checkpoints hold no gradients"),
                          ("snapshot_after_train", "nnkit always checkpoints at the end"),
                          ("test_compute_loss", "nnkit's tests report the loss"),
                          ("average_loss", "nnkit reports means over each display interval"),
                          ("weights", "give the caffemodel with --weights"),
                          ("net", "the net file given is used"), ("train_net", "the net file given is used")):
            if sp.HasField(name) if name != "weights" else sp.weights:
                self.note(f"solver {name} ignored: {why}")
        refused = (("test_net", bool(sp.test_net), "give the one net on the command line"),
                   ("iter_size", sp.iter_size != 1, "nnkit updates after every batch"),
                   ("clip_gradients", sp.clip_gradients >= 0, "Caffe clips the norm of all the "
                    "gradients together, nnkit's clip_norm each parameter's"),
                   ("regularization_type", sp.regularization_type != "L2", "nnkit's weight decay is L2"),
                   ("test_iter", len(sp.test_iter) > 1, "nnkit tests one net"))
        for name, bad, why in refused:
            if bad:
                raise where.error(f"{why}", name)
        if not sp.HasField("base_lr"):
            raise where.error("missing value: Caffe's solver needs a base_lr", "base_lr")
        if sp.max_iter <= 0:
            raise where.error("missing value: max_iter must be > 0 (Caffe trains max_iter iterations)",
                              "max_iter")
        self._updater(sp, where)
        run = self.job.run
        run.steps = sp.max_iter
        run.display_freq = sp.display
        if sp.snapshot:
            run.checkpoint_freq = sp.snapshot
        if sp.random_seed >= 0:
            self.job.seed = sp.random_seed
        if self.chains["TEST"].data is not None and self.job.HasField("data"):
            if sp.test_interval:
                run.test_freq = sp.test_interval
                if sp.test_initialization:
                    self.note("nnkit does not test before the first step (test_initialization)")
            if sp.test_iter:
                test = self.job.data.test
                test.limit = sp.test_iter[0] * (test.batch_size if test.HasField("batch_size")
                                                else DEFAULT_BATCH_SIZE)
        elif sp.test_interval or sp.test_iter:
            self.note("test_interval / test_iter ignored: the net has no TEST data layer")

    def _updater(self, sp: Message, where: Where) -> None:
        u = self.job.updater
        kind = sp.type if sp.HasField("type") else {
            "SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
            "ADADELTA": "AdaDelta", "ADAM": "Adam"}[sp.SolverType.Name(sp.solver_type)]
        name = _UPDATER_OF.get(kind) or {k.lower(): v for k, v in _UPDATER_OF.items()}.get(kind.lower())
        if name is None:
            raise where.error(f"solver type {kind!r} has no nnkit updater; known: "
                              f"{', '.join(_UPDATER_OF)}", "type" if sp.HasField("type") else "solver_type")
        u.type = UpdaterConf.Type.Value(name)
        u.decay = _f32(sp.weight_decay)
        momentum = _f32(sp.momentum)
        if name in ("sgd", "nesterov"):
            u.momentum = momentum
        elif name in ("adagrad", "rmsprop"):
            if momentum:
                raise where.error(f"{kind} takes no momentum (Caffe refuses it too)", "momentum")
        if name in ("adagrad", "rmsprop", "adadelta", "adam"):
            u.epsilon = _f32(sp.delta)
        if name == "rmsprop":
            u.rho = _f32(sp.rms_decay)
        elif name == "adadelta":
            u.rho = momentum
        elif name == "adam":
            u.beta1, u.beta2 = momentum, _f32(sp.momentum2)
            self.note("Adam: Caffe adds delta to sqrt(v) before the bias correction, nnkit after "
                      "it; the steps differ by about delta / sqrt(v), relatively")
        self._schedule(sp, where, u)

    def _schedule(self, sp: Message, where: Where, u: Message) -> None:
        """The lr_policy as the nnkit schedule with Caffe's rate at iteration s - 1 for step s."""
        policy, base = sp.lr_policy, _f32(sp.base_lr)
        gamma, power, max_iter = _f32(sp.gamma), _f32(sp.power), sp.max_iter
        u.lr_type = Schedule.Type.Value("fixed")
        if not sp.HasField("lr_policy"):
            raise where.error("missing value: Caffe's solver needs an lr_policy (fixed, step, "
                              "multistep, exp, inv, poly)", "lr_policy")
        if policy == "fixed":
            u.lr = base
        elif policy in ("step", "multistep"):
            if policy == "step":
                if sp.stepsize <= 0:
                    raise where.error("lr_policy 'step' needs a stepsize > 0", "stepsize")
                changes = range(sp.stepsize, max_iter, sp.stepsize)
                if len(changes) > MAX_STEP_CHANGES:
                    raise where.error(f"lr_policy 'step' changes the rate {len(changes)} times before "
                                      f"max_iter; at most {MAX_STEP_CHANGES} are imported", "stepsize")
            else:
                changes = list(sp.stepvalue)
                if not changes or changes[0] < 0 or any(b <= a for a, b in zip(changes, changes[1:])):
                    raise where.error(f"lr_policy 'multistep' needs stepvalues >= 0 in increasing "
                                      f"order, got {changes}", "stepvalue")
            u.lr_type = Schedule.Type.Value("manual")
            u.step[:] = [0] + [c + 1 for c in changes]
            u.step_lr[:] = [float(f"{base * gamma ** k:.15g}") for k in range(len(changes) + 1)]
        elif policy == "exp":
            if gamma <= 0:
                raise where.error(f"lr_policy 'exp' with gamma {gamma}: nnkit's exponential "
                                  "schedule needs gamma > 0", "gamma")
            u.lr_type = Schedule.Type.Value("exponential")
            u.lr, u.gamma = base / gamma, gamma
        elif policy == "inv":
            if not 0 <= gamma < 1:
                raise where.error(f"lr_policy 'inv' with gamma {gamma}: only 0 <= gamma < 1 maps "
                                  "exactly onto nnkit's inverse schedule", "gamma")
            u.lr_type = Schedule.Type.Value("inverse")
            u.lr, u.gamma, u.power = base * (1 - gamma) ** -power, gamma / (1 - gamma), power
        elif policy == "poly":
            u.lr_type = Schedule.Type.Value("poly")
            u.lr = base * ((max_iter + 1) / max_iter) ** power
            u.final_step, u.power = max_iter + 1, power
        else:
            raise where.error(f"lr_policy {policy!r} has no nnkit schedule (fixed, step, "
                              "multistep, exp, inv and poly do)", "lr_policy")
        if policy not in ("fixed", "step", "multistep"):
            self.note(f"lr_policy {policy!r}: the schedule's constants are shifted by one step "
                      "(Caffe's first update is iteration 0, nnkit's step 1), giving Caffe's "
                      "rates exactly")

    # ------------------------------------------------------------------ weights
    def import_weights(self, blobs: dict[str, list[np.ndarray]], source: str
                       ) -> dict[str, list[np.ndarray]]:
        """The caffemodel's blobs of this net's learnable layers, in nnkit's layouts."""
        out: dict[str, list[np.ndarray]] = {}
        for caffe_name, target in self.learnable.items():
            arrays = blobs.get(caffe_name)
            if arrays is None:
                self.note(f"layer {caffe_name!r} has no blobs in {source}: it keeps its filler's init")
                continue
            if len(arrays) != len(target.shapes):
                raise ConfigError(source, "", f"layer {caffe_name!r} has {len(arrays)} blobs, the "
                                  f"net's layer has {len(target.shapes)} parameters")
            converted = []
            for k, (array, shape) in enumerate(zip(arrays, target.shapes)):
                caffe_shape = shape[::-1] if (k == 0 and target.transpose) else shape
                if _squeezed(array.shape) != _squeezed(caffe_shape):
                    raise ConfigError(source, "", f"layer {caffe_name!r}: blob {k} has shape "
                                      f"{array.shape}, the net's layer needs {caffe_shape}")
                array = array.reshape(caffe_shape)
                converted.append(np.ascontiguousarray(array.T if (k == 0 and target.transpose) else array))
            out[target.nnkit_name] = converted
        for name in blobs:
            if name not in self.learnable:
                self.note(f"{source}: blobs of layer {name!r} ignored: no such learnable layer in the net")
        return out


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape without its leading 1s (legacy 4-D blobs pad 2-D and 1-D shapes with them)."""
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return tuple(shape[i:])


# ============================================================================ layer converters
def _pair(block: Message, name: str, h: str, w: str, default: int | None, at: Where,
          what: str) -> tuple[int, int]:
    """A (h, w) setting of a Caffe layer: ``name`` (one or two values) or ``h`` and ``w``."""
    value = getattr(block, name)
    given = list(value) if isinstance(value, Sequence) or hasattr(value, "extend") else (
        [value] if block.HasField(name) else [])
    if block.HasField(h) or block.HasField(w):
        if given:
            raise at.error(f"{what}: give {name} or {h} and {w}, not both", h)
        if name != "pad" and not (block.HasField(h) and block.HasField(w)):
            # Caffe too: pad_h and pad_w default to 0, kernel and stride sides do not
            raise at.error(f"{what}: give both {h} and {w}", h if not block.HasField(h) else w)
        return getattr(block, h), getattr(block, w)
    if not given:
        if default is None:
            raise at.error(f"{what}: missing value", name)
        return default, default
    if len(given) > 2:
        raise at.error(f"{what}: {len(given)} values: nnkit layers are 2-D", name)
    return (given[0], given[-1])


def _convolution(c: _Converter, i: int, conf: LayerConf, shape: tuple[int, ...]) -> tuple[int, ...]:
    layer, name = c.net.layer[i], c.label(i)
    p, at = layer.convolution_param, c.at(i).child("convolution_param")
    if len(shape) != 3:
        raise c.at(i).error(f"{name}: needs images (C, H, W), its input has shape {shape}")
    if p.num_output < 1:
        raise at.error(f"{name}: missing value: num_output", "num_output")
    for field_name, bad in (("dilation", any(d != 1 for d in p.dilation)), ("group", p.group != 1),
                            ("axis", p.axis != 1)):
        if bad:
            raise at.error(f"{name}: {field_name} other than 1 has no nnkit equivalent", field_name)
    kernel = _pair(p, "kernel_size", "kernel_h", "kernel_w", None, at, name)
    stride = _pair(p, "stride", "stride_h", "stride_w", 1, at, name)
    pad = _pair(p, "pad", "pad_h", "pad_w", 0, at, name)
    out = tuple((size + 2 * q - k) // s + 1 for size, k, s, q in zip(shape[1:], kernel, stride, pad))
    if min(out) < 1 or min(stride) < 1:
        raise at.error(f"{name}: kernel {kernel}, stride {stride}, pad {pad} do not fit its input "
                       f"{shape}")
    conv = conf.convolution
    conv.nb_filter = p.num_output
    for key, value in (("kernel", kernel), ("stride", stride), ("pad", pad)):
        getattr(conv, key)[:] = value[:1] if value[0] == value[1] else value
    conv.bias = p.bias_term
    blob = (p.num_output, shape[0], *kernel)
    c._params(i, conv.w, conv.b if p.bias_term else None, p, blob, "convolution_param")
    c.learnable[layer.name] = _Learnable(conf.name, [blob] + ([(p.num_output,)] if p.bias_term else []))
    return (p.num_output, *out)


def _pooling(c: _Converter, i: int, conf: LayerConf, shape: tuple[int, ...]) -> tuple[int, ...]:
    layer, name = c.net.layer[i], c.label(i)
    p, at = layer.pooling_param, c.at(i).child("pooling_param")
    if len(shape) != 3:
        raise c.at(i).error(f"{name}: needs images (C, H, W), its input has shape {shape}")
    if p.pool == p.STOCHASTIC:
        raise at.error(f"{name}: STOCHASTIC pooling has no nnkit equivalent", "pool")
    if p.global_pooling:
        kernel, stride, pad = shape[1:], (1, 1), (0, 0)
        if any(p.HasField(f) for f in ("kernel_size", "kernel_h", "kernel_w", "pad", "pad_h",
                                       "pad_w", "stride", "stride_h", "stride_w")):
            raise at.error(f"{name}: global_pooling takes no kernel, pad or stride (as Caffe)",
                           "global_pooling")
    else:
        kernel = _pair(p, "kernel_size", "kernel_h", "kernel_w", None, at, name)
        stride = _pair(p, "stride", "stride_h", "stride_w", 1, at, name)
        pad = _pair(p, "pad", "pad_h", "pad_w", 0, at, name)
    if min(stride) < 1 or min(kernel) < 1 or any(q >= k for q, k in zip(pad, kernel)):
        raise at.error(f"{name}: kernel {kernel}, stride {stride}, pad {pad}: Caffe needs "
                       "pad < kernel and stride >= 1")
    ceil_mode = p.round_mode == p.CEIL
    out = []
    for size, k, s, q in zip(shape[1:], kernel, stride, pad):
        span = size + 2 * q - k
        if span < 0:
            raise at.error(f"{name}: kernel {kernel} is larger than its padded input {shape}")
        caffe = (-(-span // s) if ceil_mode else span // s) + 1
        if any(pad) and (caffe - 1) * s >= size + q:
            caffe -= 1  # Caffe clips the last window only when there is padding
        mine = pooled_size(size, k, s, q, ceil_mode)
        if mine != caffe:
            raise at.error(f"{name}: Caffe gives {caffe} windows along an axis of {size} (kernel "
                           f"{k}, stride {s}, no padding), the last one empty; nnkit gives {mine}")
        out.append(caffe)
    block = conf.max_pooling if p.pool == p.MAX else conf.avg_pooling
    for key, value in (("pool_size", kernel), ("stride", stride), ("pad", pad)):
        getattr(block, key)[:] = value[:1] if value[0] == value[1] else value
    block.ceil_mode = ceil_mode
    return (shape[0], *out)


def _lrn(c: _Converter, i: int, conf: LayerConf, shape: tuple[int, ...]) -> tuple[int, ...]:
    layer, name = c.net.layer[i], c.label(i)
    p, at = layer.lrn_param, c.at(i).child("lrn_param")
    if len(shape) != 3:
        raise c.at(i).error(f"{name}: needs images (C, H, W), its input has shape {shape}")
    if p.local_size % 2 == 0:
        raise at.error(f"{name}: local_size {p.local_size}: Caffe takes odd sizes only", "local_size")
    lrn = conf.lrn
    lrn.size, lrn.alpha, lrn.beta = p.local_size, _f32(p.alpha), _f32(p.beta)
    within = p.norm_region == p.WITHIN_CHANNEL
    lrn.norm_region = lrn.NormRegion.Value("within_channel" if within else "across_channels")
    lrn.k = 1.0 if within else _f32(p.k)
    if within and p.HasField("k") and p.k != 1:
        c.note(f"{name}: k {_f32(p.k)} ignored: Caffe's WITHIN_CHANNEL LRN uses k = 1")
    return shape


def _inner_product(c: _Converter, i: int, conf: LayerConf, shape: tuple[int, ...]) -> tuple[int, ...]:
    layer, name = c.net.layer[i], c.label(i)
    p, at = layer.inner_product_param, c.at(i).child("inner_product_param")
    if p.num_output < 1:
        raise at.error(f"{name}: missing value: num_output", "num_output")
    if p.axis != 1:
        raise at.error(f"{name}: axis {p.axis}: nnkit's Dense flattens everything after the batch "
                       "axis (Caffe's axis 1)", "axis")
    dense = conf.dense
    dense.output_dim, dense.bias = p.num_output, p.bias_term
    inputs = math.prod(shape)
    blob = (inputs, p.num_output) if p.transpose else (p.num_output, inputs)
    c._params(i, dense.w, dense.b if p.bias_term else None, p, blob, "inner_product_param")
    c.learnable[layer.name] = _Learnable(conf.name, [(p.num_output, inputs)]
                                         + ([(p.num_output,)] if p.bias_term else []), p.transpose)
    return (p.num_output,)


def _activation(kind: str) -> Callable[[_Converter, int, LayerConf, tuple[int, ...]], tuple[int, ...]]:
    def convert(c: _Converter, i: int, conf: LayerConf, shape: tuple[int, ...]) -> tuple[int, ...]:
        layer = c.net.layer[i]
        if kind == "relu" and layer.relu_param.negative_slope != 0:
            raise c.at(i).child("relu_param").error(
                f"{c.label(i)}: a leaky ReLU (negative_slope) has no nnkit equivalent", "negative_slope")
        conf.activation.type = conf.activation.Type.Value(kind)
        return shape
    return convert


def _dropout(c: _Converter, i: int, conf: LayerConf, shape: tuple[int, ...]) -> tuple[int, ...]:
    conf.dropout.ratio = _f32(c.net.layer[i].dropout_param.dropout_ratio)
    return shape


_LAYERS = {"Convolution": _convolution, "Pooling": _pooling, "LRN": _lrn,
           "InnerProduct": _inner_product, "ReLU": _activation("relu"),
           "Sigmoid": _activation("sigmoid"), "TanH": _activation("tanh"), "Dropout": _dropout}
