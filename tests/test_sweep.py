"""`nnkit sweep`: grid and random sweeps queued for the workers, and an Optuna study driven over
the queue with real `nnkit worker` processes (trials told with the runs' metrics, pruned runs
stopped through the ordinary control channel)."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DATA, wait_until
from test_cli import SMALL_JOB
from test_queue import ENV, nnkit

from nnkit.experiments import Store
from nnkit.experiments.sweep import (SweepError, grid_points, parse_distribution, parse_grid, random_points,
                                     split_values)

# Epochs of 10 steps (320 examples, batches of 32): an Optuna step per epoch, quickly.
SHORT = ["--set", "data.train.limit=320", "--set", "run.steps=30"]


@pytest.fixture
def job(tmp_path: Path) -> Path:
    path = tmp_path / "job.conf"
    path.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    return path


def sweep(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return nnkit("sweep", "job.conf", "--store", "s.db", *args, cwd=tmp_path, timeout=timeout)


def queued(done: subprocess.CompletedProcess) -> tuple[str, list[tuple[str, str]]]:
    """The sweep id and the (run id, overrides) lines `nnkit sweep` printed."""
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    assert re.fullmatch(r"[0-9a-f]{12}", first)
    return first, [tuple(line.split("  ", 1)) for line in rest]


def test_a_grid_queues_one_run_per_point_of_the_product(tmp_path, job):
    sweep_id, lines = queued(sweep(tmp_path, "--grid", "updater.lr=0.1,0.01,0.001", "--grid",
                                   "model.layer[1].dense.output_dim=16,32", "--set", "run.steps=5",
                                   "--name", "lrs", "--tag", "s1", "--owner", "ann", "--retries", "1"))
    store = Store(tmp_path / "s.db")
    runs = store.sweep_runs(sweep_id)
    assert [r.id for r in runs] == [run_id for run_id, _ in lines] and len(runs) == 6
    expected = [{"updater.lr": lr, "model.layer[1].dense.output_dim": dim}
                for lr in (0.1, 0.01, 0.001) for dim in (16, 32)]
    assert [r.point for r in runs] == expected
    assert [overrides for _, overrides in lines][1] == "updater.lr=0.1 model.layer[1].dense.output_dim=32"
    for run, point in zip(runs, expected):
        params = store.params(run.id)  # the queued job itself has the point's values
        assert float(params["updater.lr"]) == point["updater.lr"] and params["run.steps"] == "5"
        assert params["model.layer.1.dense.output_dim"] == str(point["model.layer[1].dense.output_dim"])
        assert (run.status, run.owner, run.tags, run.sweep_id) == ("queued", "ann", ("s1",), sweep_id)
    assert [r.name for r in runs] == [f"lrs-{i}" for i in range(6)]
    assert store._read("SELECT DISTINCT retries FROM jobs") == [(1,)]
    record = store.get_sweep("lrs")
    assert (record.kind, record.status) == ("grid", "running")
    assert record.spec["grid"] == {"updater.lr": [0.1, 0.01, 0.001], "model.layer[1].dense.output_dim": [16, 32]}
    status = nnkit("sweep", "--status", "lrs", "--store", "s.db", cwd=tmp_path)
    assert status.returncode == 0 and "6 runs: 6 queued" in status.stdout
    assert "updater.lr=0.001 model.layer[1].dense.output_dim=32" in status.stdout
    listed = nnkit("runs", "list", "--sweep", sweep_id, "--store", "s.db", cwd=tmp_path)
    assert listed.returncode == 0 and sum(r.id in listed.stdout for r in runs) == 6


@pytest.mark.parametrize("args, named", [
    (["--grid", "updater.lr=0.1,0.01", "--grid", "model.layer[1].dense.output_dim=16,abc"],
     "--grid model.layer[1].dense.output_dim=abc"),  # the last point is bad: none is queued
    (["--grid", "updater.lrr=0.1"], "--grid updater.lrr=0.1: updater.lrr: UpdaterConf has no field 'lrr'"),
    (["--random", "3", "--random-param", "model.layer[7].dense.output_dim=int(8,64)"],
     "--random-param model.layer[7].dense.output_dim="),
    (["--random", "3", "--random-param", "updater.lr=lognormal(1,2)"], "--random-param updater.lr=lognormal(1,2)"),
    (["--random", "3", "--random-param", "updater.lr=loguniform(0,1)"], "loguniform needs LOW > 0"),
    (["--random", "2"], "--random N: give the fields to draw"),
    (["--grid", "updater.lr=0.1", "--random", "2"], "give one of --grid, --random N, --optuna"),
    (["--grid", "updater.lr=0.1", "--trials", "2"], "--trials goes with --optuna, not --grid"),
    (["--optuna", "updater.lrr=loguniform(1e-4,1e-1)", "--trials", "2"], "--optuna updater.lrr=0.0001"),
    (["--optuna", "updater.lr=uniform(0,1)"], "give --trials N"),
    (["--optuna", "updater.lr=uniform(0,1)", "--trials", "2", "--pruner", "hyperband"], "--pruner 'hyperband'"),
])
def test_a_bad_sweep_queues_nothing_and_names_the_problem(tmp_path, job, args, named):
    done = sweep(tmp_path, *args)
    assert done.returncode == 2 and named in done.stderr, done.stderr
    assert not done.stdout
    store = Store(tmp_path / "s.db")
    assert store.count() == 0 and store.list_sweeps() == []
    assert not (tmp_path / "s.optuna.db").exists()  # no study either


def test_random_points_are_reproducible_and_in_range(tmp_path, job):
    params = {"lr": parse_distribution("loguniform(1e-4,1e-1)", "x"), "n": parse_distribution("int(1,3)", "x"),
              "act": parse_distribution("choice(relu,tanh)", "x"), "d": parse_distribution("uniform(0,0.5)", "x")}
    points = random_points(params, 200, seed=7)
    assert points == random_points(params, 200, seed=7) and points != random_points(params, 200, seed=8)
    assert all(1e-4 <= p["lr"] <= 1e-1 and 0 <= p["d"] <= 0.5 for p in points)
    assert {p["n"] for p in points} == {1, 2, 3} and {p["act"] for p in points} == {"relu", "tanh"}
    logs = [math.log10(p["lr"]) for p in points]  # log-uniform: as many below 1e-2.5 as above
    assert 70 < sum(v < -2.5 for v in logs) < 130
    args = ["--random", "3", "--random-param", "updater.lr=loguniform(1e-4,1e-1)",
            "--random-param", "model.layer[1].dense.output_dim=int(8,64)", "--seed", "11"]
    first, second = queued(sweep(tmp_path, *args)), queued(sweep(tmp_path, *args))
    assert [o for _, o in first[1]] == [o for _, o in second[1]]  # the same seed, the same runs
    store = Store(tmp_path / "s.db")
    assert store.get_sweep(first[0]).spec["seed"] == 11
    unseeded = queued(sweep(tmp_path, *args[:-2]))
    assert isinstance(store.get_sweep(unseeded[0]).spec["seed"], int)  # drawn, and recorded to redo it


def test_value_lists_and_distributions_parse():
    assert split_values("[1, 2],[3], 'a,b'") == ["[1, 2]", "[3]", "'a,b'"]
    assert grid_points(parse_grid(["a=1,2", "b=x,y"])) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"},
                                                             {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert parse_distribution("0.1,0.01", "x").args == (0.1, 0.01)  # a plain list: a choice
    for bad in ("int(1.5,3)", "uniform(2,1)", "choice()", "uniform(1)"):
        with pytest.raises(SweepError):
            parse_distribution(bad, "x")
    with pytest.raises(SweepError, match="given twice"):
        parse_grid(["a=1", "a=2"])


# ================================================================== Optuna, with real workers
def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds ``path`` open (Linux's /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fds / fd) == str(path.resolve()) for fd in os.listdir(fds))
    except OSError:  # gone, or a descriptor closed while we looked
        return False


def start_workers(tmp_path: Path, n: int = 2) -> list[subprocess.Popen]:
    """``n`` workers on the store s.db, returned once each polls it (holds it open): a worker
    still importing on a busy machine would otherwise find the short trials all taken."""
    workers = [subprocess.Popen([sys.executable, "-m", "nnkit.cli", "worker", "--store", "s.db", "--runs-dir",
                                 "runs", "--poll", "0.1"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(n)]
    wait_until(lambda: all(_has_open(w.pid, tmp_path / "s.db") or w.poll() is not None for w in workers), 120)
    return workers


def stop_workers(workers: list[subprocess.Popen]) -> list[str]:
    """Stops the workers (SIGTERM: nothing runs by now) and returns their logs."""
    for worker in workers:
        worker.terminate()
    return [worker.communicate(timeout=60)[1] for worker in workers]


def epoch_values(run_dir: str, metric: str = "test_error") -> dict[int, float]:
    events = [json.loads(line) for line in Path(run_dir, "events.jsonl").read_text().splitlines()]
    return {e["epoch"]: e[metric] for e in events if e["type"] == "epoch"}


def load_study(tmp_path: Path, sweep_id: str):
    optuna = pytest.importorskip("optuna")
    return optuna, optuna.load_study(study_name=f"nnkit-sweep-{sweep_id}",
                                     storage=f"sqlite:///{tmp_path / 's.optuna.db'}")


def test_an_optuna_study_runs_its_trials_on_two_workers(tmp_path, job):
    pytest.importorskip("optuna")
    workers = start_workers(tmp_path)
    try:
        # Two trials out at once, so each worker gets one: by default a new trial is asked at
        # the sweep's next look (every 0.5 s) after the last was taken, and a trial this short
        # can end before it, leaving the next to whichever worker looks first (one took all
        # three in a CI run).
        done = sweep(tmp_path, *SHORT, "--optuna", "updater.lr=loguniform(1e-3,0.3)", "--trials", "3",
                     "--metric", "test_error", "--direction", "minimize", "--pruner", "none", "--seed", "0",
                     "--parallel", "2", "--name", "opt", timeout=600)
    finally:
        logs = stop_workers(workers)
    assert done.returncode == 0, done.stderr
    sweep_id = done.stdout.splitlines()[0]
    store = Store(tmp_path / "s.db")
    runs = {run.id: run for run in store.sweep_runs(sweep_id)}
    optuna, study = load_study(tmp_path, sweep_id)  # its own storage beside the store, not in it
    assert store._read("SELECT name FROM sqlite_master WHERE name LIKE '%trial%'") == []
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert sorted(t.user_attrs["nnkit_run_id"] for t in trials) == sorted(runs)
    for trial in trials:
        run = runs[trial.user_attrs["nnkit_run_id"]]
        assert run.status == "finished" and run.point == trial.params
        assert trial.value == store.metrics(run.id)["test_error"]  # told the run's metric as stored
        assert trial.intermediate_values == epoch_values(run.run_dir) and len(trial.intermediate_values) == 3
        assert float(store.params(run.id)["updater.lr"]) == trial.params["updater.lr"]
    assert all(re.search(r"run [0-9a-f]{12} \(opt-\d\), attempt 1", log) for log in logs), logs  # both worked
    assert store.get_sweep(sweep_id).status == "finished"
    best = min(trials, key=lambda t: t.value)
    assert f"best trial {best.number} (run {best.user_attrs['nnkit_run_id']})" in done.stdout
    status = nnkit("sweep", "--status", sweep_id, "--store", "s.db", cwd=tmp_path)
    assert f"best: run {best.user_attrs['nnkit_run_id']}" in status.stdout and "3 finished" in status.stdout


def test_a_pruned_trial_s_run_is_stopped(tmp_path, job):
    pytest.importorskip("optuna")
    workers = start_workers(tmp_path)
    try:  # a long plan (100 epochs) and a pruner that prunes any epoch above 5% test error
        done = sweep(tmp_path, "--set", "data.train.limit=320", "--set", "run.steps=1000", "--optuna",
                     "updater.lr=loguniform(1e-3,1e-2)", "--trials", "2", "--pruner", "threshold=0.05",
                     "--parallel", "1", timeout=600)
    finally:
        stop_workers(workers)
    assert done.returncode == 0, done.stderr
    sweep_id = done.stdout.splitlines()[0]
    store = Store(tmp_path / "s.db")
    optuna, study = load_study(tmp_path, sweep_id)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    for trial in trials:
        run = store.get(trial.user_attrs["nnkit_run_id"])
        assert run.status == "stopped" and run.step < 1000  # the ordinary stop command ended it early
        values = epoch_values(run.run_dir)
        assert trial.intermediate_values == {0: values[0]} and values[0] > 0.05  # pruned at its first epoch
        events = Path(run.run_dir, "events.jsonl").read_text()
        assert '"command":"stop"' in events.replace(" ", "")  # answered through the control channel
    assert "pruned after epoch 1 (test_error" in done.stdout  # displays count epochs from 1
    status = nnkit("sweep", "--status", sweep_id, "--store", "s.db", cwd=tmp_path)
    assert "TRIAL" in status.stdout and status.stdout.count(" PRUNED ") == 2 and "2 stopped" in status.stdout


def test_ctrl_c_on_the_driver_stops_the_sweep(tmp_path, job):
    optuna = pytest.importorskip("optuna")
    [worker] = start_workers(tmp_path, 1)
    driver = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "sweep", "job.conf", "--store", "s.db",
                               "--set", "data.train.limit=320", "--set", "run.steps=100000", "--optuna",
                               "updater.lr=loguniform(1e-3,1e-2)", "--trials", "5", "--parallel", "2",
                               "--pruner", "none"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        store = Store(tmp_path / "s.db")
        # One trial training on the only worker, the second waiting in the queue.
        wait_until(lambda: [r.status for r in store.runs(sort="created", descending=False)] == ["running", "queued"]
                   and store.runs(status="running")[0].step > 0, 120)
        driver.send_signal(signal.SIGINT)
        assert driver.wait(60) == 130
        out = driver.communicate()[0]
        sweep_id = out.splitlines()[0]
        running, waiting = store.sweep_runs(sweep_id)
        wait_until(lambda: store.get(running.id).status == "stopped", 60)  # sent stop, as nnkit ctl does
        assert store.get(waiting.id).status == "stopped" and store.get(waiting.id).pid is None  # cancelled
        _, study = load_study(tmp_path, sweep_id)
        assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL] * 2  # no more asked
        assert store.get_sweep(sweep_id).status == "stopped"
    finally:
        if driver.poll() is None:
            driver.kill()
        stop_workers([worker])


def test_sweep_has_help_and_asks_for_a_mode(capsys):
    from nnkit.cli import main
    with pytest.raises(SystemExit) as done:
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and "usage: nnkit sweep" in text and "loguniform(LOW,HIGH)" in text
    assert main(["sweep", "job.conf"]) == 2
    assert "give one of --grid, --random N, --optuna" in capsys.readouterr().err
    assert main(["sweep", "job.conf", "--list"]) == 2 and "--list takes no JOB.conf" in capsys.readouterr().err
