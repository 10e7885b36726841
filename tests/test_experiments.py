"""The experiment store: runs recorded as they train, queried, edited, rebuilt from run directories."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import nnkit
from nnkit.experiments import AmbiguousRun, RunNotFound, Store, StoreError, default_store_path, record
from nnkit.experiments import store as store_module
from nnkit.experiments.rundir import config_hash, flatten_config, git_commit
from nnkit.experiments.summary import RunSummary

from helpers import ROOT, wait_until

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def tiny_model(lr: float = 0.05, seed: int = 0) -> nnkit.Sequential:
    model = nnkit.Sequential([nnkit.Dense(8), nnkit.Activation("relu"), nnkit.Dense(3)], input_shape=(6,),
                             seed=seed)
    model.compile(nnkit.SGD(lr=lr), "softmaxloss", metrics=["accuracy"])
    return model


def tiny_data(n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    """The default store of this test alone (NNKIT_HOME in tmp_path)."""
    monkeypatch.setenv("NNKIT_HOME", str(tmp_path / "home"))
    return Store()


def test_the_suite_never_writes_to_the_users_home():
    assert default_store_path() != Path.home() / ".nnkit" / "experiments.db"
    assert Path(os.environ["NNKIT_HOME"]).name.startswith("nnkit-home")
    assert ENV["NNKIT_HOME"] == os.environ["NNKIT_HOME"]  # set before test modules copy the environment


def test_fit_with_a_run_dir_is_recorded_with_config_metrics_and_process(store, tmp_path):
    assert store.path == tmp_path / "home" / "experiments.db"
    x, y = tiny_data()
    model = tiny_model(lr=0.05)
    model.fit(x, y, epochs=3, batch_size=32, validation_data=(x[:32], y[:32]), run_dir=tmp_path / "run",
              verbose=0)
    [run] = store.runs()
    assert (run.status, run.name, run.step, run.total_steps, run.progress) == ("finished", "run", 12, 12, 1.0)
    assert run.owner == nnkit.experiments.default_owner() and run.host and run.pid == os.getpid()
    assert run.run_dir == str((tmp_path / "run").resolve()) and run.nnkit_version == nnkit.__version__
    assert run.created <= run.started <= run.ended and run.duration == pytest.approx(run.ended - run.started)
    assert "lr: 0.05" in run.config_text and run.config_hash == config_hash(run.config_text)
    params = store.params(run.id)
    assert params["updater.lr"] == "0.05" and params["model.layer.1.dense.output_dim"] == "8"
    history = model.trainer.history
    metrics, best = store.metrics(run.id), store.best(run.id)
    assert metrics["test_error"] == pytest.approx(1 - history.history["val_accuracy"][-1])
    assert best["val_loss"] == pytest.approx(min(history.history["val_loss"]))
    assert best["accuracy"] == pytest.approx(max(history.history["accuracy"]))
    # The run directory keeps what the store knows about the run (for reindex).
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["id"] == run.id and info["owner"] == run.owner and "lr: 0.05" in info["config_text"]


def test_git_commit_of_the_users_code_or_none(tmp_path):
    assert git_commit(tmp_path) is None  # not a repository
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(repo) == head and len(head) == 40


def test_a_background_run_reports_paused_and_resumed_in_the_store(store, tmp_path):
    x, y = tiny_data()
    run = tiny_model().fit(x, y, epochs=10_000, batch_size=16, verbose=0, background=True, run_dir=tmp_path / "bg")

    def status() -> str | None:
        records = store.runs()
        return records[0].status if records else None
    wait_until(lambda: status() == "running", 60)
    run.wait_for(run.pause(), 30)
    wait_until(lambda: status() == "paused", 60)
    run.wait_for(run.resume(), 30)
    wait_until(lambda: status() == "running", 60)
    run.stop()
    run.join(60)
    wait_until(lambda: status() == "stopped", 60)
    [record_] = store.runs()
    assert record_.ended is not None and record_.step > 0


def test_a_child_process_run_with_a_run_dir_is_recorded_by_the_child(store, tmp_path):
    x, y = tiny_data()
    run = tiny_model().fit(x, y, epochs=2, batch_size=32, verbose=0, background="process", run_dir=tmp_path / "child")
    assert run.wait(120) == "finished"
    run.shutdown()
    run.join(60)
    wait_until(lambda: [r.status for r in store.runs()] == ["finished"], 60)
    [record_] = store.runs()
    assert record_.pid != os.getpid() and record_.step == 8 and record_.id == run.bus.run_id
    assert store.params(record_.id)["updater.lr"] == "0.05"


def test_nnkit_train_options_reach_a_child_of_a_configured_process(store, tmp_path):
    nnkit.experiments.configure(store=tmp_path / "other.db", owner="ann", name="exp", tags=["a", "b"])
    try:
        x, y = tiny_data()
        run = tiny_model().fit(x, y, epochs=1, batch_size=32, verbose=0, background="process",
                               run_dir=tmp_path / "child")
        assert run.wait(120) == "finished"
        run.shutdown()
        run.join(60)
    finally:
        nnkit.experiments.configure()
    other = Store(tmp_path / "other.db")
    wait_until(lambda: [r.status for r in other.runs()] == ["finished"], 60)
    [record_] = other.runs()
    assert (record_.owner, record_.name, record_.tags) == ("ann", "exp", ("a", "b"))
    assert store.count() == 0


def test_an_in_memory_fit_is_recorded_only_when_asked_and_appends(store, tmp_path):
    x, y = tiny_data()
    tiny_model().fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert store.count() == 0
    model = tiny_model()
    run_id = record(model, name="mem", tags=["t1"], owner="bob", notes="first try")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    first = store.get(run_id)
    assert (first.name, first.owner, first.tags, first.notes, first.status, first.step) == (
        "mem", "bob", ("t1",), "first try", "finished", 4)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    again = store.get(run_id)
    assert store.count() == 1 and again.step == 8 and again.started == first.started
    assert store.params(run_id)["updater.lr"] == "0.05"


def test_a_fit_at_the_default_lr_is_found_by_a_where_on_the_lr(store):
    x, y = tiny_data()
    model = nnkit.Sequential([nnkit.Dense(3)], input_shape=(6,), seed=0)
    model.compile(nnkit.Adam(), "softmaxloss")  # Adam's default rate, 0.001, given nowhere
    run_id = record(model, name="default-lr")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert store.params(run_id)["updater.lr"] == "0.001"
    assert [r.id for r in store.runs(where="updater.lr < 0.01")] == [run_id]


def test_record_a_background_handle_without_run_dir(store):
    x, y = tiny_data()
    run = tiny_model().fit(x, y, epochs=2, batch_size=32, verbose=0, background=True)
    run_id = record(run, name="handle")
    assert run.wait(60) == "finished"
    wait_until(lambda: [(r.id, r.status) for r in store.runs()] == [(run_id, "finished")], 60)
    run.shutdown()
    run.join(60)
    assert store.get("handle").step == 8


def test_a_resumed_run_keeps_its_record_and_appends(store, tmp_path):
    x, y = tiny_data()
    run_dir = tmp_path / "resumed"
    tiny_model().fit(x, y, epochs=1, batch_size=32, verbose=0, run_dir=run_dir)
    [first] = store.runs()
    store.tag(first.id, "keep")
    model = nnkit.load(run_dir / "checkpoint.h5")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, run_dir=run_dir)
    [again] = store.runs()
    assert again.id == first.id and again.step == 8 and again.started == first.started
    assert again.tags == ("keep",) and again.status == "finished"


def _filled(store: Store) -> list[str]:
    ids = []
    for i, (lr, error, owner) in enumerate([(0.1, 0.2, "ann"), (0.001, 0.05, "ann"), (0.005, 0.3, "bob"),
                                            (0.02, None, "bob")]):
        summary = RunSummary(id=f"{i}a{i}b{i:08d}", name=f"run{i}", owner=owner, status="finished",
                             created=1000.0 + i, started=1000.0 + i, ended=1010.0 + 10 * i, step=i)
        if error is not None:
            summary.add_metric("test_error", error, i)
        ids.append(store.save(summary, {"updater.lr": str(lr), "updater.type": "sgd"}))
    return ids


def test_runs_filter_where_sort_and_page(store):
    ids = _filled(store)
    assert [r.id for r in store.runs()] == ids[::-1]  # newest first
    assert [r.id for r in store.runs(where="updater.lr<0.01")] == [ids[2], ids[1]]
    assert [r.id for r in store.runs(where="updater.lr<0.01 and test_error<=0.05")] == [ids[1]]
    assert [r.id for r in store.runs(where="(owner = bob or test_error < 0.1) and not updater.lr = 0.02")] == \
        [ids[2], ids[1]]
    assert [r.id for r in store.runs(where='updater.type = "sgd"', owner="ann")] == [ids[1], ids[0]]
    assert [r.id for r in store.runs(sort="test_error", descending=False)] == [ids[1], ids[0], ids[2], ids[3]]  # best
    assert [r.id for r in store.runs(sort="duration", limit=2)] == [ids[3], ids[2]]
    assert [r.id for r in store.runs(sort="name", descending=False, limit=2, offset=1)] == [ids[1], ids[2]]
    assert store.count(where="updater.lr>=0.005") == 3 and store.count(since=1002.0) == 2
    store.tag(ids[0], "best", "x")
    assert [r.id for r in store.runs(tags=["best"])] == [ids[0]] and store.count(where="tag = x") == 1
    assert store.get(ids[0]).tags == ("best", "x")


@pytest.mark.parametrize("bad,named", [("updater.lr <", "expected a value"), ("lr 0.1", "expected an operator"),
                                       ("a=1 and", "expected a key"), ("(a=1", "expected ')'"),
                                       ("a=1 b=2", "expected 'and'"), ("a ~ 1", "cannot read '~ 1'"),
                                       ("", "empty"), ("step = x", "step is a number"),
                                       ("x=1; DROP TABLE runs", "cannot read ';")])
def test_a_bad_where_raises_value_error_naming_the_bad_part(store, bad, named):
    _filled(store)
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        store.runs(where=bad)
    assert store.count() == 4  # nothing was pasted into SQL


def test_values_are_parameters_not_sql(store):
    _filled(store)
    assert store.runs(where="owner = \"x' OR '1'='1\"") == []
    with pytest.raises(ValueError, match="status 'nope'"):
        store.runs(status="nope")


def test_get_by_id_prefix_name_or_run_dir(store, tmp_path):
    ids = _filled(store)
    assert store.get(ids[1]).id == ids[1] and store.get("1a1").id == ids[1] and store.get("run2").id == ids[2]
    with pytest.raises(AmbiguousRun, match=r"'0a0' .*|matches"):
        store.save(RunSummary(id="0a0zzz", name="other", status="queued", created=5.0))
        store.get("0a0")
    with pytest.raises(RunNotFound, match="no recorded run 'nope'"):
        store.get("nope")
    x, y = tiny_data()
    tiny_model().fit(x, y, epochs=1, batch_size=32, verbose=0, run_dir=tmp_path / "d")
    assert store.get(tmp_path / "d").name == "d" and store.get(str(tmp_path / "d")).name == "d"
    assert isinstance(RunNotFound("x"), LookupError) and isinstance(AmbiguousRun("x"), LookupError)


def test_tag_untag_note_remove(store, tmp_path):
    x, y = tiny_data()
    tiny_model().fit(x, y, epochs=1, batch_size=32, verbose=0, run_dir=tmp_path / "r")
    run = store.runs()[0]
    store.tag(run.id, "a", "b")
    store.untag(run.id, "a", "zzz")
    store.note(run.id, "looks good")
    assert (store.get(run.id).tags, store.get(run.id).notes) == (("b",), "looks good")
    with pytest.raises(ValueError, match="one word"):
        store.tag(run.id, "two words")
    store.remove(run.id)
    assert store.count() == 0 and (tmp_path / "r" / "events.jsonl").is_file()  # files kept
    store.reindex(tmp_path / "r")
    store.remove(store.runs()[0].id, delete_files=True)
    assert not (tmp_path / "r").exists() and store.count() == 0
    with pytest.raises(RunNotFound):
        store.note("nope", "x")


def test_mark_stale_finds_dead_processes_and_silent_runs(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    rows = {"dead": dict(pid=int(dead.stdout), heartbeat=now), "silent": dict(pid=None, heartbeat=now - 1000),
            "alive": dict(pid=os.getpid(), heartbeat=now), "done": dict(pid=int(dead.stdout), heartbeat=now - 1000),
            "waiting": dict(pid=None, heartbeat=None)}
    status = {"done": "finished", "waiting": "queued"}
    for name, row in rows.items():
        store.save(RunSummary(id=name, name=name, status=status.get(name, "running"),
                              host=store_module._host(), created=now - 2000, started=now - 2000, **row))
    assert sorted(store.mark_stale(heartbeat_timeout=300)) == ["dead", "silent"]
    assert {r.id: r.status for r in store.runs()} == {"dead": "interrupted", "silent": "interrupted",
                                                      "alive": "running", "done": "finished", "waiting": "queued"}
    assert store.get("silent").ended == pytest.approx(now - 1000)


def test_reindex_rebuilds_the_store_from_run_directories(store, tmp_path):
    x, y = tiny_data()
    record_dir = tmp_path / "r"
    nnkit.experiments.configure(owner="carol", tags=["t"])
    try:
        tiny_model().fit(x, y, epochs=2, batch_size=32, verbose=0, run_dir=record_dir,
                         validation_data=(x[:32], y[:32]))
    finally:
        nnkit.experiments.configure()
    [live] = store.runs()
    live_metrics, live_params = store.metrics(live.id), store.params(live.id)
    store.path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(store.path) + suffix).unlink(missing_ok=True)
    fresh = Store(tmp_path / "rebuilt.db")
    assert fresh.reindex(record_dir) == [live.id]
    [rebuilt] = fresh.runs()
    for field in ("id", "name", "owner", "tags", "status", "created", "started", "ended", "step", "host", "pid",
                  "config_hash", "git_commit", "total_steps"):
        assert getattr(rebuilt, field) == getattr(live, field), field
    assert fresh.metrics(live.id) == live_metrics and fresh.params(live.id) == live_params
    assert fresh.reindex(record_dir) == [live.id] and fresh.count() == 1  # again: the same record
    with pytest.raises(ValueError, match="not an nnkit run directory"):
        fresh.reindex(tmp_path)


def test_a_schema_1_store_is_migrated_and_keeps_its_runs(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    store_module.MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO runs (id, name, status, created, step) VALUES ('r1', 'old', 'finished', 1.0, 5)")
    db.execute("INSERT INTO params (run_id, key, value) VALUES ('r1', 'updater.lr', '0.003')")
    db.commit()
    db.close()
    store = Store(path)
    assert store.schema_version() == store_module.SCHEMA_VERSION == 6
    assert store.get("old").step == 5 and store.params("r1") == {"updater.lr": "0.003"}
    assert [r.id for r in store.runs(where="updater.lr < 0.01")] == ["r1"]  # the migrated numeric column


def test_a_schema_3_store_gets_sweeps_and_keeps_its_runs_and_queue(tmp_path):
    """A store as nnkit made it before sweeps (schema 3: runs, a queued job), opened by this one."""
    path = tmp_path / "v3.db"
    db = sqlite3.connect(path)
    for step in store_module.MIGRATIONS[:3]:
        step(db)
    db.execute("PRAGMA user_version = 3")
    db.execute("INSERT INTO runs (id, name, status, created, step, config_text) "
               "VALUES ('q1', 'waiting', 'queued', 2.0, 0, 'name: \"x\"')")
    db.execute("INSERT INTO jobs (run_id, retries) VALUES ('q1', 2)")
    db.commit()
    db.close()
    store = Store(path)
    # sweeps (4), load roots and sweep logs (5), remote runs (6)
    assert store.schema_version() == store_module.SCHEMA_VERSION == 6
    old = store.get("waiting")
    assert (old.status, old.sweep_id, old.point) == ("queued", None, None) and store.list_sweeps() == []
    from nnkit.experiments.queue import claim, enqueue
    sweep = store.create_sweep("grid", {"grid": {"updater.lr": [0.1, 0.01]}}, name="lrs")
    new = enqueue(store, 'name: "x"\n', sweep_id=sweep, point={"updater.lr": 0.1})
    assert [(r.id, r.point) for r in store.sweep_runs(sweep)] == [(new, {"updater.lr": 0.1})]
    assert [r.id for r in store.runs(sweep=sweep)] == [new] and store.count(sweep=sweep) == 1
    assert claim(store, tmp_path / "runs").run_id == "q1"  # the old queue works on, oldest first
    assert store._read("SELECT retries, head, worker FROM jobs WHERE run_id = 'q1'") == [(2, None, None)]
    assert claim(store, tmp_path / "runs").load_roots == ()  # queued without load roots: none


def test_a_store_from_a_newer_nnkit_is_refused(tmp_path):
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(path).count()


def test_a_broken_store_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    bad = tmp_path / "home" / "experiments.db"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not an sqlite database at all" * 100)
    monkeypatch.setenv("NNKIT_HOME", str(bad.parent))
    script = textwrap.dedent(f"""
        import numpy as np, nnkit
        x = np.random.default_rng(0).normal(size=(128, 6)).astype("float32"); y = np.arange(128) % 3
        m = nnkit.Sequential([nnkit.Dense(3)], input_shape=(6,)); m.compile(nnkit.SGD(lr=0.1), "softmaxloss")
        history = m.fit(x, y, epochs=5, batch_size=16, verbose=0, run_dir={str(tmp_path / "run")!r})
        print(m.trainer.global_step)
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**ENV, "NNKIT_HOME": str(bad.parent)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["40"]
    assert done.stderr.count("cannot record run") == 1 and "not a usable experiment store" in done.stderr
    with pytest.raises(StoreError, match="not a usable experiment store"):
        Store(bad).count()


def test_flatten_config_numbers_repeated_fields_and_names_enums():
    flat = flatten_config('name: "j" model { layer { dense { output_dim: 4 } } layer { activation { type: relu } } }'
                          ' updater { lr: 0.5 momentum: 0.9 }')
    assert flat == {"name": "j", "model.layer.0.dense.output_dim": "4", "model.layer.1.activation.type": "relu",
                    "updater.lr": "0.5", "updater.momentum": "0.9"}
    assert flatten_config("not { a job") == {} and flatten_config(None) == {}


def test_a_locked_store_costs_one_warning_and_reindex_records_the_run_later(tmp_path):
    home = tmp_path / "home"
    store = Store(home / "experiments.db")
    store.count()
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock for the whole run
    script = textwrap.dedent(f"""
        import numpy as np, nnkit
        x = np.random.default_rng(0).normal(size=(128, 6)).astype("float32"); y = np.arange(128) % 3
        m = nnkit.Sequential([nnkit.Dense(3)], input_shape=(6,)); m.compile(nnkit.SGD(lr=0.1), "softmaxloss")
        m.fit(x, y, epochs=5, batch_size=16, verbose=0, run_dir={str(tmp_path / "run")!r})
        print(m.trainer.global_step)
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], env={**ENV, "NNKIT_HOME": str(home)},
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert done.returncode == 0 and done.stdout.split() == ["40"], done.stderr
    assert done.stderr.count("nnkit: warning: cannot record run") == 1 and "locked" in done.stderr
    assert f"nnkit runs reindex {tmp_path / 'run'}" in done.stderr
    assert store.count() == 0
    [run_id] = store.reindex(tmp_path / "run")
    assert store.get(run_id).status == "finished" and store.get(run_id).step == 40


def test_a_name_wins_over_an_id_prefix_and_a_shared_name_is_ambiguous(store):
    store.save(RunSummary(id="b0b0b0b0b0b0", name="first", status="finished", created=1.0))
    store.save(RunSummary(id="c1c1c1c1c1c1", name="b", status="finished", created=2.0))
    assert store.get("b").id == "c1c1c1c1c1c1" and store.get("b0").id == "b0b0b0b0b0b0"
    store.save(RunSummary(id="d2d2d2d2d2d2", name="b", status="finished", created=3.0))
    with pytest.raises(AmbiguousRun, match=r"'b' matches 2 runs: c1c1c1c1c1c1 \(b, None\), d2d2d2d2d2d2"):
        store.get("b")


def test_a_late_subscriber_can_replay_the_kept_events_first():
    from nnkit.training.events import EventBus
    bus = EventBus()
    bus.emit("status", state="started", step=0)
    bus.emit("loss", step=1, loss=1.0)
    seen = []
    bus.subscribe("*", lambda e: seen.append(e["seq"]), replay=True)
    bus.subscribe("loss", lambda e: seen.append(-e["seq"]), replay=True)
    bus.emit("loss", step=2, loss=0.5)
    assert seen == [1, 2, -2, 3, -3]
