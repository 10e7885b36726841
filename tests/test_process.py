"""Training in a child process: the same commands and events over a pipe; crashes are contained."""
import numpy as np
import pytest

import nnkit
from helpers import DATA, ROOT, wait_until
from test_model import mlp, toy_data


def test_fit_in_a_child_process_with_commands_and_run_until():
    x, y = toy_data(4096)
    model = mlp()
    model.compile(nnkit.SGD(lr=0.0, momentum=0.9))  # weights stay as they are until lr is set
    model.build()
    run = model.fit(x, y, batch_size=16, epochs=2, validation_data=(x[:64], y[:64]),
                    background="process")
    paused = run.wait_for(run.pause(), timeout=60)  # at the first safe point the child reaches
    assert paused["type"] == "ack" and paused["step"] < 256  # within the first epoch
    run.wait_for(run.tell_state())
    state = run.events("state")[-1]
    first = model.layers[1]
    # The child starts from this process's parameters, not from a fresh init.
    assert state["layers"][first.name]["weight"]["norm"] == pytest.approx(
        float(np.linalg.norm(first.params[0].data)), rel=1e-6)
    ack = run.wait_for(run.set(lr=0.02))
    assert ack["type"] == "ack" and ack["values"] == {"lr": 0.02}
    run.resume()
    assert run.wait(60) == "finished" and run.global_step == 512
    data = run.interactive_data()
    assert [row[0] for row in data] == [0, 1] and all(row[2] is not None for row in data)
    assert run.history["lr"] == [0.02, 0.02]
    run.run_until(epochs=3)
    assert run.wait(60) == "finished" and run.global_step == 768
    run.wait_for(run.shutdown())
    assert run.join(30)
    assert run.process.exitcode == 0 and run.status == "stopped"


def test_a_killed_child_is_reported_and_the_parent_lives_on():
    x, y = toy_data(512)
    run = mlp().fit(x, y, batch_size=8, epochs=10_000, background="process")
    wait_until(lambda: run.global_step > 5)
    run.kill()
    assert run.wait(30) == "failed" and run.join(30)
    assert "ended unexpectedly" in run.events("error")[-1]["message"]
    late = run.wait_for(run.stop())
    assert late["type"] == "error" and "gone" in late["message"]


def test_a_bad_job_fails_with_an_error_event():
    run = nnkit.start("model { layer { dense { output_dim: -3 } } }")
    assert run.wait(60) == "failed" and run.join(30)
    assert "ConfigError" in run.events("error")[0]["message"]


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="needs ../shared/data/mnist")
def test_start_a_job_config_on_real_mnist(tmp_path):
    job = nnkit.load_job(ROOT / "examples" / "mnist_mlp.conf", data_dir=str(DATA),
                         overrides=["run.steps=4", "data.train.limit=512", "data.test.limit=100"])
    run = nnkit.start(job, run_dir=tmp_path)
    assert run.wait(120) == "finished" and run.global_step == 4
    losses = run.events("loss")
    assert losses and all(np.isfinite(e["loss"]) for e in losses)
    run.shutdown()
    assert run.join(30)
    assert (tmp_path / "events.jsonl").is_file() and (tmp_path / "checkpoint.h5").is_file()
    assert nnkit.load(tmp_path / "checkpoint.h5").trainer.global_step == 4


def test_a_child_pauses_on_a_non_finite_batch_and_takes_skip_and_resume(tmp_path):
    x, y = toy_data(4096)
    model = mlp()
    model.compile(nnkit.SGD(lr=0.0, momentum=0.9))
    model.build()
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        model.fit(x, y, background="process", on_nonfinite="ignore")  # refused here, not in the child
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        nnkit.start("model { layer { dense { output_dim: 3 } } }", on_nonfinite="ignore")
    run_dir = tmp_path / "run"
    # on_nonfinite: 'pause' is the default of a background run, a child process's too.
    run = model.fit(x, y, batch_size=16, epochs=1, background="process", run_dir=run_dir)
    try:
        good = run.wait_for(run.pause(), timeout=60)["step"]
        run.wait_for(run.set(lr=1e300), timeout=60)  # passes the checks; the next batch overflows
        run.resume()
        wait_until(lambda: run.events("nonfinite"), timeout=120)
        event = run.events("nonfinite")[0]
        assert (event["what"], event["step"], event["last_good_step"]) == ("parameter", good + 1, good)
        assert event["checkpoint"] == str(run_dir / "checkpoint.h5")
        wait_until(lambda: run.status == "paused", timeout=60)
        assert run.process.is_alive()  # waiting for a command, not stopped
        assert nnkit.load(run_dir / "checkpoint.h5").trainer.global_step == good
        skipped = run.wait_for(run.skip(), timeout=60)
        assert skipped["type"] == "ack" and skipped["skipped"]["step"] == good + 1
        wait_until(lambda: len(run.events("nonfinite")) == 2, timeout=120)  # still 1e300
        assert run.events("nonfinite")[1]["step"] == good + 1  # the skip counted no step
        wait_until(lambda: run.status == "paused", timeout=60)
        run.wait_for(run.set(lr=0.01), timeout=60)
        assert run.wait_for(run.resume(), timeout=60)["type"] == "ack"  # retries the batch
        assert run.wait(120) == "finished"
        assert run.global_step == 256 - 1  # one batch dropped
        losses = [e["loss"] for e in run.events("loss")]
        assert losses and np.isfinite(losses).all()
    finally:
        run.shutdown()
        assert run.join(60)
    assert run.process.exitcode == 0 and run.status == "stopped"
