"""``nnkit ctl`` and ``nnkit watch`` against real runs in real subprocesses."""
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import DATA, ROOT, wait_until

from nnkit.cli import main
from nnkit.views.terminal import (
    CommandLineError,
    Watcher,
    check_command,
    send_command,
)
from nnkit.training import read_jsonl
from nnkit.training.events import append_line

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

TRAIN_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from nnkit.training import LambdaCallback
    from test_model import mlp, toy_data
    x, y = toy_data(512)
    mlp().fit(x, y, batch_size=16, epochs={epochs}, verbose=0, run_dir={run_dir!r}, validation_split=0.25,
              callbacks=[LambdaCallback(on_batch_end=lambda b, l: time.sleep({sleep}))])
""")


def cli(*args, **kwargs):
    """``python -m nnkit.cli ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "nnkit.cli", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=60, check=False, **kwargs)


def start_training(run_dir, epochs=1000, sleep=0.01):
    script = TRAIN_SCRIPT.format(tests=str(ROOT / "tests"), run_dir=str(run_dir), epochs=epochs,
                                 sleep=sleep)
    return subprocess.Popen([sys.executable, "-c", script], env=ENV)


def events(run_dir):
    return [v for _, v in read_jsonl(Path(run_dir) / "events.jsonl")[0]]


needs_mnist = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")


def small_job(tmp_path):
    """test_cli's small MNIST job (20 steps of a 63-batch epoch, a test every 10) in ``tmp_path``."""
    from test_cli import SMALL_JOB
    path = tmp_path / "small.conf"
    path.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A short finished run directory (events.jsonl only)."""
    run_dir = tmp_path_factory.mktemp("finished")
    proc = start_training(run_dir, epochs=2, sleep=0)
    assert proc.wait(60) == 0
    return run_dir


def test_ctl_steers_a_live_run_and_watch_follows_it(tmp_path):
    trainer = start_training(tmp_path)
    try:
        wait_until(lambda: any(e.get("type") == "loss" for e in events(tmp_path)), timeout=30)
        watcher = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "watch", tmp_path,
                                    "--interval", "0.1"], env=ENV, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        # A second watcher that does not exit on the end: Ctrl-C ends it cleanly.
        lingering = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "watch", tmp_path,
                                      "--no-exit-on-end", "--interval", "0.1"], env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = cli("ctl", tmp_path, "set", "lr=0.0123")
        assert done.returncode == 0, done.stderr
        assert "set acknowledged at step" in done.stdout and '"lr": 0.0123' in done.stdout
        ack = next(e for e in events(tmp_path) if e["type"] == "ack" and e["command"] == "set")
        assert ack["values"] == {"lr": 0.0123}

        refused = cli("ctl", tmp_path, "set", "lr=-1", "--json")
        assert refused.returncode == 1
        assert json.loads(refused.stdout)["message"] == "set lr: must be >= 0, got -1"

        stop = cli("ctl", tmp_path, "stop")
        assert stop.returncode == 0 and "stop acknowledged" in stop.stdout
        assert trainer.wait(30) == 0
        out, err = watcher.communicate(timeout=30)
        assert watcher.returncode == 0, err
        lines = out.splitlines()
        assert "started at step 0" in lines[0]
        assert any("set acknowledged" in line and "0.0123" in line for line in lines)
        assert any("stopped at step" in line for line in lines)
        assert any(line.startswith("run ") and "| epoch " in line and "lr 0.0123" in line
                   for line in lines)  # plain progress lines, with the new lr
        assert "stopped" in lines[-1] and "\x1b[" not in out  # not a terminal: no escapes

        time.sleep(0.5)
        assert lingering.poll() is None  # still watching the ended run
        lingering.send_signal(signal.SIGINT)
        out, err = lingering.communicate(timeout=20)
        assert lingering.returncode == 0 and "Traceback" not in err
        assert "stopped at step" in out

        losses = [e for e in events(tmp_path) if e["type"] == "loss"]
        after = [e for e in losses if e["step"] > ack["step"]]
        assert after and all(e["lr"] == pytest.approx(0.0123) for e in after)
    finally:
        trainer.kill()
        trainer.wait()


@pytest.mark.parametrize("argv, message", [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["set"], "set needs at least one of"),
    (["set", "speed=3"], "unknown argument 'speed'"),
    (["set", "lr=fast"], "set lr=fast: expected a number"),
    (["set", "lr"], "expected key=value"),
    (["report_every"], "report_every: missing n="),
    (["report_every", "n=2.5"], "expected a whole number"),
    (["run_until", "steps=3"], "unknown argument 'steps'"),
    (["tell_state", "snapshot=yes"], "expected true/false"),
    (["stop", "now=true"], "stop takes no arguments"),
    (["set", "lr=1", "lr=2"], "lr given twice"),
])
def test_ctl_refuses_bad_commands_before_writing(tmp_path, capsys, argv, message):
    assert main(["ctl", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "commands.jsonl").exists()


def test_ctl_values_parse_as_json_else_text():
    assert check_command("set", {"lr": "0.01", "batch_size": "8"}) == {"lr": 0.01, "batch_size": 8}
    assert check_command("set", {"lr": "null"}) == {"lr": None}  # back to the schedule
    assert check_command("tell_state", {"snapshot": "true"}) == {"snapshot": True}
    assert check_command("run_until", {"batches": "5000"}) == {"batches": 5000}
    assert check_command("checkpoint", {"path": "runs/x/a.h5"}) == {"path": "runs/x/a.h5"}
    assert check_command("checkpoint", {"path": "123"}) == {"path": "123"}  # a text argument
    assert check_command("checkpoint", {"path": '"quoted"'}) == {"path": "quoted"}
    with pytest.raises(CommandLineError, match="no such run directory"):
        send_command("/nonexistent/run", "stop", {})


def test_ctl_without_an_answer_times_out_with_the_runs_status(finished_run):
    done = cli("ctl", finished_run, "pause", "--wait", "0.3")
    assert done.returncode == 1
    assert "no answer to pause" in done.stderr and "'finished'" in done.stderr
    sent = cli("ctl", finished_run, "resume", "--no-wait")
    assert sent.returncode == 0
    lines = [v for _, v in read_jsonl(finished_run / "commands.jsonl")[0]]
    assert lines[-1]["id"] == sent.stdout.strip() and lines[-1]["command"] == "resume"


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "commands.jsonl"
    path.write_text('{"id": "x", "comm')  # a writer killed mid-line
    long_path = "p" * 5000  # far beyond PIPE_BUF: one write per line still holds

    def writer(k):
        for i in range(200):
            send_command(tmp_path, "checkpoint", {"path": f"{k}-{i}-{long_path}"})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items, offset = read_jsonl(path)
    assert offset == path.stat().st_size  # everything ends in a newline
    bad = [v for _, v in items if isinstance(v, Exception)]
    good = [v for _, v in items if isinstance(v, dict)]
    assert len(bad) == 1  # the killed writer's garbage, on its own line
    assert sorted(v["args"]["path"] for v in good) == sorted(
        f"{k}-{i}-{long_path}" for k in range(6) for i in range(200))
    assert len({v["id"] for v in good}) == 1200


def test_watch_redraws_its_block_in_place_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # wide enough for any tmp_path: lines are cut to the terminal
    path = tmp_path / "events.jsonl"
    out = io.StringIO()
    watcher = Watcher(tmp_path, out, tty=True, window=2)
    watcher.render(watcher.poll())
    assert out.getvalue() == f"nnkit watch {tmp_path}: waiting for events.jsonl\n"
    t = time.time()
    stamp = {"schema": 1, "run": "abc"}
    append_line(path, json.dumps({**stamp, "seq": 1, "time": t, "type": "status", "state": "started", "step": 0}) + "\n")
    for i in range(1, 4):
        append_line(path, json.dumps({**stamp, "seq": 1 + i, "time": t, "type": "loss", "step": i, "epoch": 0,
                                      "batch": i - 1, "loss": float(i), "lr": 0.1, "images_per_s": 100.0}) + "\n")
    out.seek(0), out.truncate()
    watcher.render(watcher.poll())
    text = out.getvalue()
    assert text.startswith("\x1b[1F\x1b[J")  # up over the one-line block, clear, redraw
    lines = text.split("\x1b[J", 1)[1].splitlines()
    assert "started at step 0" in lines[0]
    assert lines[1].startswith("run abc") and "running" in lines[1]
    assert lines[2] == "epoch 1  batch 3  step 3"  # counted from 1: 3 batches of the first epoch
    assert lines[3].startswith("loss 3  avg(2) 2.5  lr 0.1  images/s 100")
    out.seek(0), out.truncate()
    watcher.render(watcher.poll())  # nothing new: just the block again, in place
    assert out.getvalue().startswith("\x1b[4F\x1b[J") and "started" not in out.getvalue()
    assert "no event for" in Watcher.status_lines(watcher, now=t + 60)[0]


def test_watch_on_a_real_terminal(finished_run):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "watch", finished_run], env=ENV,
                            stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    output = b""
    while True:
        ready, _, _ = select.select([master], [], [], 20)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert proc.wait(20) == 0
    text = output.decode()
    assert "finished at step" in text and "epoch 1 done at step" in text
    assert "train error" in text and " | " not in text  # the block, not the plain progress line


def test_watch_refuses_a_missing_run_directory(tmp_path, capsys):
    assert main(["watch", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_watch_cuts_its_block_to_the_terminal_width(tmp_path, monkeypatch):
    """Wrapped lines would break the in-place redraw (it moves up one row per line)."""
    monkeypatch.setenv("COLUMNS", "30")
    out = io.StringIO()
    watcher = Watcher(tmp_path, out, tty=True)
    watcher.render(watcher.poll())
    line = f"nnkit watch {tmp_path}: waiting for events.jsonl"
    assert out.getvalue() == line[:29] + "\n"


@needs_mnist
def test_watch_shows_the_test_error_of_a_run_shorter_than_an_epoch(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(small_job(tmp_path)), "--run-dir", str(run_dir)]) == 0
    tests = [e for e in events(run_dir) if e["type"] == "test"]
    assert [e["step"] for e in tests] == [10, 20]
    assert not [e for e in events(run_dir) if e["type"] == "epoch"]  # shorter than an epoch
    out = io.StringIO()
    assert Watcher(run_dir, out, tty=False).run() == 0
    text = out.getvalue()
    assert re.search(r"\] test at step 10: loss \S+  accuracy \S+", text) and "test at step 20:" in text
    last = text.splitlines()[-1]
    assert f"test error {1 - tests[-1]['accuracy']:.4g} (step 20)" in last
    assert "epoch 1  batch 20  step 20" in last  # counted from 1, like the progress bar


@needs_mnist
def test_nnkit_train_echoes_steering_and_ctl_prints_the_state(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "train", small_job(tmp_path),
                             "--run-dir", run_dir, "--set", "run.steps=10000000",
                             "--set", "run.test_freq=0", "--set", "run.checkpoint_freq=0"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(e.get("type") == "loss" for e in events(run_dir)), timeout=60)
        assert cli("ctl", run_dir, "pause").returncode == 0
        assert cli("ctl", run_dir, "set", "lr=0.05").returncode == 0
        assert cli("ctl", run_dir, "set", "lr=-1").returncode == 1
        state = cli("ctl", run_dir, "tell_state")
        assert cli("ctl", run_dir, "resume").returncode == 0
        assert cli("ctl", run_dir, "stop").returncode == 0
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    # The training terminal: a line for each answer (tqdm.write keeps them off the bar's line).
    for line in (r"pause acknowledged at step \d+",
                 r'set acknowledged at step \d+: values=\{"lr": 0.05\}',
                 r"set refused: set lr: must be >= 0, got -1", r"tell_state acknowledged at step \d+",
                 r"resume acknowledged at step \d+", r"stop acknowledged at step \d+"):
        assert re.search(r"^\[\d\d:\d\d:\d\d\] " + line, err, re.M), (line, err)
    # nnkit ctl tell_state: the state event, readable, after the ack.
    assert state.returncode == 0, state.stderr
    lines = state.stdout.splitlines()
    assert re.fullmatch(r"nnkit ctl: tell_state acknowledged at step \d+", lines[0])
    assert re.fullmatch(r"  state at step \d+ \(epoch \d+( done|, batch \d+)?\), paused; "
                        r"training until step 10000000", lines[1]), lines
    assert lines[2].startswith("  lr 0.05 (set by hand)  base_lr 0.1") and "momentum 0.9" in lines[2]
    assert "batch_size 32" in lines[2]
    layer = r"  \S+: weight norm \S+ grad \S+ \d+x\d+; bias norm \S+ grad \S+ \d+"
    assert len(lines) == 5 and all(re.fullmatch(layer, line) for line in lines[3:])  # two dense


LIGHT_COMMANDS = textwrap.dedent("""
    import contextlib, io, json, sys
    from nnkit.cli import main
    run_dir = sys.argv[1]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for argv in (["ctl", "--help"], ["watch", "--help"]):
            try:
                main(argv)
            except SystemExit:
                pass
        main(["ctl", run_dir, "pause", "--wait", "0.2"])   # no answer: the run's status said
        main(["ctl", run_dir, "resume", "--no-wait"])
        main(["watch", run_dir])                         # the whole finished run, then exit
    heavy = ("h5py", "nnkit._kernels", "nnkit.model", "nnkit.config", "nnkit.layers", "nnkit.checkpoint")
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "h5py"
                            or m in heavy or m.startswith(tuple(h + "." for h in heavy)))))
""")


def test_ctl_and_watch_import_neither_h5py_nor_the_kernels(finished_run):
    """`nnkit ctl` and `nnkit watch` read and append lines: the framework stays unloaded."""
    done = subprocess.run([sys.executable, "-c", LIGHT_COMMANDS, str(finished_run)], env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
    # ... while the public names still load it on first use.
    names = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        import nnkit
        assert "h5py" not in sys.modules and not any(m.startswith("nnkit._kernels") for m in sys.modules)
        namespace = {}
        exec("from nnkit import *", namespace)
        assert {"Sequential", "Dense", "SGD", "load", "start", "Trainer", "layers"} <= set(namespace)
        assert nnkit.Sequential is namespace["Sequential"]
        assert nnkit.load.__module__ == "nnkit.config.restore"
        model = nnkit.Sequential([nnkit.Dense(3)], input_shape=(4,))
        model.compile(nnkit.SGD(lr=0.1), "softmaxloss")
        assert "dense" in str(model.to_proto())  # the job schema was registered with the model
        assert "h5py" in sys.modules and nnkit.training.trainer.Trainer is nnkit.Trainer
        assert "Dense" in dir(nnkit) and "Sequential" in nnkit.__all__
    """)], env=ENV, capture_output=True, text=True, timeout=60)
    assert names.returncode == 0, names.stderr
