"""Jobs: a parsed, overridden and validated job config that builds its model, updater and data.

    job = nnkit.load_job("examples/mnist_mlp.conf", overrides=["run.steps=50"])
    model = job.build_model()                # a compiled, seeded Sequential
    x, y = job.load_data("train")            # normalized as the config says
    print(job.to_text())
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from google.protobuf import text_format

from .. import datasets
from .. import updaters as updaters_module
from ..layers.input import _InputLayer
from ..model import Sequential
from ..proto import JobConf
from .overrides import apply_override
from .schema import (DEFAULT_BATCH_SIZE, DEFAULT_MODEL_NAME, build_model_from_job,
                     check_input_shape, check_model_memory, shape_walk, updater_from_conf)
from .text import Origins, Where, parse_job, read_config_file

class Job:
    """A validated job config: builds the model, updater and data, and prints itself.

    Args:
        proto: the JobConf.
        origins: where its fields came from (for error messages); made by :func:`load_job`.
        max_model_bytes: the memory limit :meth:`validate` and :meth:`build_model` apply
            (None: the default, see :meth:`validate`).
    """

    def __init__(self, proto: JobConf, origins: Origins | None = None,
                 max_model_bytes: int | None = None) -> None:
        self.proto = proto
        self.origins = origins or Origins("<job>")
        self.max_model_bytes = max_model_bytes
        self._where = Where(self.origins)
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
        return datasets.SHAPES.get(self.proto.data.dataset.lower())

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
        """A new compiled, seeded Sequential on every call, validated as :meth:`validate` does
        (the data is not checked), and built for the input shape unless ``build=False``."""
        model = self.validate(check_data=False)
        shape = self.input_shape()
        if build and shape is not None:
            model.build(shape)
        return model

    def build_updater(self) -> updaters_module.Updater:
        """A fresh updater as the job describes it."""
        return updater_from_conf(self.proto.updater, self._where.child("updater"))

    # ------------------------------------------------------------------ validation
    def validate(self, check_data: bool = True, max_model_bytes: int | None = None) -> Sequential:
        """Checks everything that can be checked without training; returns the checked model,
        compiled and seeded but not built (no parameter allocated); raises ConfigError.

        The model must build and its shapes fit together and fit the data, and it must need
        at most ``max_model_bytes`` (default: :attr:`max_model_bytes`, else
        ``$NNKIT_MAX_MODEL_BYTES`` or 4 GiB, see
        :func:`~nnkit.config.schema.check_model_memory`); the updater and schedule must be
        consistent; with ``check_data`` the data folder and files must exist
        (:meth:`load_data` checks that anyway, with the same error).
        """
        if max_model_bytes is None:
            max_model_bytes = self.max_model_bytes
        model = build_model_from_job(self.proto, self._where, compile_always=True)
        walk = self._check_shapes(model)
        check_model_memory(model, walk, self._where.child("model"), max_model_bytes)
        if self.proto.HasField("data"):
            self._check_data(check_data)
        self._check_run()
        return model

    def _check_shapes(self, model: Sequential) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Runs the input shape through every layer's output_shape (no parameters allocated);
        returns the walk, ``(input shape, output shape)`` per layer."""
        mwhere = self._where.child("model")
        shape = self.input_shape()
        if shape is None:
            raise mwhere.error("the input shape is unknown: give model.input_shape, start with "
                               "an image_input layer, or name a known data.dataset", "input_shape")
        check_input_shape(shape, mwhere)  # before comparing sizes: a 0 would just not match
        info = self.dataset_info()
        if info is not None and math.prod(info[0]) != math.prod(shape):  # exact: no int64 wrap
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
        first = model.layers[0]
        if isinstance(first, _InputLayer):  # add() keeps input layers first
            if first.input_shape is not None and tuple(first.input_shape) != shape:
                raise mwhere.child("layer", 0).error(
                    f"the input layer's shape {first.input_shape} differs from model.input_shape {shape}")
        walk = shape_walk(model, shape, mwhere)  # the model's layers are one to one with the config's
        shape = walk[-1][1]
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
        return walk

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
            self._check_data_paths()

    def _check_data_paths(self, sources: Sequence[str] = ("train", "test")) -> None:
        """The files of ``sources``, and the data folder if one reads from it, exist
        (checked when a source is loaded, or by ``validate(check_data=True)``)."""
        data = self.proto.data
        dwhere = self._where.child("data")
        sources = [w for w in sources if data.HasField(w)]
        for which in sources:
            for i, path in enumerate(getattr(data, which).file):
                if not Path(path).is_file():
                    raise dwhere.child(which).child("file", i).error(f"no such file: {path}")
        needs_folder = any(not getattr(data, w).file for w in sources)
        if needs_folder and not data.download:
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
        mean = None
        if data.mean_image:
            if self._mean is None:
                self._mean = datasets.mean_image(self._raw("train")[0])
            mean = self._mean
        elif data.mean_value:
            values = np.asarray(data.mean_value, dtype=np.float32)
            mean = values if values.size > 1 else values[0]
        x = datasets.normalize(x, mean, data.scale if data.HasField("scale") else None)
        shape = tuple(input_shape or self.input_shape() or x.shape[1:])
        if x.shape[1:] != shape:
            x = x.reshape(len(x), -1)
        return x, y

    def _raw(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, C, H, W) and labels (N,) of a source, as read (cached)."""
        if which not in self._raw_cache:
            self._check_data_paths([which])  # the clear file:line error before any reader runs
            data = self.proto.data
            src = getattr(data, which)
            try:
                self._raw_cache[which] = datasets.read_source(
                    data.dataset, data.dir or None, split=src.split or which, files=list(src.file),
                    limit=src.limit if src.HasField("limit") else None, download=data.download)
            except FileNotFoundError as e:
                raise self._where.child("data").error(str(e), "dir" if data.dir else None) from None
        return self._raw_cache[which]

    def __repr__(self) -> str:
        return f"Job({self.name!r}, source={self.source!r})"



def load_job(path: str | os.PathLike, overrides: Iterable[str] = (), data_dir: str | None = None,
             check_data: bool = False, max_model_bytes: int | None = None) -> Job:
    """Reads, overrides and validates a text-format job config; raises ConfigError if unusable.

    Parsing and validating need no data: the data folder and files are checked when the data
    is loaded (:meth:`Job.load_data`), with the same error naming file:line.

    Args:
        path: the config file: a regular file of at most 16 MiB of UTF-8 text (see
            :func:`~nnkit.config.text.read_config_file`).
        overrides: ``key=value`` items applied after parsing (see :func:`apply_override`).
        data_dir: if given, replaces ``data.dir``.
        check_data: also check now that the data folder and files exist.
        max_model_bytes: refuse a model needing more memory (see :meth:`Job.validate`).
    """
    path = os.fspath(path)
    return job_from_text(read_config_file(path), path, overrides, data_dir, check_data,
                         max_model_bytes)


def job_from_text(text: str, source: str = "<string>", overrides: Iterable[str] = (),
                  data_dir: str | None = None, check_data: bool = False,
                  max_model_bytes: int | None = None) -> Job:
    """Like :func:`load_job` for text already in memory (``source`` names it in errors)."""
    proto, origins = parse_job(text, source)
    for item in overrides:
        apply_override(proto, item, origins)
    if data_dir is not None:
        proto.data.dir = os.fspath(data_dir)
        origins.overrides[(("data", 0), ("dir", 0))] = f"--data-dir {data_dir}"
    job = Job(proto, origins, max_model_bytes)
    job.validate(check_data=check_data)  # its model is dropped: build_model makes new ones
    return job
