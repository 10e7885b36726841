"""SINGA 0.3's model API (``singa.model``) on nnkit's Sequential, updaters and Trainer.

Follows tool/python/singa/model.py at tag v0.3.0-rc3 (unchanged after it before 1.0):

    m = Sequential('mlp', argv=sys.argv)
    m.add(Dense(2500, init='uniform', activation='tanh'))
    ...
    m.add(Dense(10, init='uniform', activation='softmax'))
    m.compile(loss='categorical_crossentropy', optimizer=SGD(lr=0.001, lr_type='step'),
              cluster=Cluster(workspace))
    m.fit(X_train, nb_epoch=100, with_test=True)      # nb_epoch counts steps (batches)
    result = m.evaluate(X_test, batch_size=100, test_steps=10, test_freq=30)

* ``compile`` turns a final softmax (a last ``Activation('softmax')`` or ``activation='softmax'``
  on the last layer) into the softmax loss, as SINGA's ``Model.compile`` does: the model then
  outputs scores and the loss computes the softmax once. Only ``'categorical_crossentropy'``
  is supported (``'mean_squared_error'`` trains SINGA's autoencoders against their input).
* ``fit(data, alg='bp', nb_epoch, with_test=False, **fields)`` trains ``nb_epoch`` steps
  through nnkit's ``Sequential.fit`` (in order, no shuffling: SINGA reads its store
  sequentially); ``with_test=True`` defers training to ``evaluate``, which then trains and
  tests, as in SINGA. ``fields``: ``batch_size``, ``disp_freq`` (default ``nb_epoch // 10``),
  ``disp_after``, ``validate_data``/``validate_freq``/``validate_steps``/``validate_after``,
  ``checkpoint_path`` (parameters to start from), ``checkpoint_freq`` (default ``nb_epoch``),
  ``checkpoint_after``.
* The schedule is SINGA's Worker loop (src/worker.cc, ``Worker::Run``; ``TestNow`` &c. in
  include/singa/worker.h), with ``step`` counting from 0: before training step ``s``,
  validation and then a test of ``*_steps`` batches run when ``*_freq > 0``, ``s >= *_after``
  and ``(s - *_after) % *_freq == 0`` (so at step 0 too), then a checkpoint likewise; after
  step ``s`` the loss and accuracy averaged since the last display are printed when
  ``(s - disp_after) % disp_freq == 0``; a checkpoint is written at the end. Without
  ``test_freq`` there is no test, as in SINGA. Test batches are read on from where the last
  test stopped, wrapping around.
* ``evaluate`` returns ``{step: {'loss', 'acc'}}`` for every display, as SINGA's ``SingaRun``
  parses its log, with ``'test_loss'``/``'test_acc'`` (and ``'val_*'``) added at the steps
  that tested; the values are floats (SINGA's are the log's strings). A model never trained
  tests only, with the parameters of ``checkpoint_path``.
* :class:`Store` names the files nnkit reads (MNIST-style IDX, CIFAR-10 binary or python
  batches) instead of SINGA's kvfiles; its ``mean_value``/``std_value``/``mean_file`` become a
  :class:`nnkit.layers.Normalization` at the front of the model, ``(x - mean) / std`` as SINGA's
  record layer (src/neuralnet/input_layer/store.cc), and ``random_skip`` starts the stream at a
  random record in ``[0, random_skip]``.
* :class:`Cluster` is accepted and has no effect but a warning: nnkit trains in this process
  (its ``workspace`` is where checkpoints go, ``<workspace>/checkpoint/step<N>-worker0``).
  ``device=`` (GPUs) and ``execpath=`` are ignored with a warning.

Two differences from SINGA remain: an nnkit epoch ends with a short batch when the batch size
does not divide the store (SINGA wraps around inside the batch), and the updater sees steps
from 1 (SINGA's model API from 0), so a schedule changes rate one batch earlier.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import checkpoint, updaters
from ..layers import Normalization
from ..layers.base import Layer, name_layers
from ..model import Sequential as _NnkitSequential
from ..training import Callback
from ..means import RunningMeans
from .layer import *  # noqa: F401,F403  (SINGA's model module re-exports its layers)
from . import layer as _layer
from .layer import Activation, Data, Loss, is_data_layer, layer_list
from .store import Store, positive as _positive

__all__ = ["Model", "Sequential", "Store", "Algorithm", "SGD", "AdaGrad", "Cluster",
           "save_model_parameter", "load_model_parameter", "Data", "Loss", "Activation"]
__all__ += [name for name in _layer.__all__ if name not in __all__]

# ---------------------------------------------------------------------------- updaters


def _schedule(lr_type: str | None, step: Any, step_lr: Any) -> dict[str, Any]:
    """nnkit's schedule arguments for SINGA's ``lr_type`` (model.py, ``Updater.__init__``)."""
    if lr_type in (None, "fixed"):
        return {"lr_type": None}
    if lr_type == "step":  # SINGA fixes change_freq=60, gamma=0.997
        return {"lr_type": "step", "change_freq": 60, "gamma": 0.997}
    if lr_type == "manual":
        as_tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,)  # noqa: E731
        return {"lr_type": "manual", "step": as_tuple(step), "step_lr": as_tuple(step_lr)}
    if lr_type == "linear":  # SINGA: change_freq=10, final_lr=0.1 (it extrapolates after)
        return {"lr_type": "linear", "final_step": 10, "final_lr": 0.1}
    raise ValueError(f"lr_type {lr_type!r}: expected None, 'fixed', 'step', 'manual' or 'linear'")


def _clip(fields: dict[str, Any], what: str) -> dict[str, Any]:
    """SINGA's ``clip_low``/``clip_high`` as nnkit's symmetric ``clip_value``."""
    low, high = fields.pop("clip_low", 0.0), fields.pop("clip_high", 0.0)
    if fields:
        raise TypeError(f"{what}: unknown argument(s) {', '.join(sorted(fields))}")
    if high <= low:  # SINGA clips only when clip_high > clip_low
        return {}
    if low != -high:
        raise ValueError(f"{what}: clip_low={low}, clip_high={high}: nnkit clips symmetrically "
                         f"(clip_low = -clip_high)")
    return {"clip_value": high}


def SGD(lr: float = 0.01, lr_type: str | None = None, decay: float = 0, momentum: float = 0,
        step: Any = (0), step_lr: Any = (0.01), **fields: Any) -> updaters.SGD:
    """SINGA's ``SGD``: an :class:`nnkit.updaters.SGD` (the same rule, src/utils/updater.cc
    ``SGDUpdater::Update``: ``g += wd*w; h = mu*h - lr*g; w += h``) with SINGA's schedules:
    ``'step'`` is ``lr * 0.997 ** (step // 60)``, ``'manual'`` takes ``step_lr[i]`` from
    ``step[i]`` on, ``'linear'`` goes to 0.1 over 10 steps."""
    if not lr:
        raise ValueError("SGD: lr must be set (non-zero)")
    return updaters.SGD(lr, decay=decay, momentum=momentum, **_schedule(lr_type, step, step_lr),
                        **_clip(dict(fields), "SGD"))


def AdaGrad(lr: float = 0.01, lr_type: str | None = None, decay: float = 0, momentum: float = 0,
            step: Any = (0), step_lr: Any = (0.01), **fields: Any) -> updaters.AdaGrad:
    """SINGA's ``AdaGrad``: an :class:`nnkit.updaters.AdaGrad` with SINGA's schedules;
    ``delta`` (default 1e-8) is its epsilon. SINGA divides by ``sqrt(h + delta)``, nnkit by
    ``sqrt(h) + epsilon``; ``momentum`` is unused by both."""
    if not lr:
        raise ValueError("AdaGrad: lr must be set (non-zero)")
    fields = dict(fields)
    epsilon = fields.pop("delta", 1e-8)
    return updaters.AdaGrad(lr, decay=decay, epsilon=epsilon, **_schedule(lr_type, step, step_lr),
                            **_clip(fields, "AdaGrad"))


class Algorithm:
    """SINGA's training algorithm: only back-propagation (``'bp'``) is supported."""

    def __init__(self, type: str = "bp", **kwargs: Any) -> None:
        if type != "bp":
            raise ValueError(f"Algorithm: {type!r} is not supported; nnkit.singa trains with "
                             f"back-propagation ('bp') only")
        self.type = type


class Cluster:
    """SINGA's cluster topology, accepted with a warning: nnkit trains in this process.

    ``workspace`` (required, as in SINGA) is where the model API writes its checkpoints.
    """

    def __init__(self, workspace: str | os.PathLike | None = None, nworker_groups: int = 1,
                 nserver_groups: int = 1, nworkers_per_group: int = 1, nservers_per_group: int = 1,
                 nworkers_per_procs: int = 1, nservers_per_procs: int = 1, **fields: Any) -> None:
        if workspace is None:
            raise ValueError("Cluster: need to set workspace")
        self.workspace = Path(workspace)
        self.topology = dict(nworker_groups=nworker_groups, nserver_groups=nserver_groups,
                             nworkers_per_group=nworkers_per_group,
                             nservers_per_group=nservers_per_group,
                             nworkers_per_procs=nworkers_per_procs,
                             nservers_per_procs=nservers_per_procs, **fields)
        warnings.warn(f"nnkit.singa: Cluster is accepted but has no effect yet: training runs in "
                      f"this process (topology {self.topology} ignored); checkpoints go to "
                      f"{self.workspace / 'checkpoint'}", stacklevel=2)


# ---------------------------------------------------------------------------- data

class _Stream:
    """A data layer's records read in order from a random start, wrapping around (store.cc)."""

    def __init__(self, data: Data, rng: np.random.Generator) -> None:
        self.data = data
        self.x, self.y = data.store.examples()
        skip = data.store.random_skip
        self.position = int(rng.integers(0, skip + 1)) % len(self.x) if skip > 0 else 0

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        index = (self.position + np.arange(count)) % len(self.x)
        self.position = int(index[-1] + 1) % len(self.x)
        return self.x[index], self.y[index]

    def from_start(self) -> tuple[np.ndarray, np.ndarray]:
        """All records, starting where the stream starts."""
        order = np.roll(np.arange(len(self.x)), -self.position)
        return (self.x, self.y) if self.position == 0 else (self.x[order], self.y[order])


# ---------------------------------------------------------------------------- the loop

def _now(step: int, freq: int, after: int) -> bool:
    """SINGA's ``DisplayNow``/``TestNow``/``CheckpointNow`` rule (include/singa/worker.h)."""
    return freq > 0 and step >= after and (step - after) % freq == 0


class _WorkerLoop(Callback):
    """SINGA's ``Worker::Run`` schedule around nnkit's Trainer: tests, checkpoints, displays."""

    def __init__(self, owner: "Model", plan: dict[str, Any], tests: list[tuple[str, _Stream, dict]]) -> None:
        self.owner, self.plan, self.tests = owner, plan, tests
        self.window = RunningMeans(skip=("batch", "size", "lr"))
        self.start = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.start = self.trainer.global_step
        self._before_step(0)

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self.window.add(logs, logs.get("size", 1))
        done = self.trainer.global_step - self.start
        if _now(done - 1, self.plan["disp_freq"], self.plan["disp_after"]):
            means = self.window.means()
            self.window.reset()
            self.owner._record(done - 1, "Train", means.get("loss"), means.get("accuracy"))
        if done < self.plan["train_steps"]:
            self._before_step(done)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if not (logs or {}).get("failed"):
            self.owner._checkpoint(self.trainer.global_step - self.start)

    def _before_step(self, step: int) -> None:
        for label, stream, when in self.tests:
            if when["steps"] > 0 and _now(step, when["freq"], when["after"]):
                self.owner._test(label, stream, when["steps"], step)
        if _now(step, self.plan["checkpoint_freq"], self.plan["checkpoint_after"]):
            self.owner._checkpoint(step)


# ---------------------------------------------------------------------------- the model

_FIT_FIELDS = {"batch_size", "train_steps", "disp_freq", "disp_after", "validate_data",
               "validate_freq", "validate_steps", "validate_after", "checkpoint_path",
               "checkpoint_freq", "checkpoint_after"}
_EVALUATE_FIELDS = {"batch_size", "test_freq", "test_steps", "test_after"}


class Model:
    """SINGA's ``Model``: layers added, compiled, then ``fit`` and ``evaluate``.

    Args:
        name: the model's (SINGA: the job's) name.
        argv: the script's ``sys.argv``, kept (SINGA reads its cluster config from it).
        label: SINGA's deprecated label layer; only False.
        seed: nnkit's seed for init, dropout and ``random_skip`` (an addition; None: fresh).

    Attributes:
        net: the :class:`nnkit.Sequential` trained (after the first ``fit``/``evaluate``).
        result: what the last run returned.
        last_checkpoint_path: the last checkpoint written.
    """

    def __init__(self, name: str = "my model", argv: Sequence[str] | None = None,
                 label: bool = False, seed: int | None = None) -> None:
        if label:
            raise ValueError("Model: label=True (SINGA's deprecated label layer) is not supported")
        self.name, self.argv, self.seed = name, list(argv or []), seed
        self.layers: list[Layer] = []
        self.optimizer: updaters.Updater | None = None
        self.cluster: Cluster | None = None
        self.net: _NnkitSequential | None = None
        self.result: dict[int, dict[str, float]] | None = None
        self.last_checkpoint_path: Path | None = None
        self._plan: dict[str, Any] | None = None  # a fit deferred to evaluate (with_test)
        self._rng = np.random.default_rng(seed)

    def add(self, layer: Layer) -> None:
        """Appends a layer."""
        if self.net is not None:
            raise RuntimeError(f"{self.name}: cannot add a layer after the model has trained")
        if not isinstance(layer, Layer) or is_data_layer(layer):
            raise TypeError(f"{self.name}: add() takes a layer (data goes to fit/evaluate), "
                            f"got {layer!r}")
        self.layers.append(layer)

    def compile(self, optimizer: updaters.Updater | None = None, cluster: Cluster | None = None,
                loss: str | None = None, topk: int = 1, **kwargs: Any) -> None:
        """Sets the updater, the cluster (see :class:`Cluster`) and the loss; a final softmax
        becomes the softmax loss (SINGA's rule, model.py ``Model.compile``)."""
        if not isinstance(optimizer, updaters.Updater):
            raise TypeError(f"{self.name}: compile needs optimizer=, an updater such as SGD(...); "
                            f"got {optimizer!r}")
        if cluster is not None and not isinstance(cluster, Cluster):
            raise TypeError(f"{self.name}: cluster must be a Cluster, got {type(cluster).__name__}")
        if loss != "categorical_crossentropy":
            raise ValueError(f"{self.name}: loss {loss!r} is not supported: nnkit.singa's model API "
                             f"trains with 'categorical_crossentropy'")
        if kwargs:
            raise TypeError(f"{self.name}: compile: unknown argument(s) {', '.join(sorted(kwargs))}")
        if not self.layers:
            raise ValueError(f"{self.name}: add layers before compile")
        Loss("softmaxloss", topk=topk)  # checks topk as the loss layer would
        last = self.layers[-1]
        if getattr(last, "mask", None) is not None and last.mask.activation == "softmax":
            last.mask = None  # the softmax loss computes it
        elif isinstance(last, Activation) and last.activation == "softmax":
            self.layers.pop()
        self.optimizer, self.cluster = optimizer, cluster

    # ---------------------------------------------------------------- fit and evaluate
    def fit(self, data: Data | None = None, alg: str = "bp", nb_epoch: int = 0,
            with_test: bool = False, execpath: str = "", device: Any = None,
            **fields: Any) -> dict[int, dict[str, float]] | None:
        """Trains ``nb_epoch`` steps on ``data`` (see the module docstring for ``fields``);
        with ``with_test=True`` the training waits for :meth:`evaluate`."""
        if not isinstance(data, Data):
            raise TypeError(f"{self.name}: fit: training data should be set (a Data layer)")
        nb_epoch = _positive(nb_epoch, f"{self.name}: fit: nb_epoch (the training steps)")
        _unknown(fields, _FIT_FIELDS, "fit")
        self._check_run(alg, execpath, device)
        if "batch_size" in fields:
            data.store.batchsize = _positive(fields["batch_size"], "fit: batch_size")
        steps = fields.get("train_steps", nb_epoch)
        plan = {"data": data, "train_steps": steps,
                "disp_freq": fields.get("disp_freq", nb_epoch // 10),
                "disp_after": fields.get("disp_after", 0),
                "checkpoint_freq": fields.get("checkpoint_freq", nb_epoch),
                "checkpoint_after": fields.get("checkpoint_after", 0),
                "checkpoint_path": fields.get("checkpoint_path"),
                "tests": []}
        if "validate_data" in fields:
            plan["tests"].append(("Validation", fields["validate_data"], {
                "freq": fields.get("validate_freq", nb_epoch // 10),
                "steps": fields.get("validate_steps", 0),
                "after": fields.get("validate_after", 0)}))
        self._plan = plan
        if with_test:
            return None
        return self._run(test=None)

    def evaluate(self, data: Data | None = None, alg: str = "bp",
                 checkpoint_path: Any = None, execpath: str = "", device: Any = None,
                 show_acc: bool = False, **fields: Any) -> dict[int, dict[str, float]]:
        """Tests on ``data``: while training, if ``fit(with_test=True)`` came first, else once
        (with the parameters of ``checkpoint_path`` if the model never trained). ``fields``:
        ``batch_size``, ``test_steps`` (default 10), ``test_freq``, ``test_after``. The
        accuracy is always reported (``show_acc`` is accepted for SINGA's sake)."""
        if not isinstance(data, Data):
            raise TypeError(f"{self.name}: evaluate: testing data should be set (a Data layer)")
        _unknown(fields, _EVALUATE_FIELDS, "evaluate")
        self._check_run(alg, execpath, device)
        if "batch_size" in fields:
            data.store.batchsize = _positive(fields["batch_size"], "evaluate: batch_size")
        when = {"steps": fields.get("test_steps", 10), "freq": fields.get("test_freq", 0),
                "after": fields.get("test_after", 0)}
        if self._plan is not None:
            return self._run(test=("Test", data, when))
        if self.net is None:
            self._build(data)
            if checkpoint_path is None:
                print(f"{self.name}: checkpoint_path has not been specified: testing the "
                      f"initial parameters")
            else:
                paths = checkpoint_path if isinstance(checkpoint_path, (list, tuple)) else [checkpoint_path]
                for path in paths:
                    self._load(path)
        self.result = {}
        step = self.net.trainer.global_step if self.net.trainer else 0
        self._test("Test", _Stream(data, self._rng), when["steps"], step)
        return self.result

    def _check_run(self, alg: str, execpath: str, device: Any) -> None:
        Algorithm(alg)
        if self.optimizer is None:
            raise RuntimeError(f"{self.name}: call compile(...) before fit or evaluate")
        if execpath:
            warnings.warn(f"{self.name}: execpath={execpath!r} ignored: nnkit trains in this process",
                          stacklevel=3)
        if device is not None:
            warnings.warn(f"{self.name}: device={device!r} ignored: nnkit trains on the CPU",
                          stacklevel=3)

    def _build(self, data: Data) -> None:
        """The nnkit model: the data's normalization, then the layers with their activations."""
        x, _ = data.store.examples()
        front: list[Layer] = []
        stats = data.store.normalization()
        if stats is not None:
            front.append(Normalization(*stats, name="store_normalization"))
        self.net = _NnkitSequential(front + layer_list(self.layers), name=self.name,
                                    input_shape=x.shape[1:], seed=self.seed)
        self.net.compile(self.optimizer, loss="softmaxloss")
        self.net.build()

    def _run(self, test: tuple[str, Data, dict] | None) -> dict[int, dict[str, float]]:
        plan, self._plan = self._plan, None
        data = plan["data"]
        if self.net is None:
            self._build(data)
        if plan["checkpoint_path"] is not None:
            self._load(plan["checkpoint_path"])
        tests = plan["tests"] + ([test] if test is not None else [])
        for _, other, _ in tests:
            self._check_same_normalization(data, other)
        streams = [(label, _Stream(d, self._rng), when) for label, d, when in tests]
        x, y = _Stream(data, self._rng).from_start()
        self.result = {}
        self.net.fit(x, y, batch_size=data.store.batchsize, steps=plan["train_steps"],
                     shuffle=False, verbose=0, callbacks=[_WorkerLoop(self, plan, streams)])
        return self.result

    def _check_same_normalization(self, train: Data, other: Data) -> None:
        a, b = train.store.normalization(), other.store.normalization()
        same = (a is None) == (b is None) and (a is None or all(
            np.array_equal(np.ravel(u), np.ravel(v)) for u, v in zip(a, b)))
        if not same:
            raise ValueError(f"{self.name}: the {other.phase} store's mean/std differ from the "
                             f"training store's: nnkit normalizes in the model, once for both")

    def _record(self, step: int, label: str, loss: float | None, accuracy: float | None) -> None:
        """Prints a SINGA-style log line and keeps it in ``result``."""
        print(f"{label} @ step {step}  loss = {loss:.6f}, accuracy = {accuracy:.6f}", flush=True)
        prefix = {"Train": "", "Test": "test_", "Validation": "val_"}[label]
        self.result.setdefault(step, {}).update({f"{prefix}loss": loss, f"{prefix}acc": accuracy})

    def _test(self, label: str, stream: _Stream, steps: int, step: int) -> None:
        batch = stream.data.store.batchsize
        x, y = stream.take(steps * batch)
        logs = self.net.evaluate(x, y, batch_size=batch)
        self._record(step, label, logs["loss"], logs.get("accuracy"))

    def _checkpoint(self, step: int) -> None:
        if self.cluster is not None:
            self.last_checkpoint_path = save_model_parameter(
                step, self.cluster.workspace / "checkpoint", self.net.layers)

    def _load(self, path: Any) -> None:
        checkpoint.load_model_parameter(_latest(Path(path)), self.net.layers)

    def display(self) -> None:
        """Prints the nnkit model's layers, shapes and parameter counts."""
        if self.net is None:
            print(f"{self.name}: {len(self.layers)} layers, not built yet (fit or evaluate builds it)")
        else:
            self.net.summary()

    def size(self) -> int:
        """The number of layers added."""
        return len(self.layers)


class Sequential(Model):
    """SINGA's ``Sequential('name', argv)``: layers one after the other."""


def _unknown(fields: dict[str, Any], known: set[str], what: str) -> None:
    unknown = set(fields) - known
    if unknown:
        raise TypeError(f"{what}: unknown field(s) {', '.join(sorted(unknown))} (known: "
                        f"{', '.join(sorted(known))})")


# ---------------------------------------------------------------------------- parameter files

_STEP_FILE = re.compile(r"step(\d+)-worker0$")


def _latest(path: Path) -> Path:
    """``path``, or for a folder its ``step<N>-worker0`` file of the highest N."""
    if not path.is_dir():
        return path
    steps = [(int(m.group(1)), p) for p in path.iterdir() if (m := _STEP_FILE.match(p.name))]
    if not steps:
        raise FileNotFoundError(f"{path}: no step<N>-worker0 parameter file in this folder")
    return max(steps)[1]


def _hidden(neuralnet: Sequence[Any]) -> list[Layer]:
    """The layers from the first one that is not a data layer (SINGA's ``hly_idx``), named
    uniquely (type_k by position, explicit names kept) so a list built alike matches."""
    layers_ = [layer for layer in neuralnet if isinstance(layer, Layer)]
    name_layers(layers_, "neuralnet")
    first = next((i for i, layer in enumerate(layers_) if not is_data_layer(layer)), len(layers_))
    return layers_[first:]


def save_model_parameter(step: int, fout: str | os.PathLike, neuralnet: Sequence[Any]) -> Path:
    """Saves the parameters of ``neuralnet`` (a list of layers, data layers first) as
    ``<fout>/step<step>-worker0``, SINGA's ``Worker::Checkpoint`` name, in nnkit's HDF5
    parameter format (:func:`nnkit.save_model_parameter`); returns the file's path.

    The layers must have computed once (or be built). Default names are made unique first,
    by position, so that :func:`load_model_parameter` on a list built the same way matches.
    """
    folder = Path(fout)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step{int(step)}-worker0"
    checkpoint.save_model_parameter(step, path, _hidden(neuralnet))
    return path


def load_model_parameter(fin: str | os.PathLike, neuralnet: Sequence[Any], batchsize: int = 1,
                         data_shape: Sequence[int] | None = None) -> int:
    """Loads parameters saved by :func:`save_model_parameter` into ``neuralnet``; returns the
    step. ``fin`` is the file (or a folder: its latest ``step<N>-worker0``).

    The layers need no prior build: each is set up from the one before it, the data layers
    from ``data_shape`` (a whole batch shape, ``(batchsize, ...)``) or their own shape, as in
    SINGA (model.py, ``load_model_parameter``). ``batchsize`` is accepted for SINGA's sake:
    nnkit layers take any batch size.
    """
    _positive(batchsize, "load_model_parameter: batchsize")
    layers_ = [layer for layer in neuralnet if isinstance(layer, Layer)]
    shape: tuple[int, ...] | None = None
    for layer in layers_:
        if is_data_layer(layer):
            if data_shape is not None:
                layer.input_shape = tuple(int(d) for d in data_shape[1:])
            if layer.input_shape is None:
                raise ValueError(f"load_model_parameter: {layer.describe()} has no shape: pass "
                                 f"data_shape=(batchsize, ...)")
            shape = layer.input_shape
            continue
        if shape is None:
            raise ValueError("load_model_parameter: the list must start with a data layer "
                             "(ImageInput, Dummy)")
        if not layer.built:
            layer.build(shape, layer.dtype or np.float32)
        elif layer.input_shape != shape:
            raise ValueError(f"load_model_parameter: {layer.describe()} was built for input "
                             f"{layer.input_shape}, but the layer before it gives {shape}")
        shape = layer.output_shape(layer.input_shape)
    hidden = _hidden(neuralnet)
    return checkpoint.load_model_parameter(_latest(Path(fin)), hidden)
