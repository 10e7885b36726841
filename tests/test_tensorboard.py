"""TensorBoard scalar files written by tensorboardX, read back with TensorBoard's own reader."""
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import DATA, ROOT, wait_until
from test_model import mlp, toy_data

from nnkit.cli import main
from nnkit.training.events import EventBus
from nnkit.views import Monitor, monitor_file
from nnkit.views.tensorboard import TensorBoard, TensorBoardLogger

needs_tensorboardx = pytest.mark.skipif(importlib.util.find_spec("tensorboardX") is None,
                                        reason="tensorboardX is not installed")


def scalars(logdir):
    """``{tag: [(step, value), ...]}`` as TensorBoard itself reads the directory."""
    return {tag: [(s.step, s.value) for s in events] for tag, events in scalar_events(logdir).items()}


def scalar_events(logdir):
    """``{tag: [ScalarEvent(wall_time, step, value), ...]}`` from TensorBoard's EventAccumulator."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def emit_run(bus, steps, start=0, end="finished"):
    """Emits a small run on ``bus``: started, a loss event per step, an epoch, then ``end``."""
    bus.emit("status", state="started", step=start)
    for step in range(start + 1, start + steps + 1):
        bus.emit("loss", step=step, epoch=0, batch=step - 1, loss=1.0 / step, error=0.5, lr=0.01,
                 images_per_s=1000.0 + step)
    bus.emit("epoch", epoch=0, step=start + steps, loss=0.3, val_loss=0.4, epoch_time=1.5,
             train_error=0.1, test_error=0.2)
    if end:
        bus.emit("status", state=end, step=start + steps)


def expected_points(monitor):
    """``{figure/channel: [(step, value), ...]}`` for every non-empty channel of a monitor."""
    return {f"{fig.title}/{c.name}": list(zip(monitor.series(c.name).steps.tolist(),
                                              monitor.series(c.name).values.tolist()))
            for fig in monitor.figures for c in fig.channels if len(monitor.series(c.name))}


def assert_same(got, expected):
    assert sorted(got) == sorted(expected)
    for tag in expected:
        steps, values = zip(*expected[tag])
        assert [s for s, _ in got[tag]] == list(steps), tag
        np.testing.assert_allclose([v for _, v in got[tag]], np.float32(values), rtol=1e-6, err_msg=tag)


@needs_tensorboardx
def test_logger_tags_steps_values_and_times_as_tensorboard_reads_them(tmp_path):
    bus = EventBus()
    logger = TensorBoardLogger(tmp_path)
    logger.attach(bus)
    emit_run(bus, 5)
    events = scalar_events(tmp_path)  # the run finished: the file is complete, without close()
    assert [(e.step, e.value) for e in events["loss/train cost"]] == [
        (s, pytest.approx(1.0 / s)) for s in range(1, 6)]
    loss_times = [e["time"] for e in bus.events("loss")]
    assert [e.wall_time for e in events["loss/train cost"]] == pytest.approx(loss_times)
    assert [(e.step, e.value) for e in events["loss/validation loss"]] == [(5, pytest.approx(0.4))]
    assert [(e.step, e.value) for e in events["learning rate/learning rate"]][-1] == (5, pytest.approx(0.01))
    assert_same(scalars(tmp_path), expected_points(logger.monitor))  # spaces in tags kept, not "_"
    logger.close()


@needs_tensorboardx
def test_files_are_tensorboardx_files_and_an_extended_run_gets_a_new_one(tmp_path):
    import tensorboardX
    bus = EventBus()
    logger = TensorBoardLogger(tmp_path)
    assert isinstance(logger.writer, tensorboardX.SummaryWriter)
    logger.attach(bus)
    emit_run(bus, 3)
    emit_run(bus, 4, start=3)  # a finished run extended: its points go to a second file
    logger.close()
    logger.close()  # twice is fine
    names = sorted(p.name for p in tmp_path.iterdir())
    # tensorboardX's naming (events.out.tfevents.<10 digits of time>.<host><suffix>), our suffix
    pattern = rf"events\.out\.tfevents\.\d{{10}}\.{re.escape(socket.gethostname())}\.{os.getpid()}\.\d{{4}}"
    assert len(names) == 2 and all(re.fullmatch(pattern, name) for name in names), names
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    for name in names:  # each a whole TFRecord file that starts with the file version
        acc = accumulator.EventAccumulator(str(tmp_path / name))
        acc.Reload()
        assert acc.file_version == 2.0
    got = scalars(tmp_path)
    assert [s for s, _ in got["loss/train cost"]] == list(range(1, 8))
    assert [s for s, _ in got["epoch time/epoch time"]] == [3, 7]
    assert_same(got, expected_points(logger.monitor))
    with pytest.raises(ValueError, match="closed"):
        logger.writer
    logger({"type": "loss", "step": 99, "loss": 1.0, "time": 1.0})  # after close: dropped
    assert sorted(p.name for p in tmp_path.iterdir()) == names and max(scalars(tmp_path)["loss/train cost"])[0] == 7


@needs_tensorboardx
def test_a_running_run_shows_up_within_flush_secs(tmp_path):
    bus = EventBus()
    logger = TensorBoardLogger(tmp_path, flush_secs=0.1)
    logger.attach(bus)
    emit_run(bus, 3, end=None)  # still running: nothing closes the file
    wait_until(lambda: len(scalars(tmp_path).get("loss/train cost", ())) == 3, timeout=10)
    logger.close()


def test_missing_tensorboardx_says_which_extra_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX -> ImportError
    hint = re.escape("pip install 'nnkit[tensorboard]'")
    with pytest.raises(ImportError, match=hint):
        TensorBoardLogger(tmp_path / "logger")
    with pytest.raises(ImportError, match=hint):  # the callback fails when made, before any fit
        TensorBoard(tmp_path / "callback")
    assert not (tmp_path / "logger").exists() and not (tmp_path / "callback").exists()
    # nnkit train --tensorboard: a usage error before the job is even read
    assert main(["train", str(tmp_path / "no.conf"), "--run-dir", str(tmp_path / "run"), "--tensorboard"]) == 2
    assert "nnkit[tensorboard]" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_import_nnkit_never_needs_tensorboardx():
    code = ("import sys; sys.modules['tensorboardX'] = None\n"
            "import nnkit, nnkit.views, nnkit.cli, nnkit.views.tensorboard\n")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
                   timeout=60)
    code = ("import sys, nnkit, nnkit.views, nnkit.cli, nnkit.views.tensorboard\n"
            "assert 'tensorboardX' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
                   timeout=60)


@needs_tensorboardx
def test_callback_in_a_run_directory_writes_what_the_events_say(tmp_path):
    x, y = toy_data(256)
    mlp().fit(x, y, batch_size=16, epochs=3, verbose=0, validation_split=0.25, run_dir=tmp_path / "run",
              callbacks=[TensorBoard(tmp_path / "tb")])
    expected = expected_points(monitor_file(tmp_path / "run" / "events.jsonl"))
    assert {"loss/train cost", "loss/validation loss", "epoch time/epoch time"} <= set(expected)
    assert_same(scalars(tmp_path / "tb"), expected)


@needs_tensorboardx
def test_callback_without_a_bus_and_a_logger_on_a_background_run(tmp_path):
    x, y = toy_data(256)
    model = mlp()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[TensorBoard(tmp_path / "plain")])
    got = scalars(tmp_path / "plain")
    assert [s for s, _ in got["loss/train loss"]] == [16, 32]
    np.testing.assert_allclose([v for _, v in got["loss/train loss"]],
                               np.float32(model.trainer.history.history["loss"]), rtol=1e-6)
    assert len(got["epoch time/epoch time"]) == 2 and got["loss/train cost"][0][0] == 1
    assert got["loss/train cost"][-1][0] == 32  # the last batch is always reported

    run = mlp().fit(x, y, batch_size=16, epochs=2, verbose=0, background=True)
    logger = TensorBoardLogger(tmp_path / "bg")
    logger.attach(run)
    assert run.wait(30) == "finished"
    run.wait_for(run.shutdown())
    assert run.join(10)
    logger.close()
    monitor = Monitor()
    for event in run.events():
        monitor.update(event)
    assert_same(scalars(tmp_path / "bg"), expected_points(monitor))


@needs_tensorboardx
@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")
def test_nnkit_train_tensorboard_flag(tmp_path):
    from test_cli import SMALL_JOB
    job = tmp_path / "small.conf"
    job.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    done = subprocess.run([sys.executable, "-m", "nnkit.cli", "train", job, "--run-dir", tmp_path / "run",
                           "--tensorboard"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    expected = expected_points(monitor_file(tmp_path / "run" / "events.jsonl"))
    got = scalars(tmp_path / "run" / "tensorboard")
    assert got["loss/train cost"][-1][0] == 20  # the job's 20 steps
    assert_same(got, expected)
    # 20 steps of a 63-batch epoch: the test error comes from the test events (test_freq 10)
    tests = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()
             if '"type":"test"' in line]
    assert [s for s, _ in got["error/test error"]] == [10, 20] == [e["step"] for e in tests]
    np.testing.assert_allclose([v for _, v in got["error/test error"]],
                               [1 - e["accuracy"] for e in tests], rtol=1e-6)
    assert [s for s, _ in got["loss/validation loss"]] == [10, 20]
