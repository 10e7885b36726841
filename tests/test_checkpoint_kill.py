"""SIGKILL at random moments, mid-save included: no work is lost beyond the last save, and
no temporary file survives the next start.

A child process trains a small model into a run directory, checkpointing every EVERY batches
(saves of ~10 MB take tens of ms, so kills land inside them) and reporting each step and
each save on stdout. The parent kills it at random moments, right after a reported save
start or between saves, then checks the checkpoint and starts the next child, which resumes
from it.
"""
from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from nnkit.checkpoint import load_tree

ROOT = Path(__file__).resolve().parents[1]
EVERY = 3  # batches between checkpoints
KILLS = 24

CHILD = f"""
import os, sys, time
import numpy as np
import nnkit
from nnkit.layers import Activation, Dense
from nnkit.training import LambdaCallback, ModelCheckpoint
from nnkit.updaters import SGD

run_dir = sys.argv[1]
path = os.path.join(run_dir, "checkpoint.h5")

def say(*words):
    print(*words, flush=True)

rng = np.random.default_rng(0)
x = rng.standard_normal((2048, 256)).astype(np.float32)
y = rng.integers(0, 10, 2048)
model = nnkit.Sequential([Dense(1024), Activation("tanh"), Dense(1024), Activation("tanh"),
                          Dense(10)], input_shape=(256,), seed=0)  # 10 MB with momentum
model.compile(SGD(lr=0.01, momentum=0.9), "softmaxloss")
began = [0.0]

def before_save(batch, logs):
    step = model.trainer.global_step
    say("step", step)
    if step % {EVERY} == 0:
        began[0] = time.perf_counter()
        say("saving", step)

def after_save(batch, logs):
    step = model.trainer.global_step
    if step % {EVERY} == 0:
        say("saved", step, time.perf_counter() - began[0])

model.fit(x, y, batch_size=64, steps=10**6, verbose=0, run_dir=run_dir,
          resume=path if os.path.exists(path) else None,
          callbacks=[LambdaCallback(on_train_begin=lambda logs: say("start", model.trainer.global_step),
                                    on_batch_end=before_save),
                     ModelCheckpoint(path, every_n_epochs=None, every_n_batches={EVERY}),
                     LambdaCallback(on_batch_end=after_save)])
"""

TEMPORARY = re.compile(r"\.checkpoint\.h5\.(?:(\d+)\.)?[a-z0-9_]{8}\.tmp")  # pid, if named


class Child:
    """A training child process and the lines it prints, read by a thread."""

    def __init__(self, run_dir: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[list[str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, word: str, timeout: float = 30.0, at_least: int = 0) -> list[str]:
        """Waits for a line ``word N ...`` with N >= ``at_least``; returns its fields."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"the child exited: {self.process.stderr.read()[-3000:]}")
            fields = line.split()
            self.seen.append(fields)
            if fields[0] == word and int(fields[1]) >= at_least:
                return fields

    def kill(self) -> None:
        """SIGKILL; then reads what the child printed before it died."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        while (line := self.lines.get(timeout=30)) is not None:
            if line.endswith("\n"):  # the kill may cut the last line short
                self.seen.append(line.split())
        self.process.stderr.close()

    def last(self, word: str) -> int:
        """The step of the last ``word`` line printed (0 if none)."""
        return next((int(f[1]) for f in reversed(self.seen) if f[0] == word), 0)


def temporaries(run_dir: Path) -> list[tuple[str, int | None]]:
    return [(m[0], m[1] and int(m[1])) for m in map(TEMPORARY.fullmatch, os.listdir(run_dir)) if m]


def test_sigkill_at_random_moments_loses_at_most_the_batches_since_the_last_save(
        tmp_path: Path) -> None:
    rng = random.Random(7)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "checkpoint.h5"
    saved_step, save_seconds = 0, 0.03
    mid_save = left_temporaries = 0
    started = time.monotonic()
    for kill in range(KILLS + 1):
        child = Child(run_dir)
        start = int(child.expect("start")[1])
        assert start == saved_step, "the child did not resume from the last checkpoint"
        # The start removed what the killed writers left (the new child's own save aside).
        assert [t for t, pid in temporaries(run_dir) if pid != child.process.pid] == []
        if kill == KILLS:  # the last child is stopped politely: it checkpoints and exits
            child.expect("step", at_least=start + 1)
            child.process.send_signal(signal.SIGTERM)
            assert child.process.wait(timeout=60) == 0, child.process.stderr.read()[-3000:]
            assert temporaries(run_dir) == []
            assert load_tree(path)["trainer"]["global_step"] > saved_step
            break
        if kill % 3:  # two kills in three land inside a save
            saves = rng.randint(1, 3)
            line = child.expect("saving", at_least=start + 1)
            for _ in range(saves - 1):
                line = child.expect("saving", at_least=int(line[1]) + 1)
            time.sleep(rng.uniform(0.0, save_seconds))
        else:
            child.expect("step", at_least=start + rng.randint(1, 2 * EVERY))
            time.sleep(rng.uniform(0.0, 0.01))
        child.kill()
        save_seconds = max(0.005, float(next((f[2] for f in reversed(child.seen)
                                               if f[0] == "saved"), save_seconds)))
        reported_step, reported_saved = child.last("step"), child.last("saved")
        if child.last("saving") > reported_saved:
            mid_save += 1  # killed between a save's start and its end
        left_temporaries += bool(temporaries(run_dir))
        # The checkpoint loads (its checksums hold) and is the last save or the one killed
        # while finishing: at most the batches since the last reported save are lost.
        saved_step = load_tree(path)["trainer"]["global_step"] if path.exists() else 0
        assert reported_saved <= saved_step <= reported_step and saved_step % EVERY == 0
    elapsed = time.monotonic() - started
    print(f"{KILLS} kills in {elapsed:.0f} s: {mid_save} mid-save, {left_temporaries} left a "
          f"temporary file; last save {saved_step}")
    assert mid_save >= KILLS // 3 and left_temporaries >= 3
