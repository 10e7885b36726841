"""Tests of nnkit.checkpoint: exact round trips, atomic writes, clear errors, no code from files."""
from __future__ import annotations

import errno
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from nnkit import checkpoint
from nnkit.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointNotFoundError,
    load_model_parameter,
    load_tree,
    read_kind,
    save_model_parameter,
    save_tree,
)
from nnkit.layers import Convolution2D, Dense, ImageInput


# --------------------------------------------------------------------------- helpers
def assert_identical(got: Any, want: Any, where: str = "tree") -> None:
    """Bit-exact comparison: same types (tuples read back as lists), dtypes, shapes, bytes,
    dict key order."""
    if isinstance(want, dict):
        assert type(got) is dict, where
        assert list(got) == list(want), where
        for key in want:
            assert_identical(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is list and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_identical(g, w, f"{where}[{i}]")
    elif isinstance(want, (np.ndarray, np.generic)):
        assert type(got) is type(want), where
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert got.tobytes() == want.tobytes(), where
    elif isinstance(want, float) and math.isnan(want):
        assert type(got) is float and math.isnan(got), where
    else:
        assert type(got) is type(want) and got == want, where


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def rich_tree() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "model": {
            "dense/weight": rng.standard_normal((3, 4)).astype(np.float32),
            "dense/bias": np.zeros(3, np.float64),
            "conv/weight": rng.standard_normal((2, 1, 3, 3)),
        },
        "arrays": {
            "int64": np.arange(-5, 5, dtype=np.int64).reshape(2, 5),
            "bool": np.array([[True, False, True]]),
            "uint8": np.array([0, 7, 255], np.uint8),
            "zero_d": np.array(2.5, np.float32),
            "empty": np.zeros((0, 3), np.float64),
            "fortran": np.asfortranarray(rng.standard_normal((3, 2))),
            "special": np.array([np.nan, np.inf, -np.inf, -0.0], np.float64),
            "complex": np.array([1 + 2j], np.complex64),
        },
        "scalars": {
            "np_float32": np.float32(0.1),
            "np_int64": np.int64(-3),
            "np_bool": np.bool_(True),
            "int": 7,
            "big_int": 2**200 + 1,
            "negative_big": -(2**100),
            "float": 0.1,
            "nan": float("nan"),
            "inf": float("inf"),
            "neg_zero": -0.0,
            "true": True,
            "none": None,
            "text": "héllo \"world\"\n\x00",
        },
        "rng": rng.bit_generator.state,
        "history": [0.5, 0.25, 1, None, "x", [1, [2]]],
        "tuple": (1, 2.0, "three"),
        "slots": [np.ones(2, np.float32), np.arange(3), None, {"lr": 0.01}],
        "empty_dict": {},
        "empty_list": [],
    }


# --------------------------------------------------------------------------- round trips
def test_rich_tree_round_trips_bit_exactly(tmp_path: Path) -> None:
    tree = rich_tree()
    save_tree(tmp_path / "ckpt.h5", tree)
    loaded = load_tree(tmp_path / "ckpt.h5")
    assert_identical(loaded, tree)
    assert loaded["arrays"]["zero_d"].ndim == 0 and isinstance(loaded["arrays"]["zero_d"], np.ndarray)
    assert isinstance(loaded["scalars"]["np_float32"], np.float32)
    assert loaded["tuple"] == [1, 2.0, "three"]  # documented: tuples come back as lists
    assert read_kind(tmp_path / "ckpt.h5") == "nnkit.checkpoint"


def test_root_attributes_and_documented_layout(tmp_path: Path) -> None:
    import nnkit

    save_tree(tmp_path / "c.h5", {"params": {"dense/weight": np.ones(2)}, "step": 3}, kind="my.kind")
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f.attrs["format"] == b"my.kind"  # fixed-length strings: h5py reads bytes
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert f.attrs["nnkit_version"] == nnkit.__version__.encode()
        assert f.attrs["checksum"] == b"crc32"
        assert list(f["params"]) == ["dense%2Fweight"]
        assert f["params/dense%2Fweight"].attrs["nnkit_type"] == b"array"
        assert f["step"].attrs["nnkit_type"] == b"json" and f["step"][()] == b"3"


@pytest.mark.parametrize("key", ["", ".", "..", "%", "%2F", "%25", "a/b/", "/lead", "a\x00b",
                                 "ü/é", " ", "nnkit_type", "format", "0"])
def test_any_key_round_trips_exactly(tmp_path: Path, key: str) -> None:
    tree = {key: {key: np.arange(2), "x": key}, "other": [{key: 1}]}
    save_tree(tmp_path / "k.h5", tree)
    assert_identical(load_tree(tmp_path / "k.h5"), tree)


def test_dict_order_is_preserved(tmp_path: Path) -> None:
    tree = {k: i for i, k in enumerate(["z", "a", "m", "b/c", "0", "10", "2"])}
    save_tree(tmp_path / "o.h5", tree)
    assert list(load_tree(tmp_path / "o.h5")) == list(tree)


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox])
def test_generator_state_restores_the_same_draws(tmp_path: Path, bit_generator: type) -> None:
    rng = np.random.Generator(bit_generator(1234))
    rng.random(7)  # move away from the seed state
    save_tree(tmp_path / "rng.h5", {"rng": rng.bit_generator.state})
    expected = rng.random(5)
    restored = np.random.Generator(bit_generator())
    restored.bit_generator.state = load_tree(tmp_path / "rng.h5")["rng"]
    np.testing.assert_array_equal(restored.random(5), expected)


# --------------------------------------------------------------------------- save errors
@pytest.mark.parametrize("value, message", [
    (np.array([object()], dtype=object), "dtype object"),
    (np.array(["a", "b"]), "dtype <U1"),
    (np.array(["2020-01-01"], dtype="datetime64[D]"), "dtype datetime64"),
    (object(), "unsupported type builtins.object"),
    (b"bytes", "unsupported type builtins.bytes"),
    ({1, 2}, "unsupported type builtins.set"),
])
def test_unsupported_leaf_is_rejected_naming_its_key_path(tmp_path: Path, value: Any,
                                                           message: str) -> None:
    tree = {"updater": {"slots": {"dense/weight": value}}}
    with pytest.raises(CheckpointError, match="updater/slots/dense/weight") as info:
        save_tree(tmp_path / "bad.h5", tree)
    assert message in str(info.value)
    assert files_in(tmp_path) == []


def test_bad_keys_and_roots_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"'a/1'.*keys must be str"):
        save_tree(tmp_path / "b.h5", {"a": {1: 2}})
    with pytest.raises(CheckpointError, match=r"'history\[1\]'.*unsupported type"):
        save_tree(tmp_path / "b.h5", {"history": [1, object()]})
    with pytest.raises(CheckpointError, match="must be a dict"):
        save_tree(tmp_path / "b.h5", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="kind"):
        save_tree(tmp_path / "b.h5", {}, kind="")
    assert files_in(tmp_path) == []


# --------------------------------------------------------------------------- atomic writes
def big_tree(tail: Any) -> dict[str, Any]:
    """A few MB of arrays written before ``tail``."""
    return {"a": np.ones((512, 1024), np.float32), "b": np.ones((512, 1024), np.float32),
            "tail": tail}


@pytest.fixture
def old_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "model.h5"
    save_tree(path, {"step": 1, "w": np.arange(4.0)})
    return path


def assert_old_checkpoint_intact(path: Path) -> None:
    assert_identical(load_tree(path), {"step": 1, "w": np.arange(4.0)})
    assert files_in(path.parent) == [path.name]  # no temporary file left behind


def test_unsupported_leaf_after_big_arrays_keeps_the_old_file(old_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="'tail'"):
        save_tree(old_checkpoint, big_tree(object()))
    assert_old_checkpoint_intact(old_checkpoint)


def test_disk_full_midway_keeps_the_old_file(old_checkpoint: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = h5py.Group.create_dataset
    calls = []

    def create_dataset(self: h5py.Group, *args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        if len(calls) == 3:  # after two big arrays are written
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    with pytest.raises(OSError, match="No space left on device") as info:
        save_tree(old_checkpoint, big_tree(3))
    assert calls == ["a", "b", "tail"]
    assert any(str(old_checkpoint) in note for note in getattr(info.value, "__notes__", []))
    monkeypatch.undo()
    assert_old_checkpoint_intact(old_checkpoint)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, nearly full file system: a 1 MiB tmpfs (skips unless mounting works here)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def assert_disk_full_error(error: BaseException, path: Path) -> None:
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC, repr(error)
    assert "disk full" in str(error) and str(path) in str(error)


@pytest.mark.parametrize("tree", [
    pytest.param({"w": np.ones((600, 1000), np.float32)}, id="one big array"),
    pytest.param({f"k{i}": np.ones(40) for i in range(4000)}, id="4000 small arrays"),
])
def test_a_real_full_disk_is_reported_as_enospc_and_keeps_the_old_file(
        small_disk: Path, tree: dict[str, Any]) -> None:
    path = small_disk / "checkpoint.h5"
    save_tree(path, {"step": 1, "w": np.arange(4.0)})
    with pytest.raises(OSError) as info:
        save_tree(path, tree)
    assert_disk_full_error(info.value, path)
    assert_old_checkpoint_intact(path)
    save_tree(path, {"step": 2})  # the process (and HDF5) still works
    assert load_tree(path) == {"step": 2}


FULL_DISK_CHILD = """
import sys
import numpy as np
from nnkit.checkpoint import save_tree
try:
    save_tree(sys.argv[1], {f"k{i}": np.ones(40) for i in range(4000)})
except OSError as e:
    print("errno", e.errno)
"""


def test_a_process_that_hit_a_full_disk_exits_cleanly(small_disk: Path) -> None:
    """HDF5 cannot recover from a failed write: its half-closed file made every later object
    print an 'Exception ignored' traceback and the library crash when the process exited."""
    done = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(small_disk / "c.h5")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert (done.returncode, done.stdout.strip()) == (0, f"errno {errno.ENOSPC}"), done.stderr[-2000:]
    assert "Exception ignored" not in done.stderr
    assert os.listdir(small_disk) == []


def test_the_reserved_size_bounds_the_file(tmp_path: Path) -> None:
    """save_tree claims disk space before HDF5 writes (see the full-disk tests): as much as
    the file will need, or HDF5 could still meet a full disk."""
    deep: dict[str, Any] = {}
    level = deep
    for _ in range(checkpoint.MAX_DEPTH - 1):
        level["d"] = level = {"x": 1.5}
    trees = {"rich": rich_tree(), "deep": deep, "empty": {},
             "many small": {str(i): [np.ones(3), i] for i in range(3000)},
             "long names": {"k" * 8000 + str(i): {"j" * 8000: i} for i in range(50)},
             "big": big_tree([1, 2])}
    for name, tree in trees.items():
        save_tree(tmp_path / "t.h5", tree)
        needed = (tmp_path / "t.h5").stat().st_size
        reserved = checkpoint._estimated_size(checkpoint._prepare("", tree, ""))
        assert needed <= reserved <= 4 * needed + 2**20, (name, needed, reserved)


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failing_fsync_or_rename_keeps_the_old_file(old_checkpoint: Path, failing: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint.os, failing, fail)
    with pytest.raises(OSError, match="Input/output error"):
        save_tree(old_checkpoint, {"step": 2, "w": np.zeros(4)})
    monkeypatch.undo()
    assert_old_checkpoint_intact(old_checkpoint)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fds")
def test_file_is_synced_before_the_rename_and_the_directory_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: Any) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    save_tree(tmp_path / "c.h5", {"x": 1})
    tmp = events[1][1]
    assert Path(tmp).parent == tmp_path and tmp != str(tmp_path / "c.h5")
    assert events == [("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]


def test_new_file_gets_umask_permissions_and_a_replaced_file_keeps_its_own(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    save_tree(tmp_path / "new.h5", {})
    assert (tmp_path / "new.h5").stat().st_mode & 0o777 == 0o666 & ~umask
    os.chmod(tmp_path / "new.h5", 0o640)
    save_tree(tmp_path / "new.h5", {"x": 1})
    assert (tmp_path / "new.h5").stat().st_mode & 0o777 == 0o640


# --------------------------------------------------------------------------- temporary files
def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_temporary_file_names_its_writer(tmp_path: Path) -> None:
    with checkpoint.atomic_path(tmp_path / "checkpoint.h5") as tmp:
        assert re.fullmatch(rf"\.checkpoint\.h5\.{os.getpid()}\.[a-z0-9_]{{8}}\.tmp",
                            os.path.basename(tmp)), tmp
        Path(tmp).write_bytes(b"x")
    assert files_in(tmp_path) == ["checkpoint.h5"]


def test_stale_temporaries_of_dead_or_earlier_writers_are_removed(tmp_path: Path) -> None:
    dead, me, parent = _dead_pid(), os.getpid(), os.getppid()
    cases = {  # name: (age, removed?)
        f".checkpoint.h5.{dead}.abcd1234.tmp": (0, True),  # its writer is gone
        f".job.conf.{dead}.x_y_z_12.tmp": (0, True),
        f".checkpoint.h5.{me}.live0000.tmp": (0, False),  # this process is writing it
        f".checkpoint.h5.{me}.prev0000.tmp": (3600, True),  # an earlier process with our pid
        f".checkpoint.h5.{parent}.live1111.tmp": (0, False),  # a live writer
        f".checkpoint.h5.{parent}.old11111.tmp": (3600, True),  # too old to be still written
        ".checkpoint.h5.k3j4h5g6.tmp": (3600, True),  # named before pids were: by age
        ".checkpoint.h5.n3w4h5g6.tmp": (0, False),
        f".step-3.h5.{dead}.abcdefgh.tmp": (0, True),
        "checkpoint.h5": (3600, False),  # not temporary files
        ".hidden.tmp": (3600, False),
        f"notes.{dead}.abcdefgh.tmp": (3600, False),
        f".checkpoint.h5.{dead}.toolong99.tmp": (3600, False),
    }
    for name, (age, _) in cases.items():
        (tmp_path / name).write_bytes(b"partial")
        os.utime(tmp_path / name, (time.time() - age, time.time() - age))
    (tmp_path / f".dir.{dead}.abcdefgh.tmp").mkdir()  # directories are never touched
    removed = checkpoint.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(str(tmp_path / n) for n, (_, gone) in cases.items() if gone)
    assert files_in(tmp_path) == sorted([n for n, (_, gone) in cases.items() if not gone]
                                        + [f".dir.{dead}.abcdefgh.tmp"])


def test_removing_stale_temporaries_without_a_directory_does_nothing(tmp_path: Path) -> None:
    assert checkpoint.remove_stale_temporaries(tmp_path / "missing") == []
    assert checkpoint.remove_stale_temporaries(None) == []


def test_fit_with_a_run_dir_removes_stale_temporaries(tmp_path: Path) -> None:
    from test_model import mlp, toy_data

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = run_dir / f".checkpoint.h5.{_dead_pid()}.abcdefgh.tmp"
    stale.write_bytes(b"half a checkpoint")
    x, y = toy_data()
    mlp().fit(x, y, batch_size=32, steps=1, run_dir=run_dir, verbose=0)
    assert not stale.exists() and (run_dir / "checkpoint.h5").exists()


# --------------------------------------------------------------------------- load errors
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.h5"
    for call in (load_tree, read_kind):
        with pytest.raises(CheckpointNotFoundError, match="nope.h5: no such checkpoint") as info:
            call(path)
        assert isinstance(info.value, FileNotFoundError)


def test_files_that_are_not_hdf5(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("this is not a checkpoint\n" * 100)
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as z:
        z.writestr("weights.npy", b"\x00" * 1000)
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "dir.h5").mkdir()
    for name, message in [("notes.txt", "not an HDF5 file"), ("model.zip", "not an HDF5 file"),
                          ("empty.h5", "the file is empty"), ("dir.h5", "is a directory")]:
        for call in (load_tree, read_kind):
            with pytest.raises(CheckpointError, match=message) as info:
                call(tmp_path / name)
            assert str(tmp_path / name) in str(info.value)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    save_tree(path, big_tree([1, 2]))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_tree(path)
    assert str(path) in str(info.value)


def test_hdf5_file_not_written_by_nnkit(tmp_path: Path) -> None:
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("weights", data=np.ones(3))
    for call in (load_tree, read_kind):
        with pytest.raises(CheckpointError, match="without a 'format' attribute: not written by "
                                                  "nnkit") as info:
            call(path)
        assert str(path) in str(info.value)


def test_other_kind_is_refused_but_readable_by_read_kind(tmp_path: Path) -> None:
    path = tmp_path / "p.h5"
    save_tree(path, {"x": 1}, kind="nnkit.parameters")
    with pytest.raises(CheckpointError, match=r"p.h5: is a 'nnkit.parameters' file, expected "
                                              r"'nnkit.checkpoint'"):
        load_tree(path)
    assert read_kind(path) == "nnkit.parameters"
    assert load_tree(path, kind="nnkit.parameters") == {"x": 1}


@pytest.mark.parametrize("version, message", [
    (FORMAT_VERSION + 1, f"format_version {FORMAT_VERSION + 1} was written by a newer nnkit"),
    (0, "unknown format_version 0"),
    ("1", "is not an integer"),
])
def test_unknown_format_version_is_refused(tmp_path: Path, version: Any, message: str) -> None:
    path = tmp_path / "v.h5"
    save_tree(path, {"x": 1})
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = version
    with pytest.raises(CheckpointError, match=message) as info:
        load_tree(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- integrity
FIXTURES = Path(__file__).parent / "fixtures"


def _data_extent(path: Path, name: str) -> tuple[int, int]:
    """Where the bytes of the dataset ``name`` (an HDF5 path) sit in the file."""
    with h5py.File(path, "r") as f:
        return f[name].id.get_offset(), f[name].id.get_storage_size()


def _xor_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def _model_like_tree() -> dict[str, Any]:
    return {"model": {"params": {"dense/weight": np.arange(12.0).reshape(3, 4),
                                 "dense/bias": np.zeros(3, np.float32)},
                      "lr": np.float32(0.5), "zero_d": np.array(7, np.int64)},
            "trainer": {"global_step": 12345, "history": [0.5, 0.25]}}


@pytest.mark.parametrize("name, key", [
    ("model/params/dense%2Fweight", "model/params/dense/weight"),
    ("model/lr", "model/lr"),           # a numpy scalar (0-d dataset)
    ("model/zero_d", "model/zero_d"),   # a 0-d array
    ("trainer/global_step", "trainer/global_step"),  # a JSON leaf: "12345" -> "12245"
])
def test_a_flipped_bit_in_any_leaf_is_detected_naming_the_file_and_key(
        tmp_path: Path, name: str, key: str) -> None:
    path = tmp_path / "c.h5"
    save_tree(path, _model_like_tree())
    offset, size = _data_extent(path, name)
    _xor_byte(path, offset + min(size - 1, 2), 0x01 if name.startswith("trainer") else 0x10)
    with pytest.raises(CheckpointError, match="checksum") as info:
        load_tree(path)
    assert str(path) in str(info.value) and repr(key) in str(info.value)


@pytest.mark.parametrize("edit, key", [
    (lambda f: f.move("model/params/dense%2Fbias", "model/params/dense%2Fbiaz"), "model/params"),
    (lambda f: f.__delitem__("trainer/history"), "trainer"),
    (lambda f: (f.move("model/lr", "model/tmp"), f.move("model/zero_d", "model/lr"),
                f.move("model/tmp", "model/zero_d")), "model"),  # two entries swapped
])
def test_renamed_removed_or_swapped_entries_are_detected(tmp_path: Path, edit: Any, key: str) -> None:
    path = tmp_path / "c.h5"
    save_tree(path, _model_like_tree())
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(CheckpointError, match="checksum") as info:
        load_tree(path)
    assert str(path) in str(info.value) and repr(key) in str(info.value)


def test_every_object_carries_a_checksum_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    save_tree(path, _model_like_tree())
    with h5py.File(path, "a") as f:
        assert f.attrs["checksum"] == b"crc32"
        names: list[str] = []
        f.visit(names.append)
        assert all("nnkit_crc32" in f[name].attrs for name in names) and "nnkit_crc32" in f.attrs
        del f["model/params/dense%2Fweight"].attrs["nnkit_crc32"]
    with pytest.raises(CheckpointError, match=r"'model/params/dense/weight'.*no checksum"):
        load_tree(path)


def test_attributes_are_fixed_length_strings(tmp_path: Path) -> None:
    """HDF5 trusts the length stored in a variable-length string and zeroes a buffer that big
    (up to 4 GiB) before it reads the string: nnkit writes none, and in a file that declares
    checksums the loader refuses them unread."""
    path = tmp_path / "c.h5"
    save_tree(path, _model_like_tree())
    with h5py.File(path, "a") as f:
        names: list[str] = []
        f.visit(names.append)
        for obj in [f, *(f[name] for name in names)]:
            for key in obj.attrs:
                kind = obj.attrs.get_id(key).dtype.kind
                assert kind in "Siu", (obj.name, key, obj.attrs.get_id(key).dtype)
        del f["trainer/global_step"].attrs["nnkit_type"]
        f["trainer/global_step"].attrs["nnkit_type"] = "json"  # h5py writes str as vlen
    with pytest.raises(CheckpointError, match=r"'trainer/global_step': a Dataset with "
                                              r"nnkit_type=None"):
        load_tree(path)


def test_a_new_file_loads_without_any_warning(tmp_path: Path) -> None:
    save_tree(tmp_path / "c.h5", rich_tree())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_identical(load_tree(tmp_path / "c.h5"), rich_tree())


def test_a_file_written_before_checksums_loads_and_is_reported_unverified(tmp_path: Path) -> None:
    old = FIXTURES / "v1_cnn_checkpoint.h5"
    with pytest.warns(checkpoint.UnverifiedCheckpointWarning, match="v1_cnn_checkpoint.h5: .*no "
                                                                    "checksums") as record:
        tree = load_tree(old)
    assert len(record) == 1 and tree["trainer"]["global_step"] == 6
    assert record[0].filename == __file__  # the warning names the caller's line
    # A caller who wants only verifiable files makes the warning an error: raised before
    # any data is read.
    with warnings.catch_warnings():
        warnings.simplefilter("error", checkpoint.UnverifiedCheckpointWarning)
        with pytest.raises(checkpoint.UnverifiedCheckpointWarning):
            load_tree(old)
    # Saving it again adds the checksums.
    save_tree(tmp_path / "again.h5", tree)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_identical(load_tree(tmp_path / "again.h5"), tree)


# --------------------------------------------------------------------------- no code from files
UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("ran")
    return "pwned"


class _Payload:
    """Unpickling this runs _record_unpickling: proof that a loader called pickle."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_record_unpickling, ())


PICKLE = pickle.dumps(_Payload())


def test_pickled_bytes_in_attributes_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    tree = {"w": np.arange(3.0), "step": 4}
    save_tree(path, tree)
    with h5py.File(path, "a") as f:
        f.attrs["payload"] = np.void(PICKLE)
        f["w"].attrs["payload"] = np.void(PICKLE)
        f["step"].attrs["state"] = np.frombuffer(PICKLE, np.uint8)
    assert_identical(load_tree(path), tree)
    assert UNPICKLED == []


def strip_checksums(f: h5py.File) -> None:
    """Makes an open file pass for one written before checksums, as an attacker could."""
    del f.attrs["checksum"]
    names: list[str] = []
    f.visit(names.append)
    for obj in [f, *(f[name] for name in names)]:
        obj.attrs.pop("nnkit_crc32", None)


def _tamper(path: Path, edit: Any) -> None:
    """Saves a small tree and edits it; without checksums, so that each edit meets the
    structural check it is about rather than a checksum mismatch."""
    save_tree(path, {"x": 1, "w": np.arange(3.0)})
    with h5py.File(path, "a") as f:
        strip_checksums(f)
        edit(f)


def _vlen_pickle() -> np.ndarray:
    """A variable-length uint8 dataset value holding the pickle bytes."""
    data = np.empty(1, dtype=object)
    data[0] = np.frombuffer(PICKLE, np.uint8)
    return data


def _replace(f: h5py.File, name: str, data: Any, nnkit_type: str, **kwargs: Any) -> None:
    del f[name]
    f.create_dataset(name, data=data, **kwargs)
    f[name].attrs["nnkit_type"] = nnkit_type


@pytest.mark.filterwarnings("ignore::nnkit.checkpoint.UnverifiedCheckpointWarning")
@pytest.mark.parametrize("edit, message", [
    (lambda f: _replace(f, "x", np.bytes_(PICKLE), "json"), "invalid JSON|cannot read"),
    (lambda f: _replace(f, "w", np.void(PICKLE), "array"), "unsupported dtype"),
    (lambda f: _replace(f, "w", np.void(PICKLE), "scalar"), "unsupported dtype"),
    (lambda f: _replace(f, "x", '{"valid": "json"}', "json", dtype=h5py.string_dtype()),
     "0-d fixed-length string"),  # variable-length (object) dtypes are refused outright
    (lambda f: _replace(f, "w", _vlen_pickle(), "array", dtype=h5py.vlen_dtype(np.uint8)),
     "unsupported dtype object"),
    (lambda f: _replace(f, "w", [f["x"].ref], "array", dtype=h5py.ref_dtype), "unsupported dtype"),
    (lambda f: _replace(f, "w", np.arange(3.0), "pickle"), "nnkit_type='pickle'"),
    (lambda f: f.create_dataset("extra", data=np.arange(2)), "nnkit_type=None"),
    (lambda f: f["x"].attrs.__setitem__("nnkit_type", np.void(PICKLE)), "nnkit_type=None"),
    (lambda f: f.__setitem__("link", h5py.SoftLink("/w")), "SoftLink"),
    (lambda f: f.__setitem__("ext", h5py.ExternalLink("/etc/other.h5", "/")), "ExternalLink"),
])
def test_foreign_or_hostile_objects_are_rejected(tmp_path: Path, edit: Any, message: str) -> None:
    path = tmp_path / "c.h5"
    _tamper(path, edit)
    with pytest.raises(CheckpointError, match=message) as info:
        load_tree(path)
    assert str(path) in str(info.value)
    assert UNPICKLED == []


# --------------------------------------------------------------------------- per-layer API
def make_layers(dense_units: int = 5, dtype: Any = np.float32,
                with_dense: bool = True) -> list[Any]:
    """ImageInput -> Convolution2D -> Dense, built by hand, with distinct random params."""
    image = ImageInput(6, 6, 2, name="image")
    conv = Convolution2D(3, 3, name="conv")
    conv.rng = np.random.default_rng(1)
    conv.build(image.input_shape, dtype)
    layers = [image, conv]
    if with_dense:
        dense = Dense(dense_units, name="dense", w_std=0.1, b_value=0.5)
        dense.rng = np.random.default_rng(2)
        dense.build(conv.output_shape(conv.input_shape), dtype)
        layers.append(dense)
    return layers


def all_params(layers: list[Any]) -> dict[str, np.ndarray]:
    return {p.full_name: p.data.copy() for layer in layers for p in layer.params}


def test_parameters_round_trip_in_place(tmp_path: Path) -> None:
    layers = make_layers()
    saved = all_params(layers)
    assert set(saved) == {"conv/weight", "conv/bias", "dense/weight", "dense/bias"}
    save_model_parameter(42, tmp_path / "p.h5", layers)
    assert read_kind(tmp_path / "p.h5") == "nnkit.parameters"

    arrays = {p.full_name: p.data for layer in layers for p in layer.params}
    for a in arrays.values():
        a[...] = -7.0
    assert load_model_parameter(tmp_path / "p.h5", layers) == 42
    for name, a in arrays.items():  # same array objects, filled with the saved values
        assert next(p.data for layer in layers for p in layer.params if p.full_name == name) is a
        assert_identical(a, saved[name])


def test_parameters_load_into_a_float64_copy_of_the_model(tmp_path: Path) -> None:
    save_model_parameter(1, tmp_path / "p.h5", make_layers())
    layers64 = make_layers(dtype=np.float64)
    for layer in layers64:
        for p in layer.params:
            p.data[...] = 0
    load_model_parameter(tmp_path / "p.h5", layers64)
    for name, want in all_params(make_layers()).items():
        got = all_params(layers64)[name]
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want.astype(np.float64))


def test_wrong_shape_names_the_param_and_both_shapes(tmp_path: Path) -> None:
    save_model_parameter(1, tmp_path / "p.h5", make_layers(dense_units=5))
    layers = make_layers(dense_units=4)
    before = all_params(layers)
    with pytest.raises(CheckpointError,
                       match=r"'dense/weight' has shape \(5, 48\) in the file but \(4, 48\) in "
                             r"Dense 'dense'"):
        load_model_parameter(tmp_path / "p.h5", layers)
    for name, a in all_params(layers).items():  # checked before anything was copied
        assert_identical(a, before[name])


def test_missing_and_unknown_params_are_listed(tmp_path: Path) -> None:
    save_model_parameter(1, tmp_path / "small.h5", make_layers(with_dense=False))
    with pytest.raises(CheckpointError,
                       match=r"missing from the file: dense/weight, dense/bias\)"):
        load_model_parameter(tmp_path / "small.h5", make_layers())

    save_model_parameter(1, tmp_path / "full.h5", make_layers())
    with pytest.raises(CheckpointError,
                       match=r"in the file but in no layer: dense/weight, dense/bias\)"):
        load_model_parameter(tmp_path / "full.h5", make_layers(with_dense=False))

    renamed = make_layers()
    renamed[2].name = "fc"
    with pytest.raises(CheckpointError, match=r"missing from the file: fc/weight, fc/bias; in the "
                                              r"file but in no layer: dense/weight, dense/bias"):
        load_model_parameter(tmp_path / "full.h5", renamed)


def test_unbuilt_layers_are_named(tmp_path: Path) -> None:
    built = make_layers()
    for unbuilt in (Dense(3, name="fresh_dense"), Convolution2D(2, 3, name="fresh_conv")):
        with pytest.raises(CheckpointError, match=f"'{unbuilt.name}': is not built"):
            save_model_parameter(1, tmp_path / "p.h5", built + [unbuilt])
    assert files_in(tmp_path) == []
    save_model_parameter(1, tmp_path / "p.h5", built)
    with pytest.raises(CheckpointError, match="Dense 'fresh_dense': is not built"):
        load_model_parameter(tmp_path / "p.h5", built + [Dense(3, name="fresh_dense")])


def test_duplicate_param_names_are_refused(tmp_path: Path) -> None:
    a, b = Dense(2, name="fc"), Dense(2, name="fc")
    a.build((3,))
    b.build((2,))
    with pytest.raises(CheckpointError, match="'fc/weight' is used by both Dense 'fc' and Dense "
                                              "'fc': give the layers distinct names"):
        save_model_parameter(1, tmp_path / "p.h5", [a, b])
    assert files_in(tmp_path) == []


def test_parameter_files_and_checkpoints_are_not_mixed_up(tmp_path: Path) -> None:
    save_tree(tmp_path / "c.h5", {"step": 1, "params": {}})
    with pytest.raises(CheckpointError, match="is a 'nnkit.checkpoint' file, expected "
                                              "'nnkit.parameters'"):
        load_model_parameter(tmp_path / "c.h5", make_layers())
    save_model_parameter(3, tmp_path / "p.h5", make_layers())
    with pytest.raises(CheckpointError, match="expected 'nnkit.checkpoint'"):
        load_tree(tmp_path / "p.h5")
    with pytest.raises(TypeError):
        save_model_parameter(1.5, tmp_path / "p.h5", make_layers())  # type: ignore[arg-type]
