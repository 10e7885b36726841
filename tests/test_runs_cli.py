"""``nnkit train`` records its runs; ``nnkit runs ...`` lists, compares, edits and exports them."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nnkit.cli import main
from nnkit.experiments import Store

from helpers import DATA, ROOT, wait_until

pytestmark = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")

JOB = """name: "tiny"
seed: 1
model {{
  layer {{ image_input {{ height: 28 width: 28 }} }}
  layer {{ dense {{ output_dim: 16 }} }}
  layer {{ activation {{ type: relu }} }}
  layer {{ dense {{ output_dim: 10 }} }}
}}
updater {{ lr: 0.1 momentum: 0.9 }}
data {{
  dataset: "mnist"
  dir: "{data}"
  scale: 0.00392156862745098
  train {{ batch_size: 32 limit: 640 }}
  test {{ batch_size: 200 limit: 200 }}
}}
run {{ steps: 10 display_freq: 5 test_freq: 5 run_dir: "{runs}" }}
"""


def train(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "nnkit.cli", "train", *map(str, args)], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def runs(capsys, *args: str) -> tuple[int, str, str]:
    """``nnkit runs ARGS`` in this process: (exit status, stdout, stderr)."""
    status = main(["runs", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two recorded `nnkit train` runs in one store: a (owner ann, tag base) and b (lr 0.01)."""
    tmp = tmp_path_factory.mktemp("runs")
    job = tmp / "tiny.conf"
    job.write_text(JOB.format(data=DATA, runs=tmp / "runs"))
    store = tmp / "store.db"
    train(job, "--store", store, "--owner", "ann", "--tag", "base", "--name", "a", "--run-dir", tmp / "a", cwd=tmp)
    train(job, "--store", store, "--name", "b", "--set", "updater.lr=0.01", "--run-dir", tmp / "b", cwd=tmp)
    return tmp, store, job


def test_train_records_owner_name_tags_config_and_metrics(two_runs):
    tmp, store_path, _ = two_runs
    store = Store(store_path)
    a, b = store.get("a"), store.get("b")
    assert (a.owner, a.tags, a.status, a.step, a.run_dir) == ("ann", ("base",), "finished", 10, str(tmp / "a"))
    assert b.owner not in (None, "ann") and b.tags == ()
    assert "# --set updater.lr=0.01" in b.config_text and store.params(b.id)["updater.lr"] == "0.01"
    assert a.config_hash != b.config_hash
    assert set(store.metrics(a.id)) >= {"test_accuracy", "test_error", "test_loss", "train_loss"}
    test = [json.loads(line) for line in (tmp / "a" / "events.jsonl").read_text().splitlines()
            if '"type":"test"' in line]
    assert store.metrics(a.id)["test_error"] == pytest.approx(1 - test[-1]["accuracy"])
    assert a.git_commit is None  # tmp is not a git repository


def test_runs_list_filters_sorts_pages_and_prints_json(two_runs, capsys):
    _, store, _ = two_runs
    status, out, _ = runs(capsys, "list", "--store", store)
    lines = out.splitlines()
    assert status == 0 and lines[0].split()[:4] == ["ID", "NAME", "OWNER", "STATUS"]
    assert [line.split()[1] for line in lines[1:3]] == ["b", "a"] and lines[-1] == "runs 1-2 of 2"
    assert "100%" in lines[1] and "base" in lines[2]
    for args, names in [(["--where", "updater.lr<0.05"], ["b"]), (["--owner", "ann"], ["a"]), (["--tag", "base"], ["a"]),
                        (["--status", "finished", "--sort", "test_error", "--asc"], None),
                        (["--since", "1h"], ["b", "a"]), (["--since", "2999-01-01"], [])]:
        status, out, _ = runs(capsys, "list", "--store", store, "--json", *args)
        got = [r["name"] for r in json.loads(out)]
        assert status == 0 and (names is None and sorted(got) == ["a", "b"] or got == names), (args, got)
    status, out, _ = runs(capsys, "list", "--store", store, "--sort", "test_error", "--asc", "--json")
    errors = [r["best"]["test_error"] for r in json.loads(out)]
    assert errors == sorted(errors)
    status, out, _ = runs(capsys, "list", "--store", store, "--limit", "1", "--page", "1")
    assert out.splitlines()[-1] == "runs 1-1 of 2; --page 2 for more"
    status, out, _ = runs(capsys, "list", "--store", store, "--limit", "1", "--page", "2")
    assert out.splitlines()[1].split()[1] == "a" and out.splitlines()[-1] == "runs 2-2 of 2"


def test_runs_show_and_compare(two_runs, capsys):
    _, store, _ = two_runs
    status, out, _ = runs(capsys, "show", "a", "--store", store)
    assert status == 0 and "owner:       ann" in out and "  updater.lr = 0.1" in out and "test_error" in out
    status, out, _ = runs(capsys, "show", "b", "--store", store, "--json")
    data = json.loads(out)
    assert data["name"] == "b" and data["params"]["updater.lr"] == "0.01" and data["progress"] == 1.0
    status, out, _ = runs(capsys, "compare", "a", "b", "--store", store)
    config = out.split("config (the fields that differ):")[1].split("metrics")[0]
    assert status == 0 and [line.split()[0] for line in config.strip().splitlines()[1:]] == ["updater.lr"]
    assert "0.1" in config and "0.01" in config and "test_error" in out.split("metrics")[1]
    status, out, _ = runs(capsys, "compare", "a", "b", "--store", store, "--json")
    assert json.loads(out)["config"] == {"updater.lr": ["0.1", "0.01"]}


def test_runs_tag_note_rm_reindex_and_csv(two_runs, capsys, tmp_path):
    tmp, store_path, _ = two_runs
    copy = tmp_path / "copy.db"
    assert runs(capsys, "reindex", tmp / "a", tmp / "b", "--store", copy)[0] == 0
    assert runs(capsys, "tag", "a", "x", "y", "--store", copy)[1].strip().endswith("tags base, x, y")
    assert runs(capsys, "untag", "a", "x", "--store", copy)[0] == 0
    assert runs(capsys, "note", "a", "the baseline", "--store", copy)[0] == 0
    record = Store(copy).get("a")
    assert (record.tags, record.notes) == (("base", "y"), "the baseline")
    assert runs(capsys, "export", "--csv", tmp_path / "runs.csv", "--store", copy)[0] == 0
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert sorted((r["name"], r["param:updater.lr"]) for r in rows) == [("a", "0.1"), ("b", "0.01")]
    assert all(float(r["best:test_error"]) < 1 for r in rows)
    status, out, _ = runs(capsys, "rm", "b", "--store", copy)
    assert status == 0 and "its files stay in" in out and (tmp / "b" / "events.jsonl").is_file()
    assert [r.name for r in Store(copy).runs()] == ["a"]


def test_bad_runs_arguments_exit_2_with_a_clear_message(two_runs, capsys, tmp_path):
    tmp, store, _ = two_runs
    for args, message in [(["show", "nope"], "no recorded run 'nope'"),
                          (["list", "--where", "updater.lr <"], "expected a value after updater.lr <"),
                          (["list", "--since", "yesterday"], "--since 'yesterday'"),
                          (["rm", "a", "nope"], "no recorded run 'nope'"),
                          (["compare", "a", "zz"], "no recorded run 'zz'"),
                          (["reindex", tmp_path], "not an nnkit run directory"),
                          (["tag", "a", "bad,tag"], "one word"),
                          (["list", "--limit", "0"], "--limit 0")]:
        status, out, err = runs(capsys, *args, "--store", store)
        assert status == 2 and message in err and "Traceback" not in err, (args, err)
    (tmp_path / "dir.db").mkdir()
    status, _, err = runs(capsys, "list", "--store", tmp_path / "dir.db")
    assert status == 2 and "is a directory" in err
    assert Store(store).count() == 2  # rm checked every RUN before removing any


def test_mlflow_export_reads_back_with_mlflow_client(two_runs, capsys, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")  # in the test extra (mlflow-skinny)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the export sets for a file: URI
    from mlflow.tracking import MlflowClient
    _, store_path, _ = two_runs
    uri = (tmp_path / "mlruns").as_uri()
    status, out, _ = runs(capsys, "export", "--mlflow", uri, "--store", store_path, "--owner", "ann")
    assert status == 0 and out.count("-> MLflow run") == 1
    client = MlflowClient(tracking_uri=uri)
    [exported] = client.search_runs([client.get_experiment_by_name("nnkit").experiment_id])
    a = Store(store_path).get("a")
    assert exported.info.run_name == "a" and exported.info.status == "FINISHED"
    assert exported.data.tags["nnkit.run_id"] == a.id and exported.data.tags["mlflow.user"] == "ann"
    assert exported.data.params["updater.lr"] == "0.1"
    history = client.get_metric_history(exported.info.run_id, "test_error")
    assert [m.step for m in history] == [5, 10]
    assert exported.data.metrics["test_error"] == pytest.approx(Store(store_path).metrics(a.id)["test_error"])
    artifacts = {f.path for f in client.list_artifacts(exported.info.run_id)}
    assert {"job.conf", "events.jsonl", "run.json", "metrics.json"} <= artifacts
    # Again: the same MLflow run, no point twice.
    status, out, _ = runs(capsys, "export", "--mlflow", uri, "--store", store_path, "--owner", "ann")
    assert status == 0 and "exported before" in out
    assert len(client.search_runs([client.get_experiment_by_name("nnkit").experiment_id])) == 1
    assert len(client.get_metric_history(exported.info.run_id, "test_error")) == 2


def test_resume_keeps_the_record_and_overwrite_starts_a_new_one(tmp_path):
    job = tmp_path / "tiny.conf"
    job.write_text(JOB.format(data=DATA, runs=tmp_path / "runs"))
    store = Store(tmp_path / "s.db")
    run_dir = tmp_path / "r"
    train(job, "--store", store.path, "--run-dir", run_dir, "--tag", "first", cwd=tmp_path)
    first = store.get(run_dir)
    train(job, "--store", store.path, "--run-dir", run_dir, "--resume", "auto", "--set", "run.steps=20", cwd=tmp_path)
    again = store.get(run_dir)
    assert (again.id, again.step, again.tags, again.started) == (first.id, 20, ("first",), first.started)
    train(job, "--store", store.path, "--run-dir", run_dir, "--overwrite", cwd=tmp_path)
    fresh = store.get(run_dir)
    assert fresh.id != first.id and fresh.step == 10 and store.count() == 1


def test_a_killed_training_process_is_marked_interrupted(tmp_path, capsys):
    job = tmp_path / "tiny.conf"
    job.write_text(JOB.format(data=DATA, runs=tmp_path / "runs"))
    store = Store(tmp_path / "s.db")
    proc = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "train", str(job), "--store", str(store.path),
                             "--set", "run.steps=10000000", "--run-dir", str(tmp_path / "r")], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: store.count(status="running") == 1, 120)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    status, out, _ = runs(capsys, "list", "--store", store.path, "--json")
    [record] = json.loads(out)
    assert status == 0 and record["status"] == "interrupted" and record["ended"] is not None


@pytest.mark.parametrize("command", ["list", "show", "compare", "tag", "untag", "note", "rm", "export", "reindex"])
def test_every_runs_command_has_help_and_takes_store(command, capsys):
    with pytest.raises(SystemExit) as done:
        main(["runs", command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and f"usage: nnkit runs {command}" in out and "--store PATH" in out


def test_ctrl_c_records_interrupted_and_a_resume_runs_on_in_the_same_record(tmp_path):
    job = tmp_path / "tiny.conf"
    job.write_text(JOB.format(data=DATA, runs=tmp_path / "runs"))
    store = Store(tmp_path / "s.db")
    args = ["-m", "nnkit.cli", "train", str(job), "--store", str(store.path), "--run-dir", str(tmp_path / "r")]
    proc = subprocess.Popen([sys.executable, *args, "--set", "run.steps=10000000"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: store.count(status="running") == 1 and store.runs()[0].step > 0, 120)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    [stopped] = store.runs()
    assert stopped.status == "interrupted" and stopped.ended is not None
    train(job, "--store", store.path, "--run-dir", tmp_path / "r", "--resume", "auto",
          "--set", f"run.steps={stopped.step + 5}", cwd=tmp_path)
    [resumed] = store.runs()
    assert (resumed.id, resumed.status, resumed.step) == (stopped.id, "finished", stopped.step + 5)


def test_nnkit_start_of_a_job_is_recorded_by_its_child_with_the_whole_job(tmp_path, monkeypatch):
    import nnkit
    monkeypatch.setenv("NNKIT_HOME", str(tmp_path / "home"))
    job = tmp_path / "tiny.conf"
    job.write_text(JOB.format(data=DATA, runs=tmp_path / "runs"))
    run = nnkit.start(job, run_dir=tmp_path / "started")
    assert run.wait(180) == "finished"
    run.shutdown()
    run.join(60)
    store = Store()
    wait_until(lambda: [r.status for r in store.runs()] == ["finished"], 60)
    [record] = store.runs()
    params = store.params(record.id)
    assert record.pid != os.getpid() and record.step == 10 and record.name == "started"
    assert params["data.dataset"] == "mnist" and params["run.steps"] == "10" and params["updater.lr"] == "0.1"
