"""The command channel survives what users and files do to it: any JSON in any field, a
rotated or truncated command file, checkpoint paths that try to leave the run directory."""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from nnkit.training import read_jsonl
from test_model import mlp, toy_data

WAIT = 60.0  # generous: a loaded 2-core machine is slow, and waits end as soon as the event comes


def start_run(run_dir: Path, epochs: int = 1000):
    """A background run with a run directory, slowed by nothing: it trains until stopped."""
    x, y = toy_data(256)
    return mlp().fit(x, y, batch_size=16, epochs=epochs, verbose=0, run_dir=run_dir, background=True)


def append(run_dir: Path, *lines: str) -> None:
    with open(run_dir / "commands.jsonl", "a") as f:
        for line in lines:
            f.write(line + "\n")


def events(run_dir: Path) -> list[dict]:
    return [value for _, value in read_jsonl(run_dir / "events.jsonl")[0]]


def wait_for_ids(run_dir: Path, ids: set[str], timeout: float = WAIT) -> dict[str, dict]:
    """The answers (ack or error events) to every id, waiting for them."""
    deadline = time.monotonic() + timeout
    while True:
        answers = {e["id"]: e for e in events(run_dir) if e["type"] in ("ack", "error") and e.get("id") in ids}
        if set(answers) == ids:
            return answers
        assert time.monotonic() < deadline, f"unanswered: {sorted(ids - set(answers))[:10]}"
        time.sleep(0.02)


def wait_until_training(run, steps: int = 2) -> None:
    deadline = time.monotonic() + WAIT
    while run.global_step < steps:
        assert time.monotonic() < deadline and run.status != "failed", run.status
        time.sleep(0.01)


@pytest.fixture
def live(tmp_path: Path):
    run_dir = tmp_path / "run"
    run = start_run(run_dir)
    wait_until_training(run)
    yield run, run_dir
    run.shutdown()
    assert run.join(WAIT)


def test_any_json_in_any_field_is_answered_and_the_run_goes_on(live):
    run, run_dir = live
    odd = [{"id": {"a": 1}, "command": "tell_state"}, {"id": [1, 2], "command": "report_every", "args": {"n": 2}},
           {"id": 7, "command": 3}, {"id": None, "command": None}, {"id": True, "command": {"x": []}},
           {"id": "args-list", "command": "set", "args": [1, 2]},
           {"id": "args-str", "command": "report_every", "args": "n=3"},
           {"id": "lr-object", "command": "set", "args": {"lr": {"v": 1}}},
           {"id": "huge-int", "command": "run_until", "args": {"batches": 10 ** 400}}]
    append(run_dir, *(json.dumps(c) for c in odd))
    # An id that is not a string is answered under its JSON text.
    ids = {c["id"] if isinstance(c["id"], str) else json.dumps(c["id"], sort_keys=True) for c in odd}
    answers = wait_for_ids(run_dir, ids)
    good = {'{"a": 1}', "[1, 2]", "huge-int"}  # real commands (odd ids, far targets) work
    assert all(answers[k]["type"] == "ack" for k in good)
    assert all(a["type"] == "error" for k, a in answers.items() if k not in good)
    before = run.global_step
    wait_until_training(run, before + 3)
    assert run.status not in ("failed", "stopped")


def test_a_thousand_random_lines_never_stop_the_run(live):
    run, run_dir = live
    rnd = random.Random(1234)

    def value(depth: int = 0):
        makers = [lambda: None, lambda: rnd.random() < 0.5, lambda: rnd.randint(-10 ** 6, 10 ** 6),
                  lambda: rnd.uniform(-1e9, 1e9),
                  lambda: "".join(rnd.choice("ab/.%\\\"'\n\x00é") for _ in range(rnd.randrange(6))),
                  lambda: rnd.choice(["x", "-1", "1e999", "NaN"])]
        if depth < 2:  # containers, nested at most twice
            makers += [lambda: [value(depth + 1) for _ in range(rnd.randrange(3))],
                       lambda: {rnd.choice(["n", "lr", "path", "batches", "k"]): value(depth + 1)
                                for _ in range(rnd.randrange(3))}]
        return rnd.choice(makers)()

    # Names that cannot end or break the run, and junk; any argument values at all.
    names = ["tell_state", "report_every", "checkpoint", "run_until", "resume", "bogus", ""]
    lines, ids = [], set()
    for i in range(1000):
        command = {"id": f"f{i}", "command": rnd.choice(names) if rnd.random() < 0.8 else value(),
                   "args": {k: value() for k in rnd.sample(["n", "path", "batches", "epochs", "snapshot", "q"],
                                                           rnd.randrange(3))} if rnd.random() < 0.8 else value()}
        if command["command"] == "run_until":  # keep the run going: only far targets
            command["args"] = {"batches": 10 ** 9}
        ids.add(command["id"])
        lines.append(json.dumps(command))
        if rnd.random() < 0.02:
            lines.append(rnd.choice(["{", "not json", "[]", "42", '"text"', "{}"]))
    append(run_dir, *lines)
    answers = wait_for_ids(run_dir, ids, timeout=180)
    assert len(answers) == 1000
    assert run.status not in ("failed", "stopped"), run.status
    before = run.global_step
    wait_until_training(run, before + 2)  # still training


def test_a_truncated_rotated_or_deleted_command_file_keeps_being_read(live):
    run, run_dir = live
    path = run_dir / "commands.jsonl"
    append(run_dir, json.dumps({"id": "first", "command": "tell_state"}))
    wait_for_ids(run_dir, {"first"})
    path.write_text("")  # truncated (e.g. by a user clearing it)
    append(run_dir, json.dumps({"id": "after-truncate", "command": "tell_state"}))
    wait_for_ids(run_dir, {"after-truncate"})
    path.rename(run_dir / "commands.jsonl.1")  # rotated: a new file takes its place
    append(run_dir, json.dumps({"id": "after-rotate", "command": "tell_state"}))
    wait_for_ids(run_dir, {"after-rotate"})
    path.unlink()  # deleted, then made again
    time.sleep(0.3)  # let the run notice the absence (it polls at safe points)
    append(run_dir, json.dumps({"id": "after-delete", "command": "tell_state"}))
    wait_for_ids(run_dir, {"after-delete"})


def test_checkpoint_paths_stay_inside_the_run_directory(live, tmp_path: Path):
    run, run_dir = live
    outside = tmp_path / "outside.h5"
    precious = run_dir / "notes.txt"
    precious.write_text("mine")
    cases = {"escape": "../outside.h5", "abs-escape": str(outside), "deep-escape": "../../../x.h5",
             "no-folder": "sub/dir/x.h5", "not-a-checkpoint": "notes.txt", "inside": "mine.h5",
             "inside-again": "mine.h5"}
    for cid, path in cases.items():
        append(run_dir, json.dumps({"id": cid, "command": "checkpoint", "args": {"path": path}}))
        wait_for_ids(run_dir, {cid})  # in order: the second "inside" replaces a checkpoint
    answers = wait_for_ids(run_dir, set(cases))
    for cid in ("escape", "abs-escape", "deep-escape", "no-folder", "not-a-checkpoint"):
        assert answers[cid]["type"] == "error", answers[cid]
    assert "outside the run directory" in answers["escape"]["message"]
    assert "not an nnkit checkpoint" in answers["not-a-checkpoint"]["message"]
    assert answers["inside"]["type"] == answers["inside-again"]["type"] == "ack"
    assert Path(answers["inside"]["path"]) == (run_dir / "mine.h5").resolve()
    assert not outside.exists() and not (tmp_path.parent / "x.h5").exists()
    assert not (run_dir / "sub").exists()
    assert precious.read_text() == "mine"


def test_a_failing_event_subscriber_does_not_end_the_run(tmp_path: Path, capfd):
    run = start_run(tmp_path / "run")
    calls = []

    def broken(event):
        calls.append(event)
        raise RuntimeError("a viewer's bug")
    run.subscribe("loss", broken)
    wait_until_training(run, 5)
    assert calls and run.status not in ("failed", "stopped")
    run.shutdown()
    assert run.join(WAIT)
    assert "subscriber failed" in capfd.readouterr().err


def test_live_runs_lists_a_lingering_run_until_it_ends(tmp_path: Path):
    from nnkit.training import live_runs
    x, y = toy_data(64)
    run = mlp().fit(x, y, batch_size=16, epochs=1, verbose=0, background=True)
    assert run.wait(WAIT) == "finished"
    assert run in live_runs()  # finished, but lingering for run_until or shutdown
    run.shutdown()
    assert run.join(WAIT) and run not in live_runs()


def test_a_handle_that_started_nothing_is_not_a_live_run():
    from nnkit.training import EventBus, RunHandle, live_runs

    class Idle(RunHandle):
        def __init__(self) -> None:
            self._init_handle(EventBus())

        def _send(self, command) -> None:
            pass
    idle = Idle()
    assert idle not in live_runs()  # the suite's teardown would otherwise wait on it for nothing
