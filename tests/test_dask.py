"""`nnkit worker --dask`: queued runs on a real local Dask cluster (a `dask scheduler` and a
`dask worker` subprocess on localhost), steered by `nnkit ctl RUN` through the head, and a Dask
worker process killed with SIGKILL mid-run, whose run resumes exactly from its checkpoint."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import DATA, ROOT, wait_until
from helpers import run_events as events
from test_cli import SMALL_JOB

from nnkit.experiments import Store
from nnkit.experiments.cluster import HEAD_PATIENCE, HEARTBEAT_EVERY
from nnkit.experiments.queue import remote_inbox
from nnkit.experiments.store import pid_alive

distributed = pytest.importorskip("distributed", reason="the dask extra: pip install 'nnkit[dask]'")
pytest.importorskip("starlette", reason="the ui extra: pip install 'nnkit[ui]'")
from starlette.testclient import TestClient  # noqa: E402

from nnkit.ui.server import create_app  # noqa: E402
pytestmark = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
LONG = 1_000_000  # a run that ends only when told to


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dask_cli(*args: str, cwd: Path, log: str) -> subprocess.Popen:
    """``dask ARGS`` (the CLI of the dask package, as a user starts it), logging to ``log``."""
    return subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=open(cwd / log, "w"))


@pytest.fixture
def cluster(tmp_path: Path):
    """A real local cluster: ``dask scheduler`` and one ``dask worker`` (a nanny and its worker
    process, 2 threads, no memory limit: the nanny would count only the worker process anyway,
    not the training child), on localhost. Yields the scheduler's address."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    scheduler = dask_cli("scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard", cwd=tmp_path,
                         log="scheduler.log")
    worker = dask_cli("worker", address, "--nthreads", "2", "--memory-limit", "0", "--no-dashboard",
                      "--local-directory", str(tmp_path / "dask-worker"), cwd=tmp_path, log="worker.log")
    try:
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for process in (worker, scheduler):
            process.terminate()
        for process in (worker, scheduler):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def nnkit(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnkit.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def queue(tmp_path: Path, *args: str) -> str:
    done = nnkit("queue", "job.conf", "--store", "s.db", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def start_head(tmp_path: Path, address: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nnkit.cli", "worker", "--dask", address, "--store", "s.db",
                             "--run-root", "runs", "--once", *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "head.log", "w"))


def ctl(tmp_path: Path, run_id: str, *command: str) -> subprocess.CompletedProcess:
    return nnkit("ctl", run_id, *command, "--store", "s.db", "--wait", "60", cwd=tmp_path)


@pytest.fixture
def job(tmp_path: Path) -> Path:
    path = tmp_path / "job.conf"
    path.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "elsewhere"))
    return path


def test_two_runs_finish_on_the_cluster_and_ctl_reaches_a_remote_run_through_the_head(tmp_path, job, cluster):
    short = queue(tmp_path, "--set", "updater.lr=0.05", "--name", "short")
    long = queue(tmp_path, "--set", f"run.steps={LONG}", "--name", "long")
    head = start_head(tmp_path, cluster, "--copy-back")
    store = Store(tmp_path / "s.db")
    try:
        wait_until(lambda: store.get(long).status == "running" and store.get(long).step > 20, 120)
        assert Path(remote_inbox(store, long)).parent.parent == tmp_path / "heads"  # beside the store
        state = ctl(tmp_path, long, "set", "lr=0.01")
        assert state.returncode == 0 and "set acknowledged" in state.stdout, (state.stdout, state.stderr)
        # The web page steers it the same way, and shows its live events from the head's inbox.
        web = TestClient(create_app(store, "t0ken"), base_url="http://127.0.0.1:8600")
        answer = web.post(f"/api/runs/{long}/command", json={"command": "set", "args": {"lr": 0.02}},
                          headers={"X-NNKit-Token": "t0ken"})
        assert answer.status_code == 200 and answer.json()["ok"], answer.json()
        assert web.get(f"/api/runs/{long}").json()["live"]["step"] > 20
        told = ctl(tmp_path, long[:6], "tell_state")
        assert told.returncode == 0 and "lr" in told.stdout, (told.stdout, told.stderr)
        stop = ctl(tmp_path, "long", "stop")
        assert stop.returncode == 0 and "stop acknowledged" in stop.stdout, stop.stderr
        assert head.wait(120) == 0
    finally:
        head.kill()
    err = (tmp_path / "head.log").read_text()
    assert f"run {short} (short), attempt 1" in err and f"run {long} (long), attempt 1" in err, err
    assert {r.status for r in store.runs()} == {"finished", "stopped"} and store.count() == 2
    finished, stopped = store.get(short), store.get(long)
    assert (finished.status, finished.step, stopped.status) == ("finished", 20, "stopped")
    # The files came back to --run-root (the run ran in a temporary folder of the Dask worker).
    run_dir = tmp_path / "runs" / f"short-{short}"
    assert finished.run_dir == str(run_dir) and (run_dir / "checkpoint-20.h5").is_file()
    assert (run_dir / "metrics.json").is_file() and json.loads((run_dir / "run.json").read_text())["id"] == short
    assert not list((tmp_path / "dask-worker").rglob(f"nnkit-{short}-*"))  # the worker's copy is gone
    # The store holds the metrics the events show: the last test of the run.
    last_test = [e for e in events(run_dir) if e["type"] == "test"][-1]
    metrics = store.metrics(short)
    assert metrics["test_loss"] == pytest.approx(last_test["loss"]) and last_test["step"] == 20
    assert metrics["test_accuracy"] == pytest.approx(last_test["accuracy"])
    # The head's inbox saw the same events, and the commands' answers.
    inbox = Path(store._read("SELECT head FROM jobs WHERE run_id = ?", (long,))[0][0])
    assert remote_inbox(store, long) is None  # ended: its run directory has the whole log
    shown = nnkit("runs", "show", long, "--store", "s.db", cwd=tmp_path)
    assert re.search(r"remote: +Dask worker tcp://127\.0\.0\.1:\d+, head inbox " + re.escape(str(inbox)), shown.stdout)
    answered = [e["command"] for e in events(inbox) if e["type"] == "ack"]
    assert answered == ["set", "set", "tell_state", "stop"]
    hyper = [e for e in events(tmp_path / "runs" / f"long-{long}") if e["type"] == "state"][-1]["hyper"]
    assert hyper["lr"] == pytest.approx(0.02)  # the last set reached the remote run
    assert stopped.total_steps == LONG and finished.total_steps == 20  # the plans, from the child's run.json


def _starts(run_dir: str | Path) -> list[dict]:
    """The ``started`` status events of a run directory (or a head's inbox): one per attempt."""
    path = Path(run_dir, "events.jsonl")
    return [e for e in events(run_dir) if e["type"] == "status" and e["state"] == "started"] if path.exists() else []


def _latest(run_dir: str | None) -> int:
    """The step of the run directory's latest checkpoint (0: none yet)."""
    latest = Path(run_dir or "/nonexistent", "latest")
    found = re.search(r"\d+", latest.read_text()) if latest.exists() else None
    return int(found.group()) if found else 0


def _latest_names_a_file(run_dir: str | Path) -> bool:
    """Whether ``latest`` names a file of ``run_dir``. Read again when the head moved it on in
    between (it unpacks a new checkpoint, then the pointer, then prunes the old one)."""
    pointer = Path(run_dir, "latest")
    for _ in range(100):
        name = pointer.read_text().strip()
        if Path(run_dir, name).is_file():
            return True
        if pointer.read_text().strip() == name:
            return False
    return False


@pytest.mark.parametrize("where", [[], ["--copy-back"]], ids=["shared", "copy-back"])
def test_a_killed_dask_worker_s_run_is_requeued_and_resumes_exactly(tmp_path, job, cluster, where):
    """Shared: the run directory stays where the killed worker wrote it. Copy-back: the next
    attempt starts from what reached the head (its last checkpoint, its events)."""
    job.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "elsewhere").replace("steps: 20", f"steps: {LONG}"))
    run_id = queue(tmp_path, "--retries", "1")
    store = Store(tmp_path / "s.db")
    head = start_head(tmp_path, cluster, *where)
    try:
        wait_until(lambda: _latest(store.get(run_id).run_dir) >= 40, 120)
        run = store.get(run_id)
        child = json.loads(Path(run.run_dir, "run.json").read_text())["pid"]  # the training process
        assert pid_alive(child) and run.pid == head.pid  # the record names the head, not the child
        with distributed.Client(cluster, timeout=30) as client:
            worker_pid = next(iter(client.run(os.getpid).values()))
        scratch = list((tmp_path / "dask-worker").rglob(f"nnkit-{run_id}-*"))  # the task's own folder
        os.kill(worker_pid, signal.SIGKILL)  # the Dask worker process (its nanny restarts it)
        # Copy-back: what had reached the head by the kill, read before the head can know of it
        # (later, the next attempt's own checkpoints come back into the same folder). The
        # pointer names a checkpoint the head has: the task once sent one checkpoint with a
        # ``latest`` the run had meanwhile moved on, so the head resumed from an older one.
        at_kill = _latest(run.run_dir)
        if where:
            assert _latest_names_a_file(run.run_dir), sorted(os.listdir(run.run_dir))
        wait_until(lambda: not pid_alive(child), 30)  # the child died with it
        latest = _latest(run.run_dir)  # shared: the last the child wrote
        wait_until(lambda: store._read("SELECT attempts FROM jobs")[0][0] == 2, 120)
        inbox = Path(store._read("SELECT head FROM jobs")[0][0])
        wait_until(lambda: len(_starts(inbox)) == 2, 120)  # the head relays every event
        resumed = _starts(inbox)[1]["step"]
        wait_until(lambda: store.get(run_id).status == "running" and store.get(run_id).step > resumed + 30, 120)
        stop = ctl(tmp_path, run_id, "stop")
        assert stop.returncode == 0 and "stop acknowledged" in stop.stdout, stop.stderr
        assert head.wait(120) == 0
    finally:
        head.kill()
    err = (tmp_path / "head.log").read_text()
    assert "is gone" in err and f"run {run_id}: interrupted" in err and "attempt 2" in err, err
    assert [e["step"] for e in _starts(run.run_dir)] == [0, resumed]  # the run directory's log says so too
    # From its last checkpoint: on the shared filesystem the one on disk; copied back, the last
    # that reached the head (the one seen at the kill, or a later one that was on its way).
    if where:
        assert resumed >= at_kill and resumed % 10 == 0, (resumed, at_kill)
    else:
        assert resumed == latest, (resumed, latest)
    losses = {e["step"]: e["loss"] for e in events(run.run_dir)[::-1] if e["type"] == "train"}
    done = nnkit("train", "job.conf", "--set", f"run.steps={resumed + 30}", "--run-dir", "reference",
                 "--store", "other.db", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    reference = [e for e in events(tmp_path / "reference") if e["type"] == "train"][-1]
    assert reference["step"] == resumed + 30 and losses[resumed + 30] == reference["loss"]  # as if never killed
    final = store.get(run_id)
    assert final.status == "stopped" and store.count() == 1
    assert scratch and not any(path.exists() for path in scratch)  # the killed worker's files: purged
    assert store._read("SELECT attempts, retries FROM jobs") == [(2, 1)]


def test_ctrl_c_on_the_head_checkpoints_every_remote_run_and_requeues_it(tmp_path, job, cluster):
    job.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "elsewhere").replace("steps: 20", f"steps: {LONG}"))
    run_id = queue(tmp_path)  # no retries: a Ctrl-C uses none
    store = Store(tmp_path / "s.db")
    head = start_head(tmp_path, cluster)
    try:
        wait_until(lambda: store.get(run_id).status == "running" and store.get(run_id).step > 5, 120)
        head.send_signal(signal.SIGINT)
        assert head.wait(120) == 130
    finally:
        head.kill()
    run = store.get(run_id)
    assert (run.status, run.pid) == ("queued", None)
    assert store._read("SELECT attempts FROM jobs") == [(0,)]  # the attempt was given back
    stopped = [e for e in events(run.run_dir) if e["type"] == "status"][-1]
    assert (stopped["state"], stopped["reason"]) == ("stopped", "interrupt")
    assert (Path(run.run_dir) / "latest").read_text().strip() == f"checkpoint-{stopped['step']}.h5"


def test_a_killed_head_s_run_is_taken_over_by_the_next_head_without_two_trainings(tmp_path, job, cluster):
    """The head is SIGKILLed; its task trains on, unseen. The next head marks the run
    interrupted and resumes it: the new attempt takes the run over (the orphan checkpoints and
    ends first) and starts exactly from that checkpoint."""
    job.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "elsewhere").replace("steps: 20", f"steps: {LONG}"))
    run_id = queue(tmp_path, "--retries", "1")
    store = Store(tmp_path / "s.db")
    head = start_head(tmp_path, cluster)
    try:
        wait_until(lambda: store.get(run_id).status == "running" and store.get(run_id).step > 5, 120)
        run = store.get(run_id)
        child = json.loads(Path(run.run_dir, "run.json").read_text())["pid"]
    finally:
        head.kill()  # SIGKILL: no word to its task, ever again
    head.wait(30)
    killed = time.time()
    assert pid_alive(child)  # the orphan trains on
    second = start_head(tmp_path, cluster)
    try:
        wait_until(lambda: len(_starts(run.run_dir)) == 2, 120)
        assert not pid_alive(child)  # ended before the new attempt started
        stop = ctl(tmp_path, run_id, "stop")
        if stop.returncode != 0:  # (PYTHONFAULTHANDLER: the head's thread stacks go to head.log)
            second.send_signal(signal.SIGABRT)
            second.wait(30)
        assert stop.returncode == 0 and "stop acknowledged" in stop.stdout, stop.stderr
        assert second.wait(120) == 0
    finally:
        second.kill()
    err = (tmp_path / "head.log").read_text()
    assert f"run {run_id} was interrupted; requeued" in err and "attempt 2" in err, err
    log = events(run.run_dir)
    second_start = [i for i, e in enumerate(log) if e["type"] == "status" and e["state"] == "started"][1]
    orphan_end = [e for e in log[:second_start] if e["type"] == "status"][-1]
    assert (orphan_end["state"], orphan_end["reason"]) == ("stopped", "interrupt")  # checkpointed on its way out
    assert orphan_end["time"] - killed < HEAD_PATIENCE / 2  # told by the new attempt, not by the head's silence
    assert log[second_start]["step"] == orphan_end["step"]  # and resumed from there: no step trained twice
    assert store.get(run_id).status == "stopped"


def test_a_task_whose_head_went_silent_checkpoints_and_ends(tmp_path, job, cluster):
    job.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "elsewhere").replace("steps: 20", f"steps: {LONG}"))
    run_id = queue(tmp_path)
    store = Store(tmp_path / "s.db")
    code = ("import sys\nfrom nnkit.experiments import Store\nfrom nnkit.experiments.cluster import DaskHead\n"
            "sys.exit(DaskHead(Store('s.db'), sys.argv[1], 'runs', once=True, head_patience=6).run())")
    head = subprocess.Popen([sys.executable, "-c", code, cluster], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: store.get(run_id).status == "running" and store.get(run_id).step > 5, 120)
        run = store.get(run_id)
        child = json.loads(Path(run.run_dir, "run.json").read_text())["pid"]
        time.sleep(8)  # longer than the patience: the head's words keep the task going
        assert pid_alive(child)
    finally:
        head.kill()
    head.wait(30)
    killed = time.time()
    wait_until(lambda: not pid_alive(child), 60)
    stopped = [e for e in events(run.run_dir) if e["type"] == "status"][-1]
    assert (stopped["state"], stopped["reason"]) == ("stopped", "interrupt") and _latest(run.run_dir) == stopped["step"]
    # After the patience, counted from the head's last word (up to one heartbeat before the kill).
    assert 6 - HEARTBEAT_EVERY <= stopped["time"] - killed < 30


def test_cluster_flags_need_dask_and_counts_are_checked(tmp_path):
    for args, says in ((["--copy-back"], "--dask ADDRESS"), (["--slots", "2"], "--dask ADDRESS"),
                       (["--dask", "tcp://127.0.0.1:1", "--slots", "0"], "--slots must be >= 1")):
        done = nnkit("worker", "--store", "s.db", *args, cwd=tmp_path)
        assert done.returncode == 2 and says in done.stderr, (args, done.stderr)
    assert not (tmp_path / "s.db").exists()  # refused before the store is touched


def test_copied_back_files_land_with_latest_last(tmp_path, monkeypatch):
    """A reader who sees ``latest`` (the test above waits for it) finds the checkpoint it names
    and ``run.json`` already written: ``_files`` sorts ``latest`` before ``run.json``."""
    from nnkit.experiments import cluster as cluster_module
    source = tmp_path / "worker"
    source.mkdir()
    for name, text in (("checkpoint-40.h5", "weights"), ("latest", "checkpoint-40.h5\n"), ("run.json", "{}")):
        (source / name).write_text(text)
    written = []
    real_replace = os.replace

    def recording_replace(partial, target):
        written.append(Path(target).name)
        real_replace(partial, target)

    monkeypatch.setattr(cluster_module.os, "replace", recording_replace)
    files = cluster_module._files(source)
    assert list(files) == ["checkpoint-40.h5", "latest", "run.json"]  # the order they travel in
    cluster_module._unpack(tmp_path / "head", files)
    assert written == ["checkpoint-40.h5", "run.json", "latest"]
    assert (tmp_path / "head" / "latest").read_text() == "checkpoint-40.h5\n"


def test_a_sent_checkpoint_carries_a_latest_naming_it_not_the_run_s_newer_one(tmp_path):
    """The task reads ``latest``, then the files: by then the run may have written a newer
    checkpoint and moved ``latest`` on. What goes to the head names the checkpoint it carries
    (a pointer to one it never got made it resume from an older one). A checkpoint rotated
    away in between sends nothing this round."""
    import base64

    from nnkit.experiments.cluster import _checkpoint_files

    (tmp_path / "checkpoint-40.h5").write_bytes(b"forty")
    (tmp_path / "checkpoint-50.h5").write_bytes(b"fifty")
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "latest").write_text("checkpoint-50.h5\n")  # moved on after 40 was read
    files = _checkpoint_files(tmp_path, "checkpoint-40.h5")
    assert sorted(files) == ["checkpoint-40.h5", "latest", "run.json"]
    assert base64.b64decode(files["latest"]) == b"checkpoint-40.h5\n"
    assert base64.b64decode(files["checkpoint-40.h5"]) == b"forty"
    assert _checkpoint_files(tmp_path, "checkpoint-30.h5") is None
