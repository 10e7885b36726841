"""Data-parallel training over MPI (nnkit.distributed): real ``mpiexec -n 2`` runs on real MNIST.

A tiny MLP, a global batch of 33 (uneven shards: 16 and 17), a few steps. Two ranks must give
the parameters of one rank with the same global batch (to float32 reduction tolerance), with
Dropout and BatchNormalization too, from ``nnkit train``, ``fit`` and the per-layer loop
(``World.reduce`` or ``AllReduceUpdater``); two 2-rank runs must be bit-identical; a run must
resume on another number of ranks; a 2-rank run must be steerable through ``nnkit ctl`` and
sleep while paused; a killed rank must end the job promptly and leave a checkpoint that resumes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pytest

from helpers import DATA, ROOT, wait_until
from nnkit.training import checkpoints

MPIEXEC = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's launcher (the mpi extra)
STEPS = 6
JOB = """name: "tiny_mpi"
seed: 0
model {
  layer { image_input { height: 28 width: 28 } }
  layer { dense { output_dim: 32 } }
  layer { activation { type: relu } }
  layer { dense { output_dim: 10 } }
  loss: softmaxloss
  metric: "accuracy"
}
updater { type: sgd lr: 0.1 momentum: 0.9 lr_type: fixed }
data {
  dataset: "mnist"
  scale: 0.00392156862745098
  train { batch_size: 33 shuffle: true limit: 2000 }
  test { batch_size: 500 limit: 1000 }
}
run { steps: %d display_freq: 2 test_freq: 0 }
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _launch(ranks: int, *args: str) -> list[str]:
    return ([str(MPIEXEC), "-n", str(ranks)] if ranks > 1 else []) + [sys.executable, *args]


def _train(tmp_path: Path, name: str, ranks: int, *extra: str, steps: int = STEPS, job_text: str | None = None
           ) -> Path:
    """``[mpiexec -n ranks] nnkit train`` into tmp_path/name; returns the run directory."""
    job = tmp_path / "job.conf"
    job.write_text((job_text or JOB) % steps)
    run_dir = tmp_path / name
    done = subprocess.run(_launch(ranks, "-m", "nnkit.cli", "train", str(job), "--data-dir", str(DATA),
                                  "--run-dir", str(run_dir), *extra),
                          env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return run_dir


def _params(run_dir: Path, state: bool = False) -> dict[str, np.ndarray]:
    """The latest checkpoint's parameters (and with ``state`` the layer state) by name."""
    with h5py.File(checkpoints.latest_checkpoint(run_dir)) as f:
        groups = [f["model/params"]] + ([f["model/state"]] if state else [])
        return {f"{group.name}/{name}": group[name][()] for group in groups for name in group}


def _test_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())["test"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("one"), "r1", 1)


def test_two_ranks_give_the_one_rank_result_and_are_bit_identical(one_rank, tmp_path):
    a, b = _train(tmp_path, "a", 2), _train(tmp_path, "b", 2)
    ref, pa, pb = _params(one_rank), _params(a), _params(b)
    assert sorted(ref) == sorted(pa) == sorted(pb) and len(ref) == 4
    for name in ref:
        np.testing.assert_allclose(pa[name], ref[name], rtol=1e-4, atol=1e-6, err_msg=name)
        assert np.array_equal(pa[name], pb[name]), name  # a fixed reduction order: no timing in it
    for key, value in _test_metrics(one_rank).items():
        assert _test_metrics(a)[key] == pytest.approx(value, rel=1e-4), key
    # Rank 0 alone writes; its events describe the global batch (both shards' loss).
    losses = [json.loads(line) for line in (a / "events.jsonl").read_text().splitlines()]
    losses = [e for e in losses if e["type"] == "loss"]
    assert losses and all(e["size"] == 33 for e in losses)
    ref_losses = [json.loads(line) for line in (one_rank / "events.jsonl").read_text().splitlines()]
    ref_losses = [e for e in ref_losses if e["type"] == "loss"]
    # Loss events are at least 50 ms apart: compare the steps both runs logged (the last one always).
    mine, ref = {e["step"]: e["loss"] for e in losses}, {e["step"]: e["loss"] for e in ref_losses}
    common = sorted(set(mine) & set(ref))
    assert STEPS in common
    assert [mine[k] for k in common] == pytest.approx([ref[k] for k in common], rel=1e-5)


@pytest.mark.parametrize("first,then", [(1, 2), (2, 1)])
def test_resume_with_another_number_of_ranks_at_the_same_global_batch(one_rank, tmp_path, first, then):
    half = _train(tmp_path, "half", first, steps=STEPS // 2)
    _train(tmp_path, "half", then, "--resume", "auto")  # the job's run.steps is the total
    ref, resumed = _params(one_rank), _params(half)
    for name in ref:
        np.testing.assert_allclose(resumed[name], ref[name], rtol=1e-4, atol=1e-6, err_msg=name)


def _start_fit(tmp_path: Path, steps: int, ranks: int = 2, mode: str = "distributed",
               job: str = JOB) -> subprocess.Popen:
    (tmp_path / "job.conf").write_text(job % steps)
    out = tmp_path / "out"
    out.mkdir()
    return subprocess.Popen(_launch(ranks, str(ROOT / "tests" / "mpi_fit.py"), str(tmp_path / "job.conf"),
                                    str(DATA), str(out), str(steps), mode),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rank_result(tmp_path: Path, rank: int) -> dict[str, np.ndarray]:
    with np.load(tmp_path / "out" / f"rank{rank}.npz") as f:
        return dict(f)


def test_fit_distributed_from_python_matches_a_local_fit(tmp_path):
    (local,), (r0, r1) = _fit_results(tmp_path, [(1, "local"), (2, "distributed")])
    assert int(r0["step"]) == int(r1["step"]) == STEPS
    for name in local:
        assert np.array_equal(r0[name], r1[name]), name  # every rank applied the same update
        np.testing.assert_allclose(r0[name], local[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert not (tmp_path / "distributed-2" / "out" / "run" / "rank1").exists()


def _fit_results(tmp_path: Path, runs: Sequence[tuple[int, str]], job: str = JOB
                 ) -> list[list[dict[str, np.ndarray]]]:
    """Runs mpi_fit.py once per ``(ranks, mode)``, one after the other; every rank's result."""
    results = []
    for ranks, mode in runs:
        where = tmp_path / f"{mode}-{ranks}"
        where.mkdir()
        proc = _start_fit(where, STEPS, ranks, mode, job)
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, output
        results.append([_rank_result(where, r) for r in range(ranks)])
    return results


def _with(*layers: str) -> str:
    """JOB with ``layers`` between the hidden layer's activation and the output layer."""
    anchor = "  layer { activation { type: relu } }\n"
    return JOB.replace(anchor, anchor + "".join(f"  layer {{ {conf} }}\n" for conf in layers))


DROPOUT, BATCH_NORM = "dropout { ratio: 0.4 }", "batch_norm { momentum: 0.8 }"


@pytest.mark.parametrize("layers", [(DROPOUT,), (BATCH_NORM,), (BATCH_NORM, DROPOUT)],
                         ids=["dropout", "batchnorm", "both"])
def test_dropout_and_batchnorm_do_not_depend_on_the_number_of_ranks(tmp_path, layers):
    # One process with distributed=True (a world of one rank) against mpiexec -n 2, global batch 33.
    (one,), (r0, r1) = _fit_results(tmp_path, [(1, "distributed"), (2, "distributed")], _with(*layers))
    names = [k for k in one if "." in k]
    assert len(names) == 4 + 4 * (BATCH_NORM in layers)  # BN: weight, bias, moving mean, variance
    for name in names:
        assert np.array_equal(r0[name], r1[name]), name
        np.testing.assert_allclose(r0[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)
    ((local,),) = _fit_results(tmp_path, [(1, "local")], _with(*layers))
    if DROPOUT in layers:  # the masks matter: the layer's own generator (a plain fit) gives others
        assert not np.allclose(local["dense_2.weight"], one["dense_2.weight"], rtol=1e-3, atol=1e-5)
    else:  # synchronised statistics over one rank are the plain layer's
        for name in names:
            np.testing.assert_allclose(local[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_batch_of_fewer_examples_than_ranks_trains_as_one_process_would(tmp_path):
    # 100 examples in batches of 33: every epoch ends with a batch of one, which both ranks take
    # whole (weighted 1/2); six steps cross into the second epoch.
    job = _with(BATCH_NORM, DROPOUT).replace("limit: 2000", "limit: 100")
    (one,), (r0, r1) = _fit_results(tmp_path, [(1, "distributed"), (2, "distributed")], job)
    assert int(r0["step"]) == int(one["step"]) == STEPS
    names = [k for k in one if "." in k]
    assert len(names) == 8
    for name in names:
        assert np.array_equal(r0[name], r1[name]), name
        np.testing.assert_allclose(r0[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_resumed_two_rank_run_with_dropout_and_batchnorm_continues_exactly(tmp_path):
    # The masks' key is the layer generator's state, which the checkpoint holds; the step is the trainer's.
    job = _with(BATCH_NORM, DROPOUT)
    straight = _train(tmp_path, "straight", 2, job_text=job)
    half = _train(tmp_path, "half", 2, steps=STEPS // 2, job_text=job)
    _train(tmp_path, "half", 2, "--resume", "auto", job_text=job)
    ref, resumed = _params(straight, state=True), _params(half, state=True)
    assert len(ref) == 8  # 6 parameters, the moving mean and variance
    for name in ref:
        assert np.array_equal(resumed[name], ref[name]), name


@pytest.mark.parametrize("mode", ["layers-distributed", "layers-updater"])
def test_the_per_layer_loop_over_two_ranks_matches_one_process(tmp_path, mode):
    # World.reduce before the updates, or AllReduceUpdater: Update(step, layer) reduces that layer.
    (local,), (r0, r1) = _fit_results(tmp_path, [(1, "layers"), (2, mode)])
    assert len(local) == 4
    for name in local:
        assert np.array_equal(r0[name], r1[name]), name
        np.testing.assert_allclose(r0[name], local[name], rtol=1e-4, atol=1e-6, err_msg=name)


class _RecordingWorld:
    """Stands in for a World in one process: records what reduce is given, halves the gradients."""

    def __init__(self) -> None:
        self.reduced: list[list[str]] = []

    def reduce(self, params, logs) -> None:
        self.reduced.append([p.full_name for p in params])
        for p in params:
            p.grad *= 0.5


def test_all_reduce_updater_reduces_the_layer_then_is_the_wrapped_updater():
    from nnkit import SGD, Activation, Dense
    from nnkit.distributed import AllReduceUpdater
    world = _RecordingWorld()
    dense, relu = Dense(3, name="d"), Activation("relu", name="r")
    dense.build((2,))
    dense.params[0].grad[...] = 1.0
    dense.params[1].grad[...] = 1.0
    before = dense.params[0].data.copy()
    sgd = AllReduceUpdater(SGD(lr=0.1), world)
    assert sgd.Update(1, dense) and sgd.Update(1, relu)
    assert world.reduced == [["d/weight", "d/bias"]]  # a layer without parameters needs no collective
    np.testing.assert_allclose(dense.params[0].data, before - 0.1 * 0.5, rtol=1e-6)  # the reduced gradient
    sgd.lr = 0.01  # settings and state are the wrapped updater's
    assert sgd.updater.lr == sgd.lr == 0.01 and sgd.last_step == 1
    assert sgd.state_dict() == sgd.updater.state_dict()


def _ctl(run_dir: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "nnkit.cli", "ctl", "--wait", "120", str(run_dir), *args],
                          env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_steer_a_two_rank_run_with_nnkit_ctl(tmp_path):
    proc = _start_fit(tmp_path, 10**6)
    run_dir = tmp_path / "out" / "run"
    try:
        wait_until(lambda: (tmp_path / "out" / "pid1").exists() and (run_dir / "events.jsonl").exists(),
                   timeout=120)
        assert "acknowledged" in _ctl(run_dir, "pause")
        pids = [int((tmp_path / "out" / f"pid{r}").read_text()) for r in (0, 1)]
        cpu = [_cpu_seconds(p) for p in pids]
        time.sleep(2.0)  # paused ranks sleep: rank 0 on its command channel, rank 1 in the broadcast
        spent = [_cpu_seconds(p) - before for p, before in zip(pids, cpu)]
        assert all(s < 0.3 for s in spent), spent  # a spinning rank would spend ~2 s (or its core's share)
        assert "acknowledged" in _ctl(run_dir, "set", "lr=0.05", "batch_size=40")  # applied while paused
        assert "acknowledged" in _ctl(run_dir, "tell_state")
        _ctl(run_dir, "resume")
        _ctl(run_dir, "stop")
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    r0, r1 = _rank_result(tmp_path, 0), _rank_result(tmp_path, 1)
    assert float(r0["lr"]) == float(r1["lr"]) == 0.05  # the command reached rank 1 too
    assert int(r0["batch_size"]) == int(r1["batch_size"]) == 40  # still the global batch
    assert int(r0["step"]) == int(r1["step"]) < 10**6  # both stopped at the same batch
    for name in r0:
        assert np.array_equal(r0[name], r1[name]), name


def test_a_killed_rank_ends_every_rank_promptly_and_the_last_checkpoint_resumes(tmp_path):
    proc = _start_fit(tmp_path, 10**6)
    run_dir = tmp_path / "out" / "run"
    try:
        wait_until(lambda: (tmp_path / "out" / "pid1").exists() and (run_dir / "events.jsonl").exists(),
                   timeout=120)
        assert "acknowledged" in _ctl(run_dir, "checkpoint")  # then training goes on
        saved = checkpoints.latest_checkpoint(run_dir)
        wait_until(lambda: _steps_logged(run_dir) > _steps_logged(run_dir, before=saved), timeout=60)
        os.kill(int((tmp_path / "out" / "pid1").read_text()), signal.SIGKILL)
        killed = time.monotonic()
        output, _ = proc.communicate(timeout=60)  # the launcher ends rank 0 rather than let it hang
        # The launcher may return while the kernel still tears rank 0 down (a loaded machine shows it
        # running for a moment): ended means gone or a zombie, within the same bound.
        pid0 = int((tmp_path / "out" / "pid0").read_text())
        wait_until(lambda: _ended(pid0), timeout=15)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert took < 15, took
    # A clear error either way: the launcher's report of which rank was killed, or (when rank 0's
    # all-reduce notices first, which a loaded machine makes likely) MPI's abort naming the collective.
    assert ("BAD TERMINATION" in output and "Killed" in output) or \
        ("rank 0" in output and "Allreduce" in output), output
    # The last checkpoint is intact: it loads, and training continues from it.
    assert checkpoints.latest_checkpoint(run_dir) == saved
    import nnkit
    from nnkit.config import load_job
    model = nnkit.load(saved)
    step = model.trainer.global_step
    assert step > 0
    x, y = load_job(tmp_path / "job.conf", [], data_dir=DATA).load_data("train")
    model.fit(x, y, batch_size=33, steps=2, verbose=0)
    assert model.trainer.global_step == step + 2
    assert all(np.isfinite(p.data).all() for p in model.params)


def _ended(pid: int) -> bool:
    """True once process ``pid`` is gone or a zombie (it runs no more)."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def _steps_logged(run_dir: Path, before: Path | None = None) -> int:
    """The last step of the run's loss events (``before``: the step the checkpoint holds)."""
    if before is not None:
        with h5py.File(before) as f:
            return int(f["trainer/global_step"][()])
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line]
    return max((e.get("step", 0) for e in events if e["type"] == "loss"), default=0)


def test_import_nnkit_does_not_import_mpi4py():
    env = {k: v for k, v in _env().items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")}
    code = ("import sys, nnkit, nnkit.cli, nnkit.distributed; nnkit.Sequential; "
            "assert not nnkit.distributed.launched_by_mpi(); "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
