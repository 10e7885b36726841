"""Population-based training as steering, with real `nnkit worker` processes on a little MNIST:
the worst member loads the best's weights and a perturbed copy of its learning rate through
acknowledged commands, and its events alone replay the schedule it followed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, ROOT
from helpers import run_events as events

from nnkit import checkpoint
from nnkit.experiments import Store
from nnkit.experiments.pbt import describe_schedules, replay, replay_sweep
from test_cli import SMALL_JOB

pytestmark = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
# SMALL_JOB, run by epochs (about a second each here), tested on its 500 test images at each epoch end.
OVERRIDES = ["run.steps=1000000", "run.epochs=4", "run.test_freq=1000000"]


def test_the_worst_member_takes_the_best_ones_weights_and_lr_and_replays(tmp_path):
    job = tmp_path / "small.conf"
    job.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    store = Store(tmp_path / "s.db")
    workers = [subprocess.Popen([sys.executable, "-m", "nnkit.cli", "worker", "--store", "s.db", "--max-jobs", "1",
                                 "--poll", "0.1"], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        # Member 1 starts with a rate far too small: after the first epoch it is the worst.
        done = subprocess.run([sys.executable, "-m", "nnkit.cli", "sweep", "small.conf",
                               *(f"--set={o}" for o in OVERRIDES), "--pbt", "--population", "2",
                               "--interval-epochs", "1", "--perturb", "0.8,1.2", "--metric", "test_error",
                               "--direction", "minimize", "--quantile", "0.25", "--init-lr", "0.1,0.0005",
                               "--runs-dir", "runs", "--name", "pop", "--store", "s.db", "--poll", "0.05"],
                              cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert [w.wait(120) for w in workers] == [0, 0], [w.stderr.read() for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    sweep_id, *members = done.stdout.split("\n")[:3]
    (best_id, best_dir), (worst_id, worst_dir) = (line.split("  ") for line in members)
    best_dir, worst_dir = Path(best_dir), Path(worst_dir)
    assert best_dir.parent == worst_dir.parent == (tmp_path / "runs" / "pop").resolve()
    assert store.get_sweep("pop").id == sweep_id and store.get(worst_id).point == {"seed": 1, "updater.lr": 0.0005}
    assert store.get_sweep(sweep_id).status == "finished"
    assert {store.get(i).status for i in (best_id, worst_id)} == {"finished"}

    # The decision of the first interval, as logged in the sweep.
    first = store.sweep_log(sweep_id)[0]
    assert (first["interval"], first["epoch"], first["best"]) == (1, 0, best_id), first
    assert [r["run"] for r in first["ranking"]] == [best_id, worst_id]
    (exploit,) = first["exploits"]
    assert exploit["run"] == worst_id and exploit["factor"] in (0.8, 1.2)
    assert exploit["answers"] == {k: "ack" for k in ("pause", "load_weights", "set", "checkpoint", "resume")}
    assert first["source"] == str(best_dir / "pbt-1.h5")

    # In the worst member's own events: acknowledged commands, all at the step it paused on.
    acks = [e for e in events(worst_dir) if e["type"] == "ack"]
    names = [e["command"] for e in acks[:5]]
    assert names == ["pause", "load_weights", "set", "checkpoint", "resume"], acks
    assert len({e["step"] for e in acks[:5]}) == 1
    step = acks[1]["step"]
    assert acks[1]["path"] == first["source"]
    new_lr = acks[2]["values"]["lr"]
    assert new_lr == pytest.approx(0.1 * exploit["factor"]) and new_lr == exploit["lr"]
    # Its parameters right after the load (the checkpoint it wrote while paused) are the best's.
    loaded = checkpoint.load_tree(worst_dir / "pbt-1-loaded.h5")["model"]
    source = checkpoint.load_tree(best_dir / "pbt-1.h5")["model"]
    assert set(loaded["params"]) == set(source["params"])
    for name, array in source["params"].items():
        assert np.array_equal(loaded["params"][name], array), name
    for name, slots in source["updater"]["slots"].items():  # momentum copied with the weights
        assert all(np.array_equal(loaded["updater"]["slots"][name][k], a) for k, a in slots.items())

    # The replay, from the events alone, gives the learning rate of every batch the member ran.
    schedule = replay(worst_dir)
    assert schedule.initial_lr == 0.0005
    assert schedule.changes[0].command == "load_weights" and schedule.changes[0].step == step
    assert schedule.changes[1].command == "set" and schedule.changes[1].lr == new_lr
    losses = [e for e in events(worst_dir) if e["type"] == "loss"]
    assert any(e["step"] > step for e in losses) and any(e["step"] <= step for e in losses)
    assert all(schedule.lr_at(e["step"]) == pytest.approx(e["lr"]) for e in losses)
    sets = [c for c in schedule.changes if c.command == "set"]
    assert len(sets) == len([x for entry in store.sweep_log(sweep_id) for x in entry["exploits"]
                             if x["run"] == worst_id and x["answers"].get("set") == "ack"])
    schedules = replay_sweep(store, sweep_id)
    assert set(schedules) == {"pop-0", "pop-1"}
    text = "\n".join(describe_schedules(schedules))
    assert f"step {step}: set lr={json.dumps(new_lr)}" in text and "pbt-1.h5" in text
    assert "pop-1 <- pop-0's weights" in done.stderr
    status = subprocess.run([sys.executable, "-m", "nnkit.cli", "sweep", "--status", "pop", "--store", "s.db"],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "interval 1 (epoch 1), test_error: pop-0 " in status.stdout, status.stderr
    assert f"  pop-1 <- pop-0's weights, lr {new_lr:.6g} (x{exploit['factor']:g})\n" in status.stdout
    shown = subprocess.run([sys.executable, "-m", "nnkit.cli", "sweep", "--replay", "pop", "--store", "s.db", "--json"],
                           cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["pop-1"] == json.loads(json.dumps(asdict(schedule)))


@pytest.mark.parametrize("direction, quantile, values, ended, expected", [
    ("minimize", 0.25, [0.1, 0.4, 0.2, 0.3], (), ["m1"]),              # the worst quarter: one of four
    ("minimize", 0.5, [0.1, 0.4, 0.2, 0.3], (), ["m3", "m1"]),         # half: the two worst, worst last
    ("maximize", 0.25, [0.1, 0.4, 0.2, 0.3], (), ["m0"]),
    ("minimize", 0.5, [0.1, None, 0.2, 0.3], (), ["m3", "m1"]),        # no metric ranks last
    ("minimize", 0.5, [0.1, 0.4, 0.2, 0.3], ("m1",), ["m3"]),          # an ended member is left alone
])
def test_ranking_picks_the_bottom_quantile_of_the_members_that_reached_the_interval(
        tmp_path, monkeypatch, direction, quantile, values, ended, expected):
    """The decision alone, on members' epoch events written by hand (the exploit itself is the
    end-to-end test's)."""
    from nnkit.experiments.pbt import PBTDriver, PBTSpec, queue_population
    store = Store(tmp_path / "s.db")
    spec = PBTSpec(population=4, direction=direction, quantile=quantile)
    sweep_id, run_ids = queue_population(store, spec, lambda point: 'name: "x"\n', tmp_path, name="m")
    for i, (run_id, value) in enumerate(zip(run_ids, values)):
        epoch = {"type": "epoch", "epoch": 0, "step": 10, "lr": 0.1, **({} if value is None else {"test_error": value})}
        Path(store.get(run_id).run_dir, "events.jsonl").write_text(json.dumps(epoch) + "\n")
        store._write(lambda db, run_id=run_id, i=i: db.execute(
            "UPDATE runs SET status = ?, name = ? WHERE id = ?", ("finished" if f"m{i}" in ended else "running",
                                                                 f"m{i}", run_id)))
    driver = PBTDriver(store, sweep_id)
    sent = []
    monkeypatch.setattr(driver, "_source", lambda best, interval: tmp_path / f"{best.name}.h5")
    monkeypatch.setattr(driver, "_exploit", lambda member, best, source, interval: sent.append(
        (member.name, best.name, source.name)) or {"run": member.run_id})
    driver.refresh()
    assert driver.step() and not driver.step()  # interval 1 decided; interval 2 not reached
    best = "m1" if direction == "maximize" else "m0"
    assert sent == [(name, best, f"{best}.h5") for name in expected]
    (entry,) = store.sweep_log(sweep_id)
    assert (entry["interval"], entry["epoch"], entry["best"]) == (1, 0, store.get(best).id)
    assert [r["name"] for r in entry["ranking"]][0] == best


def test_ctrl_c_on_the_driver_stops_the_sweep_and_its_members(tmp_path):
    import signal
    from helpers import wait_until
    (tmp_path / "small.conf").write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    store = Store(tmp_path / "s.db")
    workers = [subprocess.Popen([sys.executable, "-m", "nnkit.cli", "worker", "--store", "s.db", "--max-jobs", "1",
                                 "--poll", "0.1"], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for _ in range(2)]
    driver = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "sweep", "small.conf", "--set=run.steps=1000000",
                               "--set=run.epochs=1000", "--set=run.test_freq=1000000", "--pbt", "--population", "2",
                               "--name", "long", "--store", "s.db", "--poll", "0.05"], cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def both_running() -> bool:
            # Both members taken by the workers: a member still queued at Ctrl-C is cancelled, and
            # a worker waiting for its one job would wait on (seen on a loaded machine).
            return any(s.name == "long" and store.sweep_log(s.id) and
                       [r.status for r in store.sweep_runs(s.id)] == ["running", "running"]
                       for s in store.list_sweeps())
        wait_until(lambda: driver.poll() is not None or both_running(), 180)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=120)
        assert driver.returncode == 130, err
        assert "stopped (Ctrl-C)" in err
        sweep = store.get_sweep("long")
        assert sweep.status == "stopped" and sweep.spec["job"] == str(tmp_path / "small.conf")
        assert [w.wait(120) for w in workers] == [0, 0]  # each member stopped, so each worker's one job ended
        assert {r.status for r in store.sweep_runs(sweep.id)} == {"stopped"}
    finally:
        for process in (driver, *workers):
            if process.poll() is None:
                process.kill()


def test_replay_drops_the_changes_a_resume_from_an_earlier_checkpoint_undid(tmp_path):
    """A member whose worker died resumes from its last checkpoint: the changes acknowledged after
    that step never happened for the run that goes on (events written as a run writes them)."""
    lines = [{"type": "status", "state": "started", "step": 0}, {"type": "loss", "step": 1, "lr": 0.1},
             {"type": "ack", "command": "set", "step": 10, "values": {"lr": 0.05}},
             {"type": "ack", "command": "load_weights", "step": 30, "path": "/x/pbt-1.h5", "source_step": 25},
             {"type": "ack", "command": "set", "step": 30, "values": {"lr": 0.2}},
             {"type": "status", "state": "started", "step": 20},  # resumed from checkpoint-20.h5
             {"type": "ack", "command": "set", "step": 40, "values": {"lr": 0.3}}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    schedule = replay(tmp_path)
    assert [(c.step, c.command, c.lr) for c in schedule.changes] == [(10, "set", 0.05), (40, "set", 0.3)]
    assert [schedule.lr_at(step) for step in (1, 10, 11, 35, 41)] == [0.1, 0.1, 0.05, 0.05, 0.3]
