"""Watch and steer: background runs, commands at safe points, events, run-directory control."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import nnkit
from helpers import ROOT, wait_until
from nnkit.training import LambdaCallback, read_jsonl
from test_model import mlp, toy_data



def slow(seconds=0.005):
    """A callback that makes each batch take a little longer, so commands land mid-run."""
    return LambdaCallback(on_batch_end=lambda batch, logs: time.sleep(seconds))


def start(model=None, **kwargs):
    x, y = toy_data(512)
    model = model or mlp()
    kwargs.setdefault("callbacks", [slow()])
    return model.fit(x, y, batch_size=16, verbose=0, background=True, **kwargs)


def test_stop_is_acknowledged_within_one_batch():
    run = start(epochs=100)
    wait_until(lambda: run.global_step >= 3)
    sent_at = run.global_step
    ack = run.wait_for(run.stop())
    assert ack["type"] == "ack" and ack["command"] == "stop"
    assert ack["step"] - sent_at <= 1
    assert run.wait(10) == "stopped" and run.join(10)
    assert run.global_step == ack["step"]
    states = [e["state"] for e in run.events("status")]
    assert states == ["started", "stopped"]


def test_lr_change_takes_effect_at_the_next_batch_and_shows_in_events():
    run = start(epochs=100, callbacks=[slow(0.06)])  # slower than the loss-event rate limit
    wait_until(lambda: run.global_step >= 2)
    ack = run.wait_for(run.set(lr=0.0123))
    wait_until(lambda: run.global_step >= ack["step"] + 3)
    run.wait_for(run.stop())
    run.join(10)
    losses = {e["step"]: e["lr"] for e in run.events("loss")}
    assert losses[ack["step"] + 1] == pytest.approx(0.0123)
    assert losses[ack["step"]] == pytest.approx(0.05)
    assert run.model.updater.lr_override == pytest.approx(0.0123)


def test_pause_then_resume_continues_exactly_as_if_never_paused():
    x, y = toy_data(512)
    straight = mlp(dropout=0.2)
    straight.fit(x, y, batch_size=16, steps=40, verbose=0)

    run = start(mlp(dropout=0.2), steps=40)
    wait_until(lambda: run.global_step >= 10)
    run.wait_for(run.pause())
    paused_at = run.global_step
    time.sleep(0.3)
    assert run.global_step == paused_at and run.status == "paused"
    run.wait_for(run.resume())
    assert run.status == "resumed"
    assert run.wait(20) == "finished"
    for a, b in zip(run.model.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)
    run.shutdown()
    assert run.join(10)


def test_run_until_extends_a_finished_run():
    run = start(steps=5)
    assert run.wait(20) == "finished" and run.global_step == 5
    run.wait_for(run.run_until(batches=12))
    wait_until(lambda: run.status == "finished" and run.global_step == 12)
    run.wait_for(run.run_until(epochs=2))  # 512/16 = 32 batches an epoch
    wait_until(lambda: run.status == "finished" and run.current_epoch == 2)
    assert run.global_step == 64
    run.wait_for(run.shutdown())
    assert run.join(10)


def test_a_burst_of_10000_commands_is_answered_without_stalling_training():
    run = start(epochs=1000, callbacks=[slow(0.001)])
    wait_until(lambda: run.global_step >= 1)
    ids = []
    for i in range(10_000):
        if i % 3 == 0:
            ids.append(run.set(lr=0.01 + i * 1e-7))
        elif i % 3 == 1:
            ids.append(run.report_every(1 + i % 5))
        else:
            ids.append(run.command("frobnicate"))  # unknown: an error, and training goes on
    start_step = run.global_step
    wait_until(lambda: len(run.events("ack")) + len(run.events("error")) >= 10_000, timeout=60)
    answered = {e["id"]: e["type"] for e in run.events() if e["type"] in ("ack", "error")}
    assert all(i in answered for i in ids)
    assert sum(t == "error" for t in answered.values()) == 3333
    wait_until(lambda: run.global_step >= start_step + 5)  # still training
    run.wait_for(run.stop())
    run.join(10)


def test_bad_commands_get_errors_and_the_run_goes_on():
    run = start(epochs=100, callbacks=[slow(0.06)])
    wait_until(lambda: run.global_step >= 1)
    cases = [run.set(lr=-1), run.set(batch_size=0), run.set(speed=3), run.run_until(),
             run.command("set", lr="fast"), run.report_every(0)]
    errors = [run.wait_for(i) for i in cases]
    assert all(e["type"] == "error" for e in errors)
    assert "lr: must be >= 0" in errors[0]["message"] and "speed" in errors[2]["message"]
    ok = run.wait_for(run.set(batch_size=8))
    wait_until(lambda: run.global_step >= ok["step"] + 2)
    assert [e["size"] for e in run.events("loss") if e["step"] > ok["step"]][0] == 8
    run.wait_for(run.stop())
    run.join(10)


def test_tell_state_reports_norms_and_writes_a_snapshot(tmp_path):
    run = start(epochs=100, run_dir=tmp_path)
    wait_until(lambda: run.global_step >= 2)
    run.wait_for(run.pause())
    run.wait_for(run.tell_state(snapshot=True))
    state = run.events("state")[-1]
    snap = run.events("snapshot")[-1]
    model = run.model
    assert state["hyper"]["lr"] == pytest.approx(0.05) and state["hyper"]["batch_size"] == 16
    w = model.layers[1].params[0]
    assert state["layers"][model.layers[1].name]["weight"]["norm"] == pytest.approx(float(np.linalg.norm(w.data)))
    arrays = nnkit.checkpoint.load_tree(snap["path"], kind="nnkit.snapshot")
    np.testing.assert_array_equal(arrays["params"][w.full_name], w.data)
    run.wait_for(run.shutdown())
    run.join(10)


def test_heartbeats_and_rate_limited_loss_events():
    run = start(epochs=1000, callbacks=[])  # as fast as it goes
    wait_until(lambda: len(run.events("loss")) >= 10, timeout=60)
    run.wait_for(run.stop())
    run.join(10)
    times = [e["time"] for e in run.events("loss")]
    assert len(times) < run.global_step  # some were held back
    assert min(np.diff(times)) >= 0.049
    assert run.events("loss")[-1]["step"] == run.global_step  # but never the last one

    run = start(epochs=100, callbacks=[slow(1.3)])  # a slow batch: heartbeats show it is alive
    time.sleep(3.0)
    run.stop()
    run.join(10)
    beats = [e["time"] for e in run.events("heartbeat")]
    assert len(beats) >= 2
    stamps = sorted(e["time"] for e in run.events())
    assert max(np.diff(stamps)) < 1.3  # never a quiet second without an event


def test_checkpoint_command_records_a_live_lr_override_that_wins_on_resume(tmp_path):
    run = start(epochs=100, run_dir=tmp_path)
    wait_until(lambda: run.global_step >= 2)
    run.wait_for(run.set(lr=0.007))
    ack = run.wait_for(run.checkpoint())
    run.wait_for(run.shutdown())
    run.join(10)
    restored = nnkit.load(ack["path"])
    assert restored.updater.lr_override == pytest.approx(0.007)
    x, y = toy_data(512)
    history = restored.fit(x, y, batch_size=16, steps=2, verbose=0)
    assert history is not None and restored.updater.lr == pytest.approx(0.007)


def test_run_directory_commands_and_malformed_lines(tmp_path):
    run = start(epochs=1000, run_dir=tmp_path)
    wait_until(lambda: run.global_step >= 1)
    with open(tmp_path / "commands.jsonl", "a") as f:
        f.write("this is not json\n")
        f.write('["a", "list"]\n')
        f.write(json.dumps({"id": "c1", "command": "set", "args": {"lr": 0.02}}) + "\n")
        f.write('{"id": "c2", "command": "st')  # a partial line: not read until completed
    ack = run.wait_for("c1")
    assert ack["type"] == "ack"
    errors = [e["message"] for e in run.events("error")]
    assert any("not valid JSON" in m for m in errors) and any("JSON object" in m for m in errors)
    with open(tmp_path / "commands.jsonl", "a") as f:
        f.write('op"}\n')
    assert run.wait_for("c2")["command"] == "stop"
    run.join(10)
    items, _ = read_jsonl(tmp_path / "events.jsonl")
    events = [v for _, v in items]
    assert all(isinstance(e, dict) for e in events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["run"] for e in events} == {run.bus.run_id}


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_model import mlp, toy_data
    x, y = toy_data(512)
    mlp().fit(x, y, batch_size=8, epochs=10000, verbose=0, run_dir={run_dir!r})
""")


def test_event_file_stays_readable_when_the_run_is_killed(tmp_path):
    script = KILL_SCRIPT.format(tests=str(ROOT / "tests"), run_dir=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wait_until(lambda: (tmp_path / "events.jsonl").exists()
               and len(read_jsonl(tmp_path / "events.jsonl")[0]) > 20, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write('{"schema": 1, "type": "lo')  # what a kill in the middle of a write leaves
    items, offset = read_jsonl(tmp_path / "events.jsonl")
    assert len(items) > 20 and all(isinstance(v, dict) for _, v in items)
    assert offset < (tmp_path / "events.jsonl").stat().st_size  # the partial line is left


def test_failure_in_the_training_thread_becomes_an_event():
    def boom(batch, logs):
        if batch == 3:
            raise RuntimeError("disk on fire")
    run = start(epochs=10, callbacks=[LambdaCallback(on_batch_end=boom)])
    assert run.wait(20) == "failed"
    assert isinstance(run.exception, RuntimeError)
    assert "disk on fire" in run.events("error")[-1]["message"]
