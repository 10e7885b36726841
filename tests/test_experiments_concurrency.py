"""Many processes training and recording at once, and a reader: no record lost, never "locked"."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

from nnkit.experiments import Store

from helpers import ROOT

WRITERS = 8
EPOCHS = 150  # 2 steps each: ~150 epoch events per run, most of them a write (see TRAIN)

TRAIN = textwrap.dedent("""
    import sys, warnings
    warnings.simplefilter("always")  # every warning shows on stderr, which the test reads
    import numpy as np, nnkit
    nnkit.experiments.recorder.SOON = 0.0  # no coalescing: about a write per epoch event, to stress the lock
    k, run_dir = int(sys.argv[1]), sys.argv[2]
    rng = np.random.default_rng(k)
    x = rng.normal(size=(64, 6)).astype("float32"); y = rng.integers(0, 3, 64)
    model = nnkit.Sequential([nnkit.Dense(8), nnkit.Activation("relu"), nnkit.Dense(3)], input_shape=(6,), seed=k)
    model.compile(nnkit.SGD(lr=0.02 * (k + 1)), "softmaxloss", metrics=["accuracy"])
    model.fit(x, y, epochs={epochs}, batch_size=32, verbose=0, run_dir=run_dir, validation_data=(x, y))
    print(model.trainer.global_step)
""").format(epochs=EPOCHS)


def test_eight_processes_record_at_once_while_a_reader_reads(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NNKIT_HOME": str(home)}
    store = Store(home / "experiments.db")
    store.count()  # the file exists before the writers race to make it
    reader_errors: list[BaseException] = []
    reads = 0
    done = threading.Event()

    def read() -> None:
        nonlocal reads
        reader = Store(store.path)
        while not done.is_set():
            try:
                for run in reader.runs(sort="test_error", limit=50):
                    reader.metrics(run.id)
                reader.count(where="updater.lr > 0.05")
                reads += 1
            except BaseException as exc:  # noqa: BLE001  (reported below)
                reader_errors.append(exc)
                return
    thread = threading.Thread(target=read)
    thread.start()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", TRAIN, str(k), str(tmp_path / f"run{k}")], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for k in range(WRITERS)]
        outputs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        done.set()
        thread.join(60)
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert out.split() == [str(2 * EPOCHS)]
        assert "locked" not in err.lower() and "warning" not in err.lower() and not err.strip(), err
    assert reader_errors == [] and reads > 0
    runs = {run.run_dir: run for run in store.runs()}
    assert len(runs) == WRITERS
    for k in range(WRITERS):
        run = runs[str((tmp_path / f"run{k}").resolve())]
        assert (run.status, run.step, run.total_steps) == ("finished", 2 * EPOCHS, 2 * EPOCHS)
        assert float(store.params(run.id)["updater.lr"]) == 0.02 * (k + 1)
        assert {"test_error", "val_loss", "loss"} <= set(store.best(run.id))
