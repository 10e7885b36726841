"""A checkpoint whose trainer section is bad (missing fields, wrong types, hostile values) is a
CheckpointError naming the file and the field, for ``nnkit.load``, ``fit(resume=...)`` and the
command line (exit 2); nothing is changed by a refused resume."""
import copy

import numpy as np
import pytest
from helpers import DATA
from test_cli import SMALL_JOB, nnkit_cli
from test_model import mlp, toy_data

import nnkit
from nnkit import checkpoint
from nnkit.checkpoint import CheckpointError
from nnkit.cli import main
from nnkit.training.trainer_state import check_trainer_state

FIELDS = ("current_epoch", "batch_cursor", "example_cursor", "global_step", "shuffle_rng",
          "epoch_rng", "epoch_sums", "history", "interactive")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real checkpoint of 10 steps (mid-epoch: every trainer field is filled) and its tree."""
    x, y = toy_data()
    model = mlp()
    model.fit(x, y, batch_size=32, steps=10, verbose=0)
    path = tmp_path_factory.mktemp("good") / "good.h5"
    model.save(path)
    return path, checkpoint.load_tree(path)


def _rng(**changes):
    state = np.random.default_rng(0).bit_generator.state
    return {**state, **changes}


MISSING = object()  # the field is deleted

# case -> (field, value, words the message must contain)
BAD = {
    "missing current_epoch": ("current_epoch", MISSING, "missing"),
    "missing shuffle_rng": ("shuffle_rng", MISSING, "missing"),
    "missing history": ("history", MISSING, "missing"),
    "global_step a string": ("global_step", "12", "whole number"),
    "global_step a float": ("global_step", 3.5, "whole number"),
    "global_step a bool": ("global_step", True, "whole number"),
    "global_step negative": ("global_step", -1, "[0, 2**63)"),
    "global_step 2**70": ("global_step", 2**70, "[0, 2**63)"),
    "current_epoch a list": ("current_epoch", [1], "whole number"),
    "current_epoch None": ("current_epoch", None, "whole number"),
    "example_cursor a dict": ("example_cursor", {"a": 1}, "whole number"),
    "batch_cursor above example_cursor": ("batch_cursor", 10**6, "every batch has one"),
    "shuffle_rng a number": ("shuffle_rng", 5, "not a PCG64 state"),
    "shuffle_rng another generator": ("shuffle_rng", _rng(bit_generator="MT19937"), "PCG64"),
    "shuffle_rng a 200-bit state": ("shuffle_rng", _rng(state={"state": 2**200, "inc": 1}), "PCG64"),
    "epoch_rng a string": ("epoch_rng", "x", "not a PCG64 state"),
    "epoch_sums a list": ("epoch_sums", [1, 2], "dict of numbers"),
    "epoch_sums a string value": ("epoch_sums", {"_count": 3, "loss": "a"}, "dict of numbers"),
    "epoch_sums a negative count": ("epoch_sums", {"_count": -3, "loss": 1.0}, "_count"),
    "history a list": ("history", [1], "'epoch'"),
    "history without epochs": ("history", {"history": {}}, "'epoch'"),
    "history a metric not a list": ("history", {"epoch": [0], "history": {"loss": 1.0}}, "'epoch'"),
    "history a value a dict": ("history", {"epoch": [0], "history": {"loss": [{"a": 1}]}}, "numbers"),
    "interactive a dict": ("interactive", {"a": 1}, "rows"),
    "interactive a short row": ("interactive", [[0, 0.5]], "rows"),
    "interactive a string error": ("interactive", [[0, "x", None]], "rows"),
}


def _crafted(good, tmp_path, name):
    """A copy of the good checkpoint, written by nnkit (checksums and all), with one edit."""
    path, tree = good
    tree = copy.deepcopy(tree)
    field, value, _ = BAD[name]
    if value is MISSING:
        del tree["trainer"][field]
    else:
        tree["trainer"][field] = value
    out = tmp_path / "crafted.h5"
    checkpoint.save_tree(out, tree)
    return out, field


def test_the_good_checkpoint_loads_and_every_field_is_checked(good):
    path, tree = good
    assert set(tree["trainer"]) == set(FIELDS)
    assert nnkit.load(path).trainer.global_step == 10
    assert {BAD[name][0] for name in BAD} == set(FIELDS)  # every field has a bad case
    assert check_trainer_state({}) == {} and check_trainer_state(None) == {}  # a fresh trainer


@pytest.mark.parametrize("name", list(BAD))
def test_load_and_resume_name_the_field_and_change_nothing(good, tmp_path, name):
    path, field = _crafted(good, tmp_path, name)
    words = BAD[name][2]
    with pytest.raises(CheckpointError) as info:
        nnkit.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: trainer/{field}") and words in message, message

    model = nnkit.load(good[0])
    before = [w.copy() for w in model.get_weights()]
    trainer = model.trainer
    x, y = toy_data()
    with pytest.raises(CheckpointError) as info:
        model.fit(x, y, batch_size=32, epochs=3, verbose=0, resume=path)
    assert str(info.value).startswith(f"{path}: trainer/{field}"), str(info.value)
    assert trainer.global_step == 10  # refused before anything was restored
    for w, w0 in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(w, w0)


def test_a_trainer_section_that_is_not_a_dict(good, tmp_path):
    tree = copy.deepcopy(good[1])
    tree["trainer"] = [1, 2]
    path = tmp_path / "list.h5"
    checkpoint.save_tree(path, tree)
    with pytest.raises(CheckpointError, match=r"trainer: expected a dict of trainer state, got list"):
        nnkit.load(path)


@pytest.mark.parametrize("command", ["show", "eval"])
@pytest.mark.parametrize("name", ["global_step a string", "missing history", "shuffle_rng a number"])
def test_the_command_line_exits_2_naming_the_field(good, tmp_path, capsys, command, name):
    path, field = _crafted(good, tmp_path, name)
    args = [command, str(path)] + (["--dataset", "mnist"] if command == "eval" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"nnkit {command}: error: {path}: trainer/{field}" in err and "Traceback" not in err


def test_a_real_nnkit_show_process_exits_2(good, tmp_path):
    path, _ = _crafted(good, tmp_path, "interactive a short row")
    done = nnkit_cli("show", path, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"{path}: trainer/interactive" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no MNIST in {DATA}")
def test_nnkit_train_resume_refuses_it_before_making_anything(tmp_path, capsys):
    job = tmp_path / "small.conf"
    job.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    model = nnkit.load_job(job).build_model()  # the job's own model: only the trainer section is bad
    tree = {"model": model.checkpoint_tree(), "trainer": {"global_step": "7"}}
    path = tmp_path / "bad.h5"
    checkpoint.save_tree(path, tree)
    assert main(["train", str(job), "--resume", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"nnkit train: error: {path}: trainer/current_epoch: missing" in err, err
    assert not (tmp_path / "run").exists()
