"""`nnkit queue` and `nnkit worker`, with real processes: racing workers, a killed worker, Ctrl-C,
and `nnkit ctl RUN` by id from the store."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DATA, ROOT, wait_until
from helpers import run_events as train_events

from nnkit.experiments import Store
from nnkit.experiments.store import pid_alive

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
JOB = """name: "tiny"
seed: 3
model {{
  layer {{ image_input {{ height: 28 width: 28 }} }}
  layer {{ dense {{ output_dim: 8 }} }}
  layer {{ activation {{ type: relu }} }}
  layer {{ dense {{ output_dim: 10 }} }}
}}
updater {{ lr: 0.05 momentum: 0.9 }}
data {{
  dataset: "mnist"
  dir: "{data}"
  scale: 0.00392156862745098
  train {{ batch_size: 8 limit: 200 }}
}}
run {{ steps: {steps} display_freq: 1 checkpoint_freq: 25 }}
"""
LONG = 1_000_000  # a run that ends only when told to


def nnkit(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnkit.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def start_worker(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nnkit.cli", "worker", "--store", "s.db", "--runs-dir", "runs",
                             "--poll", "0.1", *args], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def job(tmp_path: Path) -> Path:
    path = tmp_path / "job.conf"
    path.write_text(JOB.format(data=DATA, steps=2))
    return path


def queue(tmp_path: Path, *args: str) -> str:
    done = nnkit("queue", "job.conf", "--store", "s.db", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"[0-9a-f]{12}\n", done.stdout)
    return done.stdout.strip()


def test_a_bad_job_queues_nothing_and_a_good_one_keeps_its_overrides(tmp_path, job):
    bad = nnkit("queue", "job.conf", "--store", "s.db", "--set", "updater.lr=fast", cwd=tmp_path)
    assert bad.returncode == 2 and "updater.lr" in bad.stderr and not bad.stdout
    missing = nnkit("queue", "job.conf", "--store", "s.db", "--data-dir", tmp_path / "nowhere", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert Store(tmp_path / "s.db").count() == 0
    run_id = queue(tmp_path, "--set", "run.steps=7", "--name", "seven", "--tag", "q", "--owner", "ann",
                   "--retries", "2")
    run = Store(tmp_path / "s.db").get(run_id)
    assert (run.status, run.name, run.owner, run.tags, run.run_dir) == ("queued", "seven", "ann", ("q",), None)
    assert "steps: 7" in run.config_text and Store(tmp_path / "s.db").params(run_id)["run.steps"] == "7"
    # `nnkit ctl RUN stop` on a queued run cancels it; other commands have no run to go to yet.
    refused = nnkit("ctl", run_id, "pause", "--store", "s.db", cwd=tmp_path)
    assert refused.returncode == 2 and "queued" in refused.stderr
    stopped = nnkit("ctl", "seven", "stop", "--store", "s.db", cwd=tmp_path)
    assert stopped.returncode == 0 and "cancelled" in stopped.stdout
    assert Store(tmp_path / "s.db").get(run_id).status == "stopped"
    idle = start_worker(tmp_path, "--once")
    assert idle.wait(60) == 0 and "attempt" not in idle.communicate()[1]  # nothing left to take


def test_eight_workers_take_every_run_once(tmp_path, job):
    ids = [queue(tmp_path, "--set", f"run.steps={1 + i % 3}") for i in range(3)]
    store = Store(tmp_path / "s.db")
    from nnkit.experiments.queue import enqueue  # the rest straight into the store: quicker
    text = store.get(ids[0]).config_text
    ids += [enqueue(store, text, name=f"job{i}") for i in range(13)]
    workers = [start_worker(tmp_path, "--once") for _ in range(8)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0] * 8, [err for _, err in outputs]
    taken = re.findall(r"run ([0-9a-f]{12}) \(.*\), attempt (\d+)", "".join(err for _, err in outputs))
    assert sorted(run_id for run_id, _ in taken) == sorted(ids)  # each once: none twice, none skipped
    assert {attempt for _, attempt in taken} == {"1"}
    runs = store.runs()
    assert len(runs) == 16 and {r.status for r in runs} == {"finished"}  # the queued records, no new ones
    assert len({r.run_dir for r in runs}) == 16
    for run in runs:
        info = json.loads(Path(run.run_dir, "run.json").read_text())
        assert info["id"] == run.id and Path(run.run_dir).name == f"{run.name}-{run.id}"
        assert run.step == int(store.params(run.id)["run.steps"])


def _resumed_step(run_dir: str) -> int:
    starts = [e for e in train_events(run_dir) if e["type"] == "status" and e["state"] == "started"]
    assert len(starts) == 2, starts
    return starts[1]["step"]


def _reference_loss(tmp_path: Path, step: int) -> float:
    """The loss at ``step`` of the same job trained without interruption."""
    done = nnkit("train", "job.conf", "--set", f"run.steps={step}", "--run-dir", "reference",
                 "--store", "other.db", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    return [e for e in train_events(str(tmp_path / "reference")) if e["type"] == "train"][-1]["loss"]


def _stop_when_past(tmp_path: Path, store: Store, run_id: str, step: int, worker: subprocess.Popen) -> None:
    wait_until(lambda: store.get(run_id).status == "running" and store.get(run_id).step > step, 120)
    stop = nnkit("ctl", run_id, "stop", "--store", "s.db", cwd=tmp_path)  # by id, through the store
    assert stop.returncode == 0, stop.stderr
    assert worker.wait(120) == 0, worker.communicate()


def test_a_killed_worker_s_run_is_requeued_and_resumes_exactly(tmp_path, job):
    job.write_text(JOB.format(data=DATA, steps=LONG))
    run_id = queue(tmp_path, "--retries", "1")
    store = Store(tmp_path / "s.db")
    worker = start_worker(tmp_path)
    def checkpointed() -> int:  # the step of the run's latest checkpoint (0: none yet)
        run_dir = store.get(run_id).run_dir
        latest = Path(run_dir or tmp_path / "none", "latest")
        found = re.search(r"\d+", latest.read_text()) if latest.exists() else None
        return int(found.group()) if found else 0

    wait_until(lambda: checkpointed() >= 50, 120)  # rotated files come and go: read `latest`
    run = store.get(run_id)
    child = run.pid
    assert child != worker.pid and pid_alive(child)  # the child's recorder keeps the record
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    wait_until(lambda: not pid_alive(child), 30)  # the child died with its worker
    latest = checkpointed()
    assert store.get(run_id).status == "running"  # until someone looks: the liveness check
    second = start_worker(tmp_path, "--once")
    _stop_when_past(tmp_path, store, run_id, latest + 30, second)
    err = second.communicate()[1]
    assert f"run {run_id} was interrupted; requeued" in err and "attempt 2" in err
    assert _resumed_step(run.run_dir) == latest  # from its last checkpoint
    resumed = {e["step"]: e["loss"] for e in train_events(run.run_dir)[::-1] if e["type"] == "train"}
    assert resumed[latest + 30] == _reference_loss(tmp_path, latest + 30)  # exactly as without the kill
    final = store.get(run_id)
    assert final.status == "stopped" and store.count() == 1
    # The retry is spent: killed again, it stays interrupted.
    assert store._read("SELECT attempts, retries FROM jobs") == [(2, 1)]


def test_ctrl_c_on_a_worker_checkpoints_and_requeues_the_run(tmp_path, job):
    job.write_text(JOB.format(data=DATA, steps=LONG))
    run_id = queue(tmp_path)  # no retries: a Ctrl-C uses none
    store = Store(tmp_path / "s.db")
    worker = start_worker(tmp_path)
    wait_until(lambda: store.get(run_id).status == "running" and store.get(run_id).step > 5, 120)
    state = nnkit("ctl", run_id[:6], "tell_state", "--store", "s.db", cwd=tmp_path)
    assert state.returncode == 0 and "tell_state acknowledged" in state.stdout, state.stderr
    worker.send_signal(signal.SIGINT)
    assert worker.wait(120) == 130
    run = store.get(run_id)
    assert run.status == "queued" and run.pid is None
    stopped = [e for e in train_events(run.run_dir) if e["type"] == "status"][-1]
    assert (stopped["state"], stopped["reason"]) == ("stopped", "interrupt")
    assert (Path(run.run_dir) / "latest").read_text().strip() == f"checkpoint-{stopped['step']}.h5"
    second = start_worker(tmp_path, "--max-jobs", "1")
    _stop_when_past(tmp_path, store, run_id, stopped["step"] + 3, second)
    assert _resumed_step(run.run_dir) == stopped["step"]
    assert store.get(run_id).status == "stopped" and store.count() == 1


def test_ctl_by_id_stays_import_light(tmp_path, job):
    """Looking a run up in the store loads no framework (no h5py, no kernels, no model)."""
    run_id = queue(tmp_path)
    code = ("import sys\nfrom nnkit.cli import main\nstatus = main(sys.argv[1:])\n"
            "loaded = [m for m in sys.modules if m.split('.')[0] == 'h5py' or m.startswith(('nnkit._kernels', "
            "'nnkit.model', 'nnkit.config', 'nnkit.layers', 'nnkit.checkpoint'))]\n"
            "print(status, loaded)")
    done = subprocess.run([sys.executable, "-c", code, "ctl", run_id, "stop", "--store", "s.db"], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "0 []", (done.stdout, done.stderr)
    assert Store(tmp_path / "s.db").get(run_id).status == "stopped"


def test_a_late_word_from_an_old_claim_leaves_the_new_claim_alone(tmp_path):
    from nnkit.experiments.queue import claim, enqueue, requeue_interrupted, settle
    store = Store(tmp_path / "s.db")
    run_id = enqueue(store, 'name: "x"\n', retries=1)
    first = claim(store, tmp_path / "runs", pid=2**22 + 12345)  # a pid that is no process
    assert first.attempt == 1 and claim(store, tmp_path / "runs") is None  # taken: nothing left
    assert requeue_interrupted(store) == [run_id]  # its process is gone: back in the queue
    second = claim(store, tmp_path / "runs")
    assert (second.attempt, second.run_dir) == (2, first.run_dir)  # the same run directory, to resume
    assert settle(store, first, -9, requeue=True) == "running"  # the old claim's worker: ignored
    assert store.get(run_id).status == "running"
    assert settle(store, second, 1, requeue=False) == "failed"  # the child died without a word
    assert requeue_interrupted(store) == [] and store.get(run_id).status == "failed"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_zombie_is_not_alive():
    """A killed worker's child may stay a zombie until it is reaped: the liveness check sees it dead."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_until(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 30)
    assert not pid_alive(child.pid) and pid_alive(os.getpid())
    child.wait()


RACER = """
import json, os, sys, time
from nnkit.experiments import Store
from nnkit.experiments.queue import cancel, claim
role, ids = sys.argv[1], json.loads(sys.argv[2])
store = Store("s.db")
store.count()  # connected: ready
open(f"ready-{os.getpid()}", "w").close()
while not os.path.exists("go"):
    time.sleep(0.001)
won = []
if role == "claim":  # the oldest first, as workers take them
    while (taken := claim(store, "runs")) is not None:
        won.append(taken.run_id)
else:  # the newest first: the two sides meet somewhere in the middle, and race there
    for run_id in reversed(ids):
        if cancel(store, run_id):
            won.append(run_id)
        time.sleep(0.002)  # paced, or the claimers wait for the write lock all along
print(json.dumps(won))
"""


def test_a_cancelled_run_is_never_claimed_and_a_claimed_one_never_cancelled(tmp_path):
    """Three processes claiming (as workers do) and three cancelling (as `nnkit ctl RUN stop`
    and the web page do) race over 150 queued runs: each run is taken once or cancelled once."""
    from nnkit.experiments.queue import enqueue
    store = Store(tmp_path / "s.db")
    ids = [enqueue(store, 'name: "x"\n', name=f"r{i}") for i in range(150)]
    racers = [subprocess.Popen([sys.executable, "-c", RACER, role, json.dumps(ids)], cwd=tmp_path, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for role in ("claim", "cancel-a", "claim", "cancel-b", "claim", "cancel-c")]
    wait_until(lambda: len(list(tmp_path.glob("ready-*"))) == 6, 120)
    (tmp_path / "go").touch()
    outputs = [r.communicate(timeout=300) for r in racers]
    assert [r.returncode for r in racers] == [0] * 6, [err for _, err in outputs]
    won = [json.loads(out) for out, _ in outputs]
    claimed = won[0] + won[2] + won[4]
    cancelled = won[1] + won[3] + won[5]
    assert len(set(claimed)) == len(claimed) and len(set(cancelled)) == len(cancelled)  # none twice
    assert sorted(claimed + cancelled) == sorted(ids)  # each once: taken or cancelled, never both
    assert claimed and cancelled, "no race: one side took every run"
    jobs = dict(store._read("SELECT run_id, attempts FROM jobs"))
    for run_id in cancelled:
        run = store.get(run_id)
        assert (run.status, run.run_dir, run.pid, jobs[run_id]) == ("stopped", None, None, 0)
    assert {store.get(run_id).status for run_id in claimed} == {"running"}
    assert {jobs[run_id] for run_id in claimed} == {1}


def test_a_queued_run_s_load_roots_reach_its_nnkit_train(tmp_path, job):
    from nnkit.experiments.queue import claim, train_command
    (tmp_path / "pool").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "pool")
    queue(tmp_path, "--load-root", "link", "--load-root", str(tmp_path / "pool" / ".." / "pool"))
    store = Store(tmp_path / "s.db")
    taken = claim(store, tmp_path / "runs")
    pool = str((tmp_path / "pool").resolve())
    assert taken.load_roots == (pool, pool)  # resolved when queued: a link cannot be swapped later
    command = train_command(taken, store)
    assert command[-4:] == ["--load-root", pool, "--load-root", pool]
