"""The ``nnkit`` command line end to end, each command in a subprocess, on a little real MNIST."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nnkit
from nnkit import Dense, Sequential
from nnkit.cli import main
from nnkit.config import load_job
from nnkit.training.checkpoints import latest_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")

SMALL_JOB = """name: "small"
seed: 1
model {{
  layer {{ image_input {{ height: 28 width: 28 }} }}
  layer {{ dense {{ output_dim: 32 w {{ init: glorot_uniform }} }} }}
  layer {{ activation {{ type: relu }} }}
  layer {{ dense {{ output_dim: 10 }} }}
}}
updater {{ lr: 0.1 momentum: 0.9 }}
data {{
  dataset: "mnist"
  dir: "{data}"
  scale: 0.00392156862745098
  train {{ batch_size: 32 limit: 2000 }}
  test {{ batch_size: 250 limit: 500 }}
}}
run {{ steps: 20 display_freq: 5 test_freq: 10 checkpoint_freq: 10 run_dir: "{runs}" }}
"""


def nnkit_cli(*args: str, cwd: Path, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    """Runs ``python -m nnkit.cli ARGS`` without installation."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "nnkit.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def limit_address_space(limit: int = 2 * 2**30) -> None:
    """preexec_fn: an allocation without bound fails fast instead of exhausting the machine."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.conf"
    path.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    return path


def read_log(run_dir: Path) -> list[dict]:
    """The run's train and test events (events.jsonl is the one log), with ``event`` = type."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [{**e, "event": e["type"]} for e in events if e["type"] in ("train", "test")]


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["show"], ["time"], ["export"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert f"usage: nnkit {' '.join(command)}".strip() in capsys.readouterr().out


def test_train_eval_show_resume_end_to_end(job_file, tmp_path):
    done = nnkit_cli("train", job_file, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"small-\d{8}-\d{6}", run_dir.name)
    files = {p.name for p in run_dir.iterdir()}
    assert {"job.conf", "checkpoint-10.h5", "checkpoint-20.h5", "latest", "events.jsonl",
            "metrics.json"} <= files
    assert (run_dir / "latest").read_text() == "checkpoint-20.h5\n"
    assert "metrics.jsonl" not in files  # folded into events.jsonl
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run_dir.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # one rule for every file of a run
    assert not [f for f in files if f.startswith(".") or f.endswith(".tmp")]  # no leftovers
    log = read_log(run_dir)
    assert [r["step"] for r in log if r["event"] == "train"] == [5, 10, 15, 20]
    assert [r["step"] for r in log if r["event"] == "test"] == [10, 20]
    final = json.loads((run_dir / "metrics.json").read_text())
    assert (final["step"], final["interrupted"]) == (20, False)
    last_test = [r for r in log if r["event"] == "test"][-1]
    assert final["test"] == {k: last_test[k] for k in ("loss", "accuracy")}
    assert final["test"]["accuracy"] > 0.5  # 20 steps of a small MLP already learn MNIST
    # The copy of the config is the job as run, and loads back to the same proto.
    assert load_job(run_dir / "job.conf").proto == load_job(job_file).proto

    done = nnkit_cli("eval", run_dir, "--json", cwd=tmp_path)  # a run directory: its latest
    assert done.returncode == 0, done.stderr
    evaluated = json.loads(done.stdout)
    assert (evaluated["step"], evaluated["examples"]) == (20, 500)
    assert evaluated["accuracy"] == pytest.approx(final["test"]["accuracy"], abs=1e-12)
    assert evaluated["loss"] == pytest.approx(final["test"]["loss"], rel=1e-9)

    done = nnkit_cli("eval", run_dir / "checkpoint-20.h5", "--set", "data.test.limit=100", cwd=tmp_path)
    assert done.returncode == 0 and "100 test examples" in done.stdout, done.stderr

    done = nnkit_cli("show", run_dir, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "step 20" in done.stdout and "Total params: 25,450" in done.stdout
    assert "Run: 20 steps; log every 5 steps; test every 10 steps and at the end" in done.stdout
    assert re.search(r"dense_2 \(Dense\)\s+\(None, 10\)\s+330", done.stdout)

    done = nnkit_cli("train", job_file, "--resume", run_dir / "checkpoint-20.h5", "--set",
                     "model.layer[1].dense.output_dim=16", cwd=tmp_path)
    assert done.returncode == 2 and "does not fit the job's model" in done.stderr, done.stderr

    done = nnkit_cli("train", job_file, "--resume", run_dir / "checkpoint-20.h5", "--set", "run.steps=30",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 30
    assert [r["step"] for r in read_log(run_dir) if r["event"] == "train"] == [5, 10, 15, 20, 25, 30]
    assert nnkit.load(latest_checkpoint(run_dir)).trainer.global_step == 30
    assert sorted(p.name for p in run_dir.glob("checkpoint-*.h5")) == [
        "checkpoint-10.h5", "checkpoint-20.h5", "checkpoint-30.h5"]


def test_show_describes_layers_updater_schedule_data_and_run(tmp_path):
    done = nnkit_cli("show", ROOT / "examples" / "cifar10_cnn.conf", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"convolution2d_1 \(Convolution2D\)\s+\(None, 32, 32, 32\)\s+2,432", out)
    assert "Total params: 89,578" in out
    assert "Updater: SGD(lr=0.001, lr_type='manual', decay=0.004, momentum=0.9" in out
    assert "Schedule: Manual(base_lr=0.001, step=(0, 60000, 65000)" in out
    assert "Data: cifar10" in out and "mean image" in out and "train: split train, batch 100" in out
    assert "Run: 1 epochs;" in out  # the file's run section


def test_show_of_a_checkpoint_from_python_claims_no_run_plan(tmp_path, capsys):
    """fit() from Python records no run section: show must not print the defaults as if it had."""
    model = Sequential([Dense(2)], input_shape=(3,))
    model.compile()
    model.save(tmp_path / "python.h5")
    assert main(["show", str(tmp_path / "python.h5")]) == 0
    out = capsys.readouterr().out
    assert "Total params: 8" in out and "Updater: SGD(" in out
    assert "Run:" not in out and "Data:" not in out


def test_time_reports_every_layer_and_the_whole_step(job_file, tmp_path):
    done = nnkit_cli("time", job_file, "--iterations", 3, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {m.group(1): [float(v) for v in m.group(2, 3, 4, 5, 6)] for m in re.finditer(
        r"^(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)$", done.stdout,
        re.MULTILINE)}
    assert list(rows) == ["dense_1", "activation_1", "dense_2", "loss", "total"]
    assert rows["dense_1"][0] > 0 and rows["dense_1"][1] > 0 and rows["dense_1"][2] > 0
    assert rows["total"][0] == pytest.approx(sum(r[0] for k, r in rows.items() if k != "total"), abs=0.01)
    whole = float(re.search(r"Average whole step: ([\d.]+) ms", done.stdout).group(1))
    assert whole >= rows["total"][0] + rows["total"][1]  # the step includes every part
    # The split: the dense layers' GEMMs alone, none for the others; rest = the layer's time minus it.
    assert rows["dense_1"][3] > 0 and rows["dense_2"][3] > 0
    assert rows["activation_1"][3] == 0 and rows["loss"][3] == 0
    for name, (forward, backward, update, gemms, rest) in rows.items():
        assert rest == pytest.approx(forward + backward + update - gemms, abs=0.01), name
    assert re.search(r"its GEMMs alone: [\d.]+ ms \(step / GEMMs alone: [\d.]+\)", done.stdout)


def test_bad_configs_and_arguments_exit_2_without_traceback(job_file, tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text(job_file.read_text().replace("output_dim: 32", "output_dim 32"))
    model = Sequential([Dense(2)], input_shape=(3,))
    model.compile()
    model.save(tmp_path / "no_data.h5")
    cases = [
        (["train", bad], r"bad\.conf:5:\d+: Expected \":\""),
        (["train", job_file, "--set", "run.stepz=3"], r"--set run\.stepz=3: .*no field 'stepz'"),
        (["train", job_file, "--resume", tmp_path / "missing.h5"], r"missing\.h5"),
        (["train"], r"the following arguments are required: JOB\.conf"),
        (["eval", tmp_path / "no_data.h5"], r"describes no test data"),
        (["time", job_file, "--iterations", "0"], r"--iterations must be >= 1"),
        (["show", tmp_path / "nothing.conf"], r"nothing\.conf: cannot read"),
    ]
    for args, message in cases:
        done = nnkit_cli(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert re.search(message, done.stderr), (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_files_that_are_not_regular_or_not_utf8_exit_2_naming_them(job_file, tmp_path):
    fifo, fifo_h5 = tmp_path / "job.conf", tmp_path / "ckpt.h5"
    os.mkfifo(fifo)
    os.mkfifo(fifo_h5)
    latin1 = tmp_path / "latin1.conf"
    latin1.write_bytes(b'name: "caf\xe9"\n')
    cases = [
        (["show", fifo], r"job\.conf: cannot read the file: it is a FIFO \(named pipe\)"),
        (["train", fifo], r"job\.conf: cannot read the job config: it is a FIFO"),
        (["show", "/dev/zero"], r"/dev/zero: cannot read the file: it is a character device"),
        (["time", "/dev/zero"], r"/dev/zero: cannot read the job config: it is a character device"),
        (["show", tmp_path], r"a directory without checkpoints"),  # show takes run directories
        (["eval", fifo_h5], r"ckpt\.h5: cannot read the checkpoint: it is a FIFO"),
        (["train", job_file, "--resume", fifo_h5], r"ckpt\.h5: cannot read the checkpoint: it is a FIFO"),
        (["show", latin1], r"latin1\.conf:1: not UTF-8 text: byte 0xe9 at byte offset 10"),
    ]
    for args, message in cases:
        done = nnkit_cli(*args, cwd=tmp_path, timeout=60, preexec_fn=limit_address_space)
        assert done.returncode == 2, (args, done.stderr)
        assert re.search(message, done.stderr), (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_show_refuses_a_model_too_large_before_allocating_it(tmp_path):
    huge = tmp_path / "huge.conf"  # 784 x 2,000,000 weights, then 2,000,000 x 2,000
    huge.write_text((ROOT / "examples" / "mnist_mlp.conf").read_text().replace(
        "output_dim: 2500", "output_dim: 2000000"))
    done = nnkit_cli("show", huge, cwd=tmp_path, preexec_fn=limit_address_space)
    assert done.returncode == 2, done.stderr
    assert re.search(r"huge\.conf:\d+: model\.layer\[3\]: the model would need at least 62\.3 GiB "
                     r"\(5,575,010,010 parameters.* more than the limit of 4\.0 GiB", done.stderr), done.stderr
    # A checkpoint whose stored job is as large: refused before its model is built.
    model = Sequential([Dense(2)], input_shape=(3,))
    model.compile()
    tree = {"model": model.checkpoint_tree(), "trainer": {}}
    tree["model"]["proto"] = tree["model"]["proto"].replace("output_dim: 2", "output_dim: 2000000000")
    tree["model"]["proto"] = tree["model"]["proto"].replace("input_shape: 3", "input_shape: 30000")
    nnkit.checkpoint.save_tree(tmp_path / "huge.h5", tree)
    done = nnkit_cli("show", tmp_path / "huge.h5", cwd=tmp_path, preexec_fn=limit_address_space)
    assert done.returncode == 2, done.stderr
    assert re.search(r"huge\.h5 \(stored job\):\d+: model\.layer\[1\]: the model would need", done.stderr)


def test_debug_works_after_the_command_too(job_file, tmp_path, capsys):
    assert main(["show", str(job_file), "--debug"]) == 0
    assert "Total params" in capsys.readouterr().out
    done = nnkit_cli("train", job_file, "--set", "updater.lr=1e300", "--run-dir", tmp_path / "run",
                     "--on-nonfinite", "stop", "--debug", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "NonFiniteLossError" in done.stderr


def test_a_stored_model_whose_layers_do_not_fit_exits_2_naming_the_layer_and_shapes(tmp_path):
    model = Sequential([nnkit.ImageInput(8, 8, 1), nnkit.Convolution2D(2, 3, name="conv")], seed=0)
    model.compile(loss="euclideanloss", metrics=())
    model.build()
    tree = {"model": model.checkpoint_tree(), "trainer": {}}
    tree["model"]["proto"] = None  # rebuilt from the dict config, whose input is now too small
    tree["model"]["config"]["layers"][0]["config"].update(height=2)
    nnkit.checkpoint.save_tree(tmp_path / "bad.h5", tree)
    done = nnkit_cli("show", tmp_path / "bad.h5", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert ("layer 1, Convolution2D 'conv', does not fit its input of shape (batch, 1, 2, 8): "
            "kernel (3, 3) is larger than the padded input") in done.stderr, done.stderr


def test_show_into_a_closed_pipe_exits_quietly(tmp_path):
    model = Sequential([Dense(2)], input_shape=(3,))
    model.compile()
    model.save(tmp_path / "m.h5")
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `nnkit show m.h5 | head -1` once head has gone
    try:
        done = subprocess.run([sys.executable, "-m", "nnkit.cli", "show", str(tmp_path / "m.h5")],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.close(write_end)
    assert done.returncode == 128 + signal.SIGPIPE  # a shell's status for a closed pipe
    assert done.stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError"


def test_a_failure_during_the_run_exits_1_and_leaves_no_half_written_file(job_file, tmp_path):
    done = nnkit_cli("train", job_file, "--set", "updater.lr=1e300", "--run-dir", tmp_path / "run",
                     "--on-nonfinite", "stop", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "NonFiniteLossError" in done.stderr and "Traceback" not in done.stderr
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"job.conf", "events.jsonl"} <= files
    assert "metrics.json" not in files  # nothing claims the run finished
    # The first update overflowed and was undone: the checkpoint is the untrained model.
    assert nnkit.load(latest_checkpoint(tmp_path / "run")).trainer.global_step == 0
    assert not [f for f in files if f.startswith(".") or f.endswith(".tmp")]  # no leftovers
    lines = (tmp_path / "run" / "events.jsonl").read_text().splitlines()
    types = [json.loads(line)["type"] for line in lines]  # every line complete JSON
    assert types[-1] == "status" and json.loads(lines[-1])["state"] == "failed"


def read_log_if_any(run_dir: Path) -> list[dict]:
    """The train and test events so far (none while the file does not exist yet)."""
    return read_log(run_dir) if (run_dir / "events.jsonl").exists() else []


def test_ctrl_c_stops_cleanly_with_a_checkpoint(job_file, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "train", str(job_file), "--run-dir",
                             str(run_dir), "--set", "run.steps=1000000", "--set", "run.display_freq=1"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not read_log_if_any(run_dir):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["interrupted"] is True and 1 <= final["step"] < 1000000
    restored = nnkit.load(latest_checkpoint(run_dir))
    assert restored.trainer.global_step == final["step"]
    assert np.isfinite(restored.get_weights()[0]).all()


def test_epoch_events_of_a_trained_job_carry_the_test_error(job_file, tmp_path):
    """What nnkit watch, plot and TensorBoard show as test error comes from these events."""
    run_dir = tmp_path / "run"
    done = nnkit_cli("train", job_file, "--run-dir", run_dir, "--set", "data.train.limit=256",
                     "--set", "run.steps=16", cwd=tmp_path)  # 8 batches an epoch: two epochs
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert all(0 <= e["test_error"] <= 1 and e["test_error"] == pytest.approx(1 - e["val_accuracy"])
               for e in epochs)


def test_a_checkpoint_that_does_not_fit_its_model_exits_2_naming_the_parameter(tmp_path):
    model = Sequential([Dense(3)], input_shape=(4,), seed=0)
    model.compile()
    model.save(tmp_path / "good.h5")
    tree = nnkit.checkpoint.load_tree(tmp_path / "good.h5")
    tree["model"]["params"]["dense_1/weight"] = np.zeros((2, 2), np.float32)  # mis-shaped
    nnkit.checkpoint.save_tree(tmp_path / "bad.h5", tree)
    done = nnkit_cli("show", tmp_path / "bad.h5", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "dense_1/weight" in done.stderr and "(2, 2)" in done.stderr and "Traceback" not in done.stderr
