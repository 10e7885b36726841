"""A checkpoint's ``trainer`` section, checked before anything is restored from it.

``Trainer.state_dict()`` writes counters, RNG states, the epoch's running sums and the history;
a damaged or hostile file may hold any tree there (a string for a counter, a number for an RNG
state, a field missing). :func:`check_trainer_state` refuses all of that up front with a
:class:`~nnkit.checkpoint.CheckpointError` naming the file and the field (``trainer/global_step``),
so ``nnkit.load``, ``fit(resume=...)`` and the command line (exit 2) report it the same way and
nothing is half-restored.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import checkpoint

#: The fields of a trainer's ``state_dict`` (a checkpoint's ``trainer`` section).
_STATE_FIELDS = ("current_epoch", "batch_cursor", "example_cursor", "global_step", "shuffle_rng",
                 "epoch_rng", "epoch_sums", "history", "interactive")
_MAX_COUNT = 2**63 - 1  # counters beyond int64 overflow the schedules and the kernels' steps


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


def _count(value: Any, bad: Any) -> int:
    """``value`` as an int in [0, 2**63); else raises ``bad(problem)``."""
    if not _is_int(value):
        raise bad(f"expected a whole number >= 0, got {type(value).__name__} {value!r:.40}")
    if not 0 <= value <= _MAX_COUNT:
        shown = value if int(value).bit_length() < 80 else f"a {int(value).bit_length()}-bit number"
        raise bad(f"must be in [0, 2**63), got {shown}")
    return int(value)


def check_checkpoint_tree(tree: dict[str, Any], source: str,
                          bit_generator: type = np.random.PCG64) -> dict[str, Any]:
    """The checked trainer state of a loaded checkpoint tree (see :func:`check_trainer_state`);
    CheckpointError naming ``source`` if it is not a model checkpoint."""
    if "model" not in tree:
        raise checkpoint.CheckpointError(f"{source}: not a model checkpoint (it has "
                                         f"{', '.join(sorted(tree)) or 'nothing'})")
    return check_trainer_state(tree.get("trainer"), source, bit_generator)


def check_trainer_state(state: Any, source: str = "trainer state",
                        bit_generator: type = np.random.PCG64) -> dict[str, Any]:
    """``state`` (a checkpoint's ``trainer`` section) checked field by field; returns it
    with its counters as ints. None or ``{}`` (a model saved before it trained) is a fresh
    trainer; anything else must have every field ``Trainer.state_dict()`` writes, of its type.

    Raises :class:`~nnkit.checkpoint.CheckpointError` naming ``source`` and the field
    (``trainer/global_step``) for a missing field, a wrong type or a value out of range.
    ``bit_generator`` is the class the RNG states must restore (tried on a fresh one).
    """
    if state is None or (isinstance(state, dict) and not state):
        return {}

    def bad(field: str | None, problem: str) -> checkpoint.CheckpointError:
        where = "trainer" + (f"/{field}" if field else "")
        return checkpoint.CheckpointError(f"{source}: {where}: {problem}")

    if not isinstance(state, dict):
        raise bad(None, f"expected a dict of trainer state, got {type(state).__name__}")
    missing = [k for k in _STATE_FIELDS if k not in state]
    if missing:
        raise bad(missing[0], f"missing (the trainer state has {', '.join(map(str, state))})")
    out = dict(state)
    for key in ("current_epoch", "batch_cursor", "example_cursor", "global_step"):
        out[key] = _count(state[key], lambda problem, key=key: bad(key, problem))
    if out["batch_cursor"] > out["example_cursor"]:
        raise bad("batch_cursor", f"{out['batch_cursor']} batches done in the epoch but only "
                  f"{out['example_cursor']} examples (example_cursor): every batch has one")
    for key in ("shuffle_rng", "epoch_rng"):
        if key == "epoch_rng" and state[key] is None:
            continue
        try:
            bit_generator().state = state[key]  # a fresh one: nothing of ours is touched
        except Exception as e:  # noqa: BLE001  (numpy raises several types for bad states)
            raise bad(key, f"not a {bit_generator.__name__} state ({type(e).__name__}: {e})") from None
    sums = state["epoch_sums"]
    if not isinstance(sums, dict) or not all(isinstance(k, str) and _is_number(v)
                                             for k, v in sums.items()):
        raise bad("epoch_sums", "expected a dict of numbers by metric name")
    if sums:
        _count(sums.get("_count"), lambda problem: bad("epoch_sums/_count", problem))
    history = state["history"]
    if (not isinstance(history, dict) or not isinstance(history.get("epoch"), list)
            or not all(_is_int(e) for e in history["epoch"])
            or not isinstance(history.get("history"), dict)
            or not all(isinstance(k, str) and isinstance(v, list)
                       and all(item is None or isinstance(item, str) or _is_number(item)
                               for item in v)
                       for k, v in history["history"].items())):
        raise bad("history", "expected {'epoch': [int, ...], 'history': {metric: [value, ...]}} "
                  "with numbers (or None, or text) as values")
    rows = state["interactive"]
    if not isinstance(rows, list) or not all(
            isinstance(row, list) and len(row) == 3 and _is_int(row[0])
            and all(v is None or _is_number(v) for v in row[1:]) for row in rows):
        raise bad("interactive", "expected a list of [epoch, train_error, test_error] rows")
    return out
