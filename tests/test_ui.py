"""The web dashboard over HTTP: escaping, the token, the command rules, path confinement,
downsampling, bad ids and bad commands, live streams; against a real server where it matters.

The store here is a small stand-in with the records a hostile or broken database could hold
(a run directory of /etc, a relative one, symlinks): the dashboard must not trust a record.
The real store and a real browser are in test_ui_browser.py.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from nnkit.ui.runs import RunView, UnsafeRunDir, downsample, read_run_file  # noqa: E402
from nnkit.ui.server import ThreadedServer, create_app  # noqa: E402
from nnkit.views import Channel, Monitor, moving_average  # noqa: E402

TOKEN = "test-token-0123456789"
XSS = "<script>alert(1)</script>"


@dataclass(frozen=True)
class Record:
    """The fields of nnkit.experiments.RunRecord the dashboard reads."""

    id: str
    name: str
    run_dir: str | None
    owner: str = "ann"
    tags: tuple = ()
    notes: str = ""
    status: str = "running"
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    heartbeat: float | None = None
    host: str = "here"
    pid: int | None = None
    config_text: str = ""
    config_hash: str = ""
    nnkit_version: str = "0"
    git_commit: str | None = None
    step: int = 0
    total_steps: int | None = None
    duration: float | None = None
    progress: float | None = None


class StandInStore:
    """Store's reading methods over a list of records (filters: owner, status, tags)."""

    def __init__(self, records, params=None, best=None):
        self.records, self._params, self._best = list(records), params or {}, best or {}

    def _match(self, owner=None, status=None, tags=(), where=None, since=None):
        if where is not None and "(" in where:
            raise ValueError(f"where: cannot read {where!r} at '('")
        return [r for r in self.records if owner in (None, r.owner) and status in (None, r.status)
                and set(tags) <= set(r.tags)]

    def runs(self, *, sort=None, descending=True, limit=None, offset=0, **filters):
        found = sorted(self._match(**filters), key=lambda r: r.created, reverse=descending)
        return found[offset:None if limit is None else offset + limit]

    def count(self, **filters):
        return len(self._match(**filters))

    def get(self, ref):
        found = [r for r in self.records if r.id.startswith(str(ref)) or r.name == ref]
        if len(found) != 1:
            raise LookupError(f"no run {ref!r}" if not found else f"{ref!r} is ambiguous")
        return found[0]

    def params(self, run_id):
        return self._params.get(run_id, {})

    def metrics(self, run_id):
        return {}

    def best(self, run_id):
        return self._best.get(run_id, {})


def write_events(run_dir: Path, events: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "events.jsonl", "a") as f:
        for e in events:
            f.write(json.dumps({"schema": 1, "run": "r", "time": 1e9, **e}) + "\n")


def loss_events(n: int, start: int = 0, spike_at: int | None = None) -> list[dict]:
    rng = np.random.default_rng(0)
    out = [{"type": "status", "state": "started", "step": start}] if start == 0 else []
    for i in range(start, start + n):
        loss = float(1 / (1 + i / 100) + 0.05 * rng.random())
        out.append({"type": "loss", "step": i + 1, "epoch": 0, "batch": i, "lr": 0.1, "accuracy": 0.5,
                    "images_per_s": 1000.0, "loss": 50.0 if i == spike_at else loss})
    return out


@pytest.fixture
def runs(tmp_path):
    """A store of: a good run, a run named like a script, and hostile run directories."""
    good, evil = tmp_path / "good", tmp_path / "evil"
    write_events(good, loss_events(300))
    (good / "job.conf").write_text('name: "good"\nupdater { lr: 0.1 }\n')
    write_events(evil, loss_events(5))
    linked = tmp_path / "linked"
    linked.symlink_to(good)
    sneaky = tmp_path / "sneaky"
    sneaky.mkdir()
    (sneaky / "events.jsonl").symlink_to(good / "events.jsonl")
    (sneaky / "job.conf").symlink_to("/etc/passwd")
    piped = tmp_path / "piped"
    write_events(piped, [])
    os.mkfifo(piped / "job.conf")
    records = [Record("aaaa00000001", "good", str(good), tags=("base",), created=3),
               Record("bbbb00000002", XSS, str(evil), notes="<img src=x onerror=alert(2)>",
                      tags=("<b>t</b>",), created=2, owner="bob"),
               Record("cccc00000003", "etc", "/etc"),
               Record("dddd00000004", "relative", "good"),
               Record("eeee00000005", "linked", str(linked)),
               Record("ffff00000006", "sneaky", str(sneaky)),
               Record("abab00000007", "piped", str(piped)),
               Record("acac00000008", "none", None)]
    return StandInStore(records, params={"aaaa00000001": {"updater.lr": "0.1", "seed": "1"},
                                         "bbbb00000002": {"updater.lr": "0.01", "seed": "1"}},
                        best={"aaaa00000001": {"test_error": 0.125}})


@pytest.fixture
def client(runs):
    return TestClient(create_app(runs, TOKEN), base_url="http://127.0.0.1:8600")


# ------------------------------------------------------------------------------ escaping
def test_user_text_is_escaped_and_pages_load_only_their_own_script(client):
    page = client.get("/run/bbbb00000002")
    assert page.status_code == 200
    assert XSS not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    # The API hands the name back as JSON data (the script puts it in as text).
    listing = client.get("/api/runs").json()
    assert XSS in [r["name"] for r in listing["runs"]]
    assert client.get("/api/runs").headers["content-type"].startswith("application/json")


# ------------------------------------------------------------------------------ the token
def test_off_localhost_every_request_needs_the_token(runs):
    client = TestClient(create_app(runs, TOKEN, require_token=True), base_url="http://10.0.0.5:8600")
    assert client.get("/").status_code == 401
    assert client.get("/api/runs").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    once = client.get(f"/run/aaaa00000001?token={TOKEN}", follow_redirects=False)
    assert once.status_code == 303 and once.headers["location"] == "/run/aaaa00000001"
    assert "httponly" in once.headers["set-cookie"].lower()
    assert "samesite=strict" in once.headers["set-cookie"].lower()
    assert client.get("/api/runs").status_code == 200  # the cookie, from now on
    fresh = TestClient(create_app(runs, TOKEN, require_token=True), base_url="http://10.0.0.5:8600")
    assert fresh.get("/api/runs", headers={"X-NNKit-Token": TOKEN}).status_code == 200


def test_on_localhost_pages_are_open_but_a_foreign_host_name_is_refused(runs):
    client = TestClient(create_app(runs, TOKEN), base_url="http://127.0.0.1:8600")
    assert client.get("/").status_code == 200
    assert f'content="{TOKEN}"' in client.get("/").text  # the pages carry it for commands
    rebound = TestClient(create_app(runs, TOKEN), base_url="http://attacker.example:8600")
    refused = rebound.get("/api/runs")
    assert refused.status_code == 403 and "is not served here" in refused.json()["error"]


def test_commands_need_a_post_with_the_token_header_from_this_origin(client):
    url = "/api/runs/aaaa00000001/command"
    body = {"command": "pause"}
    assert client.get(url).status_code == 405
    assert client.post(url, json=body).status_code == 403  # no header: a cross-site form
    client.cookies.set("nnkit_ui_token_8600", TOKEN)
    assert client.post(url, json=body).status_code == 403  # the cookie alone is not enough
    assert client.post(url, json=body, headers={"X-NNKit-Token": "nope"}).status_code == 403
    other = client.post(url, json=body, headers={"X-NNKit-Token": TOKEN, "Origin": "http://evil.example"})
    assert other.status_code == 403 and "may not send commands" in other.json()["error"]
    assert client.request("PUT", url, json=body).status_code == 405


# ------------------------------------------------------------------------------ bad input
def test_bad_ids_are_404_naming_them(client):
    for path in ("/api/runs/nope", "/api/runs/nope/series", "/api/runs/nope/log", "/run/nope",
                 "/api/runs/..%2F..%2Fetc/series", "/api/runs/%2Fetc", "/static/../server.py",
                 "/static/runs.py"):
        response = client.get(path)
        assert response.status_code == 404, path
    assert client.get("/api/runs/nope").json()["error"] == "no run 'nope'"
    assert client.get("/api/runs/a").status_code == 404  # ambiguous prefix: named as such
    assert "ambiguous" in client.get("/api/runs/a").json()["error"]


def test_bad_commands_are_400_with_nnkit_ctls_message(client):
    url = "/api/runs/aaaa00000001/command"
    headers = {"X-NNKit-Token": TOKEN}

    def error(body):
        response = client.post(url, json=body, headers=headers)
        assert response.status_code == 400, response.text
        return response.json()["error"]
    assert error({"command": "fly"}).startswith("unknown command 'fly'; expected one of stop, pause")
    assert error({"command": "set"}) == "set needs at least one of lr=, momentum=, weight_decay=, batch_size="
    assert error({"command": "set", "args": {"lr": "fast"}}) == "set lr=fast: expected a number or null"
    assert error({"command": "run_until", "args": {"batches": "5", "epochs": "2"}}) == \
        "run_until takes exactly one of batches= or epochs="
    assert error({"args": {}}) == 'expected {"command": NAME, "args": {KEY: VALUE}}'
    assert client.post(url, content=b"{not json", headers=headers).status_code == 400
    assert error({"command": "set", "args": ["lr"]}) == "args must be an object of KEY: VALUE"
    # Nothing refused was written for the run.
    assert not (Path(client.app.app.state.dashboard.store.get("good").run_dir) / "commands.jsonl").exists()


def test_a_run_that_does_not_answer_is_a_504_saying_why(client, monkeypatch):
    monkeypatch.setattr("nnkit.ui.server.COMMAND_WAIT", 0.3)
    response = client.post("/api/runs/aaaa00000001/command", json={"command": "pause"},
                           headers={"X-NNKit-Token": TOKEN})
    assert response.status_code == 504
    message = response.json()["error"]
    assert message.startswith("no answer to pause within 0.3 s; its last status is 'started'")
    sent = (Path(client.app.app.state.dashboard.store.get("good").run_dir) / "commands.jsonl").read_text()
    assert json.loads(sent)["command"] == "pause" and json.loads(sent)["args"] == {}


def test_list_filters_paginate_and_report_a_bad_where(client):
    data = client.get("/api/runs", params={"owner": "bob"}).json()
    assert data["total"] == 1 and data["runs"][0]["id"] == "bbbb00000002"
    data = client.get("/api/runs", params={"limit": 2, "offset": 1}).json()
    assert data["total"] == 8 and len(data["runs"]) == 2
    assert client.get("/api/runs", params={"tag": "base"}).json()["runs"][0]["best_test_error"] == 0.125
    bad = client.get("/api/runs", params={"where": "updater.lr < (1"})
    assert bad.status_code == 400 and "at '('" in bad.json()["error"]
    assert client.get("/api/runs", params={"limit": "many"}).json()["error"] == \
        "limit: expected a whole number, got 'many'"
    assert client.get("/api/runs", params={"limit": 0}).status_code == 400


# ------------------------------------------------------------------------------ confinement
@pytest.mark.parametrize("run,why", [
    ("cccc00000003", "/etc: no events.jsonl there: not a run directory"),
    ("dddd00000004", "good: a recorded run directory must be an absolute path"),
    ("eeee00000005", "linked: not a directory (or a symlink to one)"),
    ("ffff00000006", "sneaky/events.jsonl is not a regular file"),
    ("acac00000008", "the run has no run directory"),
])
def test_a_record_does_not_choose_what_is_read(client, run, why):
    response = client.get(f"/api/runs/{run}/series")
    assert response.status_code == 409 and response.json()["error"].endswith(why)
    assert client.get(f"/api/runs/{run}/log").status_code == 409
    commanded = client.post(f"/api/runs/{run}/command", json={"command": "stop"},
                            headers={"X-NNKit-Token": TOKEN})
    assert commanded.status_code == 409
    detail = client.get(f"/api/runs/{run}").json()  # the record itself still shows
    assert detail["files_error"].endswith(why) and detail["live"] is None


def test_only_the_files_nnkit_writes_are_read_never_through_links_or_fifos(client, runs, tmp_path):
    good = Path(runs.get("good").run_dir)
    assert read_run_file(good, "job.conf").startswith('name: "good"')
    with pytest.raises(UnsafeRunDir, match="not a file the dashboard reads"):
        read_run_file(good, "../sneaky/job.conf")
    with pytest.raises(UnsafeRunDir, match="cannot be read"):
        read_run_file(tmp_path / "sneaky", "job.conf")  # a symlink to /etc/passwd
    with pytest.raises(UnsafeRunDir, match="not a regular file"):
        read_run_file(tmp_path / "piped", "job.conf")  # a FIFO: refused at once, no hang
    (good / "metrics.json").write_text("x" * 2_000_000)
    with pytest.raises(UnsafeRunDir, match="is over 1048576 bytes"):
        read_run_file(good, "metrics.json")
    detail = client.get("/api/runs/abab00000007").json()
    assert "not a regular file" in detail["files_error"]
    assert client.get("/api/runs/aaaa00000001").json()["config_text"].startswith('name: "good"')


def test_commands_are_not_written_through_a_symlink(client, runs, tmp_path):
    good = Path(runs.get("good").run_dir)
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep\n")
    (good / "commands.jsonl").symlink_to(target)
    response = client.post("/api/runs/aaaa00000001/command", json={"command": "pause"},
                           headers={"X-NNKit-Token": TOKEN})
    assert response.status_code == 409 and "cannot send the command" in response.json()["error"]
    assert target.read_text() == "keep\n"


# ------------------------------------------------------------------------------ series
def test_downsample_keeps_the_ends_and_each_buckets_extremes():
    y = np.sin(np.arange(100_000) / 500.0)
    y[54_321] = 9.0
    y[77_777] = -9.0
    y[1000] = np.nan
    keep = downsample(np.arange(len(y)), y, 2000)
    assert len(keep) <= 2002 and keep[0] == 0 and keep[-1] == len(y) - 1
    assert 54_321 in keep and 77_777 in keep and np.all(np.diff(keep) > 0)
    assert np.array_equal(downsample(np.arange(10), np.arange(10.0), 2000), np.arange(10))


def test_moving_average_is_the_monitors_for_any_window():
    rng = np.random.default_rng(1)
    values = list(rng.standard_normal(400) * np.logspace(0, 30, 400))
    values[50], values[200] = float("nan"), float("inf")
    for window in (1, 3, 50):
        monitor = Monitor({"f": [Channel("c", "loss.loss", window=window)]})
        for step, v in enumerate(values):
            monitor.update({"type": "loss", "step": step, "loss": v})
        np.testing.assert_allclose(moving_average(values, window), monitor.series("c").averages,
                                   rtol=1e-12, equal_nan=True)
    with pytest.raises(ValueError, match="window must be a whole number >= 1"):
        moving_average(values, 0)
    # Values of one magnitude (a loss): the running-sum way, the same averages to 1e-9.
    values = list(1 + 0.1 * rng.standard_normal(20_000))
    monitor = Monitor({"f": [Channel("c", "loss.loss", window=500)]})
    for step, v in enumerate(values):
        monitor.update({"type": "loss", "step": step, "loss": v})
    np.testing.assert_allclose(moving_average(values, 500), monitor.series("c").averages, rtol=1e-9)


def test_series_are_the_monitors_figures_downsampled_with_chosen_windows(client, runs, tmp_path):
    big = tmp_path / "big"
    write_events(big, loss_events(50_000, spike_at=30_000))
    runs.records.append(Record("b1b100000009", "big", str(big)))
    for _ in range(20):  # a long file is read over a few requests
        data = client.get("/api/runs/b1b100000009/series", params={"points": 1000}).json()
        if data["status"]["loaded"] == 1:
            break
    titles = [f["title"] for f in data["figures"]]
    assert titles == ["loss", "error", "learning rate", "per-example time", "epoch time"]
    cost = data["figures"][0]["channels"][0]
    assert cost["name"] == "train cost" and cost["window"] == 50 and cost["count"] == 50_000
    assert len(cost["steps"]) <= 1002 and 50.0 in cost["values"]  # the spike survives
    assert cost["steps"][0] == 1 and cost["steps"][-1] == 50_000
    # A chosen window: the same averages as a Monitor with that window would keep.
    small = client.get("/api/runs/aaaa00000001/series", params={"window.train cost": 7}).json()
    cost = small["figures"][0]["channels"][0]
    monitor = Monitor({"f": [Channel("c", "loss.loss", window=7)]})
    monitor.read_file(Path(runs.get("good").run_dir) / "events.jsonl")
    np.testing.assert_allclose(cost["averages"], monitor.series("c").averages)
    assert cost["window"] == 7 and len(cost["steps"]) == 300
    bad = client.get("/api/runs/aaaa00000001/series", params={"window.train cost": 0})
    assert bad.status_code == 400 and "window.train cost: must be in [1, 100000]" in bad.json()["error"]


def test_a_run_view_reads_in_bounded_chunks_and_notices_a_rewrite(tmp_path, monkeypatch):
    monkeypatch.setattr("nnkit.ui.runs.CHUNK", 4096)
    run = tmp_path / "r"
    write_events(run, loss_events(500))
    view = RunView(run)
    assert view.refresh() == 501 and len(view.monitor.series("train cost")) == 500
    with open(run / "events.jsonl", "a") as f:
        f.write('{"type": "loss", "step": 501, "loss": 0.5')  # a line being written
    assert view.refresh() == 0
    with open(run / "events.jsonl", "a") as f:
        f.write('}\nnot json\n')
    assert view.refresh() == 1 and view.bad_lines == 1
    for _ in range(3):  # what requests read grows with the series, equal to it
        write_events(run, loss_events(700, start=501))
        view.refresh()
        for got, want in zip(view.data("train cost"), view.monitor.series("train cost").data()):
            np.testing.assert_array_equal(got, want)
    (run / "events.jsonl").unlink()
    write_events(run, loss_events(3))  # started over (--overwrite): a new file
    assert view.refresh() == 4 and len(view.monitor.series("train cost")) == 3


# ------------------------------------------------------------------------------ a real server
def sse_messages(response):
    """The data of each server-sent event of a streaming httpx response."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[6:])


def test_the_stream_sends_new_points_and_log_lines_as_they_are_written(runs):
    good = Path(runs.get("good").run_dir)
    with ThreadedServer(create_app(runs, TOKEN)) as server:
        params = {"count.train cost": 300, "log": 1}
        with httpx.stream("GET", server.url + "api/runs/aaaa00000001/stream", params=params,
                          timeout=30) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            messages = sse_messages(response)
            write_events(good, loss_events(3, start=300) + [{"type": "status", "state": "paused", "step": 303}])
            message = next(messages)
            assert message["points"]["train cost"]["steps"] == [301, 302, 303]
            assert message["points"]["train cost"]["count"] == 303
            assert message["status"]["state"] == "paused"
            assert [e["text"].split("] ")[1] for e in message["log"]] == ["paused at step 303"]


def test_nnkit_ui_serves_on_a_free_port_and_prints_its_address(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NNKIT_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "ui", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("nnkit ui: serving ") and " at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].strip()
        assert httpx.get(url + "api/runs", timeout=30).json()["total"] == 0
    finally:
        proc.terminate()
        proc.wait(30)


def test_nnkit_ui_without_the_extra_exits_2_naming_it():
    script = textwrap.dedent("""
        import sys
        sys.modules["starlette"] = None  # as if the ui extra were not installed
        from nnkit.cli import main
        sys.exit(main(["ui", "--port", "0"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "nnkit ui: error: the web dashboard needs starlette: pip install 'nnkit[ui]'" in done.stderr


def test_a_long_file_is_read_over_several_requests_each_saying_how_far(client, runs, tmp_path, monkeypatch):
    monkeypatch.setattr("nnkit.ui.server.LOAD_BUDGET", 64 << 10)
    monkeypatch.setattr("nnkit.ui.runs.LOAD_BUDGET", 64 << 10)
    monkeypatch.setattr("nnkit.ui.runs.CHUNK", 16 << 10)
    long = tmp_path / "long"
    write_events(long, loss_events(5000))
    runs.records.append(Record("1009abcdef00", "long", str(long)))
    seen = []
    for _ in range(100):
        status = client.get("/api/runs/1009abcdef00/series").json()["status"]
        seen.append(status["loaded"])
        if status["loaded"] == 1:
            break
    assert len(seen) > 3 and seen == sorted(seen) and seen[-1] == 1 and 0 < seen[0] < 1
    assert status["events"] == 5001 and status["size"] == (long / "events.jsonl").stat().st_size


def test_every_steering_control_reaches_a_live_run_and_shows_its_answer(runs, tmp_path):
    from test_model import mlp, toy_data
    run_dir = tmp_path / "live"
    x, y = toy_data(512)
    runs.records.append(Record("11fe00000001", "live", str(run_dir)))
    run = mlp().fit(x, y, batch_size=16, epochs=10_000, verbose=0, run_dir=run_dir, background=True)
    client = TestClient(create_app(runs, TOKEN), base_url="http://127.0.0.1:8600")

    def send(command, **args):
        response = client.post("/api/runs/11fe00000001/command", json={"command": command, "args": args},
                               headers={"X-NNKit-Token": TOKEN})
        return response.status_code, response.json()
    try:
        status, body = send("tell_state")
        assert status == 200 and body["ok"] and body["text"].startswith("tell_state acknowledged at step")
        assert body["lines"][0].startswith("state at step") and "momentum 0.9" in body["lines"][1]
        status, body = send("run_until", batches="1000000")
        assert status == 200 and body["answer"]["target_step"] == 1_000_000
        status, body = send("set", weight_decay="0.001", batch_size="8")
        assert status == 200 and body["answer"]["values"] == {"weight_decay": 0.001, "batch_size": 8}
        status, body = send("checkpoint")
        assert status == 200 and body["answer"]["path"] == str(run_dir.resolve() / "checkpoint.h5")
        status, body = send("set", lr="-1")  # refused by the run itself: its error is the answer
        assert status == 422 and not body["ok"] and body["text"] == "set refused: set lr: must be >= 0, got -1"
        status, body = send("stop")
        assert status == 200 and body["text"].startswith("stop acknowledged")
    finally:
        run.shutdown()
        run.join(60)


def test_the_list_marks_runs_whose_process_is_gone(tmp_path):
    from nnkit.experiments import Store
    from nnkit.experiments.summary import RunSummary
    store = Store(tmp_path / "experiments.db")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    store.save(RunSummary(id="dead00000001", name="killed", status="running", created=1e9,
                          heartbeat=4e9, host=socket.gethostname(), pid=int(dead.stdout)))
    client = TestClient(create_app(store, TOKEN), base_url="http://127.0.0.1:8600")
    assert client.get("/api/runs").json()["runs"][0]["status"] == "interrupted"


ODD_LINES = [b'{"a":1}', b'{"a":1} ', b'{"a":1}\r', b'{"a":1}x', b'{"a":', b'', b'  ', b'{"a":1}{"b":2}',
             b'{"a":"\xff"}', b'{"a":NaN}', b'{"a":1}\x0b', b'[1]', b'{"a":"\xed\xa0\x80"}', b'3',
             b'\xef\xbb\xbf{"a":1}', b'{\x00"a"', '{"\u00e9": "\u2028"}'.encode(), b'{"a": [1, {"b": null}]}']
#: Only ASCII (what nnkit writes): parse_jsonl's whole-chunk path, with lines it must hand on.
ASCII_LINES = [b'{"a":1}', b'{"a":1} ', b'{"a":1}\r', b'{"a":1}x', b'{"a":', b'', b'  ', b'{"a":1}{"b":2}',
               b'{"a":', b'1}', b' {"a":1}', b'{"a":NaN}', b'{"a":1}\x0b', b'[1]', b'3', b'{', b'}',
               b'{"a":"\\u00e9\\ud800"}', b'{"a": [1, {"b": null}]}', b'{"a":1e999,"b":-0.0}',
               b'{"a":"b"', b'\t', b'{"type":"loss","step":1,"loss":0.5,"time":1.5}']


@pytest.mark.parametrize("lines", [ODD_LINES, ASCII_LINES], ids=["any bytes", "ascii"])
def test_parse_jsonl_reads_every_line_as_json_loads_does(lines):
    """The fast paths for object lines give json.loads' values and its errors, byte for byte."""
    from nnkit.training.events import parse_jsonl
    data = b"\n".join(lines) + b"\npartial"
    assert data.isascii() == (lines is ASCII_LINES)
    items, end = parse_jsonl(data, 7)
    expected, position = [], 7
    for raw in lines:
        if raw.strip():
            try:
                expected.append((position, json.loads(raw)))
            except ValueError as e:
                expected.append((position, f"byte {position}: not valid JSON ({e})"))
        position += len(raw) + 1
    assert end == position
    got = [(o, str(v) if isinstance(v, ValueError) else v) for o, v in items]
    assert repr(got) == repr(expected)  # repr: NaN == NaN
    for cut in (0, 1, len(lines[0]), len(lines[0]) + 1, len(data) - 8):  # any prefix: its whole lines
        part, part_end = parse_jsonl(data[:cut], 7)
        assert part_end == 7 + data[:cut].rfind(b"\n") + 1
        assert repr([(o, str(v) if isinstance(v, ValueError) else v) for o, v in part]) == \
            repr([g for g in got if g[0] < part_end])


@pytest.mark.parametrize("window", [None, 1, 7, 300])
def test_points_since_are_the_new_points_with_the_whole_series_averages(tmp_path, window):
    """A live page's new points: the tail of the series, with averages of any window that take
    the points before the tail into account (only the tail and its window are copied)."""
    run = tmp_path / "run"
    write_events(run, loss_events(250))
    view = RunView(run)
    view.refresh()
    series = view.monitor.series("train cost")
    windows = {} if window is None else {"train cost": window}
    for start in (0, 1, 100, 249):
        got = view.points_since({"train cost": start}, windows)["train cost"]
        averages = series.averages if window is None else moving_average(series.values, window)
        assert got["count"] == 250
        assert got["steps"] == series.steps[start:].tolist()
        assert got["values"] == series.values[start:].tolist()
        np.testing.assert_allclose(got["averages"], averages[start:], rtol=1e-12)
    assert "train cost" not in view.points_since({"train cost": 250}, windows)


@pytest.mark.parametrize("budget", [None, 50_000, 4_000])
def test_a_file_read_in_budgets_and_pieces_is_the_monitor_of_the_whole_file(tmp_path, budget):
    """Read a bounded budget at a time, and parsed a piece at a time within it (lines cut at
    the edges, bad lines and a blank among them), a run's events make the series, status, log
    and counts of one Monitor reading the whole file."""
    from nnkit.training.events import PIECE
    from nnkit.views import monitor_file
    run = tmp_path / "run"
    events = loss_events(3000, spike_at=1234)
    events[2000:2000] = [{"type": "epoch", "epoch": 0, "step": 2000, "loss": 0.3, "test_error": 0.2},
                         {"type": "status", "state": "paused", "step": 2000}]
    write_events(run, events[:1500])
    with open(run / "events.jsonl", "a") as f:
        f.write("not json\n\n" + "x" * 70_000 + "\n")
    write_events(run, events[1500:])
    assert (run / "events.jsonl").stat().st_size > 3 * PIECE
    view, reads = RunView(run), 0
    while reads == 0 or view.loaded < 1:
        view.refresh(budget)
        reads += 1
    assert reads == 1 if budget is None else reads > 10
    whole = monitor_file(run / "events.jsonl")
    assert view.events == len(events) == 3003 and view.bad_lines == whole.bad_lines == 2
    assert view.monitor.status == whole.status
    for name in whole.channels:
        for got, want in zip(view.data(name), whole.series(name).data()):
            np.testing.assert_array_equal(got, want)
    assert [e["type"] for e in view.log_since()[0]] == ["status", "epoch", "status"]


# ------------------------------------------------------------------------------ the queue
def test_the_list_shows_the_queue_and_stop_cancels_a_queued_run_as_nnkit_ctl_does(tmp_path):
    """A real store with queued runs (nnkit queue's records): their places in the queue, the
    worker and attempts of a claimed one; stop dequeues a queued run, nothing else reaches it."""
    from nnkit.experiments import Store
    from nnkit.experiments.queue import claim, enqueue, requeue_interrupted
    store = Store(tmp_path / "experiments.db")
    ids = [enqueue(store, f'name: "q{i}"\n', name=f"q{i}", retries=i) for i in range(4)]
    taken = claim(store, tmp_path / "runs", pid=2**22 + 4321)  # the oldest, by a worker pid that is gone
    assert taken.run_id == ids[0]
    client = TestClient(create_app(store, TOKEN), base_url="http://127.0.0.1:8600")
    headers = {"X-NNKit-Token": TOKEN}
    rows = {r["id"]: r for r in client.get("/api/runs", params={"sort": "created", "desc": "0"}).json()["runs"]}
    assert [rows[i]["job"] for i in ids[1:]] == [{"retries": i, "attempts": 0, "position": i} for i in (1, 2, 3)]
    # The list's look for dead processes found the claim's worker gone: interrupted, no retry left.
    assert rows[ids[0]]["status"] == "interrupted"
    assert rows[ids[0]]["job"] == {"retries": 0, "attempts": 1, "position": None}
    assert (rows[ids[0]]["host"], rows[ids[0]]["pid"]) == (socket.gethostname(), 2**22 + 4321)
    queued = client.get("/api/runs", params={"status": "queued"}).json()
    assert queued["total"] == 3 and {r["id"] for r in queued["runs"]} == set(ids[1:])

    detail = client.get(f"/api/runs/{ids[2]}").json()  # its job, to be read before it runs
    assert detail["config_text"] == 'name: "q2"\n' and detail["job"]["position"] == 2 and detail["run_dir"] is None
    refused = client.post(f"/api/runs/{ids[2]}/command", json={"command": "pause"}, headers=headers)
    assert refused.status_code == 409 and "is queued: no worker has started it yet" in refused.json()["error"]
    bad = client.post(f"/api/runs/{ids[2]}/command", json={"command": "stop", "args": {"x": 1}}, headers=headers)
    assert bad.status_code == 400 and store.get(ids[2]).status == "queued"  # checked before it is cancelled
    done = client.post(f"/api/runs/{ids[2]}/command", json={"command": "stop"}, headers=headers)
    assert done.status_code == 200 and done.json()["cancelled"] and done.json()["ok"]
    assert done.json()["text"] == f"run {ids[2]} was queued: cancelled (status stopped)"
    assert store.get(ids[2]).status == "stopped"
    assert [r["job"]["position"] for r in client.get("/api/runs", params={"status": "queued", "desc": "0"}).json()["runs"]] == [1, 2]
    again = client.post(f"/api/runs/{ids[2]}/command", json={"command": "stop"}, headers=headers)
    assert again.status_code == 409 and "no run directory" in again.json()["error"]  # no second cancel
    assert claim(store, tmp_path / "runs").run_id == ids[1]  # the workers skip the cancelled run
    assert claim(store, tmp_path / "runs").run_id == ids[3] and claim(store, tmp_path / "runs") is None
    # A claimed run whose directory is not (yet) a run directory: the command is refused, nothing written.
    claimed = client.post(f"/api/runs/{ids[3]}/command", json={"command": "stop"}, headers=headers)
    assert claimed.status_code == 409 and "no such run directory" in claimed.json()["error"]
    assert store.get(ids[3]).status == "running" and requeue_interrupted(store) == []


# ------------------------------------------------------------------------------ sweeps
@pytest.fixture
def sweep_store(tmp_path):
    """A real store with a sweep of three runs (two with events, one whose record names /etc)
    and a run of no sweep."""
    from nnkit.experiments import Store
    from nnkit.experiments.summary import RunSummary
    store = Store(tmp_path / "experiments.db")
    sweep = store.create_sweep("grid", {"updater.lr": [0.1, 0.01, 0.001]}, name=XSS)
    for i, (lr, error) in enumerate(((0.1, 0.3), (0.01, 0.125), (0.001, None))):
        run_dir = tmp_path / f"r{i}"
        write_events(run_dir, loss_events(100 * (i + 1)) + [{"type": "test", "step": 50, "error": 0.5}])
        metrics = {} if error is None else {"test_error": (error, 100)}
        store.save(RunSummary(id=f"5eed0000000{i}", name=f"lr-{lr}", status="finished", created=10 + i,
                              run_dir=str(run_dir) if i < 2 else "/etc", metrics=metrics))
        store.add_to_sweep(f"5eed0000000{i}", sweep, {"updater.lr": lr, "model": f"m{i % 2}"})
    store.save(RunSummary(id="a1one0000000", name="alone", status="finished", created=1,
                          run_dir=str(tmp_path / "r0")))
    return store, sweep


def test_the_sweeps_list_and_a_sweep_s_runs_with_their_points_and_best_metrics(sweep_store):
    store, sweep = sweep_store
    client = TestClient(create_app(store, TOKEN), base_url="http://127.0.0.1:8600")
    listed = client.get("/api/sweeps").json()
    assert listed["total"] == 1
    row = listed["sweeps"][0]
    assert (row["id"], row["name"], row["kind"], row["status"]) == (sweep, XSS, "grid", "finished")
    assert (row["runs"], row["live"], row["finished"], row["failed"]) == (3, 0, 3, 0)
    assert (row["best_run"], row["best_test_error"]) == ("5eed00000001", 0.125)
    page = client.get(f"/sweep/{sweep}")
    assert page.status_code == 200 and XSS not in page.text and "&lt;script&gt;" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    remote = TestClient(create_app(store, TOKEN, require_token=True), base_url="http://10.0.0.5:8600")
    assert [remote.get(path).status_code for path in ("/sweeps", f"/sweep/{sweep}", "/api/sweeps",
                                                      f"/api/sweeps/{sweep}/compare")] == [401] * 4
    assert f'data-sweep="{sweep}"' in page.text
    detail = client.get(f"/api/sweeps/{sweep[:6]}").json()  # an id prefix names it too
    assert detail["keys"] == ["model", "updater.lr"]
    assert [(r["id"], r["point"]["updater.lr"], r["best"].get("test_error")) for r in detail["runs"]] == [
        ("5eed00000000", 0.1, 0.3), ("5eed00000001", 0.01, 0.125), ("5eed00000002", 0.001, None)]
    assert {r["sweep_id"] for r in detail["runs"]} == {sweep}
    assert [r["id"] for r in client.get(f"/api/sweeps/{sweep}", params={"limit": 1, "offset": 1}).json()["runs"]] \
        == ["5eed00000001"]
    # The experiments list names each run's sweep and point.
    runs = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert (runs["5eed00000002"]["sweep_name"], runs["5eed00000002"]["point"]) == (XSS, {"updater.lr": 0.001, "model": "m0"})
    assert (runs["a1one0000000"]["sweep_id"], runs["a1one0000000"]["point"]) == (None, None)


def test_a_sweep_s_curves_are_confined_and_bounded_as_compare_s(sweep_store):
    store, sweep = sweep_store
    client = TestClient(create_app(store, TOKEN), base_url="http://127.0.0.1:8600")
    data = client.get(f"/api/sweeps/{sweep}/compare", params={"channel": "train cost", "points": 50}).json()
    assert data["total"] == 3 and [r["id"] for r in data["runs"]] == ["5eed00000000", "5eed00000001", "5eed00000002"]
    counts = [r["series"] and r["series"]["count"] for r in data["runs"]]
    assert counts == [100, 200, None]  # the record naming /etc: nothing read
    assert data["runs"][2]["files_error"].endswith("/etc: no events.jsonl there: not a run directory")
    assert all(len(r["series"]["steps"]) <= 52 for r in data["runs"][:2])  # downsampled
    assert data["runs"][1]["point"] == {"model": "m1", "updater.lr": 0.01}
    assert [d["key"] for d in data["differences"]] == []  # no params recorded: nothing differs
    test = client.get(f"/api/sweeps/{sweep}/compare", params={"channel": "test error", "runs": "5eed00000001"}).json()
    assert [r["series"]["values"] for r in test["runs"]] == [[0.5]]

    def refused(path, status=400, **params):
        response = client.get(path, params=params)
        assert response.status_code == status, (path, params, response.text)
        return response.json()["error"]
    assert "not of sweep" in refused(f"/api/sweeps/{sweep}/compare", runs="a1one0000000")
    assert refused(f"/api/sweeps/{sweep}/compare", runs=",".join(["5eed00000000"] * 21)) == \
        "runs: give at most 20 run ids, separated by commas"
    assert "is not one of" in refused(f"/api/sweeps/{sweep}/compare", channel="/etc/passwd")
    assert refused(f"/api/sweeps/{sweep}", limit=0) == "limit: must be in [1, 10000], got 0"
    assert refused(f"/api/sweeps/{sweep}", limit=10_001).startswith("limit: must be in")
    assert refused("/api/sweeps", offset=-1).startswith("offset: must be in")
    for path in ("/api/sweeps/nope", "/api/sweeps/..%2Fetc", "/sweep/nope", "/api/sweeps/nope/compare"):
        assert client.get(path).status_code == 404, path
    assert "no sweep 'nope'" in client.get("/api/sweeps/nope").json()["error"]


def test_a_store_without_sweeps_lists_none(client):
    assert client.get("/api/sweeps").json() == {"total": 0, "offset": 0, "limit": 100, "sweeps": []}
    assert client.get("/api/sweeps/aaaa").status_code == 404
    assert client.get("/sweeps").status_code == 200


def test_a_run_a_worker_took_is_steered_from_its_page_by_its_store_record(tmp_path):
    """A queued run of a real `nnkit worker`: the page's commands reach the worker's child
    through the record (as `nnkit ctl RUN`), and its answers come back; stop ends it."""
    from helpers import DATA, wait_until
    from test_queue import JOB, LONG, start_worker

    from nnkit.experiments import Store
    from nnkit.experiments.queue import enqueue
    store = Store(tmp_path / "s.db")
    run_id = enqueue(store, JOB.format(data=DATA, steps=LONG), name="long")
    worker = start_worker(tmp_path, "--once")
    try:
        wait_until(lambda: store.get(run_id).status == "running" and store.get(run_id).step > 3, 120)
        client = TestClient(create_app(store, TOKEN), base_url="http://127.0.0.1:8600")
        row = client.get("/api/runs").json()["runs"][0]
        assert row["job"] == {"retries": 0, "attempts": 1, "position": None} and row["pid"] not in (None, worker.pid)

        def send(command, **args):
            response = client.post(f"/api/runs/{run_id[:5]}/command", json={"command": command, "args": args},
                                   headers={"X-NNKit-Token": TOKEN})
            return response.status_code, response.json()
        status, body = send("pause")
        assert status == 200 and body["text"].startswith("pause acknowledged at step")
        wait_until(lambda: store.get(run_id).status == "paused", 60)
        status, body = send("set", lr="0.0125")
        assert status == 200 and body["answer"]["values"] == {"lr": 0.0125}
        status, body = send("resume")
        assert status == 200 and body["ok"]
        status, body = send("stop")  # a running run: the command, not a cancel
        assert status == 200 and body["text"].startswith("stop acknowledged") and "cancelled" not in body
        assert worker.wait(120) == 0
        assert store.get(run_id).status == "stopped"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
