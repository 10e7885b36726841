"""The experiment store's two costs: what recording adds to a training step, and how fast the
list page's query is over 10,000 recorded runs.

    PYTHONPATH=. python benchmarks/experiments.py              # both, writes benchmarks/EXPERIMENTS.md
    PYTHONPATH=. python benchmarks/experiments.py --pairs 3 --runs 2000 --no-write

Recording overhead: in one process, the same MLP (784-256-10, ReLU, softmax loss, SGD with
momentum, batch 64, float32) trains on the same random data with a run directory, once with
the recorder attached and once without (the experiments' run-directory observer
unregistered), alternating which goes first, ``--pairs`` times. Each fit runs ``--steps``
steps over epochs of ``--epoch-examples`` examples with a validation pass each epoch, so the
recorder sees an epoch event every 16 steps (written within a second, coalesced) besides the
per-batch events. The
ratio is the median over pairs of (time with) / (time without), in wall time and in the CPU time
of all the process's threads (the writer thread included; less sensitive to other work on a
shared machine); the run directory's
``events.jsonl`` is written in both. On a busy shared machine these ratios scatter by tens of percent, far more than the cost
being measured, so the parts are measured too: the subscriber's cost per event in the training
thread (folding a batch event into the summary, timed alone), the events per step, and the
number and duration of the store writes of one recorded fit; their sum over the fit's time
bounds what recording costs.

Scale: ``--runs`` records (about 30 config fields, 6 metrics and 2 tags each, four owners) are
written to a fresh store; then the list page's query, ``Store.runs(where=..., sort=metric,
limit=50)``, and its ``count`` are each timed ``--repeats`` times; the medians are reported.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nnkit  # noqa: E402
from nnkit.experiments import Store  # noqa: E402
from nnkit.experiments import recorder as recorder_module  # noqa: E402
from nnkit.experiments.summary import RunSummary  # noqa: E402


def _model(seed: int) -> nnkit.Sequential:
    model = nnkit.Sequential([nnkit.Dense(256), nnkit.Activation("relu"), nnkit.Dense(10)], input_shape=(784,),
                             seed=seed)
    model.compile(nnkit.SGD(lr=0.05, momentum=0.9), "softmaxloss", metrics=["accuracy"])
    return model


def _fit_seconds(recording: bool, steps: int, x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray,
                 work: Path, k: int) -> tuple[float, float, float]:
    """Per step of one fit: wall seconds, CPU seconds of every thread of the process, and the
    median of the batch-to-batch times."""
    if recording:
        recorder_module.configure()
    else:
        recorder_module._registered.pop("remove")()
    try:
        model = _model(seed=k + 1)
        model.build()
        epochs = max(1, steps * 64 // len(x))
        ends: list[float] = []
        clock = nnkit.training.LambdaCallback(on_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
        start, cpu = time.perf_counter(), time.process_time()
        model.fit(x, y, epochs=epochs, batch_size=64, validation_data=(xv, yv), verbose=0, callbacks=[clock],
                  run_dir=work / f"{'with' if recording else 'without'}-{k}")
        steps = model.trainer.global_step
        batch = statistics.median(b - a for a, b in zip(ends, ends[1:]))  # robust to other work's spikes
        return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps, batch
    finally:
        recorder_module.configure()


def overhead(pairs: int, steps: int, epoch_examples: int, work: Path) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(epoch_examples, 784)).astype(np.float32)
    y = rng.integers(0, 10, epoch_examples)
    xv, yv = x[:256], y[:256]
    _fit_seconds(True, 64, x, y, xv, yv, work, -1)  # warm-up: imports, allocation, the store file
    ratios, cpu_ratios, batch_ratios, with_times, without_times = [], [], [], [], []
    for k in range(pairs):
        order = (True, False) if k % 2 == 0 else (False, True)
        times = {recording: _fit_seconds(recording, steps, x, y, xv, yv, work, k) for recording in order}
        with_times.append(times[True][0])
        without_times.append(times[False][0])
        ratios.append(times[True][0] / times[False][0])
        cpu_ratios.append(times[True][1] / times[False][1])
        batch_ratios.append(times[True][2] / times[False][2])
        print(f"  pair {k + 1}: with {1000 * times[True][0]:.3f} ms/step, without {1000 * times[False][0]:.3f} "
              f"ms/step, ratio {ratios[-1]:.4f}; CPU ratio {cpu_ratios[-1]:.4f}; median batch ratio "
              f"{batch_ratios[-1]:.4f}", file=sys.stderr)
    # The parts: how many events and store writes a recorded fit makes, and what each costs.
    saves = {"n": 0, "seconds": 0.0}
    original = Store.save

    def counted(self, *args, **kwargs):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            saves["n"] += 1
            saves["seconds"] += time.perf_counter() - start
    Store.save = counted
    try:
        step_seconds, _, _ = _fit_seconds(True, steps, x, y, xv, yv, work, pairs)
    finally:
        Store.save = original
    events = len((work / f"with-{pairs}" / "events.jsonl").read_text().splitlines())
    # The subscriber's own cost per batch event, in the training thread.
    summary = RunSummary(id="x")
    event = {"schema": 1, "run": "x", "seq": 1, "time": time.time(), "type": "loss", "step": 1, "epoch": 0,
             "batch": 1, "loss": 2.3, "accuracy": 0.1, "lr": 0.05, "images_per_s": 1000.0}
    recorder = recorder_module.Recorder(Store(work / "per-event.db"), summary)
    n = 100_000
    start = time.perf_counter()
    for _ in range(n):
        recorder(event)
    per_event = (time.perf_counter() - start) / n
    recorder.close()
    fit_steps = max(1, steps * 64 // len(x)) * (len(x) // 64)
    per_step = (events / fit_steps * per_event + saves["seconds"] / fit_steps) / step_seconds
    return {"events_per_step": events / fit_steps, "writes": saves["n"], "write_ms": 1000 * saves["seconds"] / saves["n"],
            "fit_seconds": step_seconds * fit_steps, "parts_fraction": per_step,"ratio": statistics.median(ratios), "with_ms": 1000 * statistics.median(with_times),
            "without_ms": 1000 * statistics.median(without_times), "min_ratio": min(ratios),
            "max_ratio": max(ratios), "per_event_us": 1e6 * per_event, "cpu_ratio": statistics.median(cpu_ratios),
            "batch_ratio": statistics.median(batch_ratios)}


def scale(runs: int, repeats: int, work: Path) -> dict[str, float]:
    store = Store(work / "scale.db")
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    owners = ["ann", "bob", "carol", "dave"]
    for i in range(runs):
        lr = float(10 ** rng.uniform(-4, -0.5))
        summary = RunSummary(id=f"{i:012x}", name=f"run-{i}", owner=owners[i % 4], tags=(f"sweep{i % 10}", "bench"),
                             status="finished" if i % 7 else "failed", created=1.7e9 + i, started=1.7e9 + i,
                             ended=1.7e9 + i + float(rng.uniform(10, 1000)), step=1000, total_steps=1000)
        for name in ("test_error", "train_error", "loss", "val_loss", "test_loss", "accuracy"):
            summary.add_metric(name, float(rng.uniform(0.01, 1)), 1000)
        params = {f"model.layer.{j}.dense.output_dim": str(int(rng.integers(8, 512))) for j in range(12)}
        params.update({f"model.layer.{j}.name": f"dense_{j}" for j in range(12)})
        params.update({"updater.lr": repr(lr), "updater.momentum": "0.9", "updater.type": "sgd",
                       "data.dataset": "mnist", "data.train.batch_size": str(int(rng.choice([32, 64, 128]))),
                       "run.steps": "1000", "seed": str(i)})
        store.save(summary, params)
    fill = time.perf_counter() - start

    def median_time(call) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    where = "updater.lr<0.01 and test_error<=0.5"
    page = median_time(lambda: store.runs(where=where, sort="test_error", descending=False, limit=50))
    count = median_time(lambda: store.count(where=where))
    plain = median_time(lambda: store.runs(limit=50))
    owner = median_time(lambda: store.runs(owner="bob", tags=["bench"], sort="duration", limit=50))
    matched = store.count(where=where)
    return {"runs": runs, "fill_s": fill, "page_ms": 1000 * page, "count_ms": 1000 * count,
            "plain_ms": 1000 * plain, "owner_ms": 1000 * owner, "matched": matched, "where": where}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--epoch-examples", type=int, default=1024, help="examples per epoch (16 steps)")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print, do not write EXPERIMENTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NNKIT_HOME"] = tmp  # never the user's store
        work = Path(tmp)
        print("recording overhead...", file=sys.stderr)
        cost = overhead(args.pairs, args.steps, args.epoch_examples, work)
        print("store scale...", file=sys.stderr)
        size = scale(args.runs, args.repeats, work)
    lines = [
        "# The experiment store: recording overhead and list speed",
        "",
        f"Produced by `PYTHONPATH=. python benchmarks/experiments.py` on {time.strftime('%Y-%m-%d')}: "
        f"{platform.machine()}, {os.cpu_count()} cores (shared with other work while it ran), Python "
        f"{platform.python_version()}, numpy {np.__version__}, SQLite {__import__('sqlite3').sqlite_version}; "
        f"load average {os.getloadavg()[0]:.1f} at the end. See the script's docstring for the method.",
        "",
        "## Recording cost per training step",
        "",
        f"MLP 784-256-10, batch 64, {args.steps} steps per fit, an epoch (with a validation pass: status, "
        f"epoch and test events) every {args.epoch_examples // 64} steps; "
        f"{args.pairs} alternating pairs in one process.",
        "",
        "| with recorder ms/step | without ms/step | wall ratio with/without | min / max wall ratio | "
        "CPU ratio (all threads) | median-batch ratio | subscriber per batch event |",
        "|---|---|---|---|---|---|---|",
        f"| {cost['with_ms']:.3f} | {cost['without_ms']:.3f} | {cost['ratio']:.4f} | {cost['min_ratio']:.4f} / "
        f"{cost['max_ratio']:.4f} | {cost['cpu_ratio']:.4f} | {cost['batch_ratio']:.4f} | "
        f"{cost['per_event_us']:.2f} us |",
        "",
        "(Ratios: medians over the pairs. The median-batch ratio compares the median batch-to-batch "
        "time of the two fits of a pair, which other work on the machine disturbs least.)",
        "",
        f"From the parts (one more recorded fit): {cost['events_per_step']:.2f} events per step at "
        f"{cost['per_event_us']:.2f} us each in the training thread, and {cost['writes']} store writes in "
        f"{cost['fit_seconds']:.1f} s at {cost['write_ms']:.2f} ms each in the writer thread: together "
        f"{100 * cost['parts_fraction']:.3f}% of a step's time, counted as if it all stopped training "
        "(it does not: the writes run in their own thread, in SQLite, without the GIL).",
        "",
        "## The list page over many runs",
        "",
        f"{size['runs']} runs written in {size['fill_s']:.1f} s (one transaction each). Median of "
        f"{args.repeats} calls:",
        "",
        "| query | median ms |",
        "|---|---|",
        f"| `runs(where={size['where']!r}, sort='test_error', descending=False, limit=50)` "
        f"({size['matched']} match) | {size['page_ms']:.1f} |",
        f"| `count(where=...)` (same filter) | {size['count_ms']:.1f} |",
        f"| `runs(limit=50)` (newest first) | {size['plain_ms']:.1f} |",
        f"| `runs(owner='bob', tags=['bench'], sort='duration', limit=50)` | {size['owner_ms']:.1f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        (ROOT / "benchmarks" / "EXPERIMENTS.md").write_text(text)


if __name__ == "__main__":
    main()
