"""The ``load_weights`` command: a running model takes another run's checkpoint at a safe point,
within the run's allowed roots, or refuses it (naming why) and trains on."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, ROOT, wait_until

from nnkit import SGD, Activation, Dense, Sequential, checkpoint
from nnkit.views.terminal import steer
from test_command_channel import WAIT, start_run, wait_until_training
from test_model import mlp, toy_data

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def trained_checkpoint(path: Path, seed: int = 5, model=None) -> dict:
    """A checkpoint of the test MLP after a few batches (momentum slots included); its tree."""
    model = model or mlp(seed=seed)
    x, y = toy_data(64, seed=seed)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.save(path)
    return checkpoint.load_tree(path)


def params_of(model) -> dict[str, np.ndarray]:
    return {p.full_name: p.data.copy() for p in model.params}


def test_a_thread_run_loads_the_weights_and_slots_at_a_safe_point(tmp_path):
    run_dir = tmp_path / "run"
    source = tmp_path / "elsewhere" / "best.h5"
    source.parent.mkdir()
    saved = trained_checkpoint(source)["model"]
    x, y = toy_data(256)
    model = mlp()
    run = model.fit(x, y, batch_size=16, epochs=1000, verbose=0, run_dir=run_dir, background=True)
    try:
        wait_until_training(run)
        model.trainer.load_roots = [source.parent]  # what `nnkit train --load-root` sets
        assert run.wait_for(run.pause(), WAIT)["type"] == "ack"
        lr_before, step = model.updater.lr, run.global_step
        ack = run.wait_for(run.load_weights(source), WAIT)
        assert ack["type"] == "ack", ack
        assert (ack["path"], ack["source_step"], ack["slots"], ack["step"]) == (str(source.resolve()), 4, True, step)
        # Paused: nothing trained since, so the model holds exactly the checkpoint's arrays.
        for name, array in params_of(model).items():
            assert np.array_equal(array, saved["params"][name]), name
        state = model.updater.state_dict()
        assert set(state["slots"]) == set(saved["updater"]["slots"]) == set(saved["params"])
        for name, slots in saved["updater"]["slots"].items():
            assert slots and all(np.array_equal(state["slots"][name][k], a) for k, a in slots.items()), name
        assert state["counts"] == saved["updater"]["counts"]
        assert model.updater.lr == lr_before and state["last_step"] == step  # the run's own schedule
        run.resume()
        wait_until_training(run, step + 3)  # and it trains on from the loaded weights
    finally:
        run.shutdown()
        assert run.join(WAIT)


def test_refusals_name_why_and_leave_the_run_training(tmp_path):
    run_dir = tmp_path / "run"
    outside = tmp_path / "outside.h5"
    trained_checkpoint(outside)
    run = start_run(run_dir)
    model = run.trainer.model
    try:
        wait_until_training(run)
        (run_dir / "notes.txt").write_text("not a checkpoint")
        (run_dir / "link.h5").symlink_to(outside)  # inside by name, outside once resolved
        wide = Sequential([Dense(32), Activation("tanh"), Dense(4)], input_shape=(20,), seed=0)
        wide.compile(SGD(lr=0.05, momentum=0.9), "softmaxloss", ["accuracy"])
        trained_checkpoint(run_dir / "wide.h5", model=wide)
        params = checkpoint.load_tree(run_dir / "wide.h5")["model"]["params"]
        assert params["dense_1/weight"].shape == (32, 20)
        checkpoint.save_model_parameter(3, run_dir / "params.h5", model.layers)
        (run_dir / "empty").mkdir()
        cases = {str(outside): "is outside the allowed roots", "../outside.h5": "is outside the allowed roots",
                 "link.h5": "is outside the allowed roots", "notes.txt": "is not an nnkit checkpoint",
                 "params.h5": "is not an nnkit checkpoint", "missing.h5": "does not exist",
                 "empty": "a directory without checkpoints",
                 "wide.h5": "parameter 'dense_1/weight' has shape (32, 20) in the file but (16, 20) in Dense 'dense_1'"}
        assert run.wait_for(run.pause(), WAIT)["type"] == "ack"
        before = params_of(model)
        for path, expected in cases.items():
            # The web dashboard's and nnkit ctl's path: checked, appended, answered.
            _, answer, _ = steer(run_dir, "load_weights", {"path": path}, WAIT)
            assert answer is not None and answer["type"] == "error", (path, answer)
            assert answer["message"].startswith("load_weights: ") and expected in answer["message"], answer
        after = params_of(model)
        assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing half-loaded
        run.resume()
        step = run.global_step
        wait_until_training(run, step + 3)
        assert run.status in ("running", "resumed")
    finally:
        run.shutdown()
        assert run.join(WAIT)


def test_slots_of_another_updater_are_refused_unless_left_out(tmp_path):
    from nnkit import Adam
    run_dir = tmp_path / "run"
    adam = mlp(seed=2)
    adam.compile(Adam(lr=0.01), "softmaxloss", ["accuracy"])
    run_dir.mkdir()
    saved = trained_checkpoint(run_dir / "adam.h5", model=adam)["model"]
    run = start_run(run_dir)
    model = run.trainer.model
    try:
        wait_until_training(run)
        assert run.wait_for(run.pause(), WAIT)["type"] == "ack"
        error = run.wait_for(run.load_weights("adam.h5"), WAIT)
        assert error["type"] == "error" and "slots of a Adam updater and this run's is SGD" in error["message"]
        ack = run.wait_for(run.load_weights("adam.h5", slots=False), WAIT)
        assert ack["type"] == "ack" and ack["slots"] is False
        assert all(np.array_equal(a, saved["params"][k]) for k, a in params_of(model).items())
        run.resume()
    finally:
        run.shutdown()
        assert run.join(WAIT)


def nnkit(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnkit.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")
def test_nnkit_train_loads_from_its_load_roots_through_nnkit_ctl(tmp_path):
    from test_cli import SMALL_JOB
    (tmp_path / "small.conf").write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    sweep = tmp_path / "sweep"
    done = nnkit("train", "small.conf", "--run-dir", sweep / "a", "--store", "s.db", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    source = sweep / "a" / "checkpoint-20.h5"
    other = tmp_path / "other"
    other.mkdir()
    (other / "best.h5").write_bytes(source.read_bytes())  # a good checkpoint, but outside the roots
    child = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "train", "small.conf", "--set", "run.steps=1000000",
                              "--set", "updater.lr=0.01", "--run-dir", sweep / "b", "--load-root", sweep,
                              "--store", "s.db"], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=open(tmp_path / "b.log", "w"))
    try:
        wait_until(lambda: (sweep / "b" / "events.jsonl").exists() or child.poll() is not None, 120)
        pause = nnkit("ctl", sweep / "b", "pause", "--wait", "60", cwd=tmp_path)
        assert pause.returncode == 0, pause.stderr
        refused = nnkit("ctl", sweep / "b", "load_weights", "other/best.h5", cwd=tmp_path)  # from ctl's folder
        assert refused.returncode == 1 and "load_weights refused" in refused.stderr
        assert "outside the allowed roots" in refused.stderr
        assert f"load_weights: {other / 'best.h5'} is outside the allowed roots" in refused.stderr
        loaded = nnkit("ctl", sweep / "b", "load_weights", "sweep/a", cwd=tmp_path)  # a's latest
        assert loaded.returncode == 0 and "load_weights acknowledged" in loaded.stdout, loaded.stderr
        assert f'path="{source.resolve()}", source_step=20, slots=true' in loaded.stdout
        saved = nnkit("ctl", sweep / "b", "checkpoint", "path=after.h5", cwd=tmp_path)
        assert saved.returncode == 0, saved.stderr
        after = checkpoint.load_tree(sweep / "b" / "after.h5")
        expected = checkpoint.load_tree(source)["model"]["params"]
        assert set(after["model"]["params"]) == set(expected)
        for name, array in after["model"]["params"].items():
            assert np.array_equal(array, expected[name]), name
        assert after["model"]["updater"]["lr_override"] is None  # its own learning rate: the job's 0.01
        assert nnkit("ctl", sweep / "b", "stop", cwd=tmp_path).returncode == 0
        assert child.wait(120) in (0, 130)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_an_update_that_overflows_right_after_a_load_is_undone(tmp_path, monkeypatch):
    from test_nonfinite import overflow_at
    source = tmp_path / "run" / "best.h5"
    source.parent.mkdir()
    saved = trained_checkpoint(source)["model"]
    run = start_run(tmp_path / "run")  # a background run: a non-finite batch pauses it
    model = run.trainer.model
    try:
        wait_until_training(run)
        assert run.wait_for(run.pause(), WAIT)["type"] == "ack"
        step = run.wait_for(run.load_weights("best.h5"), WAIT)["step"]
        overflow_at(monkeypatch, model, step + 1)  # no setting changed: only the load calls for a copy
        run.resume()
        wait_until(lambda: run.events("nonfinite"), WAIT)
        (event,) = run.events("nonfinite")
        assert event["step"] == step + 1 and event["rewound"] is False, event
        assert all(np.array_equal(a, saved["params"][k]) for k, a in params_of(model).items())  # as loaded
    finally:
        run.shutdown()
        assert run.join(WAIT)
