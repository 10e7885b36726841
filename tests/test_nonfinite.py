"""A batch that goes non-finite is never applied, and a failing run keeps its work.

The loss is checked after the forward pass, the gradients before any update, the parameters
after it; the run then checkpoints the last good state and stops or pauses (``on_nonfinite``).
Any other exception in a run with a run directory leaves an emergency checkpoint.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, ROOT, wait_until
from test_cli import SMALL_JOB
from test_model import mlp, toy_data

import nnkit
from nnkit.training.checkpoints import latest_checkpoint
from nnkit import checkpoint
from nnkit.training import LambdaCallback, ModelCheckpoint, NonFiniteLossError, read_jsonl
from nnkit.updaters import SGD

BATCH, BATCHES = 32, 8  # toy_data() has 256 examples: 8 batches an epoch


def set_at(model, step, **values):
    """A callback sending ``set`` through the run's command channel once ``step`` batches are
    done: it takes effect at the safe point before batch ``step + 1``."""
    def send(batch, logs):
        if model.trainer.global_step == step:
            model.trainer.controller.submit("set", **values)
    return LambdaCallback(on_batch_end=send)


def flat(tree, prefix=""):
    """A checkpoint tree as ``{"model/params/dense/weight": value, ...}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def assert_same_checkpoint(a, b, ignore=()):
    """Two checkpoint files hold bit-identical state (keys in ``ignore`` aside)."""
    ta, tb = flat(checkpoint.load_tree(a)), flat(checkpoint.load_tree(b))
    assert set(ta) == set(tb)
    for key in ta:
        if key in ignore:
            continue
        if isinstance(ta[key], np.ndarray):
            np.testing.assert_array_equal(ta[key], tb[key], err_msg=key)
        else:
            assert ta[key] == tb[key], key


def weights_and_slots(model):
    return model.get_weights(), flat(model.updater.state_dict())


def assert_unchanged(model, before):
    weights, slots = weights_and_slots(model)
    for w, w0 in zip(weights, before[0]):
        np.testing.assert_array_equal(w, w0)
    assert slots.keys() == before[1].keys()
    for key, value in slots.items():
        np.testing.assert_array_equal(value, before[1][key], err_msg=key)


def events_of(run_dir):
    return [v for _, v in read_jsonl(Path(run_dir) / "events.jsonl")[0]]


# ====================================================================== set lr=1e300, then...
def test_stop_ends_with_the_error_and_a_checkpoint_equal_to_a_run_stopped_before_the_bad_batch(tmp_path):
    x, y = toy_data()
    model = mlp(dropout=0.3)  # dropout: the bad batch's draws must be undone too
    with pytest.raises(NonFiniteLossError) as failure:
        model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, run_dir=tmp_path / "bad",
                  callbacks=[set_at(model, 3, lr=1e300)])
    error = failure.value
    message = str(error)
    assert message.startswith("dense_1/weight is not finite after the update at epoch 0, batch 3 "
                              "(step 4) with learning rate 1e+300")
    assert "the parameters are the last good ones (step 3)" in message
    assert str(tmp_path / "bad" / "checkpoint.h5") in message
    assert (error.what, error.step, error.restored) == ("parameter", 4, True)
    assert error.checkpoint == str(tmp_path / "bad" / "checkpoint.h5")
    assert model.trainer.global_step == 3 and model.nonfinite_param() is None

    straight = mlp(dropout=0.3)
    straight.fit(x, y, batch_size=BATCH, steps=3, verbose=0, run_dir=tmp_path / "good")
    # Everything but the learning rate set by hand (it stays in the run's state) is identical.
    assert_same_checkpoint(tmp_path / "bad" / "checkpoint.h5", tmp_path / "good" / "checkpoint.h5",
                           ignore={"model/updater/lr_override"})
    assert checkpoint.load_tree(tmp_path / "bad" / "checkpoint.h5")["model"]["updater"]["lr_override"] == 1e300
    events = events_of(tmp_path / "bad")
    assert max(e["step"] for e in events if e["type"] == "loss") == 3  # nothing after it
    assert events[-1]["type"] == "status" and events[-1]["state"] == "failed"
    assert "dense_1/weight is not finite" in events[-2]["message"]


def test_pause_then_set_and_resume_retries_the_batch_as_if_the_lr_had_been_set_there(tmp_path):
    x, y = toy_data()
    model = mlp(dropout=0.3)
    run = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, run_dir=tmp_path / "run",
                    callbacks=[set_at(model, 3, lr=1e300)], background=True)  # 'pause' by default
    try:
        wait_until(lambda: run.events("nonfinite"))
        event = run.events("nonfinite")[-1]
        assert (event["what"], event["where"], event["step"], event["last_good_step"]) == (
            "parameter", "dense_1/weight", 4, 3)
        assert event["checkpoint"] == str(tmp_path / "run" / "checkpoint.h5")
        wait_until(lambda: run.status == "paused")
        paused = run.events("status")[-1]
        assert (paused["state"], paused["reason"], paused["step"]) == ("paused", "nonfinite", 3)
        saved = nnkit.load(event["checkpoint"])
        assert saved.trainer.global_step == 3
        for w, w0 in zip(saved.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(w, w0)  # the model in memory is the last good one

        assert run.wait_for(run.set(lr=0.01))["type"] == "ack"
        assert run.wait_for(run.resume())["type"] == "ack"
        assert run.wait(60) == "finished"
    finally:
        run.shutdown()
        run.join(60)
    assert model.trainer.global_step == 2 * BATCHES and model.nonfinite_param() is None
    assert [e["command"] for e in run.events("ack")] == ["set", "set", "resume", "shutdown"]

    # The retry ran exactly what a run that was set to 0.01 at that point runs.
    reference = mlp(dropout=0.3)
    reference.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, run_dir=tmp_path / "reference",
                  callbacks=[set_at(reference, 3, lr=0.01)])
    for w, w0 in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize("bad_step", [4, BATCHES])  # mid-epoch, and the epoch's last batch
def test_skip_drops_the_bad_batch_and_goes_on_with_the_next(tmp_path, bad_step):
    x, y = toy_data()
    model = mlp()
    run = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, run_dir=tmp_path,
                    callbacks=[set_at(model, bad_step - 1, lr=1e300)], background=True)
    try:
        wait_until(lambda: run.status == "paused")
        first = run.wait_for(run.skip())  # still at 1e300: the next batch fails too
        assert first["skipped"] == {"epoch": 0, "batch": bad_step - 1, "step": bad_step, "size": BATCH}
        wait_until(lambda: len(run.events("nonfinite")) == 2)
        run.wait_for(run.set(lr=0.01))
        second = run.wait_for(run.skip())
        epoch, batch = (0, bad_step) if bad_step < BATCHES else (1, 0)  # the next epoch's first
        assert second["skipped"] == {"epoch": epoch, "batch": batch, "step": bad_step, "size": BATCH}
        assert run.wait(60) == "finished"
        again = run.wait_for(run.skip())
        assert again["type"] == "error" and "not paused" in again["message"]
    finally:
        run.shutdown()
        run.join(60)
    assert model.trainer.global_step == 2 * BATCHES - 2  # two batches dropped, no step counted
    assert model.trainer.current_epoch == 2 and len(model.trainer.history.epoch) == 2
    assert model.nonfinite_param() is None


def test_skip_is_refused_by_a_run_paused_by_hand(tmp_path):
    x, y = toy_data()
    model = mlp()
    run = model.fit(x, y, batch_size=BATCH, epochs=1000, verbose=0, background=True)
    try:
        run.wait_for(run.pause())
        answer = run.wait_for(run.skip())
        assert answer["type"] == "error" and "not paused on a non-finite batch" in answer["message"]
    finally:
        run.shutdown()
        run.join(60)


# ====================================================================== where it is detected
def test_nan_in_the_data_is_a_non_finite_batch_and_leaves_everything_untouched():
    x, y = toy_data()
    model = mlp(dropout=0.3)
    model.fit(x, y, batch_size=BATCH, steps=2, verbose=0)
    before = weights_and_slots(model)
    bad = x[:BATCH].copy()
    bad[5, 7] = np.nan  # the input layer refuses it before the forward pass
    with pytest.raises(NonFiniteLossError, match=r"^the input is not finite \(example 5 of the "
                       r"batch; step 3\); the model is as before") as failure:
        model.train_on_batch(bad, y[:BATCH], step=3)
    assert (failure.value.what, failure.value.restored) == ("input", True)
    assert_unchanged(model, before)

    x[2 * BATCH + 1, 0] = np.inf  # in the third batch (no shuffle)
    with pytest.raises(NonFiniteLossError, match=r"^the input is not finite \(example 1 of the batch\) "
                       r"at epoch 0, batch 2 \(step 3\); the parameters are the last good ones "
                       r"\(step 2\); no checkpoint was written"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    assert_unchanged(model, before)


def test_a_non_finite_loss_is_caught_after_the_forward_pass_and_undoes_its_random_draws():
    x, y = toy_data()
    model = mlp(dropout=0.3)
    model.fit(x, y, batch_size=BATCH, steps=2, verbose=0)
    model.layers[-1].params[0].data[...] = 3e38  # finite, but the logits overflow
    before = weights_and_slots(model)
    dropout_rng = model.layers[3].rng.bit_generator.state
    with pytest.raises(NonFiniteLossError, match=r"^loss is (nan|inf) \(step 3\); the model is as "
                       r"before the batch") as failure, np.errstate(over="ignore", invalid="ignore"):
        model.train_on_batch(x[:BATCH], y[:BATCH])
    assert (failure.value.what, failure.value.step) == ("loss", 3)
    assert_unchanged(model, before)
    assert model.layers[3].rng.bit_generator.state == dropout_rng  # the dropout draw undone


def test_a_non_finite_gradient_in_a_middle_layer_stops_before_any_update(monkeypatch):
    x, y = toy_data()
    model = Sequential_three_dense()
    model.fit(x, y, batch_size=BATCH, steps=2, verbose=0)
    before = weights_and_slots(model)
    middle = model.layers[3]
    backward = type(middle).ComputeGradient

    def poisoned(self):
        backward(self)
        self.params[0].grad[1, 2] = np.inf
    monkeypatch.setattr(middle, "ComputeGradient", poisoned.__get__(middle))
    with pytest.raises(NonFiniteLossError, match=rf"^the gradient of {middle.name}/weight is not finite "
                       r"at epoch 0, batch 2 \(step 3\)") as failure:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert (failure.value.what, failure.value.where) == ("gradient", f"{middle.name}/weight")
    assert_unchanged(model, before)  # the layer above it was not updated either
    assert model.updater.last_step == 2


def Sequential_three_dense():
    model = nnkit.Sequential([nnkit.Dense(16, init="gaussian", w_std=0.1), nnkit.Activation("tanh"),
                              nnkit.Dense(12, init="gaussian", w_std=0.1), nnkit.Activation("tanh"),
                              nnkit.Dense(4, init="gaussian", w_std=0.1)], input_shape=(20,), seed=3)
    model.compile(SGD(lr=0.05, momentum=0.9), "softmaxloss", ["accuracy"])
    return model


def overflow_at(monkeypatch, model, step):
    """Makes the first update of ``step`` write an infinity, with no setting changed (so no copy)."""
    apply = type(model.updater)._apply
    done = []

    def apply_once(self, w, g, lr, wd, state):
        apply(self, w, g, lr, wd, state)
        if self.last_step == step and not done:
            w[0] = np.inf
            done.append(step)
    monkeypatch.setattr(type(model.updater), "_apply", apply_once)


def test_an_overflow_that_cannot_be_undone_stops_naming_the_last_checkpoint(tmp_path, monkeypatch):
    x, y = toy_data()
    model = mlp()
    saver = ModelCheckpoint(tmp_path / "every.h5", every_n_epochs=None, every_n_batches=2)
    overflow_at(monkeypatch, model, 5)
    with pytest.raises(NonFiniteLossError, match=r"is not finite after the update at epoch 0, batch 4 "
                       r"\(step 5\).*could not be undone.*every\.h5 \(step 4\), is the last good state"
                       ) as failure:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, run_dir=tmp_path, callbacks=[saver])
    assert failure.value.restored is False
    assert not (tmp_path / "checkpoint.h5").exists()  # the bad state is not saved
    assert nnkit.load(tmp_path / "every.h5").trainer.global_step == 4


def test_pause_goes_back_to_the_last_checkpoint_when_the_update_cannot_be_undone(tmp_path, monkeypatch):
    x, y = toy_data()
    model = mlp()
    saver = ModelCheckpoint(tmp_path / "every.h5", every_n_epochs=None, every_n_batches=2)
    overflow_at(monkeypatch, model, 5)
    run = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, run_dir=tmp_path,
                    callbacks=[saver], background=True)
    try:
        wait_until(lambda: run.status == "paused")
        event = run.events("nonfinite")[-1]
        assert event["rewound"] is True and event["last_good_step"] == 4
        assert model.trainer.global_step == 4 and model.nonfinite_param() is None
        assert run.wait_for(run.skip())["type"] == "error"  # the bad batch is not the next one
        run.wait_for(run.resume())
        assert run.wait(60) == "finished"
    finally:
        run.shutdown()
        run.join(60)
    assert model.trainer.global_step == BATCHES and model.nonfinite_param() is None


def test_pause_needs_a_run_that_takes_commands():
    x, y = toy_data()
    with pytest.raises(ValueError, match="on_nonfinite='pause' needs a run that takes commands"):
        mlp().fit(x, y, verbose=0, on_nonfinite="pause")
    with pytest.raises(ValueError, match="on_nonfinite must be one of 'stop', 'pause'"):
        mlp().fit(x, y, verbose=0, on_nonfinite="ignore")


# ====================================================================== other exceptions
def test_an_exception_in_a_forward_pass_leaves_an_emergency_checkpoint_of_the_last_batch(tmp_path, monkeypatch):
    x, y = toy_data()
    model = mlp(dropout=0.3)
    model.build()
    top = model.layers[-1]
    forward = type(top).ComputeFeature

    def failing(self, *sources):
        if model.trainer.global_step == 5:
            raise RuntimeError("disk on fire")
        return forward(self, *sources)
    monkeypatch.setattr(top, "ComputeFeature", failing.__get__(top))
    run = model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, run_dir=tmp_path / "bad",
                    background=True)
    assert run.wait(60) == "failed"
    run.join(60)
    error = run.events("error")[-1]["message"]
    assert error.startswith("RuntimeError: disk on fire; emergency checkpoint of step 5: ")
    assert str(tmp_path / "bad" / "checkpoint.h5") in error
    assert events_of(tmp_path / "bad")[-1]["state"] == "failed"

    straight = mlp(dropout=0.3)
    straight.fit(x, y, batch_size=BATCH, steps=5, verbose=0, run_dir=tmp_path / "good")
    assert_same_checkpoint(tmp_path / "bad" / "checkpoint.h5", tmp_path / "good" / "checkpoint.h5")
    assert nnkit.load(tmp_path / "bad" / "checkpoint.h5").trainer.global_step == 5


def test_an_exception_inside_the_update_saves_no_half_updated_state(tmp_path, monkeypatch):
    x, y = toy_data()
    model = mlp()
    model.fit(x, y, batch_size=BATCH, steps=2, verbose=0, run_dir=tmp_path)
    good = (tmp_path / "checkpoint.h5").read_bytes()
    update = type(model.updater).Update

    def failing(self, step, layer):
        if step == 4 and layer.name == "dense_1":  # the bottom layer: the top one is updated
            raise MemoryError("no room")
        return update(self, step, layer)
    monkeypatch.setattr(type(model.updater), "Update", failing)
    with pytest.raises(MemoryError) as failure:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, run_dir=tmp_path)
    assert model.half_updated
    assert any("no emergency checkpoint: the exception came from inside the update" in note
               for note in failure.value.__notes__)
    assert (tmp_path / "checkpoint.h5").read_bytes() == good


# ====================================================================== the command line
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def nnkit_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "nnkit.cli", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")
def test_nnkit_train_pauses_on_a_non_finite_batch_and_ctl_steers_it_out(tmp_path):
    job = tmp_path / "small.conf"
    job.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "train", str(job), "--run-dir",
                             str(run_dir), "--on-nonfinite", "pause", "--set", "run.steps=1000000",
                             "--set", "run.display_freq=1", "--set", "run.test_freq=0"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (run_dir / "events.jsonl").exists()
                   and any(e.get("type") == "train" for e in events_of(run_dir)), timeout=120)
        assert nnkit_cli("ctl", run_dir, "set", "lr=1e300").returncode == 0
        wait_until(lambda: any(e.get("type") == "nonfinite" for e in events_of(run_dir)), timeout=60)
        event = next(e for e in events_of(run_dir) if e["type"] == "nonfinite")
        # nnkit train names its checkpoints by step (nnkit.training.checkpoints)
        assert event["what"] == "parameter" and event["checkpoint"] == str(latest_checkpoint(run_dir))
        assert nnkit.load(event["checkpoint"]).trainer.global_step == event["last_good_step"]
        assert nnkit_cli("ctl", run_dir, "set", "lr=0.01").returncode == 0
        end = event["step"] + 5  # while paused, so the run cannot be past it yet
        assert nnkit_cli("ctl", run_dir, "run_until", f"batches={end}").returncode == 0
        resumed = nnkit_cli("ctl", run_dir, "resume")
        assert resumed.returncode == 0 and "resume acknowledged" in resumed.stdout
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == end
    assert nnkit.load(latest_checkpoint(run_dir)).nonfinite_param() is None
    watched = nnkit_cli("watch", run_dir)
    assert watched.returncode == 0
    assert f"paused at step {event['last_good_step']} (nonfinite)" in watched.stdout
    assert "non-finite batch: dense_1/weight is not finite after the update" in watched.stdout
    commands = [e["command"] for e in events_of(run_dir) if e["type"] == "ack"]
    assert commands == ["set", "set", "run_until", "resume"]


def test_an_update_that_does_not_say_whether_it_stayed_finite_is_checked_by_reading_the_params():
    class Quiet(SGD):  # a user's updater: its Update returns nothing
        def Update(self, step, layer):
            super().Update(step, layer)
            if step == 3 and layer.params:
                layer.params[-1].data[-1] = np.nan
    x, y = toy_data()
    model = Sequential_three_dense()
    model.compile(Quiet(lr=0.05, momentum=0.9), "softmaxloss", ["accuracy"])
    model.fit(x, y, batch_size=BATCH, steps=2, verbose=0)
    with pytest.raises(NonFiniteLossError, match=r"/bias is not finite after the update \(step 3") as failure:
        model.train_on_batch(x[:BATCH], y[:BATCH], step=3)
    assert failure.value.what == "parameter" and failure.value.restored is False
