"""Job configs: the protobuf schema (``proto/nnkit.proto``) <-> nnkit objects, with validation.

A job is a :class:`~nnkit.proto.JobConf`, usually written in protobuf text format like Caffe's
prototxt (see ``examples/mnist_mlp.conf``). :func:`load_job` parses and validates one and
returns a :class:`Job`, which builds the model, the updater and the data::

    job = nnkit.load_job("examples/mnist_mlp.conf", overrides=["run.steps=50"])
    model = job.build_model()                # a compiled, seeded Sequential
    x, y = job.load_data("train")            # normalized as the config says

    text = model.to_proto()                  # any Sequential -> JobConf (model and updater)
    same = nnkit.model_from_proto(text)      # ... and back: same config, same initial weights

One concern per module: ``text`` (parsing, locations, :class:`ConfigError`), ``overrides``
(``--set``), ``schema`` (proto <-> layers, updaters, models), ``job`` (validate and build
once, data), ``restore`` (``nnkit.load``, child-process runs), ``caffe`` (Caffe nets in:
:func:`from_caffe`, loaded on first use with its schema). Importing this package
registers the schema with :mod:`nnkit.model` (``Sequential.to_proto`` and
``fit(background='process')``), which cannot import it: it sits below.
"""
from .. import model as _model
from .job import DEFAULT_BATCH_SIZE, Job, job_from_text, load_job
from .overrides import apply_override
from .restore import load, load_tree_model, start, start_arrays
from .schema import model_from_proto, model_to_proto
from .text import ConfigError, parse_job

_model.register_config_bridge(_model.ConfigBridge(to_proto=model_to_proto, start_process=start_arrays))

__all__ = ["from_caffe", "CaffeImport", "ConfigError", "Job", "load_job", "job_from_text", "parse_job", "model_from_proto",
           "model_to_proto", "apply_override", "load", "load_tree_model", "start", "start_arrays",
           "DEFAULT_BATCH_SIZE"]


def __getattr__(name: str) -> object:
    """``from_caffe`` and ``CaffeImport`` on first use: a job needs no Caffe schema loaded."""
    if name in ("from_caffe", "CaffeImport"):
        from . import caffe
        return getattr(caffe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
