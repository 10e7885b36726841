"""Answers to commands: one matching rule (find_answer) and one polling wait (poll_answer)."""
import time

from nnkit.training import EventBus, find_answer
from nnkit.training.events import jsonl_reader, poll_answer


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
