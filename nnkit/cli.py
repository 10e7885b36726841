"""The ``nnkit`` command line: train, evaluate, inspect and time jobs described in job configs.

    nnkit train JOB.conf [--set key=value ...] [--run-dir DIR] [--resume CKPT|RUN_DIR|auto]
                         [--overwrite] [--keep-checkpoints N] [--data-dir DIR] [--tensorboard [DIR]]
                         [--store PATH] [--owner O] [--name N] [--tag T ...] [--load-root DIR ...]
    nnkit eval CKPT|RUN_DIR [--data-dir DIR] [--dataset NAME] [--scale S] [--json]
    nnkit show JOB.conf|CKPT|RUN_DIR
    nnkit time JOB.conf [--iterations N]
                         [--run-id ID]
    nnkit queue JOB.conf [--set key=value ...] [--name N] [--tag T ...] [--owner O] [--retries N]
                         [--store PATH]
    nnkit worker [--store PATH] [--runs-dir DIR] [--max-jobs N] [--once]
                 [--dask ADDRESS [--slots K] [--copy-back]]
    nnkit sweep JOB.conf --grid PATH=V1,V2 ... | --random N --random-param PATH=DIST ... [--seed S]
                         | --optuna PATH=DIST ... --trials N [--metric M] [--direction D] [--pruner P]
                           [--study-storage PATH] [--parallel K]
                         | --pbt [--population N] [--interval-epochs N] [--perturb F1,F2] [--metric M]
                           [--direction D] [--quantile Q] [--init-lr LR1,LR2,...] [--runs-dir DIR] [--seed S]
                         [--set key=value ...] [--name N] [--tag T ...] [--owner O] [--retries N]
    nnkit sweep --status SWEEP [--metric M] [--json] | --replay SWEEP [--json] | --list  [--store PATH]
    nnkit ctl RUN_DIR|RUN COMMAND [key=value ...] [--wait SECONDS | --no-wait] [--store PATH]
    nnkit watch RUN_DIR [--interval S] [--no-exit-on-end]
    nnkit plot RUN_DIR [--out DIR]
    nnkit export CKPT|RUN_DIR OUT.onnx
    nnkit import-caffe NET.prototxt [SOLVER.prototxt] -o JOB.conf [--weights NET.caffemodel]
                       [--dataset NAME]
    nnkit ui [--store PATH] [--host 127.0.0.1] [--port N] [--token TOKEN]
    nnkit runs list|show|compare|tag|untag|note|rm|export|reindex ... [--store PATH]

Every run is recorded in the experiment store (``nnkit train --store PATH --owner O --name N
--tag T``); ``nnkit runs`` lists, compares and edits the records (:mod:`nnkit.experiments.cli`).

Exit status: 0 on success, 2 for a bad config or bad arguments (the message on stderr, no
traceback), 1 for a failure during the run (``--debug``, before or after the command, adds
the traceback), 130 when a run was stopped by Ctrl-C (after its checkpoint was written), 141
(quietly) when the reader of stdout went away, as in ``nnkit show CKPT | head -1``.

A training run writes into its run directory (``runs/<job name>-<YYYYmmdd-HHMMSS>`` by
default): ``job.conf`` (the job as run, overrides applied), ``checkpoint-<step>.h5`` (every
``run.checkpoint_freq`` steps, at the end and on Ctrl-C; the newest ``--keep-checkpoints``
kept, and ``latest`` naming the last: see :mod:`nnkit.training.checkpoints`),
``events.jsonl`` (the run's one log: ``train`` means every ``run.display_freq`` steps,
``test`` results, epoch ends, commands and their answers; see :mod:`nnkit.training.events`)
and, at the end, ``metrics.json`` (the final train and test metrics). Every file is written
atomically or line by line, so a failure never leaves a half-written one. A run directory
holding another run's checkpoints is refused (exit 2) unless ``--resume auto`` (continue from
its latest checkpoint; none there: start afresh), ``--resume CKPT`` or ``--overwrite``
(delete them, start over).
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import textwrap
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ._version import __version__
from .means import RunningMeans
from .training.callbacks import Callback
from .training.events import EVENTS_FILE

# The framework (config, model, layers and their kernels, checkpoint and h5py) is imported
# inside the commands that need it: `nnkit ctl` and `nnkit watch` only read and append lines
# of a run directory, and start in a fraction of the time without it.
if TYPE_CHECKING:
    import numpy as np

    from .config import Job
    from .model import Sequential

DEFAULT_RUNS = "runs"
JOB_FILE = "job.conf"
FINAL_FILE = "metrics.json"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class UsageError(Exception):
    """Bad command-line arguments (exit status 2)."""


# ==================================================================================== helpers
def _is_config_error(error: BaseException) -> bool:
    """True for bad input: the config's ConfigError, a CheckpointError (a damaged checkpoint,
    or one that does not fit its model), or a LayerShapeError (a stored model whose layers do
    not fit together); without importing their modules (if no command loaded one, none of its
    errors was raised)."""
    text, stored = sys.modules.get("nnkit.config.text"), sys.modules.get("nnkit.checkpoint")
    model = sys.modules.get("nnkit.model")
    return ((text is not None and isinstance(error, text.ConfigError))
            or (stored is not None and isinstance(error, stored.CheckpointError))
            or (model is not None and isinstance(error, model.LayerShapeError)))


def _is_checkpoint(path: str) -> bool:
    """True if ``path`` is an HDF5 file (a checkpoint) rather than a text job config.

    ConfigError (exit 2) naming the file if it is missing, unreadable or not a regular file
    (a FIFO would block, ``/dev/zero`` never end).
    """
    from .config.text import open_regular_file
    with open_regular_file(path) as f:
        try:
            return f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE
        except OSError as e:
            raise UsageError(f"{path}: cannot read the file: {e.strerror or e}") from None


def _read_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint's tree; exit 2 if it is missing, not a regular file or not a model checkpoint."""
    from . import checkpoint
    from .config.text import open_regular_file
    open_regular_file(path, "checkpoint").close()  # HDF5 would open a FIFO and block
    try:
        tree = checkpoint.load_tree(path)
    except checkpoint.CheckpointError as e:
        raise UsageError(str(e)) from None
    if "model" not in tree:
        raise UsageError(f"{path}: not a model checkpoint")
    from .training.trainer_state import check_trainer_state
    check_trainer_state(tree.get("trainer"), path)  # a bad trainer section: exit 2 naming the field
    return tree


def _stored_job(tree: dict[str, Any], path: str, overrides: list[str] = (),
                data_dir: str | None = None) -> Job | None:
    """The job stored in a checkpoint (None if it has none), with overrides and ``data_dir``."""
    from .config import job_from_text
    text = tree["model"].get("proto")
    if not text:
        return None
    return job_from_text(text, f"{path} (stored job)", overrides, data_dir, check_data=False)


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute, so the job.conf and checkpoints of a run work from any folder."""
    return None if path is None else os.path.abspath(path)


def _fmt(logs: dict[str, Any]) -> str:
    """``loss 0.1234  accuracy 0.9561`` for the numeric entries of ``logs`` (4 significant
    digits: a diverging loss of 1.3e30 stays short)."""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in logs.items() if isinstance(v, (int, float)) and v is not None)


# ======================================================================= training callbacks
class RunLog(Callback):
    """``nnkit train``'s log, as events of the run (``events.jsonl`` is the one log).

    Every ``display_freq`` steps: a ``train`` event with the mean loss and metrics of the
    batches since the last one. Every ``test_freq`` steps (if a test set is given), and at the
    end through :meth:`test`: a ``test`` event with the test metrics, also printed. The run's
    event bus is the Trainer's channel (``fit(run_dir=...)`` attaches it before training).
    While training, every answer to a command (``nnkit ctl``: pause, resume, set...) is
    printed too, so steering leaves a trace on the training terminal.
    """

    def __init__(self, display_freq: int, test_data: tuple[np.ndarray, np.ndarray] | None,
                 test_freq: int, test_batch_size: int, echo: Callable[[str], None]) -> None:
        self.display_freq = display_freq
        self.test_data = test_data
        self.test_freq = test_freq
        self.test_batch_size = test_batch_size
        self.echo = echo
        self.window = RunningMeans(skip=_NOT_AVERAGED)    # since the last train event
        self.run_means = RunningMeans(skip=_NOT_AVERAGED)  # over this invocation: the final metrics
        self.last_test: dict[str, float] | None = None
        self.last_test_step: int | None = None
        self._reported = False  # whether last_test went out as a test event
        self._unsubscribe: list[Callable[[], None]] = []

    def _emit(self, type: str, **fields: Any) -> None:
        self.trainer.controller.bus.emit(type, step=self.trainer.global_step,
                                         epoch=self.trainer.current_epoch, **fields)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.window.reset()
        bus = self.trainer.controller.bus
        self._unsubscribe = [bus.subscribe(kind, self._echo_answer) for kind in ("ack", "error")]

    def _echo_answer(self, event: dict[str, Any]) -> None:
        """Prints an answer to a command (or an error) as ``nnkit watch`` logs it. Called in the
        training thread, which applies the commands, so the line comes between two batches."""
        from .views.terminal import log_line
        line = log_line(event)
        if line:
            self.echo(line)

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        for means in (self.window, self.run_means):
            means.add(logs, logs.get("size", 1))
        step = self.trainer.global_step
        if self.display_freq and step % self.display_freq == 0:
            self._emit("train", lr=logs.get("lr"), **self.window.means())
            self.window.reset()
        if self.test_data is not None and self.test_freq and step % self.test_freq == 0:
            self.test(step)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """The final test, while the run's channel is still open (not after Ctrl-C or a failure)."""
        logs = logs or {}
        if self.test_data is not None and not logs.get("failed") and logs.get("requested") != "interrupt":
            self.test(self.trainer.global_step)
        for unsubscribe in self._unsubscribe:  # the run's own failure is reported by main()
            unsubscribe()
        self._unsubscribe = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # The epoch's validation pass is a test at this step: the final test reuses it.
        val = {k[len("val_"):]: v for k, v in (logs or {}).items() if k.startswith("val_")}
        if val and self.test_data is not None and self.last_test_step != self.trainer.global_step:
            self.last_test, self.last_test_step = val, self.trainer.global_step
            self._reported = False

    def test(self, step: int) -> dict[str, float]:
        """Evaluates on the test set, reports (event and console) and returns the result.

        A step already evaluated (``test_freq`` divides the last step, or an epoch's validation
        pass ran at this step) is reported once and not evaluated again.
        """
        if step != self.last_test_step:
            self.last_test = self.model.evaluate(*self.test_data, batch_size=self.test_batch_size)
            self.last_test_step, self._reported = step, False
        if not self._reported:
            self._emit("test", **self.last_test)
            self.echo(f"step {step}: test {_fmt(self.last_test)}")
            self._reported = True
        return self.last_test


# Batch-log keys that are counters or settings, not metrics to average.
_NOT_AVERAGED = ("batch", "size", "lr")


# =================================================================================== commands
def _resume_point(args: argparse.Namespace) -> Path | None:
    """The checkpoint ``nnkit train`` continues from (``--resume`` resolved), or None.

    Refuses (exit 2) a ``--run-dir`` holding another run's checkpoints unless ``--resume`` or
    ``--overwrite`` says what to do with them; ``--resume auto`` finding none starts afresh.
    """
    from .training import checkpoints
    if args.resume and args.overwrite:
        raise UsageError("--overwrite starts over and --resume continues: give one of them")
    if args.resume == "auto" and not args.run_dir:
        raise UsageError("--resume auto continues the checkpoints of a run directory: give --run-dir "
                         "(a new timestamped directory has none)")
    if args.keep_checkpoints < 1:
        raise UsageError(f"--keep-checkpoints must be >= 1, got {args.keep_checkpoints}")
    try:
        return checkpoints.check_run_dir(args.run_dir, args.resume, args.overwrite,
                                         checkpoints.FLAG_CHOICES)
    except checkpoints.RunDirectoryInUse as e:
        raise UsageError(str(e)) from None
    except FileNotFoundError as e:
        raise UsageError(f"--resume {args.resume}: {e}") from None


def _make_run_dir(args: argparse.Namespace, job: Job, resume: Path | None) -> Path:
    """The run directory: --run-dir, the resumed checkpoint's folder, or a new timestamped one.

    Made only once the job and its data are known to be good; ``--overwrite`` clears it then.
    """
    from .training import checkpoints
    if args.run_dir:
        path = Path(args.run_dir)
        path.mkdir(parents=True, exist_ok=True)
        if args.overwrite:  # the old run's checkpoints and log; its job.conf is replaced below
            checkpoints.clear_run_dir(path, also=(EVENTS_FILE, FINAL_FILE))
        return path
    if resume is not None:
        return resume.resolve().parent
    parent = Path(job.proto.run.run_dir or DEFAULT_RUNS)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1, 1000):  # mkdir without exist_ok: two runs in one second get two folders
        path = parent / (f"{job.name}-{stamp}" + (f"-{k}" if k > 1 else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UsageError(f"cannot create a run directory under {parent}")


def cmd_train(args: argparse.Namespace) -> int:
    """``nnkit train``: runs a job into a run directory."""
    from . import checkpoint
    from .training import checkpoints
    from .config import ConfigError, load_job
    from .training.callbacks import ModelCheckpoint
    if args.tensorboard is not None:  # a missing extra fails before any work, like a bad argument
        from .views.tensorboard import require_tensorboardx
        try:
            require_tensorboardx()
        except ImportError as e:
            raise UsageError(f"--tensorboard: {e}") from None
    job = load_job(args.job, args.set, data_dir=_absolute(args.data_dir))
    if not job.has_source("train"):
        raise ConfigError(job.source, "data.train", "missing value: the job has no train source")
    if args.run_id is not None and not args.run_dir:
        raise UsageError("--run-id records into a queued run's record: give its --run-dir too")
    world = _mpi_world()
    lead = world is None or world.rank == 0  # rank 0 alone resolves, writes and steers
    resume = _resume_point(args) if lead else None
    if world is not None:
        resume = world.broadcast(resume)
    model = job.build_model()
    if resume is not None:  # a checkpoint of another model is a bad argument: fail before anything
        tree = _read_checkpoint(str(resume))
        try:
            model.restore_tree(tree["model"], str(resume))
        except (ValueError, KeyError) as e:
            raise UsageError(f"--resume {resume}: does not fit the job's model: {e}") from None
    x, y = job.load_data("train")  # missing data: a ConfigError naming file:line, before any file is made
    test = job.load_data("test") if job.has_source("test") else None
    run = job.proto.run
    plan = dict(batch_size=job.batch_size("train"), epochs=run.epochs if run.HasField("epochs") else None,
                steps=run.steps if run.HasField("steps") else None,
                shuffle=job.proto.data.train.shuffle if job.proto.data.train.HasField("shuffle") else True,
                resume=resume)
    if world is not None:
        # A non-finite batch ends a distributed run: pausing would leave the other ranks waiting.
        plan.update(distributed=True, on_nonfinite="stop")
    else:
        plan.update(on_nonfinite=args.on_nonfinite)
    if not lead:  # the other ranks train their shards silently
        _fit_or_abort(model, world, x, y, verbose=0, **plan)
        return EXIT_INTERRUPTED if model.trainer.interrupted else EXIT_OK
    run_dir = _make_run_dir(args, job, resume)
    header = f"# nnkit {__version__}: job {job.source}" + "".join(f"\n# --set {s}" for s in args.set)
    checkpoint.atomic_write(run_dir / JOB_FILE, f"{header}\n{job.to_text()}")
    echo = _echo_function()
    log = RunLog(run.display_freq if run.HasField("display_freq") else 100,
                 test, run.test_freq, job.batch_size("test"), echo)
    callbacks: list[Callback] = [log]
    if run.checkpoint_freq:  # no file path: the run directory's rotating checkpoint-<step>.h5
        callbacks.append(ModelCheckpoint(every_n_epochs=None, every_n_batches=run.checkpoint_freq))
    if args.tensorboard is not None:
        from .views.tensorboard import TensorBoard
        callbacks.append(TensorBoard(args.tensorboard or run_dir / "tensorboard"))
    model.trainer_for_fit().keep_checkpoints = args.keep_checkpoints
    model.trainer_for_fit().load_roots = [Path(root).resolve() for root in args.load_root]
    from . import experiments  # records the run (and says how): the store, owner, name, tags
    experiments.configure(store=_absolute(args.store), owner=args.owner, name=args.name, tags=args.tag,
                          run_id=args.run_id)
    origin = ("" if resume is None else f", continuing from {resume}") + (
        "; no checkpoint there, starting afresh" if args.resume == "auto" and resume is None else "")
    print(f"nnkit train: job {job.name!r}, run directory {run_dir}{origin}", file=sys.stderr)
    if world is not None:
        print(f"nnkit train: data-parallel over {world.size} MPI ranks, global batch {plan['batch_size']}",
              file=sys.stderr)
    start = time.perf_counter()
    # validation_data: every epoch event carries the test error, for watch, plot and TensorBoard.
    _fit_or_abort(model, world, x, y, validation_data=test, callbacks=callbacks, verbose=1,
                  run_dir=run_dir, **plan)
    trainer = model.trainer
    final: dict[str, Any] = {
        "job": job.name, "run_dir": str(run_dir), "step": trainer.global_step,
        "epoch": trainer.current_epoch, "interrupted": trainer.interrupted,
        "seconds": round(time.perf_counter() - start, 3), "train": log.run_means.means(),
        "test": None}
    if test is not None and not trainer.interrupted:
        final["test"] = log.last_test  # RunLog tested at the end of the run
    checkpoint.atomic_write(run_dir / FINAL_FILE, json.dumps(final, indent=2) + "\n")
    if trainer.interrupted:
        print(f"nnkit train: stopped at step {trainer.global_step}; checkpoint in "
              f"{checkpoints.latest_checkpoint(run_dir)} (continue with --run-dir {run_dir} "
              "--resume auto)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"nnkit train: done, step {trainer.global_step}; {_fmt(final['test'] or final['train'])}")
    return EXIT_OK


def _mpi_world() -> Any:
    """The MPI world when ``nnkit train`` runs under ``mpiexec -n N`` (N > 1), else None."""
    from .distributed import launched_by_mpi, world
    if not launched_by_mpi():
        return None
    try:
        return world()
    except ImportError as e:
        raise UsageError(str(e)) from None


def _fit_or_abort(model: Any, world: Any, x: Any, y: Any, **kwargs: Any) -> None:
    """``model.fit``; under MPI an error on this rank ends every rank at once (MPI_Abort),
    so none waits forever for a collective this rank will never join."""
    try:
        model.fit(x, y, **kwargs)
    except Exception:
        if world is None:
            raise
        print(f"nnkit train: rank {world.rank} of {world.size} failed; aborting every rank:",
              file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        world.abort(EXIT_FAILED)


def _echo_function() -> Callable[[str], None]:
    """Prints a line to stderr without breaking a tqdm progress bar."""
    from tqdm.auto import tqdm
    return lambda line: tqdm.write(line, file=sys.stderr)


def _checkpoint_arg(path: str) -> str:
    """A checkpoint named on the command line: a file, or a run directory's latest one."""
    from .training import checkpoints
    try:
        return str(checkpoints.resolve_checkpoint(path))
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None


def _preprocessing(model: Sequential) -> str:
    """What the model's preprocessing layers (Rescaling, Normalization) do, or ""."""
    from .layers.preprocessing import _Preprocessing
    return "; ".join(f"{layer.name}: {layer.describe_transform()}" for layer in model.layers
                     if isinstance(layer, _Preprocessing))


def _eval_job(tree: dict[str, Any], path: str, args: argparse.Namespace, model: Sequential) -> Job:
    """The job whose test data ``nnkit eval`` uses: the stored one, with ``--dataset``/``--scale``.

    A checkpoint of ``fit`` from Python stores a job without a data section (its arrays came
    already scaled, or raw to a model that scales them itself): ``--dataset`` names the data
    then, and a note says what is done to the raw pixels (``model``'s preprocessing layers,
    ``--scale``).
    """
    from . import datasets
    stored = _stored_job(tree, path)
    if stored is None:
        raise UsageError(f"{path}: the checkpoint stores no job config (its model cannot be "
                         "described by the schema), so it describes no test data")
    if args.dataset is None and not stored.has_source("test"):
        raise UsageError(f"{path}: the checkpoint describes no test data (it was not trained from a "
                         "job config with a data.test section); name it: --dataset "
                         f"{'|'.join(datasets.DATASETS)} [--data-dir DIR] [--scale S]")
    extra = []  # before --set, so that an explicit --set wins
    if args.dataset is not None:
        extra.append(f"data.dataset={args.dataset}")
        if not stored.has_source("test"):
            extra.append("data.test.split=test")
    if args.scale is not None:
        extra.append(f"data.scale={args.scale!r}")
    job = _stored_job(tree, path, [*extra, *args.set], _absolute(args.data_dir))
    if not stored.proto.HasField("data"):
        scale = job.proto.data.scale if job.proto.data.HasField("scale") else None
        inside = _preprocessing(model)
        if inside:
            print(f"nnkit eval: note: the model does its own preprocessing ({inside}); the test "
                  "images go in as the raw pixel values"
                  + (f" times {scale:g} (--scale, before the model's own)" if scale is not None else ""),
                  file=sys.stderr)
        else:
            print(f"nnkit eval: note: {path} stores no preprocessing (trained from Python on arrays "
                  "scaled there); the test images are the raw pixel values "
                  + (f"times {scale:g} (--scale)" if scale is not None else
                     "unscaled; give --scale 0.00392156862745098 if training used x / 255, or "
                     "train with a Rescaling or Normalization layer"),
                  file=sys.stderr)
    return job


def cmd_eval(args: argparse.Namespace) -> int:
    """``nnkit eval``: test metrics of a checkpoint, on the test data its job describes
    (or that ``--dataset`` names)."""
    from .config import load_tree_model
    path = _checkpoint_arg(args.checkpoint)
    tree = _read_checkpoint(path)
    model = load_tree_model(tree, path)
    job = _eval_job(tree, path, args, model)
    job.validate(check_data=True)
    x, y = job.load_data("test", model.input_shape)
    metrics = model.evaluate(x, y, batch_size=args.batch_size or job.batch_size("test"))
    step = (tree.get("trainer") or {}).get("global_step")
    if args.json:
        print(json.dumps({"checkpoint": path, "step": step, "examples": len(x), **metrics}))
    else:
        print(f"{path} (step {step}), {len(x)} test examples: {_fmt(metrics)}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    """``nnkit show``: layers, shapes, parameter counts, updater, schedule, data and run."""
    from .config import load_job, load_tree_model
    from .views.channels import epoch_text
    if os.path.isdir(args.path):  # a run directory: its latest checkpoint
        args.path = _checkpoint_arg(args.path)
    stored = _is_checkpoint(args.path)
    if stored:
        tree = _read_checkpoint(args.path)
        model = load_tree_model(tree, args.path)
        job = _stored_job(tree, args.path, args.set)
        state = tree.get("trainer") or {}
        # Epochs counted from 1, as everywhere people read them ("epoch 2 done", "epoch 3, batch 7").
        epoch, batches = int(state.get("current_epoch", 0)), int(state.get("batch_cursor", 0))
        print(f"checkpoint {args.path}: step {state.get('global_step', 0)}, "
              f"{epoch_text(epoch, batches)}" + (f", batch {batches}" if batches else ""))
    else:
        job = load_job(args.path, args.set, check_data=False)
        model = job.build_model()
        print(f"job {job.name!r} ({job.source}), seed {job.proto.seed if job.proto.HasField('seed') else 'none'}")
    _show_model(model, job, stored)
    return EXIT_OK


def _show_model(model: Sequential, job: Job | None, stored: bool = False) -> None:
    """Prints the summary; then the job's data and run sections (a job file's run section
    always, its defaults included; a checkpoint's only if its job had one: a model trained
    from Python records no run plan)."""
    if not model.built and job is not None and job.input_shape() is not None:
        model.build(job.input_shape())
    model.summary()
    inside = _preprocessing(model)
    if inside:
        print(f"Preprocessing in the model (it takes the raw data): {inside}")
    if model.loss_layer is not None:
        metrics = ", ".join(name for name, _ in model.metrics) or "none"
        print(f"Loss: {model.loss_layer.lossname}   Metrics: {metrics}")
    if model.updater is not None:
        print(f"Updater: {model.updater!r}")
        print(f"Schedule: {model.updater.schedule!r}")
    if job is None:
        return
    if job.proto.HasField("data"):
        data = job.proto.data
        norm = [name for name, on in (("mean image", data.mean_image),
                                      (f"mean value {list(data.mean_value)}", bool(data.mean_value)),
                                      (f"scale {data.scale:g}", data.HasField("scale"))) if on]
        print(f"Data: {data.dataset} from {data.dir or '$NNKIT_DATA or ~/.nnkit/datasets'}; "
              f"normalization: {', '.join(norm) or 'none (float32 of the raw values)'}")
        for which in ("train", "test"):
            if job.has_source(which):
                src = getattr(data, which)
                what = ", ".join(src.file) if src.file else f"split {src.split or which}"
                extra = f", first {src.limit}" if src.HasField("limit") else ""
                print(f"  {which}: {what}, batch {job.batch_size(which)}{extra}")
    if stored and not job.proto.HasField("run"):
        return
    run = job.proto.run
    length = " or ".join(f"{getattr(run, k)} {k}" for k in ("epochs", "steps") if run.HasField(k))
    every = {what: f"every {n} steps and at the end" if n else "at the end"
             for what, n in (("test", run.test_freq), ("checkpoint", run.checkpoint_freq))}
    display = run.display_freq if run.HasField("display_freq") else 100
    print(f"Run: {length or '1 epochs'}; log every {display} steps; test {every['test']}; "
          f"checkpoint {every['checkpoint']}; run directories under {run.run_dir or DEFAULT_RUNS}/")


def cmd_time(args: argparse.Namespace) -> int:
    """``nnkit time``: per-layer forward/backward milliseconds and the whole step, on random data."""
    import numpy as np

    from . import parallel
    from .config import load_job
    from .layers import LabelInput
    job = load_job(args.job, args.set, check_data=False)
    model = job.build_model()  # validation made sure the input shape is known
    if args.iterations < 1:
        raise UsageError(f"--iterations must be >= 1, got {args.iterations}")
    batch = args.batch_size or job.batch_size("train")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
    out_shape = model.shapes()[-1][1]
    # Labels for the softmax loss (classes = outputs), targets for the Euclidean one.
    y = (rng.integers(0, out_shape[0], size=batch) if isinstance(model.label_layer, LabelInput)
         else rng.standard_normal((batch, *out_shape)).astype(np.float32))
    model.profile_step(x, y, 1)  # warm-up: buffers, BLAS threads, caches
    n = args.iterations
    steps = []
    start = time.perf_counter()
    for i in range(n):
        steps.append(model.profile_step(x, y, i + 2))
    whole = (time.perf_counter() - start) * 1000 / n
    names = list(steps[0]["forward"])
    ms = {phase: {name: sum(s[phase][name] for s in steps) * 1000 / n for name in names}
          for phase in ("forward", "backward", "update")}
    # The split: each layer's matrix products alone (numpy, the same threads) and the rest.
    gemm = {phase: {name: t * 1000 for name, t in times.items()}
            for phase, times in model.profile_gemms(n).items()}
    gemm_ms = {name: gemm["forward"].get(name, 0.0) + gemm["backward"].get(name, 0.0)
               for name in names}
    rest = {name: sum(ms[phase][name] for phase in ms) - gemm_ms[name] for name in names}
    print(f"nnkit time: job {job.name!r}, batch {batch}, {n} iterations (after 1 warm-up), "
          "milliseconds per iteration")
    width = max(len(s) for s in names + ["layer"])
    print(f"{'layer':<{width}}  {'forward':>9}  {'backward':>9}  {'update':>9}  {'GEMMs':>9}  "
          f"{'rest':>9}")
    for name in names:
        print(f"{name:<{width}}  {ms['forward'][name]:9.3f}  {ms['backward'][name]:9.3f}  "
              f"{ms['update'][name]:9.3f}  {gemm_ms[name]:9.3f}  {rest[name]:9.3f}")
    totals = [sum(ms[phase].values()) for phase in ("forward", "backward", "update")]
    total_gemm = sum(gemm_ms.values())
    print(f"{'total':<{width}}  {totals[0]:9.3f}  {totals[1]:9.3f}  {totals[2]:9.3f}  "
          f"{total_gemm:9.3f}  {sum(rest.values()):9.3f}")
    print(f"BLAS: numpy's {parallel.blas_kernels() or 'BLAS'} kernels. "
          "GEMMs: the layer's matrix products (dense, im2col over the batch) alone at its shapes, "
          "numpy matmul on the same threads, each in its faster layout (median of the "
          "iterations); rest: the layer's "
          "forward + backward + update time minus that (negative where the layer's own GEMMs "
          "beat the batch-wide ones); a dense layer's weight-gradient GEMM runs in its update "
          "when the updater fuses the two")
    print(f"Average forward pass: {totals[0]:.3f} ms; backward: {totals[1]:.3f} ms; "
          f"forward-backward: {totals[0] + totals[1]:.3f} ms; update: {totals[2]:.3f} ms")
    print(f"Average whole step: {whole:.3f} ms ({batch * 1000 / whole:.0f} examples/s); "
          f"its GEMMs alone: {total_gemm:.3f} ms (step / GEMMs alone: "
          f"{whole / total_gemm if total_gemm else float('nan'):.2f})")
    return EXIT_OK


def _check_queue_options(args: argparse.Namespace) -> None:
    """``--retries`` and ``--tag`` of ``nnkit queue`` and ``nnkit sweep``."""
    if args.retries < 0:
        raise UsageError(f"--retries must be >= 0, got {args.retries}")
    bad = [t for t in args.tag if not t.strip() or any(c.isspace() for c in t) or "," in t]
    if bad:
        raise UsageError(f"--tag {bad[0]!r}: a tag is one word (no spaces or commas)")


def _job_to_queue(text: str, source: str, overrides: list[str], data_dir: str | None) -> tuple[str, Job]:
    """The job ``text`` (read from ``source``) with ``overrides`` applied, validated with its
    data (ConfigError naming the bad field or ``--set`` item), its data paths made absolute
    (a worker runs it from another folder); returns the text to queue, headed by where it
    came from, and the job."""
    from .config import ConfigError, job_from_text
    job = job_from_text(text, source, overrides, data_dir, check_data=True)
    if not job.has_source("train"):
        raise ConfigError(job.source, "data.train", "missing value: the job has no train source")
    data = job.proto.data  # relative paths would be read from the worker's folder: absolute now
    if data.HasField("dir"):
        data.dir = os.path.abspath(data.dir)
    for source_conf in (data.train, data.test):
        source_conf.file[:] = [os.path.abspath(path) for path in source_conf.file]
    header = f"# nnkit {__version__}: queued from {job.source}" + "".join(f"\n# --set {s}" for s in overrides)
    return f"{header}\n{job.to_text()}", job


def cmd_queue(args: argparse.Namespace) -> int:
    """``nnkit queue``: validates a job and records it as a queued run; prints its id."""
    from .config.text import read_config_file
    from .experiments import Store
    from .experiments.queue import enqueue
    _check_queue_options(args)
    text, job = _job_to_queue(read_config_file(args.job), args.job, args.set, _absolute(args.data_dir))
    run_id = enqueue(Store(args.store), text, name=args.name or job.name, owner=args.owner, tags=tuple(args.tag),
                     retries=args.retries, load_roots=tuple(args.load_root))
    print(run_id)
    return EXIT_OK


def _sweep_mode(args: argparse.Namespace) -> str:
    """Which sweep ``nnkit sweep`` was asked for (grid, random, optuna, status, list); checks
    that the flags given belong to it."""
    modes = [mode for mode, given in (("grid", args.grid), ("random", args.random is not None),
                                      ("optuna", args.optuna), ("pbt", args.pbt), ("status", args.status is not None),
                                      ("replay", args.replay is not None), ("list", args.list)) if given]
    if len(modes) != 1:
        raise UsageError("give one of --grid, --random N, --optuna, --pbt (with JOB.conf), --status SWEEP, "
                         "--replay SWEEP or --list" + (f"; got {', '.join(modes)}" if modes else ""))
    mode = modes[0]
    if mode in ("status", "replay", "list"):
        if args.job is not None:
            raise UsageError(f"--{mode} takes no JOB.conf")
        return mode
    if args.job is None:
        raise UsageError(f"--{mode}: give the job, nnkit sweep JOB.conf --{mode} ...")
    belongs = {"--random-param": (("random",), args.random_param), "--trials": (("optuna",), args.trials),
               "--direction": (("optuna", "pbt"), args.direction), "--pruner": (("optuna",), args.pruner),
               "--study-storage": (("optuna",), args.study_storage), "--parallel": (("optuna",), args.parallel),
               "--seed": (("random", "optuna", "pbt"), args.seed),
               **{flag: (("pbt",), getattr(args, flag[2:].replace("-", "_"))) for flag in _PBT_FLAGS}}
    for flag, (owners, value) in belongs.items():
        if value not in (None, []) and mode not in owners:
            raise UsageError(f"{flag} goes with {' or '.join(f'--{o}' for o in owners)}, not --{mode}")
    return mode


#: The flags of ``nnkit sweep --pbt`` alone.
_PBT_FLAGS = ("--population", "--interval-epochs", "--perturb", "--quantile", "--init-lr", "--runs-dir")


def cmd_sweep(args: argparse.Namespace) -> int:
    """``nnkit sweep``: queues a grid or random sweep, drives an Optuna one, or shows sweeps."""
    from .experiments import Store
    from .experiments.cli import BadInput, sweep_list, sweep_status
    from .experiments.sweep import SweepError
    mode = _sweep_mode(args)
    store = Store(args.store)
    try:
        if mode == "status":
            return sweep_status(store, args.status, sys.stdout, metric=args.metric, as_json=args.json)
        if mode == "list":
            return sweep_list(store, sys.stdout)
        if mode == "replay":
            return _pbt_replay(args, store)
        _check_queue_options(args)
        if mode == "optuna":
            return _optuna_sweep(args, store)
        if mode == "pbt":
            return _pbt_sweep(args, store)
        return _queue_sweep(args, store, mode)
    except (SweepError, BadInput) as e:
        raise UsageError(str(e)) from None


def _point_config(args: argparse.Namespace, flags: dict[str, str]) -> Callable[[dict[str, Any]], str]:
    """``make_config(point)`` of a sweep: the job with ``--set`` and the point's overrides; a bad
    one is a ConfigError naming the sweep flag (``flags[path]``) and item that made it."""
    from .config import ConfigError
    from .config.text import read_config_file
    from .experiments.sweep import point_overrides
    text, data_dir = read_config_file(args.job), _absolute(args.data_dir)  # read once, for every point

    def make_config(point: dict[str, Any]) -> str:
        try:
            return _job_to_queue(text, args.job, [*args.set, *point_overrides(point)], data_dir)[0]
        except ConfigError as e:
            item = e.location.removeprefix("--set ")
            path = item.partition("=")[0].strip()
            if e.location.startswith("--set ") and path in flags and f"{path}=" in item:
                raise ConfigError(f"{flags[path]} {item}", e.field, e.problem) from None
            raise
    return make_config


def _queue_sweep(args: argparse.Namespace, store: Any, mode: str) -> int:
    """``nnkit sweep JOB.conf --grid ... | --random N --random-param ...``: every point checked,
    then the sweep recorded and its runs queued; prints the sweep id, then each run id and point."""
    import secrets
    from .experiments.sweep import (SweepError, grid_points, parse_grid, parse_params, point_overrides,
                                    queue_sweep, random_points)
    spec: dict[str, Any] = {"job": os.path.abspath(args.job), "set": list(args.set)}
    if mode == "grid":
        grid = parse_grid(args.grid)
        points = grid_points(grid)
        spec["grid"] = grid
        flag = "--grid"
    else:
        if not args.random_param:
            raise SweepError("--random N: give the fields to draw, e.g. "
                             "--random-param 'updater.lr=loguniform(1e-4,1e-1)'")
        params = parse_params(args.random_param, "--random-param")
        seed = args.seed if args.seed is not None else secrets.randbelow(2**32)  # recorded: reproducible
        points = random_points(params, args.random, seed)
        spec.update(random=args.random, seed=seed, params={p: d.to_json() for p, d in params.items()})
        flag = "--random-param"
    make_config = _point_config(args, {path: flag for path in points[0]})
    sweep_id, run_ids = queue_sweep(store, mode, spec, points, make_config, name=args.name, owner=args.owner,
                                    tags=tuple(args.tag), retries=args.retries)
    print(sweep_id)
    for run_id, point in zip(run_ids, points):
        print(f"{run_id}  {' '.join(point_overrides(point))}")
    print(f"nnkit sweep: {len(run_ids)} runs queued in sweep {sweep_id}"
          + (f" (seed {spec['seed']})" if mode == "random" else "")
          + f"; `nnkit worker` runs them, `nnkit sweep --status {sweep_id}` follows them", file=sys.stderr)
    return EXIT_OK


def _optuna_sweep(args: argparse.Namespace, store: Any) -> int:
    """``nnkit sweep JOB.conf --optuna ...``: this process drives the study until every trial is told."""
    from .experiments.optuna_sweep import (OptunaSweep, default_study_storage, make_pruner, optuna_study_name,
                                           storage_url)
    from .experiments.summary import lower_is_better
    from .experiments.sweep import parse_params
    from .views.terminal import send_command
    try:
        import optuna
    except ImportError:
        raise UsageError("--optuna needs Optuna: pip install 'nnkit[sweep]'") from None
    if args.trials is None or args.trials < 1:
        raise UsageError("--optuna: give --trials N (N >= 1), the number of trials to run")
    if args.parallel is not None and args.parallel < 1:
        raise UsageError(f"--parallel must be >= 1, got {args.parallel}")
    params = parse_params(args.optuna, "--optuna")
    metric = args.metric or "test_error"
    direction = args.direction or ("minimize" if lower_is_better(metric) else "maximize")
    try:
        pruner = make_pruner(args.pruner or "median", direction)
    except ValueError as e:
        raise UsageError(str(e)) from None
    make_config = _point_config(args, {path: "--optuna" for path in params})
    make_config({path: dist.first() for path, dist in params.items()})  # a bad path: exit 2 before any study
    storage = args.study_storage or default_study_storage(store)
    # The study is named after the sweep (study_name(sweep id)): the spec names its storage.
    spec = {"job": os.path.abspath(args.job), "set": list(args.set),
            "params": {p: d.to_json() for p, d in params.items()},
            "trials": args.trials, "metric": metric, "direction": direction, "pruner": args.pruner or "median",
            "seed": args.seed, "parallel": args.parallel, "storage": storage_url(storage)}
    sweep_id = store.create_sweep("optuna", spec, name=args.name)
    study_name = optuna_study_name(sweep_id)
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver prints one line per event itself
        study = optuna.create_study(storage=storage_url(storage), study_name=study_name, direction=direction,
                                    pruner=pruner, sampler=optuna.samplers.TPESampler(seed=args.seed))
    except Exception as e:  # noqa: BLE001  (a bad storage URL, an unreachable database)
        store.set_sweep_status(sweep_id, "failed")
        raise UsageError(f"--study-storage {storage}: cannot create the study: {e}") from None
    study.set_user_attr("nnkit_sweep_id", sweep_id)
    print(sweep_id, flush=True)
    print(f"nnkit sweep: study {study_name} in {storage_url(storage)}; {args.trials} trials, {metric} "
          f"({direction}), pruner {spec['pruner']}; `nnkit worker` runs them", file=sys.stderr, flush=True)
    driver = OptunaSweep(store, sweep_id, study, params, make_config,
                         lambda run_dir: send_command(run_dir, "stop", {}), metric=metric, trials=args.trials,
                         parallel=args.parallel, name=args.name, owner=args.owner, tags=tuple(args.tag),
                         retries=args.retries, poll=args.poll)
    return driver.run()


def _numbers(text: str, flag: str) -> tuple[float, ...]:
    """``0.8,1.2`` as numbers; exit 2 naming ``flag`` for anything else."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} {text}: expected numbers separated by commas, e.g. 0.8,1.2") from None


def _pbt_sweep(args: argparse.Namespace, store: Any) -> int:
    """``nnkit sweep JOB.conf --pbt ...``: queues the population, then this process steers it
    (:class:`nnkit.experiments.pbt.PBTDriver`) until every member has ended."""
    from .experiments.pbt import PBTDriver, PBTSpec, queue_population
    try:
        spec = PBTSpec(population=args.population if args.population is not None else 4,
                       interval_epochs=args.interval_epochs if args.interval_epochs is not None else 1,
                       perturb=_numbers(args.perturb or "0.8,1.2", "--perturb"), metric=args.metric or "test_error",
                       direction=args.direction or "minimize",
                       quantile=args.quantile if args.quantile is not None else 0.25,
                       seed=args.seed if args.seed is not None else 0,
                       init_lrs=_numbers(args.init_lr, "--init-lr") if args.init_lr else ())
    except ValueError as e:
        raise UsageError(str(e)) from None
    make_config = _point_config(args, {"updater.lr": "--init-lr", "seed": "--seed"})
    sweep_id, run_ids = queue_population(store, spec, make_config, args.runs_dir or DEFAULT_RUNS, name=args.name,
                                         owner=args.owner, tags=tuple(args.tag), retries=args.retries,
                                         job={"job": os.path.abspath(args.job), "set": list(args.set)})
    print(sweep_id, flush=True)
    for run_id in run_ids:
        print(f"{run_id}  {store.get(run_id).run_dir}", flush=True)
    print(f"nnkit sweep: pbt population of {spec.population} queued in sweep {sweep_id}; `nnkit worker` runs "
          f"them (one worker per member), this command steers them every {spec.interval_epochs} epoch(s); "
          f"`nnkit sweep --replay {sweep_id}` shows what each member followed", file=sys.stderr, flush=True)
    try:
        made = PBTDriver(store, sweep_id, poll=args.poll).run()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    print(f"nnkit sweep: pbt sweep {sweep_id} done, {made} interval(s) decided", file=sys.stderr)
    return EXIT_OK


def _pbt_replay(args: argparse.Namespace, store: Any) -> int:
    """``nnkit sweep --replay SWEEP``: each member's lr changes and weight loads, from its events."""
    from dataclasses import asdict
    from .experiments.pbt import describe_schedules, replay_sweep
    from .experiments.store import SweepNotFound
    try:
        sweep = store.get_sweep(args.replay)
    except SweepNotFound as e:
        raise UsageError(str(e)) from None
    schedules = replay_sweep(store, sweep.id)
    if args.json:
        print(json.dumps({name: asdict(s) for name, s in schedules.items()}, indent=1))
    else:
        print("\n".join(describe_schedules(schedules)))
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    """``nnkit worker``: runs queued runs, one after the other, until stopped."""
    from .experiments import Store
    from .experiments.queue import Worker
    if args.max_jobs is not None and args.max_jobs < 1:
        raise UsageError(f"--max-jobs must be >= 1, got {args.max_jobs}")
    if not args.poll > 0:
        raise UsageError(f"--poll must be > 0, got {args.poll}")
    if args.slots is not None and args.slots < 1:
        raise UsageError(f"--slots must be >= 1, got {args.slots}")
    if args.dask is None:
        if args.slots is not None or args.copy_back:
            raise UsageError("--slots and --copy-back are for a head of a Dask cluster: give --dask ADDRESS")
        return Worker(Store(args.store), os.path.abspath(args.runs_dir), args.max_jobs, args.once, args.poll).run()
    from .experiments.cluster import DaskHead
    try:
        head = DaskHead(Store(args.store), args.dask, args.runs_dir, slots=args.slots, max_jobs=args.max_jobs,
                        once=args.once, copy_back=args.copy_back)
        return head.run()
    except ImportError as e:
        raise UsageError(str(e)) from None


def _ctl_target(args: argparse.Namespace) -> str | None:
    """The run directory ``nnkit ctl`` sends to: RUN_DIR itself, or the directory of the
    recorded run it names. None when it named a queued run and ``stop`` cancelled it."""
    ref = args.run_dir
    if os.path.isdir(ref) or os.sep in ref:  # a path: as before (a missing one is reported by steer)
        return ref
    from .experiments.queue import NotSteerable, steer_target
    from .experiments.store import Store, StoreError
    store = Store(args.store)
    try:
        run = store.get(ref)
        target = steer_target(store, run, args.name)
    except (LookupError, StoreError) as e:
        raise UsageError(f"{ref}: not a run directory, and {e.args[0] if e.args else e}") from None
    except NotSteerable as e:
        raise UsageError(str(e)) from None
    if target is None:
        print(f"nnkit ctl: run {run.id} was queued: cancelled (status stopped)")
    return target


def cmd_ctl(args: argparse.Namespace) -> int:
    """``nnkit ctl``: sends a command to a run directory and (by default) prints the answer."""
    from .training.control import COMMANDS
    from .views.terminal import (CommandLineError, command_events, describe_answer,
                                 describe_command_events, describe_silence, parse_assignments, steer)
    target = _ctl_target(args)
    if target is None:
        return EXIT_OK
    args.run_dir = target
    try:
        raw = parse_assignments(args.args, args.name)
        entry = COMMANDS.get(args.name)
        for arg in entry.args if entry is not None else ():
            if arg.local_path and raw.get(arg.name):  # named from here, not from the run directory
                raw[arg.name] = os.path.abspath(os.path.expanduser(raw[arg.name]))
        command, answer, offset = steer(args.run_dir, args.name, raw, args.wait)
    except CommandLineError as e:
        raise UsageError(str(e)) from None
    if args.wait is None:
        print(json.dumps(command) if args.json else command["id"])
        return EXIT_OK
    if answer is None:
        print(f"nnkit ctl: no answer to {args.name} (id {command['id']}) within {args.wait:g} s; "
              f"{describe_silence(args.run_dir)}. Is the run alive? The command stays queued "
              "in the run directory.", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(answer) if args.json else f"nnkit ctl: {describe_answer(answer)}",
          file=sys.stderr if answer["type"] == "error" and not args.json else sys.stdout)
    if answer["type"] == "ack" and not args.json:  # tell_state: the state it reported, readable
        for line in describe_command_events(command_events(args.run_dir, answer, offset)):
            print(f"  {line}")
    return EXIT_OK if answer["type"] == "ack" else EXIT_FAILED


def cmd_watch(args: argparse.Namespace) -> int:
    """``nnkit watch``: a live view of a run directory's events."""
    from .views.terminal import CommandLineError, watch
    if args.interval <= 0 or args.window < 1:
        raise UsageError("--interval must be > 0 and --window >= 1")
    try:
        return watch(args.run_dir, interval=args.interval, window=args.window,
                     exit_on_end=args.exit_on_end)
    except CommandLineError as e:
        raise UsageError(str(e)) from None


def cmd_plot(args: argparse.Namespace) -> int:
    """``nnkit plot``: PNG plots of a run directory's events."""
    from .views.report import MissingDependency, plot_run
    try:
        paths = plot_run(args.run_dir, args.out, dpi=args.dpi)
    except MissingDependency as e:
        print(f"nnkit plot: {e}", file=sys.stderr)
        return EXIT_FAILED
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    for path in paths:
        print(path)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """``nnkit export``: a checkpoint's model as an ONNX file that computes what ``predict`` does."""
    from . import onnx_export
    from .config import load_tree_model
    try:
        onnx_export.require_onnx()  # before any work: the install hint first
    except onnx_export.MissingOnnxError as e:
        raise UsageError(str(e)) from None
    out = Path(args.output)
    if out.is_dir():
        raise UsageError(f"{out}: is a directory; name the .onnx file to write")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: the folder {out.parent} does not exist")
    path = _checkpoint_arg(args.checkpoint)
    tree = _read_checkpoint(path)
    model = load_tree_model(tree, path)
    try:
        model.to_onnx(out)
    except onnx_export.ExportError as e:
        raise UsageError(f"{path}: {e}") from None
    shapes = model.shapes()
    print(f"wrote {out}: ONNX opset {onnx_export.OPSET}, input {onnx_export.INPUT!r} "
          f"(batch, {', '.join(map(str, shapes[0][0]))}), output {onnx_export.OUTPUT!r} "
          f"(batch, {', '.join(map(str, shapes[-1][1]))}), from {path}")
    return EXIT_OK


def cmd_import_caffe(args: argparse.Namespace) -> int:
    """``nnkit import-caffe``: a Caffe net (and solver) -> a job config (and a checkpoint)."""
    from . import checkpoint
    from .config.caffe import from_caffe
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: the folder {output.parent} does not exist")
    result = from_caffe(args.net, args.solver, dataset=args.dataset, weights=args.weights)
    checkpoint.atomic_write(output, result.to_text())
    print(f"nnkit import-caffe: wrote {output}", file=sys.stderr)
    if args.weights is not None:
        weights = output.with_suffix(".h5")
        result.save_checkpoint(weights)
        print(f"nnkit import-caffe: wrote {weights} (the Caffe weights; nnkit eval, "
              "nnkit train --resume, nnkit.load read it)", file=sys.stderr)
    return EXIT_OK


def cmd_ui(args: argparse.Namespace) -> int:
    """``nnkit ui``: serves the web dashboard over an experiment store until Ctrl-C."""
    try:
        import starlette  # noqa: F401  (the ui extra: checked before anything starts)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UsageError(f"the web dashboard needs {e.name}: pip install 'nnkit[ui]'") from None
    from .experiments import Store
    from .ui.server import serve
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in [0, 65535], got {args.port}")
    try:
        serve(Store(args.store), host=args.host, port=args.port, token=args.token)
    except OSError as e:  # the port is taken, the address is not this machine's
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    """``nnkit runs ...``: the experiment store (:mod:`nnkit.experiments.cli`)."""
    from .experiments import cli as runs_cli
    try:
        return runs_cli.main(args)
    except runs_cli.BadInput as e:
        raise UsageError(str(e)) from None


# ===================================================================================== parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (each has --help)."""
    from .training import checkpoints
    from . import datasets
    parser = argparse.ArgumentParser(
        prog="nnkit", description="Train, evaluate, inspect and time nnkit jobs described in "
        "protobuf text configs (schema: proto/nnkit.proto).",
        epilog="exit status: 0 success, 1 failure during the run, 2 bad config or arguments, "
               "130 stopped by Ctrl-C (checkpoint written)")
    parser.add_argument("--version", action="version", version=f"nnkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of failures")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_record_options(p: argparse.ArgumentParser, name_help: str) -> None:
        p.add_argument("--store", metavar="PATH", help="the experiment store (default "
                       "$NNKIT_HOME/experiments.db, NNKIT_HOME defaulting to ~/.nnkit)")
        p.add_argument("--owner", help="the run's owner in the store (default: your user name)")
        p.add_argument("--name", help=name_help)
        p.add_argument("--tag", action="append", default=[], help="tag the run in the store (repeatable)")

    def add_set(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. run.steps=100, updater.lr=0.1, "
                            "model.layer[conv1].convolution.nb_filter=16 (repeatable)")

    p = sub.add_parser("train", help="train a job", description="Train the job JOB.conf into a "
                       "timestamped run directory (job.conf, checkpoint-<step>.h5 and latest, "
                       "events.jsonl, metrics.json). Ctrl-C stops after the current batch and "
                       "checkpoints. A --run-dir holding another run's checkpoints is refused "
                       "unless --resume or --overwrite is given.")
    p.add_argument("job", metavar="JOB.conf", help="the job config (text format)")
    add_set(p)
    p.add_argument("--run-dir", help="write into this directory instead of a new "
                   "<run.run_dir>/<name>-<timestamp>")
    p.add_argument("--resume", metavar="CKPT|RUN_DIR|auto", help="continue exactly from this "
                   "checkpoint, or a run directory's latest one (epochs/steps count from the "
                   "start of training); writes into its folder unless --run-dir is given. "
                   "'auto': continue --run-dir's latest checkpoint, or start afresh if it has "
                   "none (rerunning the same command after a crash continues it)")
    p.add_argument("--overwrite", action="store_true", help="start over in --run-dir: delete "
                   "its checkpoints, latest, events.jsonl and metrics.json first")
    p.add_argument("--keep-checkpoints", type=int, default=checkpoints.DEFAULT_KEEP, metavar="N",
                   help=f"keep the newest N checkpoint-<step>.h5 files (default "
                        f"{checkpoints.DEFAULT_KEEP})")
    p.add_argument("--data-dir", help="replace data.dir (the folder holding the dataset)")
    p.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                   help="also write TensorBoard scalars, into DIR (default RUN_DIR/tensorboard); "
                        "needs the tensorboard extra")
    p.add_argument("--on-nonfinite", choices=("stop", "pause"), default="pause",
                   help="a batch whose loss, gradients or update are not finite is not applied and "
                        "the last good state is checkpointed; then pause (default: wait for "
                        "`nnkit ctl RUN_DIR resume` to retry it, e.g. after `set lr=...`, or `skip`) "
                        "or stop (exit 1)")
    p.add_argument("--load-root", action="append", default=[], metavar="DIR",
                   help="a folder whose checkpoints `load_weights` commands may load besides the run "
                        "directory's (repeatable; a sweep gives its members its run directories)")
    add_record_options(p, "the run's name in the store (default: the run directory's name)")
    p.add_argument("--run-id", metavar="ID", help="record into this existing record (a queued run "
                   "that `nnkit worker` took) instead of a new one; needs --run-dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("queue", help="queue a job for the workers",
                       description="Validate the job JOB.conf (with the --set overrides applied) and "
                       "record it in the experiment store as a queued run for `nnkit worker`; prints "
                       "its id. A bad job queues nothing (exit 2).")
    p.add_argument("job", metavar="JOB.conf", help="the job config (text format)")
    add_set(p)
    p.add_argument("--data-dir", help="replace data.dir (the folder holding the dataset)")
    add_record_options(p, "the run's name in the store (default: the job's name)")
    p.add_argument("--retries", type=int, default=0, metavar="N", help="when the run is interrupted "
                   "(its worker killed), requeue it up to N times to resume from its last checkpoint "
                   "(default 0)")
    p.add_argument("--load-root", action="append", default=[], metavar="DIR",
                   help="a folder whose checkpoints the run's `load_weights` commands may load (repeatable; "
                        "the worker gives it to nnkit train --load-root)")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("sweep", help="queue many runs of a job: a grid, random draws or an Optuna study",
                       description="Queue one run of JOB.conf per point of a sweep, for `nnkit worker`. "
                       "A point overrides config fields (the paths --set takes). --grid: every combination "
                       "of the values given. --random N: N points drawn from --random-param distributions "
                       "(--seed makes them reproducible). --optuna: this command drives an Optuna study "
                       "(ask/tell): it queues a trial at a time, reports each epoch's --metric, stops the "
                       "runs the pruner prunes and tells Optuna each result, until --trials are done. "
                       "Every point is checked first: a bad path queues nothing (exit 2). Prints the sweep "
                       "id, then each run id and its point.",
                       epilog="distributions: uniform(LOW,HIGH), loguniform(LOW,HIGH), int(LOW,HIGH) "
                       "(both ends included), choice(A,B,...) or a plain list A,B,... (a choice)")
    p.add_argument("job", metavar="JOB.conf", nargs="?", help="the job config (text format)")
    add_set(p)
    p.add_argument("--grid", action="append", default=[], metavar="PATH=V1,V2,...",
                   help="a grid axis: the field PATH takes each value (repeat: the cartesian product)")
    p.add_argument("--random", type=int, metavar="N", help="random search: N runs, each drawing every "
                   "--random-param")
    p.add_argument("--random-param", action="append", default=[], metavar="PATH=DIST",
                   help="a field of --random and its distribution, e.g. 'updater.lr=loguniform(1e-4,1e-1)' "
                   "(repeatable)")
    p.add_argument("--optuna", action="append", default=[], metavar="PATH=DIST",
                   help="a field Optuna searches and its distribution (repeatable); needs nnkit[sweep]")
    p.add_argument("--trials", type=int, metavar="N", help="--optuna: how many trials (runs)")
    p.add_argument("--metric", help="the metric to optimise (--optuna, --pbt: a field of the epoch events) or "
                   "show (--status): a name as "
                   "`nnkit runs` has it (default test_error)")
    p.add_argument("--direction", choices=("minimize", "maximize"), help="--optuna, --pbt: minimize or maximize "
                   "--metric (default: minimize a loss or error, else maximize)")
    p.add_argument("--pruner", metavar="median|none|threshold=X", help="--optuna: stop unpromising trials "
                   "after an epoch: median (Optuna's MedianPruner, the default), none, or threshold=X "
                   "(prune once an epoch's metric is worse than X)")
    p.add_argument("--study-storage", metavar="PATH|URL", help="--optuna: the Optuna storage holding the "
                   "study (an SQLite file or an RDB URL; default <store>.optuna.db beside the store)")
    p.add_argument("--parallel", type=int, metavar="K", help="--optuna: at most K trials out at once "
                   "(default: as many as the workers take, one more waiting in the queue)")
    p.add_argument("--seed", type=int, help="--random: the draws' seed (default: a fresh one, printed and "
                   "recorded); --optuna: the sampler's (TPE) seed; --pbt: the driver's draws, and member i's "
                   "seed is SEED + i (default 0)")
    p.add_argument("--poll", type=float, default=0.5, metavar="SECONDS", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help="replace data.dir (the folder holding the dataset)")
    add_record_options(p, "the sweep's name; its runs are named NAME-0, NAME-1, ... (default sweep-ID-0, ...)")
    p.add_argument("--retries", type=int, default=0, metavar="N", help="requeue each interrupted run up to "
                   "N times, as nnkit queue --retries (default 0)")
    p.add_argument("--pbt", action="store_true", help="population-based training: queue --population "
                   "members, then steer them from this command: every --interval-epochs the bottom --quantile "
                   "by --metric load the best member's weights (load_weights) and take its lr times a --perturb "
                   "factor (set lr)")
    p.add_argument("--population", type=int, metavar="N", help="--pbt: members (default 4)")
    p.add_argument("--interval-epochs", type=int, metavar="N", help="--pbt: epochs between two exploit/"
                   "explore steps (default 1)")
    p.add_argument("--perturb", metavar="F1,F2,...", help="--pbt: the factors the copied lr is multiplied by, "
                   "one drawn at random (default 0.8,1.2)")
    p.add_argument("--quantile", type=float, metavar="Q", help="--pbt: the fraction of members that exploit, "
                   "at least one (default 0.25)")
    p.add_argument("--init-lr", metavar="LR1,LR2,...", help="--pbt: each member's starting lr (default: the "
                   "job's; members differ by their seed, --seed + i)")
    p.add_argument("--runs-dir", metavar="DIR", help=f"--pbt: where the sweep's folder of run directories "
                   f"goes (default ./{DEFAULT_RUNS})")
    p.add_argument("--replay", metavar="SWEEP", help="show what each member of a --pbt sweep followed, from "
                   "its events alone: its lr changes and weight loads, by step")
    p.add_argument("--status", metavar="SWEEP", help="show a sweep: its runs with their point, status and "
                   "best --metric (SWEEP: an id, a unique id prefix or a name)")
    p.add_argument("--list", action="store_true", help="list the sweeps in the store, newest first")
    p.add_argument("--json", action="store_true", help="--status, --replay: print one JSON object")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("worker", help="run queued jobs",
                       description="Take the oldest queued run from the experiment store (atomically: "
                       "many workers share one store), train it in a child process (nnkit train "
                       "--run-dir RUNS_DIR/<name>-<id> --resume auto), then take the next; requeue "
                       "interrupted runs that have retries left. Ctrl-C or SIGTERM: the child finishes "
                       "its batch and checkpoints, the run goes back to the queue, the worker exits 130.")
    p.add_argument("--store", metavar="PATH", help="the experiment store (default "
                   "$NNKIT_HOME/experiments.db, NNKIT_HOME defaulting to ~/.nnkit)")
    p.add_argument("--runs-dir", "--run-root", default=DEFAULT_RUNS, metavar="DIR", help="where the run "
                   f"directories go (default ./{DEFAULT_RUNS}); with --dask, a folder the Dask workers "
                   "share with this machine, unless --copy-back")
    p.add_argument("--max-jobs", type=int, metavar="N", help="exit after N runs")
    p.add_argument("--dask", metavar="ADDRESS", help="be the head of a Dask distributed cluster (its "
                   "scheduler, tcp://host:8786): train the queued runs there, each as a Dask task, while "
                   "only this process touches the store; `nnkit ctl RUN` reaches them through it. Needs "
                   "the dask extra (pip install 'nnkit[dask]')")
    p.add_argument("--slots", type=int, metavar="K", help="with --dask: runs on the cluster at once "
                   "(default: the cluster's worker threads)")
    p.add_argument("--copy-back", action="store_true", help="with --dask: run directories live on the "
                   "Dask workers (no shared filesystem); each new checkpoint and, at the end, every file "
                   "comes back to --run-root here")
    p.add_argument("--once", action="store_true", help="exit when nothing is queued (default: wait "
                   "for more)")
    p.add_argument("--poll", type=float, default=1.0, metavar="SECONDS", help="how often an idle "
                   "worker looks at the queue (default 1)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("eval", help="test metrics of a checkpoint",
                       description="Evaluate a checkpoint on the test data of the job stored in it "
                       "(its dataset, scaling and mean image), or on --dataset for a checkpoint "
                       "of fit from Python, which stores no data section.")
    p.add_argument("checkpoint", metavar="CKPT|RUN_DIR", help="a checkpoint, or a run "
                   "directory (its latest checkpoint)")
    p.add_argument("--data-dir", help="replace data.dir (the folder holding the dataset)")
    p.add_argument("--dataset", choices=list(datasets.DATASETS), help="evaluate on this "
                   "dataset's test split (replaces data.dataset)")
    p.add_argument("--scale", type=float, metavar="S", help="multiply the raw pixel values by S, "
                   "e.g. 0.00392156862745098 for a model trained on x / 255 (replaces data.scale)")
    add_set(p)
    p.add_argument("--batch-size", type=int, help="default: the job's data.test.batch_size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("show", help="describe a job or checkpoint",
                       description="Print the layers, their output shapes and parameter counts, "
                       "the updater and schedule, the data and the run of a job config or "
                       "checkpoint.")
    p.add_argument("path", metavar="JOB.conf|CKPT|RUN_DIR")
    add_set(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("time", help="time each layer", description="Time each layer's forward "
                       "and backward pass and the whole training step on random data of the "
                       "job's shapes, like caffe time.")
    p.add_argument("job", metavar="JOB.conf")
    add_set(p)
    p.add_argument("--iterations", type=int, default=10, help="timed iterations (default 10)")
    p.add_argument("--batch-size", type=int, help="default: the job's data.train.batch_size")
    p.set_defaults(func=cmd_time)

    from .training.control import COMMANDS
    from .views.terminal import ctl_help
    # Raw text: the command list (from the command table) keeps its lines and indents.
    p = sub.add_parser("ctl", help="steer a running job",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=textwrap.fill(
                           "Send a command to the run training in RUN_DIR, or to a run of the "
                           "experiment store by id (queued: `stop` cancels it) (appended to "
                           "RUN_DIR/commands.jsonl; the run applies it between two batches) and "
                           "print its answer. Examples: nnkit ctl RUN_DIR set lr=0.01; nnkit ctl "
                           "RUN_DIR run_until batches=5000; nnkit ctl RUN_DIR tell_state "
                           "snapshot=true; nnkit ctl RUN_DIR stop"),
                       epilog=ctl_help() + "\n\n" + textwrap.fill(
                           "exit status: 0 acknowledged (or sent, with --no-wait), 1 refused by "
                           "the run or no answer in time, 2 bad command or arguments"))
    p.add_argument("run_dir", metavar="RUN_DIR|RUN", help="a run directory, or a run recorded in the "
                   "store (an id, a unique id prefix or a name): its run directory, or for a run on a Dask "
                   "cluster (nnkit worker --dask) its inbox on the head, which forwards the command")
    p.add_argument("name", metavar="COMMAND", help=f"one of {', '.join(COMMANDS)} (see below)")
    p.add_argument("--store", metavar="PATH", help="the experiment store RUN is looked up in (default "
                   "$NNKIT_HOME/experiments.db)")
    p.add_argument("args", nargs="*", metavar="KEY=VALUE", help="arguments; values are JSON "
                   "when they parse (0.01, true, null), else text")
    p.add_argument("--wait", type=float, nargs="?", const=10.0, default=10.0, metavar="SECONDS",
                   help="wait this long for the answer (default 10)")
    p.add_argument("--no-wait", dest="wait", action="store_const", const=None,
                   help="send and print the command id without waiting")
    p.add_argument("--json", action="store_true", help="print the answer event as JSON")
    p.set_defaults(func=cmd_ctl)

    p = sub.add_parser("watch", help="live view of a run", description="Follow RUN_DIR/events.jsonl: "
                       "status, epoch/batch/step, loss and its moving average, train/test error, "
                       "lr, images/s, age of the last event. Redraws in place on a terminal, "
                       "prints plain lines otherwise. Ctrl-C quits.",
                       epilog="exit status: 0 when the run finished or stopped (or on Ctrl-C), "
                              "1 when it failed")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between refreshes "
                   "(default 0.5)")
    p.add_argument("--window", type=int, default=50, help="reported batches in the loss moving "
                   "average (default 50)")
    p.add_argument("--exit-on-end", action=argparse.BooleanOptionalAction, default=True,
                   help="exit when the run finishes, stops or fails (default: on)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("plot", help="PNG plots of a run", description="Write one PNG per figure "
                       "(loss, error, learning rate, per-example time, epoch time) from "
                       "RUN_DIR/events.jsonl, finished or still running. Needs matplotlib "
                       "(pip install 'nnkit[report]').")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="where to write the PNGs (default RUN_DIR/plots)")
    p.add_argument("--dpi", type=int, default=100, help="resolution (default 100)")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("export", help="write a checkpoint's model as ONNX",
                       description="Write the model of a checkpoint as an ONNX file (opset "
                       "22) that computes what predict does: input 'input' (batch, C, H, W) "
                       "or (batch, features) float32, output 'output'. Dropout is the identity, "
                       "batch normalization uses its running statistics. A layer ONNX cannot "
                       "express exactly is refused (exit 2). Needs the onnx extra (pip install "
                       "'nnkit[onnx]').")
    p.add_argument("checkpoint", metavar="CKPT|RUN_DIR", help="a checkpoint, or a run "
                   "directory (its latest checkpoint)")
    p.add_argument("output", metavar="OUT.onnx", help="the ONNX file to write (replaced "
                   "atomically if it exists)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-caffe", help="convert a Caffe net into a job",
                       description="Convert a Caffe net (and solver) in prototxt text format into "
                       "an nnkit job config; with --weights, also write the trained Caffe weights "
                       "as an nnkit checkpoint beside it (JOB.h5). What has no exact nnkit "
                       "equivalent is an error naming file:line (exit 2); what changes nothing on "
                       "the CPU is ignored with a note on stderr.")
    p.add_argument("net", metavar="NET.prototxt", help="the net (NetParameter, text format)")
    p.add_argument("solver", nargs="?", metavar="SOLVER.prototxt",
                   help="the solver (SolverParameter, text format)")
    p.add_argument("-o", "--output", required=True, metavar="JOB.conf", help="the job config to write")
    p.add_argument("--weights", metavar="NET.caffemodel", help="trained weights (binary NetParameter)")
    p.add_argument("--dataset", choices=list(datasets.DATASETS), help="the nnkit dataset standing "
                   "for the net's data layers (default: inferred from the input dims if only one fits)")
    p.set_defaults(func=cmd_import_caffe)

    p = sub.add_parser("ui", help="the web dashboard", description="Serve the web dashboard: "
                       "the experiments recorded in the store, each one's live figures, "
                       "configuration and events log, steering controls (the commands of nnkit "
                       "ctl), and runs compared. Prints its address; Ctrl-C stops it. Listening on "
                       "an address other than 127.0.0.1/localhost requires the printed token. "
                       "Needs the ui extra (pip install 'nnkit[ui]').")
    p.add_argument("--store", metavar="PATH", help="the experiment store (default "
                   "$NNKIT_HOME/experiments.db, NNKIT_HOME defaulting to ~/.nnkit)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default "
                   "127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8600, help="the port (default 8600; 0: a free one)")
    p.add_argument("--token", help="the token that commands (and, off localhost, every request) "
                   "need (default: a fresh random one)")
    p.set_defaults(func=cmd_ui)

    from .experiments.cli import add_parser as add_runs_parser
    add_runs_parser(sub).set_defaults(func=cmd_runs)
    for command in sub.choices.values():  # --debug after the command too: nnkit show x --debug
        # SUPPRESS: without the flag here, the value before the command stays.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="print tracebacks of failures")
    return parser


def _stdout_reader_gone() -> bool:
    """True if stdout is a pipe or socket whose reading end was closed (``| head -1``)."""
    try:
        poller = select.poll()
        poller.register(sys.__stdout__.fileno(), 0)  # POLLERR/POLLHUP are always reported
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or stdout closed or replaced
        return False


def _quiet_closed_stdout() -> int:
    """Ends quietly after the reader of stdout went away: what is still buffered goes to
    /dev/null (so the flush at exit does not fail again), and the status is 141, a shell's
    status for a process that SIGPIPE stopped."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with status 2 on bad arguments, 0 for --help
    prog = f"nnkit {args.command}"
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is handled, not at exit
        return status
    except BrokenPipeError as e:
        if _stdout_reader_gone():
            return _quiet_closed_stdout()
        return _failed(prog, e, args.debug)  # another pipe: a failure like any other
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001  (the command line reports every failure the same way)
        if _is_config_error(e):
            print(f"{prog}: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        return _failed(prog, e, args.debug)


def _failed(prog: str, error: Exception, debug: bool) -> int:
    """Reports a failure during the run (with its traceback under --debug); exit status 1."""
    if debug:
        traceback.print_exception(error)
    print(f"{prog}: failed: {type(error).__name__}: {error}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
