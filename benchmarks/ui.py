"""How fast the web dashboard (``nnkit ui``) answers, on this machine: not a test, a measurement.

    PYTHONPATH=. python benchmarks/ui.py [--runs 10000] [--events 1000000] [--repeats 7]

1. The experiments list over a store of ``--runs`` recorded runs: ``GET /api/runs`` for the
   first page (50 runs, what the page asks for), a page of 1,000, and a filtered, sorted query
   (target: under a second).
2. A run of ``--events`` loss events (a million batches): ``GET /api/runs/RUN/series`` the first
   time (the file parsed into the run's Monitor, over as many requests as the page makes: each
   reads a bounded part and says how far it got), then again (cached; only the downsampling),
   then with another smoothing window (target: responsive); and how much the process grew
   (resident memory) while the run was read.
3. Live lag: an event appended to a run's ``events.jsonl`` until it arrives over the page's
   server-sent events stream (target: under a second).

Each figure is the median of ``--repeats`` tries (the first series load is measured once), over
HTTP on 127.0.0.1 against a real uvicorn server in this process, with the real store.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from nnkit.experiments import Store
from nnkit.experiments.summary import RunSummary
from nnkit.ui.server import ThreadedServer, create_app


def timed(call, repeats: int) -> tuple[float, object]:
    """The median wall time of ``repeats`` calls of ``call`` (seconds) and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def resident_mb() -> float:
    """This process's resident memory (MB), from /proc (Linux); NaN elsewhere."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return float("nan")


def fill_store(store: Store, runs: int, run_dir: Path) -> None:
    """``runs`` records with params and metrics, as many runs would leave them."""
    now = time.time()
    for i in range(runs):
        summary = RunSummary(id=f"{i:012x}", name=f"sweep-{i}", owner=("ann", "bob")[i % 2],
                             tags=("sweep", f"lr{i % 5}"), status=("finished", "failed", "stopped")[i % 3],
                             created=now - i * 60, started=now - i * 60, ended=now - i * 60 + 30,
                             run_dir=str(run_dir), step=1000, total_steps=1000,
                             metrics={"test_error": (0.01 + (i % 97) / 1000, 1000)},
                             best={"test_error": 0.01 + (i % 97) / 1000})
        store.save(summary, params={"updater.lr": str(0.001 * (1 + i % 5)), "seed": str(i)})


def write_events(path: Path, n: int) -> None:
    with open(path, "w") as f:
        f.write(json.dumps({"schema": 1, "run": "big", "seq": 0, "time": 1e9, "type": "status",
                            "state": "started", "step": 0}) + "\n")
        for i in range(1, n + 1):
            f.write(json.dumps({"schema": 1, "run": "big", "seq": i, "time": 1e9 + i * 0.05, "type": "loss",
                                "step": i, "epoch": i // 1000, "batch": i % 1000, "loss": 1 / (1 + i / 1e4),
                                "accuracy": 0.9, "size": 64, "lr": 0.01, "images_per_s": 1300.0},
                               separators=(",", ":")) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = tmp / "big"
        big.mkdir()
        start = time.perf_counter()
        write_events(big / "events.jsonl", args.events)
        print(f"wrote {args.events} loss events ({(big / 'events.jsonl').stat().st_size / 2**20:.0f} MB) "
              f"in {time.perf_counter() - start:.1f} s", flush=True)
        store = Store(tmp / "experiments.db")
        start = time.perf_counter()
        fill_store(store, args.runs, big)
        print(f"recorded {args.runs} runs in {time.perf_counter() - start:.1f} s", flush=True)
        rows = []
        with ThreadedServer(create_app(store)) as server, httpx.Client(base_url=server.url, timeout=600) as http:
            def get(path: str, **params):
                response = http.get(path, params=params)
                response.raise_for_status()
                return response.json()
            for label, params in [("list: first page (50 runs)", {"limit": 50}),
                                  ("list: 1,000 runs", {"limit": 1000}),
                                  ("list: where + sort (50 runs)", {"limit": 50, "where": "updater.lr<0.003",
                                                                     "sort": "test_error", "desc": "0"})]:
                seconds, data = timed(lambda: get("api/runs", **params), args.repeats)
                rows.append((label, seconds, f"{data['total']} matching"))
            run = f"{0:012x}"
            # The first look reads the file over several requests (as the page does), each
            # bounded: the longest one is what a user waits for before seeing something.
            gc.collect()
            start, requests, resident = time.perf_counter(), [], resident_mb()
            while True:
                began = time.perf_counter()
                data = get(f"api/runs/{run}/series")
                requests.append(time.perf_counter() - began)
                if data["status"]["loaded"] >= 1:
                    break
            cold = time.perf_counter() - start
            gc.collect()
            grown = resident_mb() - resident
            cost = data["figures"][0]["channels"][0]
            rows.append((f"series: first load, whole file ({args.events} events)", cold,
                         f"{len(requests)} requests; {cost['count']} points -> {len(cost['steps'])} sent"))
            rows.append(("series: first load, longest single request", max(requests),
                         f"median request {statistics.median(requests) * 1000:.0f} ms; "
                         f"the process grew by {grown:.0f} MB resident"))
            seconds, _ = timed(lambda: get(f"api/runs/{run}/series"), args.repeats)
            rows.append(("series: again (cached)", seconds, "downsampled to 2000 per channel"))
            seconds, _ = timed(lambda: get(f"api/runs/{run}/series", **{"window.train cost": 500}),
                               args.repeats)
            rows.append(("series: another smoothing window (500)", seconds, "moving average recomputed"))
            rows.append(live_lag(server.url, store, tmp, args.repeats))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'what':<{width}}  median      note")
    for label, seconds, note in rows:
        print(f"{label:<{width}}  {seconds * 1000:8.1f} ms  {note}")
    return 0


def live_lag(url: str, store: Store, tmp: Path, repeats: int) -> tuple[str, float, str]:
    """Median seconds from an event written to its arrival over the stream."""
    run_dir = tmp / "live"
    run_dir.mkdir()
    events = run_dir / "events.jsonl"
    events.write_text(json.dumps({"type": "status", "state": "started", "step": 0, "time": time.time()}) + "\n")
    store.save(RunSummary(id="live00000000", name="live", status="running", created=time.time(),
                          run_dir=str(run_dir)))
    lags: list[float] = []
    arrived = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", url + "api/runs/live00000000/stream", params={"log": 1}, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    message = json.loads(line[6:])
                    points = message["points"].get("train cost")
                    if points:
                        lags.append(time.time() - points_written[points["count"] - 1])
                        arrived.set()
                    if len(lags) >= repeats:
                        return
    points_written: list[float] = []
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(1.0)  # the stream is open before the first event is written
    for step in range(1, repeats + 1):
        arrived.clear()
        points_written.append(time.time())
        with open(events, "a") as f:
            f.write(json.dumps({"type": "loss", "step": step, "loss": 0.5, "time": time.time()}) + "\n")
        if not arrived.wait(10):
            break
        time.sleep(0.137)  # spread the writes over the poll period
    listener.join(10)
    median = statistics.median(lags) if lags else float("nan")
    return ("live lag: event written -> arrived over SSE", median, f"{len(lags)} events")


if __name__ == "__main__":
    sys.exit(main())
