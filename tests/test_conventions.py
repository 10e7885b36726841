"""The run's counters and numbers, as events carry them and as people read them.

Events and ``metrics.json`` count epochs from 0 (``epoch`` is the index of the epoch in
progress); every display counts them from 1 ("epoch 1", "epoch 1 done"): the progress bar,
``nnkit watch``, ``nnkit plot``, the notebook view (tests/test_notebook.py), ``nnkit show``. A
resumed run's status names its real step; a progress bar counts to the batches that will run;
numbers of any magnitude stay short; an overflow is reported once, as the run's error, without
numpy's RuntimeWarnings first.
"""
import io
import json
import re
import warnings

import numpy as np
import pytest
from helpers import DATA
from test_model import mlp, toy_data

from nnkit import SGD, Activation, Dense, Sequential, parallel
from nnkit.cli import _fmt, main
from nnkit.training import LambdaCallback, NonFiniteLossError, ProgressBar, read_jsonl
from nnkit.views import Monitor, RunStatus, epoch_label, epoch_text
from nnkit.views.report import caption
from nnkit.views.terminal import Watcher

needs_mnist = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")


def small_job(tmp_path):
    """test_cli's small MNIST job (batches of 32, a test every 10 steps) in ``tmp_path``."""
    from test_cli import SMALL_JOB
    path = tmp_path / "small.conf"
    path.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    return path


def events(run_dir):
    return [v for _, v in read_jsonl(run_dir / "events.jsonl")[0]]


class Terminal(io.StringIO):
    """Output that says it is a terminal: the progress bar draws a tqdm bar into it."""

    def isatty(self):
        return True


# ----------------------------------------------------------------------------------- epochs
def test_epoch_labels_count_from_1():
    assert [epoch_label(i) for i in (0, 1, 9)] == ["epoch 1", "epoch 2", "epoch 10"]
    assert epoch_text(0, 0) == "epoch 1"        # before the first batch
    assert epoch_text(0, 5) == "epoch 1"        # in the first epoch
    assert epoch_text(1, 0) == "epoch 1 done"   # between the first and the second
    assert epoch_text(1, 1) == "epoch 2"
    status = RunStatus(epoch=2, batch=None, last_epoch=1)
    assert (status.epoch_text, status.batches_done) == ("epoch 2 done", 0)
    status.batch = 4
    assert (status.epoch_text, status.batches_done) == ("epoch 3", 5)


@needs_mnist
def test_epochs_count_from_0_in_events_and_from_1_on_every_display(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # 256 examples in batches of 32: two epochs of 8 batches.
    assert main(["train", str(small_job(tmp_path)), "--run-dir", str(run_dir),
                 "--set", "data.train.limit=256", "--set", "run.steps=16"]) == 0
    console = capsys.readouterr().err
    found = events(run_dir)
    assert [e["epoch"] for e in found if e["type"] == "epoch"] == [0, 1]  # the epoch that ended
    assert {e["epoch"] for e in found if e["type"] == "loss"} == {0, 1}   # the epoch in progress
    assert json.loads((run_dir / "metrics.json").read_text())["epoch"] == 2  # epochs done

    # The progress bar (plain lines: stderr is no terminal here).
    said = re.findall(r"^epoch (\d+)( done)?", console, re.M)
    assert ("1", " done") in said and ("2", " done") in said and not {"0", "3"} & {n for n, _ in said}

    # nnkit watch: log lines and the status block.
    out = io.StringIO()
    assert Watcher(run_dir, out, tty=False).run() == 0
    text = out.getvalue()
    assert "] epoch 1 done at step 8: " in text and "] epoch 2 done at step 16: " in text
    assert "epoch 0" not in text and "epoch 3" not in text
    last = text.splitlines()[-1]
    assert "| epoch 2 done  step 16 |" in last and re.search(r"train error \S+ \(epoch 2\)", last)

    # nnkit plot's subtitle, and nnkit show of the checkpoint.
    monitor = Monitor()
    monitor.read_file(run_dir / "events.jsonl")
    assert caption(monitor.status) == f"run {found[0]['run']}: finished at step 16, epoch 2 done"
    assert main(["show", str(run_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(": step 16, epoch 2 done")


@needs_mnist
def test_show_of_a_checkpoint_mid_epoch(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(small_job(tmp_path)), "--run-dir", str(run_dir),
                 "--set", "data.train.limit=256", "--set", "run.steps=11"]) == 0
    capsys.readouterr()
    assert main(["show", str(run_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(": step 11, epoch 2, batch 3")


# ------------------------------------------------------------------------------ resumed runs
@needs_mnist
def test_a_resumed_run_says_its_real_step(tmp_path, capsys):
    run_dir = tmp_path / "run"
    job = str(small_job(tmp_path))
    assert main(["train", job, "--run-dir", str(run_dir), "--set", "run.steps=10"]) == 0
    assert main(["train", job, "--resume", str(run_dir), "--set", "run.steps=20"]) == 0
    status = [(e["state"], e["step"]) for e in events(run_dir) if e["type"] == "status"]
    assert status == [("started", 0), ("finished", 10), ("started", 10), ("finished", 20)]
    out = io.StringIO()
    Watcher(run_dir, out, tty=False).run()
    assert re.findall(r"\] started at step (\d+)", out.getvalue()) == ["0", "10"]


def test_a_resumed_fit_in_python_says_its_real_step(tmp_path):
    x, y = toy_data(256)
    model = mlp()
    model.fit(x, y, batch_size=16, steps=5, verbose=0, run_dir=tmp_path)
    mlp().fit(x, y, batch_size=16, steps=9, verbose=0, run_dir=tmp_path,
              resume=tmp_path / "checkpoint.h5")
    assert [(e["state"], e["step"]) for e in events(tmp_path) if e["type"] == "status"] == [
        ("started", 0), ("finished", 5), ("started", 5), ("finished", 9)]


# ----------------------------------------------------------------------------- progress bar
def test_the_progress_bar_counts_to_the_batches_that_will_run():
    x, y = toy_data(256)  # 16 batches of 16 an epoch
    out = io.StringIO()
    mlp().fit(x, y, batch_size=16, steps=5, verbose=0, callbacks=[ProgressBar(file=out, log_every=0)])
    assert re.findall(r"^epoch 1 batch (\d+)/(\d+)", out.getvalue(), re.M) == [
        (str(k), "5") for k in range(1, 6)]
    bar = Terminal()
    model = mlp()
    model.fit(x, y, batch_size=16, steps=20, verbose=0, callbacks=[ProgressBar(file=bar)])
    drawn = bar.getvalue()
    first, second = drawn.split("epoch 2", 1)  # 20 steps: 16 batches, then 4 of the next epoch
    assert "epoch 1: 100%" in first and "16/16" in first
    assert "4/4" in second and "/16" not in second
    assert model.trainer.batches_in_epoch == 4


def test_the_progress_bar_follows_a_moved_target():
    x, y = toy_data(256)
    out = io.StringIO()

    def extend(batch, logs):  # what run_until batches=8 does at the next safe point
        if batch == 1:
            model.trainer.target_step = 8

    model = mlp()
    model.fit(x, y, batch_size=16, steps=5, verbose=0,
              callbacks=[ProgressBar(file=out, log_every=0), LambdaCallback(on_batch_end=extend)])
    totals = re.findall(r"^epoch 1 batch (\d+)/(\d+)", out.getvalue(), re.M)
    assert totals == [("1", "5"), ("2", "5")] + [(str(k), "8") for k in range(3, 9)]
    bar = Terminal()
    model = mlp()
    model.fit(x, y, batch_size=16, steps=5, verbose=0,
              callbacks=[ProgressBar(file=bar), LambdaCallback(on_batch_end=extend)])
    assert "8/8" in bar.getvalue() and "8/5" not in bar.getvalue()


# ---------------------------------------------------------------------------------- numbers
def test_numbers_of_any_magnitude_stay_short():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = np.full((64, 1), 1e15, dtype=np.float32)  # a squared error of about 1e30
    model = Sequential([Dense(1)], input_shape=(4,), seed=0)
    model.compile(SGD(lr=0.0), "euclideanloss", metrics=[])
    out = io.StringIO()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[ProgressBar(file=out, log_every=0)])
    text = out.getvalue()
    assert re.search(r"loss \d(\.\d+)?e\+\d\d", text) and not re.search(r"\d{8}", text)
    assert _fmt({"loss": 1.3e30, "accuracy": 0.5}) == "loss 1.3e+30  accuracy 0.5"
    watcher = Watcher("nowhere", io.StringIO(), tty=False)
    watcher.monitor.update({"type": "loss", "time": 1.0, "step": 1, "epoch": 0, "batch": 0,
                                 "loss": 1.3e30, "lr": 0.1, "images_per_s": 10.0})
    assert watcher.status_lines(now=1.0)[2].startswith("loss 1.3e+30  avg(50) 1.3e+30")


def big_mlp():
    """Wide enough (256 x 1024 inputs) that the dense layers split their work over threads."""
    model = Sequential([Dense(64), Activation("relu"), Dense(10)], input_shape=(1024,), seed=0)
    model.compile(SGD(lr=1e300), "softmaxloss", metrics=["accuracy"])
    return model


def test_an_overflow_is_reported_once_without_numpy_warnings():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 1024)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    before = np.geterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(NonFiniteLossError, match="not finite"):
            big_mlp().fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert np.geterr() == before  # silenced around the training step only, not for the process


@pytest.mark.skipif(parallel.thread_count() < 2, reason="one thread: no helper to test")
def test_kernel_helpers_run_under_the_callers_errstate():
    """A split's parts on helper threads follow the caller's np.errstate, as its own part does."""
    big = np.full(1 << 17, 1e30, dtype=np.float32)
    seen = []

    def part(index, lo, hi):
        seen.append(index)
        if index:  # only the helpers' parts overflow
            np.multiply(big[lo:hi], big[lo:hi])

    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        parallel.split(part, 1 << 17)
    with np.errstate(over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning from any part would raise here
        assert len(parallel.split(part, 1 << 17)) >= 2
    assert set(seen) >= {0, 1}
