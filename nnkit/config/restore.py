"""Bringing models back: from checkpoints (``nnkit.load``, resume) and in child processes.

Everything here needs the job schema to rebuild a model without user code, which is why it
lives above :mod:`nnkit.model` and :mod:`nnkit.training`: the model hands its child-process
runs to :func:`start_arrays` through the bridge this package registers on import, and
:class:`~nnkit.training.ProcessRun` runs :func:`child_main` in the child.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from .. import checkpoint
from ..model import Sequential
from ..training import EventBus, ProcessRun, TrainingRun
from ..training.process import serve_child
from ..training.trainer import check_policy
from ..training.trainer_state import check_checkpoint_tree
from .job import Job, job_from_text
from .schema import model_from_proto

#: npz keys of the parent's parameters and layer state, by full name (``layer/name``).
PARAM_PREFIX = "param:"
STATE_PREFIX = "state:"


def load_tree_model(tree: dict[str, Any], source: str = "checkpoint") -> Sequential:
    """Rebuilds a model from a checkpoint tree (no user code needed) and restores its state.

    The job proto is used when the checkpoint has one, else the dict config.
    """
    if tree["model"].get("proto"):
        model = model_from_proto(tree["model"]["proto"], f"{source} (stored job)")
    else:
        model = Sequential.from_config(tree["model"]["config"])
    model.build()
    model.restore_tree(tree["model"], source)
    return model


def load(path: str | os.PathLike) -> Sequential:
    """Loads a model saved by ``model.save`` or a training checkpoint, ready to fit on.

    The training state (counters, data order, RNGs, history) comes back too, so
    ``nnkit.load(path).fit(x, y, ...)`` continues where the saved run stopped, and
    ``nnkit.load(path).trainer`` is the Trainer positioned where it stopped.
    """
    source = os.fspath(path)
    tree = checkpoint.load_tree(path)
    check_checkpoint_tree(tree, source)  # names a bad trainer field, before any building
    with checkpoint.restoring(source):  # a damaged stored config or state: one error type
        model = load_tree_model(tree, source)
        model.trainer_for_fit().load_state_dict(tree.get("trainer"), source)
    return model


# ==================================================================== child-process runs
def child_main(conn: Any, run_id: str, job_text: str, source: str, options: dict[str, Any]) -> None:
    """The child's entry point: build the job (and its arrays), then serve the run."""

    def make_run(bus: EventBus) -> TrainingRun:
        job = job_from_text(job_text, source, data_dir=options.get("data_dir"))
        model = job.build_model()
        if options.get("arrays"):
            with np.load(options["arrays"], allow_pickle=False) as f:
                x, y = f["x"], f["y"]
                validation = (f["xv"], f["yv"]) if "xv" in f else None
                stored = {k: f[k] for k in f.files if k.startswith((PARAM_PREFIX, STATE_PREFIX))}
            if stored:  # continue from the parent's current weights and state, not a fresh init
                model.build()
                checkpoint.assign_parameters(
                    {k[len(PARAM_PREFIX):]: v for k, v in stored.items() if k.startswith(PARAM_PREFIX)},
                    model.layers, options["arrays"],
                    state={k[len(STATE_PREFIX):]: v for k, v in stored.items() if k.startswith(STATE_PREFIX)})
        else:
            x, y = job.load_data("train")
            validation = job.load_data("test") if job.has_source("test") else None
        run = job.proto.run
        fit_kwargs = dict(x=x, y=y, batch_size=options.get("batch_size") or job.batch_size("train"),
                          epochs=options.get("epochs", run.epochs if run.HasField("epochs") else None),
                          steps=options.get("steps", run.steps if run.HasField("steps") else None),
                          validation_data=validation, verbose=0, run_dir=options.get("run_dir"),
                          on_nonfinite=options.get("on_nonfinite", "stop"))
        model.trainer_for_fit().config_text = job_text  # the whole job, data and run included, for the store
        return TrainingRun(model, fit_kwargs, options.get("run_dir"), linger=True, bus=bus)

    serve_child(conn, run_id, make_run)


def _process_run(job_text: str, source: str, run_dir: str | os.PathLike | None = None,
                 data_dir: str | None = None, arrays: str | None = None, epochs: int | None = None,
                 steps: int | None = None, batch_size: int | None = None,
                 on_nonfinite: str = "stop") -> ProcessRun:
    options = {"data_dir": data_dir, "arrays": arrays, "batch_size": batch_size,
               "run_dir": None if run_dir is None else os.fspath(run_dir),
               "on_nonfinite": check_policy(on_nonfinite)}
    if epochs is not None or steps is not None:
        options.update(epochs=epochs, steps=steps)
    return ProcessRun(child_main, (job_text, source, options), cleanup=arrays)


def start(job: Job | str | os.PathLike, run_dir: str | os.PathLike | None = None,
          data_dir: str | None = None, epochs: int | None = None, steps: int | None = None,
          on_nonfinite: str = "stop") -> ProcessRun:
    """Runs a job (a :class:`~nnkit.config.Job`, a config path, or config text) in a child process.

    ``on_nonfinite``: a batch that goes non-finite ends the run (``'stop'``, the default, so
    that nothing waits on a job nobody watches) or pauses it for ``resume``/``skip``
    (``'pause'``), as in :meth:`~nnkit.Sequential.fit`. Call it under ``if __name__ == "__main__":`` in a script: the child is started with the
    ``spawn`` method, which imports the calling module again.
    """
    if isinstance(job, Job):
        text, source = job.to_text(), job.source
    elif isinstance(job, (str, os.PathLike)) and Path(job).is_file():
        text, source = Path(job).read_text(), os.fspath(job)
    else:
        text, source = str(job), "<job>"
    return _process_run(text, source, run_dir=run_dir, data_dir=data_dir, epochs=epochs, steps=steps,
                        on_nonfinite=on_nonfinite)


def start_arrays(model: Sequential, x: np.ndarray, y: np.ndarray, validation_data: Any = None,
                 run_dir: str | os.PathLike | None = None, epochs: int | None = None,
                 steps: int | None = None, batch_size: int = 32, on_nonfinite: str = "stop"
                 ) -> ProcessRun:
    """``fit(background='process')``: the model as a job proto, the arrays through an .npz file.

    The child starts from the model's current parameters and layer state (also in the .npz);
    the updater's slots and the training counters start fresh there. ``on_nonfinite`` is the
    child's policy (``'pause'``: it waits for ``resume`` or ``skip`` from this handle).
    """
    job = model.to_proto()
    fd, path = tempfile.mkstemp(prefix="nnkit-arrays-", suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        arrays = {"x": x, "y": y}
        if model.built:
            arrays.update({PARAM_PREFIX + p.full_name: p.data for p in model.params})
            arrays.update({STATE_PREFIX + name: value for name, value in model.state_arrays().items()})
        if validation_data is not None:
            arrays.update(xv=validation_data[0], yv=validation_data[1])
        np.savez(f, **arrays)
    return _process_run(text_format.MessageToString(job), f"<{model.name}>", run_dir=run_dir,
                        arrays=path, epochs=epochs, steps=steps, batch_size=batch_size,
                        on_nonfinite=on_nonfinite)
