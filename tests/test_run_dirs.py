"""Run directories: step-named checkpoints, the latest one, reuse rules, data checked when loaded,
the examples' errors, and eval of a checkpoint trained from Python."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnkit
from helpers import DATA, ROOT
from nnkit.cli import main
from nnkit.config import ConfigError, load_job
from nnkit.datasets import load_mnist
from nnkit.training import ModelCheckpoint
from nnkit.training.checkpoints import (RunDirectoryInUse, clear_run_dir, latest_checkpoint,
                                        resolve_checkpoint, run_checkpoints, step_checkpoints)
from test_cli import SMALL_JOB
from test_model import mlp, toy_data

needs_mnist = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")

# test_cli's SMALL_JOB with this module's sizes: 640 train examples (20 batches of 32 per
# epoch), steps and checkpoints every 5 (run.steps=10 by default; a later --set wins).
SMALL = ("--set", "data.train.limit=640", "--set", "data.test.limit=250", "--set", "run.test_freq=0",
         "--set", "run.checkpoint_freq=5", "--set", "run.steps=10")


def names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir())


def cli(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``python -m nnkit.cli ARGS`` (a subprocess: Ctrl-C handlers and exit codes are real)."""
    return subprocess.run([sys.executable, "-m", "nnkit.cli", *map(str, args)], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=300)


def train(job_file: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    """``nnkit train JOB_FILE`` with this module's sizes (:data:`SMALL`), then ``args``."""
    return cli("train", job_file, *SMALL, *args, cwd=cwd)


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.conf"
    path.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    return path


# =========================================================== checkpoint names and the latest
def test_rotating_checkpoints_keep_the_newest_n_and_name_the_latest(tmp_path):
    x, y = toy_data(64)
    model = mlp()
    model.trainer_for_fit().keep_checkpoints = 2
    model.fit(x, y, batch_size=16, steps=5, verbose=0, run_dir=tmp_path,
              callbacks=[ModelCheckpoint(every_n_epochs=None, every_n_batches=1)])
    assert [s for s, _ in step_checkpoints(tmp_path)] == [4, 5]
    assert (tmp_path / "latest").read_text() == "checkpoint-5.h5\n"
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-5.h5"
    assert nnkit.load(resolve_checkpoint(tmp_path)).trainer.global_step == 5
    # The checkpoint command names the run directory's checkpoint.h5: it gets the step too.
    path = model.trainer.save_checkpoint(tmp_path / "checkpoint.h5")
    assert path.name == "checkpoint-5.h5" and not (tmp_path / "checkpoint.h5").exists()


def test_best_only_checkpoints_are_kept_apart_and_never_rotated(tmp_path):
    x, y = toy_data(64)
    model = mlp()
    model.trainer_for_fit().keep_checkpoints = 1
    model.fit(x, y, batch_size=16, epochs=4, verbose=0, run_dir=tmp_path,
              callbacks=[ModelCheckpoint(monitor="loss", save_best_only=True),
                         ModelCheckpoint(every_n_epochs=1)])
    best = sorted(tmp_path.glob("best-*.h5"))
    assert len(best) >= 2  # the loss of these blobs falls every epoch: every one was a best
    assert [s for s, _ in step_checkpoints(tmp_path)] == [16]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-16.h5"
    with pytest.raises(ValueError, match="without a filepath writes into the run directory"):
        mlp().fit(x, y, steps=1, verbose=0, callbacks=[ModelCheckpoint()])


def test_latest_checkpoint_without_the_pointer_and_in_old_run_directories(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    model = mlp()
    model.fit(*toy_data(64), batch_size=16, steps=2, verbose=0, run_dir=tmp_path)
    # fit from Python keeps writing one checkpoint.h5, the name runs before step names used.
    assert {"checkpoint.h5", "latest"} <= set(names(tmp_path))
    (tmp_path / "latest").unlink()  # an old run: no pointer
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint.h5"
    trainer = model.trainer
    trainer.keep_checkpoints = 3
    trainer.global_step = 7
    trainer.save_checkpoint()
    (tmp_path / "latest").write_text("../elsewhere.h5\n")  # never a path out of the directory
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-7.h5"  # the highest step
    (tmp_path / "latest").write_text("checkpoint.h5\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint.h5"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without checkpoints"):
        resolve_checkpoint(tmp_path / "empty")


def test_a_run_continued_from_an_earlier_checkpoint_replaces_the_later_ones(tmp_path):
    model = mlp()
    trainer = model.trainer_for_fit()
    trainer.keep_checkpoints, trainer.run_dir = 3, tmp_path
    for step in (10, 20, 30, 40):
        trainer.global_step = step
        trainer.save_checkpoint()
    assert [s for s, _ in step_checkpoints(tmp_path)] == [20, 30, 40]
    trainer.global_step = 25  # resumed from checkpoint-20, now past it
    trainer.save_checkpoint()
    assert [s for s, _ in step_checkpoints(tmp_path)] == [20, 25]
    assert clear_run_dir(tmp_path) and run_checkpoints(tmp_path) == [] and names(tmp_path) == []


# ============================================================== reuse of a run directory
def test_fit_from_python_refuses_another_runs_directory_and_resume_auto_continues(tmp_path):
    x, y = toy_data(128)
    straight = mlp()
    straight.fit(x, y, batch_size=16, steps=12, verbose=0)

    mlp().fit(x, y, batch_size=16, steps=5, verbose=0, run_dir=tmp_path)
    before = (tmp_path / "checkpoint.h5").read_bytes()
    with pytest.raises(RunDirectoryInUse, match=r"checkpoint\.h5.*resume='auto'"):
        mlp().fit(x, y, batch_size=16, steps=12, verbose=0, run_dir=tmp_path)
    assert (tmp_path / "checkpoint.h5").read_bytes() == before  # nothing overwritten
    resumed = mlp()
    resumed.fit(x, y, batch_size=16, steps=12, verbose=0, run_dir=tmp_path, resume="auto")
    assert resumed.trainer.global_step == 12
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)  # exactly as if never stopped
    fresh = mlp()  # no checkpoint there: a fresh start
    fresh.fit(x, y, batch_size=16, steps=3, verbose=0, run_dir=tmp_path / "new", resume="auto")
    assert fresh.trainer.global_step == 3
    with pytest.raises(ValueError, match="resume='auto'.*run_dir"):
        mlp().fit(x, y, steps=1, verbose=0, resume="auto")


@needs_mnist
def test_nnkit_train_refuses_a_used_run_dir_and_resume_auto_or_overwrite_proceed(job_file, tmp_path):
    run_dir = tmp_path / "run"
    done = train(job_file, "--run-dir", run_dir, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [s for s, _ in step_checkpoints(run_dir)] == [5, 10]
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}

    done = train(job_file, "--run-dir", run_dir, "--set", "run.steps=15", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "holds the checkpoints of an earlier run (checkpoint-5.h5, checkpoint-10.h5)" in done.stderr
    assert "--resume auto" in done.stderr and "--overwrite" in done.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # untouched

    # The same command again after a crash (or with more steps) just continues.
    done = train(job_file, "--run-dir", run_dir, "--set", "run.steps=20", "--resume", "auto", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"continuing from {run_dir / 'checkpoint-10.h5'}" in done.stderr
    assert [s for s, _ in step_checkpoints(run_dir)] == [10, 15, 20]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["step"], metrics["epoch"]) == (20, 1)  # 20 batches of 32: one whole epoch

    done = cli("eval", run_dir, "--json", cwd=tmp_path)  # a run directory means its latest
    assert done.returncode == 0 and json.loads(done.stdout)["step"] == 20, done.stderr
    done = cli("show", run_dir, cwd=tmp_path)
    assert done.returncode == 0 and f"checkpoint {run_dir / 'checkpoint-20.h5'}: step 20" in done.stdout

    done = train(job_file, "--run-dir", run_dir, "--overwrite", "--set", "run.steps=5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [s for s, _ in step_checkpoints(run_dir)] == [5]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert len({e["run"] for e in events}) == 1  # the old run's log went with its checkpoints

    fresh = tmp_path / "fresh"
    done = train(job_file, "--run-dir", fresh, "--resume", "auto", cwd=tmp_path)
    assert done.returncode == 0 and "no checkpoint there, starting afresh" in done.stderr, done.stderr
    for args, message in [(("--resume", "auto"), "--resume auto .* give --run-dir"),
                          (("--run-dir", run_dir, "--resume", "auto", "--overwrite"), "give one of them"),
                          (("--run-dir", run_dir, "--keep-checkpoints", "0"), "must be >= 1"),
                          (("--resume", tmp_path), "a directory without checkpoints")]:
        done = train(job_file, *args, cwd=tmp_path)
        assert done.returncode == 2 and re.search(message, done.stderr), (args, done.stderr)


@needs_mnist
def test_an_old_run_directory_with_checkpoint_h5_still_resumes(job_file, tmp_path):
    run_dir = tmp_path / "old"
    assert train(job_file, "--run-dir", run_dir, cwd=tmp_path).returncode == 0
    # What a run before step names left: one checkpoint.h5, no latest.
    (run_dir / "checkpoint-10.h5").rename(run_dir / "checkpoint.h5")
    (run_dir / "checkpoint-5.h5").unlink()
    (run_dir / "latest").unlink()
    done = train(job_file, "--run-dir", run_dir, cwd=tmp_path)
    assert done.returncode == 2 and "checkpoint.h5" in done.stderr
    done = train(job_file, "--resume", run_dir / "checkpoint.h5", "--set", "run.steps=15",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert latest_checkpoint(run_dir) == run_dir / "checkpoint-15.h5"
    assert (run_dir / "checkpoint.h5").is_file()  # the old file is left as it was
    done = cli("eval", run_dir / "checkpoint.h5", cwd=tmp_path)
    assert done.returncode == 0 and "(step 10)" in done.stdout, done.stderr


# ================================================================== data checked when loaded
def test_a_job_parses_and_validates_without_its_data(tmp_path):
    path = tmp_path / "j.conf"
    path.write_text(SMALL_JOB.format(data="/no/such/folder", runs=tmp_path / "runs"))
    job = load_job(path)  # no data needed to read, check and build the job
    assert job.build_model().params  # built, parameters allocated
    with pytest.raises(ConfigError, match="data folder /no/such/folder does not exist") as info:
        job.load_data("train")
    assert info.value.location == f"{path}:12" and info.value.field == "data.dir"
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(path, check_data=True)
    assert main(["train", str(path)]) == 2  # nnkit train still fails early
    assert not (tmp_path / "runs").exists()


# =================================================================== the examples' errors
def example(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / "train_mnist.py"), *map(str, args)],
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=300)


def test_an_example_without_data_says_so_in_one_line(tmp_path):
    done = example("--steps", "50", cwd=tmp_path, env={"NNKIT_DATA": str(tmp_path / "none")})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("train_mnist.py: error: MNIST: none of")
    done = example("--steps", "0", cwd=tmp_path)
    assert done.returncode == 2 and "--steps must be >= 1" in done.stderr
    done = example("--resume", "auto", cwd=tmp_path)
    assert done.returncode == 2 and "--resume auto needs --run-dir" in done.stderr


@needs_mnist
def test_an_example_refuses_a_used_run_dir_unless_resume_auto_or_overwrite(tmp_path):
    base = ("--data-dir", DATA, "--batch-size", "8", "--fit", "--run-dir", tmp_path / "run")
    done = example(*base, "--steps", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # run.json: what the experiment store recorded of the run (nnkit.experiments.rundir)
    assert names(tmp_path / "run") == ["checkpoint-2.h5", "events.jsonl", "latest", "run.json"]
    done = example(*base, "--steps", "2", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "holds the checkpoints of an earlier run (checkpoint-2.h5)" in done.stderr
    done = example(*base, "--steps", "3", "--resume", "auto", cwd=tmp_path)
    assert done.returncode == 0 and "reached step 3" in done.stdout, done.stderr
    done = example(*base, "--steps", "1", "--overwrite", cwd=tmp_path)
    assert done.returncode == 0 and "reached step 1" in done.stdout, done.stderr
    assert [s for s, _ in step_checkpoints(tmp_path / "run")] == [1]
    done = example("--data-dir", DATA, "--batch-size", "8", "--steps", "1", "--run-dir", tmp_path / "run",
                   cwd=tmp_path)  # the per-layer loop follows the same rule
    assert done.returncode == 2 and "checkpoint-1.h5" in done.stderr


# ================================================= eval of a checkpoint trained from Python
@needs_mnist
def test_eval_of_a_python_checkpoint_takes_the_dataset_and_its_scale(tmp_path):
    images, labels = load_mnist(DATA, "train")
    x = images[:1000].reshape(1000, -1).astype(np.float32) / 255
    model = nnkit.Sequential([nnkit.Dense(32), nnkit.Activation("relu"), nnkit.Dense(10)],
                             input_shape=(784,), seed=0)
    model.compile(nnkit.SGD(lr=0.1, momentum=0.9), "softmaxloss", ["accuracy"])
    model.fit(x, labels[:1000], batch_size=32, epochs=1, verbose=0, run_dir=tmp_path / "run")
    test_images, test_labels = load_mnist(DATA, "test")
    expected = model.evaluate(test_images.reshape(len(test_images), -1).astype(np.float32) / 255,
                              test_labels, batch_size=500)

    done = cli("eval", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 2 and "--dataset" in done.stderr and "Traceback" not in done.stderr
    done = cli("eval", tmp_path / "run", "--dataset", "mnist", "--data-dir", DATA, "--scale",
               "0.00392156862745098", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["examples"] == 10000
    assert result["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert "stores no preprocessing" in done.stderr and "times 0.00392157 (--scale)" in done.stderr
    done = cli("eval", tmp_path / "run", "--dataset", "mnist", "--data-dir", DATA, cwd=tmp_path)
    assert done.returncode == 0 and "unscaled; give --scale 0.00392156862745098" in done.stderr
    done = cli("eval", tmp_path / "run", "--dataset", "cifar10", "--data-dir", DATA, cwd=tmp_path)
    assert done.returncode == 2 and "cifar10 examples have shape (3, 32, 32)" in done.stderr
