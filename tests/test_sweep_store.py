"""Sweeps in the experiment store: a sweep record groups runs, each with its point."""
from __future__ import annotations

import json

import pytest

from nnkit.experiments import Store, SweepNotFound
from nnkit.experiments.cli import BadInput, add_parser, main
from nnkit.experiments.queue import enqueue
from nnkit.experiments.store import RunNotFound


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "s.db")


def test_a_sweep_groups_its_runs_with_their_points(store):
    sweep = store.create_sweep("grid", {"grid": {"updater.lr": [0.1, 0.01]}}, name="lrs")
    other = store.create_sweep("random", {"n": 1, "seed": 0})
    alone = enqueue(store, 'name: "x"\n')
    first = enqueue(store, 'name: "x"\n', sweep_id=sweep, point={"updater.lr": 0.1})
    second = enqueue(store, 'name: "x"\n', sweep_id=sweep, point={"updater.lr": 0.01})
    elsewhere = enqueue(store, 'name: "x"\n', sweep_id=other, point={"updater.lr": 0.5})
    assert [(r.id, r.sweep_id, r.point) for r in store.sweep_runs(sweep)] == [
        (first, sweep, {"updater.lr": 0.1}), (second, sweep, {"updater.lr": 0.01})]
    assert store.get(alone).sweep_id is None and store.get(elsewhere).point == {"updater.lr": 0.5}
    assert {r.id for r in store.runs(sweep=other)} == {elsewhere} and store.count(sweep=sweep) == 2
    [newest, oldest] = store.list_sweeps()
    assert (newest.id, newest.kind, newest.spec, newest.status) == (other, "random", {"n": 1, "seed": 0}, "running")
    assert (oldest.id, oldest.name, oldest.spec) == (sweep, "lrs", {"grid": {"updater.lr": [0.1, 0.01]}})
    assert store.get_sweep("lrs").id == sweep and store.get_sweep(sweep[:5]).id == sweep
    with pytest.raises(SweepNotFound, match="no sweep 'nope'"):
        store.get_sweep("nope")


def test_the_recorder_s_writes_keep_the_sweep(store):
    sweep = store.create_sweep("optuna", {"trials": 2})
    run_id = enqueue(store, 'name: "x"\n', sweep_id=sweep, point={"updater.lr": 0.1})
    from nnkit.experiments.summary import RunSummary
    summary = RunSummary(id=run_id, status="finished", step=7)  # as the recorder saves it
    summary.add_metric("test_error", 0.25, 7)
    store.save(summary, replace=True)
    run = store.get(run_id)
    assert (run.status, run.step, run.sweep_id, run.point) == ("finished", 7, sweep, {"updater.lr": 0.1})


def test_a_grid_sweep_finishes_with_its_last_run_a_driven_one_when_told(store):
    grid = store.create_sweep("grid", {})
    optuna = store.create_sweep("optuna", {})
    assert store.get_sweep(grid).status == "running"  # no runs yet
    runs = [enqueue(store, 'name: "x"\n', sweep_id=s, point={}) for s in (grid, grid, optuna)]
    store._write(lambda db: db.execute("UPDATE runs SET status = 'finished'"))
    assert store.get_sweep(grid).status == "finished" and store.get_sweep(optuna).status == "running"
    store.set_sweep_status(optuna, "stopped")
    assert store.get_sweep(optuna).status == "stopped"
    store._write(lambda db: db.execute("UPDATE runs SET status = 'queued' WHERE id = ?", (runs[0],)))  # requeued
    assert store.get_sweep(grid).status == "running"
    with pytest.raises(ValueError, match="sweep status 'done'"):
        store.set_sweep_status(grid, "done")
    with pytest.raises(ValueError, match="sweep kind 'bayes'"):
        store.create_sweep("bayes", {})


def test_queueing_into_a_missing_sweep_leaves_no_record(store):
    with pytest.raises(SweepNotFound):
        enqueue(store, 'name: "x"\n', sweep_id="nosuchsweep", point={})
    assert store.count() == 0
    with pytest.raises(RunNotFound):
        store.add_to_sweep("norun", store.create_sweep("pbt", {}), {})


def test_runs_list_filters_by_sweep_and_shows_the_sweep_and_point(store, capsys):
    import argparse
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    sweep = store.create_sweep("grid", {}, name="lrs")
    inside = enqueue(store, 'name: "x"\n', name="in", sweep_id=sweep, point={"updater.lr": 0.01})
    outside = enqueue(store, 'name: "x"\n', name="out")

    def run(*argv: str) -> str:
        assert main(parser.parse_args(["runs", *argv, "--store", str(store.path)])) == 0
        return capsys.readouterr().out
    listed = run("list", "--sweep", "lrs")
    assert inside in listed and outside not in listed and "POINT" in listed and "updater.lr=0.01" in listed
    everything = run("list")
    assert "SWEEP" in everything and sweep in everything and outside in everything
    assert [r["point"] for r in json.loads(run("list", "--sweep", sweep[:6], "--json"))] == [{"updater.lr": 0.01}]
    assert f"{sweep} at updater.lr=0.01" in run("show", inside)
    with pytest.raises(BadInput, match="no sweep 'nope'"):
        main(parser.parse_args(["runs", "list", "--sweep", "nope", "--store", str(store.path)]))
