"""The one command table: the Controller's checks, the RunHandle methods, ``nnkit ctl`` and the
README are all made from it."""
import inspect
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import ROOT

from nnkit.cli import main
from nnkit.training import COMMANDS, Controller, EventBus, RunHandle, command_reference, find_answer
from nnkit.training.events import jsonl_reader, poll_answer


# ============================================================================ the table itself
@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_a_handler_and_a_handle_method_with_its_signature(name):
    entry = COMMANDS[name]
    assert entry.handler is vars(Controller)[f"_do_{name}"] and entry.handler_fits()
    method = getattr(RunHandle, name)
    assert method.__name__ == name and method.__qualname__ == f"RunHandle.{name}"
    assert " ".join(entry.doc.split()) in " ".join(method.__doc__.split())
    for arg in entry.args:
        assert arg.name in method.__doc__
    params = list(inspect.signature(method).parameters.values())
    assert params[0].name == "self" and params[1:] == entry.parameters()
    assert [p.name for p in params[1:]] == [a.name for a in entry.args]
    assert inspect.signature(method).return_annotation is str


def test_handle_signatures_read_like_hand_written_ones():
    handle = RunHandle()  # signatures need no run
    assert str(inspect.signature(handle.run_until)) == (
        "(batches: int | None = None, epochs: int | None = None) -> str")
    assert str(inspect.signature(handle.report_every)) == "(n: int) -> str"
    assert str(inspect.signature(handle.tell_state)) == "(snapshot: bool = False) -> str"
    assert str(inspect.signature(handle.checkpoint)) == "(path: str | os.PathLike | None = None) -> str"
    assert str(inspect.signature(handle.set)) == ("(lr: float | None = UNSET, momentum: float = UNSET, "
                                                  "weight_decay: float = UNSET, batch_size: int = UNSET) -> str")
    assert str(inspect.signature(handle.stop)) == "() -> str"


class Recorder(RunHandle):
    """A handle that keeps what it would send."""

    def __init__(self):
        self._init_handle(EventBus())
        self.sent = []

    def _send(self, command):
        self.sent.append(command)


def test_handle_methods_send_the_arguments_given_and_leave_the_checks_to_the_run():
    run = Recorder()
    run.run_until(batches=5)
    run.report_every(3)  # positional, as before
    run.checkpoint(Path("runs") / "a.h5")  # a path goes as text
    run.set(lr=None, batch_size=8)
    run.tell_state()
    run.set(speed=3)  # unknown: sent, and the run answers with an error
    assert [(c["command"], c["args"]) for c in run.sent] == [
        ("run_until", {"batches": 5}), ("report_every", {"n": 3}), ("checkpoint", {"path": "runs/a.h5"}),
        ("set", {"lr": None, "batch_size": 8}), ("tell_state", {}), ("set", {"speed": 3})]
    assert all(re.fullmatch("[0-9a-f]{12}", c["id"]) for c in run.sent)
    with pytest.raises(TypeError, match="stop"):
        run.stop(1)
    with pytest.raises(TypeError, match="multiple values"):
        run.report_every(3, n=4)


# ============================================================================ the run's checks
class StubTrainer:
    """Just what the handlers touch."""

    def __init__(self, momentum=0.0):
        self.global_step, self.current_epoch, self.batch_cursor = 7, 0, 7
        self.target_step = self.target_epoch = None
        self.batch_size = 16
        self.updater = SimpleNamespace(lr=0.1, momentum=momentum, decay=0.0)
        self.stopped = False
        self.requested = None

    def stop(self):
        self.stopped = True


def answer(message, trainer=None):
    bus = EventBus()
    controller = Controller(bus)
    trainer = trainer or StubTrainer()
    controller.submit({"id": "c1", **message})
    controller.safe_point(trainer)  # never raises: every outcome is an event
    answers = [e for e in bus.events() if e["type"] in ("ack", "error")]
    assert len(answers) == 1 and answers[0]["id"] == "c1"
    return answers[0], trainer


@pytest.mark.parametrize("message, expected", [
    ({"command": "frobnicate"}, "unknown command 'frobnicate'; expected one of stop, pause"),
    ({"command": ["stop"]}, "unknown command ['stop']"),
    ({"command": "stop", "args": [1]}, "args must be an object, got list"),
    ({"command": "stop", "args": {"now": True}}, "stop: unknown argument 'now'; stop takes no arguments"),
    ({"command": "run_until", "args": {"steps": 3}}, "run_until: unknown argument 'steps'; run_until takes batches, epochs"),
    ({"command": "run_until", "args": {"batches": 3, "epochs": 1}}, "run_until takes exactly one of batches= or epochs="),
    ({"command": "run_until", "args": {"batches": 2.5}}, "run_until batches: expected a whole number, got 2.5"),
    ({"command": "run_until", "args": {"epochs": 0}}, "run_until epochs: expected a positive whole number, got 0"),
    ({"command": "report_every"}, "report_every: missing n="),
    ({"command": "report_every", "args": {"n": "2"}}, "report_every n: expected a whole number, got '2'"),
    ({"command": "report_every", "args": {"n": True}}, "report_every n: expected a whole number, got True"),
    ({"command": "tell_state", "args": {"snapshot": 1}}, "tell_state snapshot: expected true/false, got 1"),
    ({"command": "checkpoint", "args": {"path": 3}}, "checkpoint path: expected text, got 3"),
    ({"command": "checkpoint"}, "checkpoint: no path given and the run has no run directory"),
    ({"command": "set"}, "set needs at least one of lr=, momentum=, weight_decay=, batch_size="),
    ({"command": "set", "args": {"lr": "fast"}}, "set lr: expected a number or null, got 'fast'"),
    ({"command": "set", "args": {"lr": float("nan")}}, "set lr: expected a number or null, got nan"),
    ({"command": "set", "args": {"lr": 0.02, "weight_decay": -1}}, "set weight_decay: must be >= 0, got -1"),
    ({"command": "set", "args": {"batch_size": 8.5}}, "set batch_size: expected a positive whole number, got 8.5"),
    ({"command": "set", "args": {"lr": 0.02, "momentum": 0.5}}, "has no momentum to change"),
])
def test_the_run_answers_a_bad_command_with_an_error_naming_it(message, expected):
    error, trainer = answer(message)
    assert error["type"] == "error" and expected in error["message"], error["message"]
    assert error["command"] == message["command"]
    assert trainer.updater.lr == 0.1 and trainer.batch_size == 16  # nothing half-applied


def test_the_run_applies_good_commands_with_the_tables_defaults():
    ack, trainer = answer({"command": "set", "args": {"lr": 0.02, "batch_size": 8.0, "momentum": 0.5}},
                          StubTrainer(momentum=0.9))
    assert ack["type"] == "ack" and ack["step"] == 7
    assert ack["values"] == {"lr": 0.02, "batch_size": 8.0, "momentum": 0.5}
    assert trainer.updater.lr == 0.02 and trainer.batch_size == 8 and isinstance(trainer.batch_size, int)
    ack, trainer = answer({"command": "run_until", "args": {"batches": None, "epochs": 3}})
    assert ack["type"] == "ack" and (trainer.target_epoch, trainer.target_step) == (3, None)
    ack, trainer = answer({"command": "set", "args": {"lr": None}})  # back to the schedule
    assert ack["values"] == {"lr": None} and trainer.updater.lr is None
    ack, trainer = answer({"command": "stop"})
    assert ack["type"] == "ack" and trainer.stopped


# ============================================================================ nnkit ctl
def _ill_typed(arg):
    return {bool: "maybe", int: "2.5", float: "fast"}.get(arg.type)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_ctl_refuses_an_unknown_or_ill_typed_argument_of_every_command(tmp_path, capsys, name):
    assert main(["ctl", str(tmp_path), name, "bogus=1"]) == 2
    assert f"{name}: unknown argument 'bogus'" in capsys.readouterr().err
    for arg in COMMANDS[name].args:
        text = _ill_typed(arg)
        if text is None:  # a text argument takes any text
            continue
        assert main(["ctl", str(tmp_path), name, f"{arg.name}={text}"]) == 2
        assert f"{name} {arg.name}={text}: expected {arg.kind}" in capsys.readouterr().err
    assert not (tmp_path / "commands.jsonl").exists()


def test_ctl_refuses_what_the_table_rules_out_by_name(tmp_path, capsys):
    assert main(["ctl", str(tmp_path), "run_until", "batches=3", "epochs=1"]) == 2
    assert "run_until takes exactly one of batches= or epochs=" in capsys.readouterr().err
    assert not (tmp_path / "commands.jsonl").exists()


def test_ctl_help_lists_every_command_and_its_arguments(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["ctl", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for entry in COMMANDS.values():
        assert re.search(rf"^  {entry.name}: ", out, re.M), entry.name
        for arg in entry.args:
            assert f"{arg.name}= ({arg.kind}" in out


# ============================================================================ the docs
def test_readme_carries_exactly_the_command_table():
    text = (ROOT / "README.md").read_text()
    header = command_reference().splitlines()[0]
    assert text.count(header) == 1
    section = text[text.index("### Watch and steer a run"):]
    section = section[:section.index("\n### ", 1)]
    lines = section[section.index(header):].splitlines()
    table = lines[:next(i for i, line in enumerate(lines) if not line.startswith("|"))]
    assert "\n".join(table) + "\n" == command_reference()


def test_control_module_docs_point_at_the_table_instead_of_copying_it():
    import nnkit.training.control as control
    assert "COMMANDS" in control.__doc__ and "| ``stop``" not in control.__doc__


# ============================================================================ one answer rule
def test_find_answer_matches_acks_and_errors_by_id_only():
    events = [ValueError("byte 0: not valid JSON"), ["a list"], {"type": "loss", "id": "c1"},
              {"type": "ack", "id": "c2"}, {"type": "error", "id": "c1", "message": "no"},
              {"type": "ack", "id": "c1"}]
    assert find_answer(events, "c1") == {"type": "error", "id": "c1", "message": "no"}
    assert find_answer(events, "c3") is None


def test_poll_answer_reads_until_the_answer_or_the_timeout(tmp_path):
    reads = iter([[], [{"type": "ack", "id": "other"}], [{"type": "ack", "id": "c1", "step": 3}]])
    assert poll_answer(lambda: next(reads), "c1", timeout=5, poll=0.001)["step"] == 3
    started = time.monotonic()
    assert poll_answer(lambda: [], "c1", timeout=0.05, poll=0.01) is None
    assert time.monotonic() - started >= 0.05

    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "ack", "id": "old"}\n')
    offset = path.stat().st_size
    path.write_text(path.read_text() + 'garbage\n{"type": "ack", "id": "c1"}\n')
    read = jsonl_reader(path, offset)
    assert poll_answer(read, "old", timeout=0, poll=0.01) is None  # before the offset
    bus = EventBus()
    bus.emit("ack", id="c9", command="stop", step=1)
    assert poll_answer(bus.reader(), "c9", timeout=0, poll=0.01)["command"] == "stop"
    assert poll_answer(jsonl_reader(path, offset), "c1", timeout=0, poll=0.01) == {"type": "ack", "id": "c1"}
