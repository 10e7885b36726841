"""The Trainer loop: safe points, stopping, callbacks, signals, NaN handling, progress."""
import csv
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import nnkit
from nnkit.training import (CSVLogger, EarlyStopping, LambdaCallback, LearningRateScheduler,
                            ModelCheckpoint, NonFiniteLossError, ProgressBar, ReduceLROnPlateau,
                            split_validation)
from test_model import mlp, toy_data

ROOT = Path(__file__).resolve().parents[1]


def test_hooks_run_in_order_with_logs():
    x, y = toy_data(100)
    events = []
    recorder = LambdaCallback(
        on_train_begin=lambda logs: events.append("train_begin"),
        on_epoch_begin=lambda epoch, logs: events.append(f"epoch_begin {epoch}"),
        on_batch_begin=lambda batch, logs: events.append(f"batch_begin {batch}"),
        on_batch_end=lambda batch, logs: events.append(f"batch_end {batch} {sorted(logs)}"),
        on_test_begin=lambda logs: events.append("test_begin"),
        on_test_end=lambda logs: events.append(f"test_end {sorted(logs)}"),
        on_epoch_end=lambda epoch, logs: events.append(f"epoch_end {epoch}"),
        on_train_end=lambda logs: events.append("train_end"))
    mlp().fit(x, y, batch_size=50, epochs=1, validation_data=(x, y), callbacks=[recorder], verbose=0)
    assert events == ["train_begin", "epoch_begin 0", "batch_begin 0",
                      "batch_end 0 ['accuracy', 'batch', 'loss', 'lr', 'size']", "batch_begin 1",
                      "batch_end 1 ['accuracy', 'batch', 'loss', 'lr', 'size']", "test_begin",
                      "test_end ['accuracy', 'loss']", "epoch_end 0", "train_end"]
    with pytest.raises(TypeError, match="unknown hook"):
        LambdaCallback(on_batch_finish=print)


def test_epoch_logs_are_example_weighted_means_of_batch_logs():
    x, y = toy_data(100)
    batches = []
    record = LambdaCallback(on_batch_end=lambda b, logs: batches.append(dict(logs)))
    history = mlp().fit(x, y, batch_size=40, epochs=1, callbacks=[record], verbose=0)
    assert [b["size"] for b in batches] == [40, 40, 20]  # the last, partial batch counts
    expected = sum(b["loss"] * b["size"] for b in batches) / 100
    assert history.history["loss"][0] == pytest.approx(expected)


def test_callback_stop_training_ends_after_the_current_batch():
    x, y = toy_data()
    model = mlp()

    def stop_at_3(batch, logs):
        if batch == 2:
            model.stop_training = True
    model.fit(x, y, batch_size=16, epochs=5, callbacks=[LambdaCallback(on_batch_end=stop_at_3)], verbose=0)
    assert model.trainer.global_step == 3 and model.trainer.current_batch == 3


def test_stop_from_another_thread():
    x, y = toy_data(2000)
    model = mlp()
    started = threading.Event()
    model.build()
    trainer = model.trainer_for_fit()
    seen = []

    def on_batch(batch, logs):
        seen.append(batch)
        started.set()
        time.sleep(0.002)
    thread = threading.Thread(target=model.fit, args=(x, y),
                              kwargs=dict(batch_size=10, epochs=50, verbose=0,
                                          callbacks=[LambdaCallback(on_batch_end=on_batch)]))
    thread.start()
    assert started.wait(10)
    trainer.stop()
    stop_step = trainer.global_step
    thread.join(10)
    assert not thread.is_alive()
    assert trainer.global_step - stop_step <= 1  # at most the batch in flight finished


def test_progress_and_interactive_data():
    x, y = toy_data(200)
    model = mlp()
    model.fit(x, y, batch_size=50, epochs=2, validation_data=(x[:50], y[:50]), verbose=0)
    trainer = model.trainer
    assert (trainer.current_epoch, trainer.current_batch, trainer.global_step) == (2, 0, 8)
    data = trainer.interactive_data()
    assert [row[0] for row in data] == [0, 1]
    h = trainer.history.history
    assert data[1][1] == pytest.approx(1 - h["accuracy"][1])
    assert data[1][2] == pytest.approx(1 - h["val_accuracy"][1])


def test_progress_bar_prints_plain_lines_when_not_a_terminal():
    x, y = toy_data(200)
    out = io.StringIO()
    mlp().fit(x, y, batch_size=50, epochs=2, callbacks=[ProgressBar(file=out, log_every=0)], verbose=1)
    lines = out.getvalue().splitlines()
    assert any(l.startswith("epoch 1 batch 2/4") for l in lines)
    done = [l for l in lines if " done " in l]
    assert len(done) == 2 and all("loss" in l and "acc" in l and "lr 0.05" in l and "img/s" in l for l in done)


def test_early_stopping_and_restore_best_weights():
    x, y = toy_data()
    model = mlp()
    losses = iter([1.0, 0.5, 0.6, 0.7, 0.4, 0.3])
    fake = LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(val_loss=next(losses)))
    stopper = EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    best = []
    snap = LambdaCallback(on_epoch_end=lambda epoch, logs: best.append(model.get_weights()) if epoch == 1 else None)
    model.fit(x, y, batch_size=64, epochs=6, callbacks=[fake, stopper, snap], verbose=0)
    assert stopper.stopped_epoch == 3 and model.trainer.current_epoch == 4
    for a, b in zip(model.get_weights(), best[0]):
        np.testing.assert_array_equal(a, b)


def test_learning_rate_scheduler_and_reduce_on_plateau():
    x, y = toy_data()
    model = mlp()
    lrs = []
    record = LambdaCallback(on_epoch_end=lambda epoch, logs: lrs.append(logs["lr"]))
    model.fit(x, y, batch_size=64, epochs=3, verbose=0,
              callbacks=[LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1)), record])
    assert lrs == pytest.approx([0.1, 0.05, 0.1 / 3])

    model = mlp()
    flat = LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(val_loss=1.0))
    lrs.clear()
    model.fit(x, y, batch_size=64, epochs=6, verbose=0,
              callbacks=[flat, ReduceLROnPlateau(factor=0.5, patience=2, min_lr=0.02), record])
    # epoch 0 sets the best; epochs 1, 2 stall -> halve after 2; 3, 4 stall -> halve to the floor after 4
    assert lrs == pytest.approx([0.05, 0.05, 0.05, 0.025, 0.025, 0.02])  # the lr each epoch used


def test_csv_logger(tmp_path):
    x, y = toy_data()
    path = tmp_path / "log.csv"
    mlp().fit(x, y, batch_size=64, epochs=2, callbacks=[CSVLogger(path)], verbose=0)
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["epoch", "accuracy", "loss", "lr"] and [r[0] for r in rows[1:]] == ["0", "1"]
    mlp().fit(x, y, batch_size=64, epochs=1, callbacks=[CSVLogger(path, append=True)], verbose=0)
    assert len(list(csv.reader(open(path)))) == 4


def test_model_checkpoint_every_n_batches_and_best_only(tmp_path):
    x, y = toy_data()
    model = mlp()
    every = ModelCheckpoint(tmp_path / "step-{step}.h5", every_n_epochs=None, every_n_batches=3)
    model.fit(x, y, batch_size=32, steps=7, callbacks=[every], verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-3.h5", "step-6.h5"]
    restored = nnkit.load(tmp_path / "step-6.h5")
    assert restored.trainer.global_step == 6

    scores = iter([0.5, 0.4, 0.45, 0.3])
    fake = LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(val_loss=next(scores)))
    best = ModelCheckpoint(tmp_path / "best-{epoch}.h5", save_best_only=True)
    mlp().fit(x, y, batch_size=64, epochs=4, callbacks=[fake, best], verbose=0)
    assert sorted(p.name for p in tmp_path.glob("best-*")) == ["best-1.h5", "best-2.h5", "best-4.h5"]


def test_nan_loss_stops_with_the_batch_named_and_overwrites_no_checkpoint(tmp_path):
    x, y = toy_data()
    model = mlp()
    run_dir = tmp_path / "run"
    model.fit(x, y, batch_size=32, steps=2, verbose=0, run_dir=run_dir)
    good = (run_dir / "checkpoint.h5").read_bytes()

    def poison(batch, logs):  # a NaN weight after step 3 makes the loss of step 4 NaN
        if model.trainer.global_step == 3:
            model.layers[1].params[0].data[0, 0] = np.nan
    saver = ModelCheckpoint(tmp_path / "saved-{step}.h5", every_n_epochs=None, every_n_batches=1)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, batch 3 \(step 4\)"):
        model.fit(x, y, batch_size=32, epochs=3, verbose=0, run_dir=run_dir,
                  callbacks=[saver, LambdaCallback(on_batch_end=poison)])
    assert saver.last_saved == str(tmp_path / "saved-3.h5")
    last_good = nnkit.load(saver.last_saved)
    assert last_good.trainer.global_step == 3
    assert all(np.isfinite(w).all() for w in last_good.get_weights())
    assert (run_dir / "checkpoint.h5").read_bytes() == good  # the end-of-run save did not happen


def test_validation_split_is_seeded():
    x, y = toy_data(100)
    (xa, ya), (xv, yv) = split_validation(x, y, 0.2)
    np.testing.assert_array_equal(xv, x[80:])
    (xb, _), (xs, _) = split_validation(x, y, (0.2, 5))
    (_, _), (xs2, _) = split_validation(x, y, (0.2, 5))
    assert len(xs) == 20 and len(xb) == 80
    np.testing.assert_array_equal(xs, xs2)
    assert not np.array_equal(xs, x[80:])
    history = mlp().fit(x, y, batch_size=20, epochs=1, validation_split=(0.2, 1), verbose=0)
    assert "val_loss" in history.history


SIGNAL_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_model import mlp, toy_data
    from nnkit.training import LambdaCallback
    x, y = toy_data(4000)
    model = mlp()
    slow = LambdaCallback(on_batch_end=lambda b, logs: (b == 5 and print("READY", flush=True),
                                                         time.sleep({pause})))
    history = model.fit(x, y, batch_size=10, epochs=100, verbose=0, run_dir={run_dir!r},
                        callbacks=[slow])
    print("RETURNED", model.trainer.global_step, model.trainer.interrupted, flush=True)
""")


def _start(tmp_path, pause=0.01):
    script = SIGNAL_SCRIPT.format(tests=str(ROOT / "tests"), run_dir=str(tmp_path), pause=pause)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "READY"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_stops_cleanly_with_a_checkpoint(tmp_path, sig):
    proc = _start(tmp_path)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    words = out.split()
    assert words[0] == "RETURNED" and words[2] == "True"
    stopped_at = int(words[1])
    assert 6 <= stopped_at < 40000 // 10
    assert nnkit.load(tmp_path / "checkpoint.h5").trainer.global_step == stopped_at


def test_second_ctrl_c_aborts_at_once(tmp_path):
    proc = _start(tmp_path, pause=2.0)  # a long batch: the safe point is far away
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err and "RETURNED" not in out
