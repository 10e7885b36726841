"""Damaged and hostile checkpoints: each is refused with CheckpointError, quickly, or loads exactly.

Two families, both in-process:

* byte damage to a real model checkpoint: truncations at many offsets, single bit flips and
  16-byte random bursts at random offsets (seeded). A damaged file must either be refused or
  load a tree identical to the original (damage in unused bytes is harmless);
* hand-built hostile HDF5 files: what nnkit never writes (external or virtual storage,
  filters, hard links that make a DAG or a cycle, a huge declared dataset, links, odd dtypes
  and attribute types, a dataset where a group belongs and vice versa, deep nesting, values of
  the wrong type for the model...). Their checksums are stripped first, as an attacker would:
  the file then passes for one written before checksums, so only the structural checks stand
  between it and the loader. Each must raise CheckpointError from ``nnkit.load`` within 2 s.
"""
from __future__ import annotations

import shutil
import time
import tracemalloc
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import pytest

import nnkit
from nnkit.checkpoint import CheckpointError, UnverifiedCheckpointWarning, load_tree
from nnkit.layers import Activation, Dense
from nnkit.updaters import SGD
from test_checkpoint import assert_identical, strip_checksums
from test_model import toy_data

TIME_LIMIT = 2.0  # seconds per load; the hard-link DAG below took minutes before
SEED = 20260501


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A model checkpoint (params, momentum, trainer state, config, proto) and its tree."""
    model = nnkit.Sequential([Dense(48, init="gaussian", w_std=0.1), Activation("tanh"),
                              Dense(4, init="gaussian", w_std=0.1)], input_shape=(20,), seed=0)
    model.compile(SGD(lr=0.05, momentum=0.9), "softmaxloss", ["accuracy"])
    x, y = toy_data(64)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("original") / "checkpoint.h5"
    model.save(path)
    return path, load_tree(path)


def _load_outcome(path: Path, want: dict[str, Any]) -> str:
    """``refused`` (CheckpointError), ``identical``, or what went wrong; times the load."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnverifiedCheckpointWarning)
            got = load_tree(path)
    except CheckpointError:
        outcome = "refused"
    except Exception as e:  # noqa: BLE001  (any other exception is a failure to report)
        outcome = f"raised {type(e).__name__}: {e}"
    else:
        try:
            assert_identical(got, want)
            outcome = "identical"
        except AssertionError as e:
            outcome = f"loaded a different tree ({e})"
    if time.perf_counter() - start > TIME_LIMIT:
        outcome = f"took {time.perf_counter() - start:.1f} s ({outcome})"
    return outcome


def _damaged_copies(data: bytes) -> list[tuple[str, bytes]]:
    """Truncations, bit flips and 16-byte bursts of ``data``, seeded."""
    rng = np.random.default_rng(SEED)
    size = len(data)
    cases = [(f"truncated to {n}", data[:n])
             for n in sorted({*np.linspace(1, size - 1, 150).astype(int), *range(size - 8, size)})]
    for offset in rng.integers(0, size, 300):
        bit = int(rng.integers(0, 8))
        damaged = bytearray(data)
        damaged[offset] ^= 1 << bit
        cases.append((f"bit {bit} of byte {offset} flipped", bytes(damaged)))
    for offset in rng.integers(0, size - 16, 150):
        damaged = bytearray(data)
        damaged[offset:offset + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        cases.append((f"16 random bytes at {offset}", bytes(damaged)))
    return cases


def test_damaged_checkpoints_are_refused_or_load_identically(
        original: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, want = original
    cases = _damaged_copies(path.read_bytes())
    outcomes: Counter[str] = Counter()
    failures = []
    for what, data in cases:
        damaged = tmp_path / "damaged.h5"
        damaged.write_bytes(data)
        outcome = _load_outcome(damaged, want)
        outcomes[outcome if outcome in ("refused", "identical") else "failed"] += 1
        if outcome not in ("refused", "identical"):
            failures.append(f"{what}: {outcome}")
    print(f"{len(cases)} damaged copies: {dict(outcomes)}")
    assert len(cases) >= 600 and outcomes["refused"] > len(cases) // 2
    assert failures == [], f"{len(failures)} of {len(cases)} not held:\n" + "\n".join(failures[:30])


# --------------------------------------------------------------------------- hostile files
PARAMS = "model/params"
WEIGHT = "model/params/dense_1%2Fweight"  # float32 (48, 20)


def _replace(f: h5py.File, name: str, nnkit_type: str | None = "array", **kwargs: Any) -> Any:
    """Replaces ``name`` by a new dataset made with ``kwargs`` (or a group if none)."""
    del f[name]
    obj = f.create_dataset(name, **kwargs) if kwargs else f.create_group(name, track_order=True)
    if nnkit_type is not None:
        obj.attrs["nnkit_type"] = nnkit_type
    return obj


def _json(f: h5py.File, name: str, text: str) -> None:
    _replace(f, name, "json", data=np.bytes_(text.encode()))


def _external(f: h5py.File, tmp: Path) -> None:
    secret = tmp / "secret.bin"
    secret.write_bytes(np.full(48 * 20, 7.0, np.float32).tobytes())
    _replace(f, WEIGHT, shape=(48, 20), dtype="f4", external=[(str(secret), 0, 48 * 20 * 4)])


def _virtual(f: h5py.File, tmp: Path) -> None:
    with h5py.File(tmp / "other.h5", "w") as other:
        other["data"] = np.full((48, 20), 7.0, np.float32)
    layout = h5py.VirtualLayout(shape=(48, 20), dtype="f4")
    layout[:] = h5py.VirtualSource(str(tmp / "other.h5"), "data", shape=(48, 20))
    del f[WEIGHT]
    f.create_virtual_dataset(WEIGHT, layout).attrs["nnkit_type"] = "array"


def _hard_link_dag(f: h5py.File, tmp: Path, levels: int = 40) -> None:
    """2**40 paths through 40 groups: each level links twice to the next."""
    groups = [f.create_group(f"level{i}", track_order=True) for i in range(levels)]
    for group in groups:
        group.attrs["nnkit_type"] = "dict"
    for upper, lower in zip(groups, groups[1:]):
        upper["a"] = lower
        upper["b"] = lower
    f["model"]["dag"] = groups[0]
    for i in range(levels):
        del f[f"level{i}"]  # reachable only through the DAG


def _hard_link_cycle(f: h5py.File, tmp: Path) -> None:
    f["model/params"]["loop"] = f["model"]


def _shared_dataset(f: h5py.File, tmp: Path) -> None:
    f["model/params"]["dense_1%2Fweight_too"] = f[WEIGHT]


def _huge_unwritten(f: h5py.File, tmp: Path) -> None:
    _replace(f, WEIGHT, shape=(400_000_000,), dtype="f4")  # 1.6 GB declared, nothing stored


def _chunked_compressed(f: h5py.File, tmp: Path) -> None:
    _replace(f, WEIGHT, shape=(48, 20), dtype="f4", chunks=(48, 20), compression="gzip",
             data=np.zeros((48, 20), np.float32))


def _compact(f: h5py.File, tmp: Path) -> None:
    del f[WEIGHT]
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    space = h5py.h5s.create_simple((48, 20))
    dsid = h5py.h5d.create(f["model/params"].id, b"dense_1%2Fweight", h5py.h5t.NATIVE_FLOAT,
                           space, dcpl=dcpl)
    h5py.Dataset(dsid).attrs["nnkit_type"] = "array"


def _overlapping_data(f: h5py.File, tmp: Path) -> None:
    """Marks the place; the bytes are patched after the file is closed (see _patch_overlap)."""


def _deep_nesting(f: h5py.File, tmp: Path, depth: int = 3000) -> None:
    group = f["trainer"]
    for _ in range(depth):
        group = group.create_group("d", track_order=True)
        group.attrs["nnkit_type"] = "dict"


def _wrong_attribute(name: str, value: Any, where: str = WEIGHT) -> Callable[[h5py.File, Path], None]:
    def edit(f: h5py.File, tmp: Path) -> None:
        obj = f[where]
        if name in obj.attrs:
            del obj.attrs[name]
        obj.attrs[name] = value
    return edit


HOSTILE: dict[str, Callable[[h5py.File, Path], None]] = {
    # storage nnkit never writes
    "external raw storage": _external,
    "virtual dataset": _virtual,
    "chunked, gzip-compressed dataset": _chunked_compressed,
    "compact dataset": _compact,
    "huge declared, never written dataset": _huge_unwritten,
    "two datasets sharing their bytes": _overlapping_data,
    # links
    "hard-link DAG": _hard_link_dag,
    "hard-link cycle": _hard_link_cycle,
    "one dataset under two keys": _shared_dataset,
    "soft link": lambda f, tmp: f["model"].__setitem__("soft", h5py.SoftLink("/model/params")),
    "external link": lambda f, tmp: f["model"].__setitem__(
        "ext", h5py.ExternalLink(str(tmp / "other.h5"), "/")),
    "committed datatype": lambda f, tmp: f["model/params"].__setitem__("t", np.dtype("f4")),
    # dtypes and shapes
    "object dtype (vlen strings) as an array": lambda f, tmp: _replace(
        f, WEIGHT, data=np.array(["a", "b"], dtype=object), dtype=h5py.string_dtype()),
    "vlen string as a json value": lambda f, tmp: _replace(
        f, "trainer/global_step", "json", data="2", dtype=h5py.string_dtype()),
    "compound dtype": lambda f, tmp: _replace(
        f, WEIGHT, data=np.zeros(3, dtype=[("a", "f4"), ("b", "i8")])),
    "array (subarray) dtype": lambda f, tmp: _replace(
        f, WEIGHT, shape=(48,), dtype=np.dtype(("f4", (20,)))).__setitem__(
            Ellipsis, np.ones((48, 20), "f4")),
    "opaque dtype": lambda f, tmp: _replace(f, WEIGHT, data=np.void(b"\x00" * 16)),
    "null dataspace": lambda f, tmp: _replace(f, WEIGHT, data=h5py.Empty("f4")),
    "scalar of shape (3,)": lambda f, tmp: _replace(f, WEIGHT, "scalar", data=np.zeros(3, "f4")),
    "parameter of another shape": lambda f, tmp: _replace(f, WEIGHT, data=np.zeros((20, 48), "f4")),
    # attributes
    "nnkit_type an int array": _wrong_attribute("nnkit_type", np.arange(3)),
    "nnkit_type a 60 kB string": _wrong_attribute("nnkit_type", np.bytes_(b"a" * 60000)),
    "nnkit_type of an unknown kind": _wrong_attribute("nnkit_type", "pickle"),
    "format an int": _wrong_attribute("format", 3, "/"),
    "format_version a string": _wrong_attribute("format_version", "1", "/"),
    "format_version an array": _wrong_attribute("format_version", np.array([1, 1]), "/"),
    "format_version a float": _wrong_attribute("format_version", 1.0, "/"),
    "format_version negative": _wrong_attribute("format_version", -1, "/"),
    "checksum an int": _wrong_attribute("checksum", 5, "/"),
    "checksum an unknown algorithm": _wrong_attribute("checksum", "md5", "/"),
    "nnkit_crc32 a string": _wrong_attribute("nnkit_crc32", "12", "/"),
    # names
    "a key escaped differently (%41)": lambda f, tmp: f.move(WEIGHT, "model/params/%41"),
    "a list with a gap": lambda f, tmp: f.move("model/config/layers/1", "model/config/layers/7"),
    # a dataset where a group belongs and vice versa
    "params a dataset": lambda f, tmp: _replace(f, PARAMS, data=np.zeros(3)),
    "model a json string": lambda f, tmp: _json(f, "model", '"model"'),
    "trainer a json list": lambda f, tmp: _json(f, "trainer", "[1, 2]"),
    "global_step a group": lambda f, tmp: _replace(f, "trainer/global_step", "dict"),
    "config a list group": lambda f, tmp: (_replace(f, "model/config", "list"),
                                           _json(f, "model/proto", "null")),
    "a parameter a group": lambda f, tmp: _replace(f, WEIGHT, "dict"),
    "updater state a json number": lambda f, tmp: _json(f, "model/updater", "3"),
    # values of the wrong type or size
    "deeply nested groups": _deep_nesting,
    "deeply nested JSON": lambda f, tmp: _json(f, "trainer/history", "[" * 100_000 + "]" * 100_000),
    "a JSON object": lambda f, tmp: _json(f, "trainer/global_step", '{"a": 1}'),
    "a 100000-digit int": lambda f, tmp: _json(f, "trainer/global_step", "9" * 100_000),
    "invalid JSON": lambda f, tmp: _json(f, "trainer/global_step", "{not json"),
    "current_epoch a string": lambda f, tmp: _json(f, "trainer/current_epoch", '"abc"'),
    "the shuffle RNG state a number": lambda f, tmp: _json(f, "trainer/shuffle_rng", "5"),
    "layers not a list": lambda f, tmp: (_json(f, "model/config/layers", "5"),
                                         _json(f, "model/proto", "null")),
    "a stored job that does not parse": lambda f, tmp: _json(f, "model/proto", '"layer {{{"'),
    "an unknown layer class": lambda f, tmp: (
        _json(f, "model/config/layers/0/class_name", '"os.system"'), _json(f, "model/proto", "null")),
    "a layer RNG state of the wrong type": lambda f, tmp: _json(f, "model/rngs/dense_1", '"x"'),
}


def _patch_overlap(path: Path) -> None:
    """Points the data address of dense_1/bias at the bytes of dense_1/weight."""
    with h5py.File(path, "r") as f:
        bias = f["model/params/dense_1%2Fbias"].id.get_offset()
        weight = f[WEIGHT].id.get_offset()
    data = path.read_bytes()
    old, new = int(bias).to_bytes(8, "little"), int(weight).to_bytes(8, "little")
    assert data.count(old) == 1, "the layout message's address is not unique in the file"
    path.write_bytes(data.replace(old, new))


def _hostile_copy(original: Path, tmp_path: Path, name: str) -> Path:
    """A copy of ``original`` without checksums and with the edit ``HOSTILE[name]``."""
    path = tmp_path / "hostile.h5"
    shutil.copy(original, path)
    with h5py.File(path, "a") as f:
        strip_checksums(f)
        HOSTILE[name](f, tmp_path)
    if HOSTILE[name] is _overlapping_data:
        _patch_overlap(path)
    return path


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_files_are_refused_quickly(original: tuple[Path, dict[str, Any]], tmp_path: Path,
                                           name: str) -> None:
    path = _hostile_copy(original[0], tmp_path, name)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnverifiedCheckpointWarning)
            with pytest.raises(CheckpointError) as info:
                nnkit.load(path)
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert elapsed < TIME_LIMIT, f"took {elapsed:.1f} s"
    assert peak < 100e6, f"allocated {peak / 1e6:.0f} MB"


def test_the_hostile_edits_alone_are_harmless(original: tuple[Path, dict[str, Any]],
                                              tmp_path: Path) -> None:
    """Control: with checksums stripped and nothing else changed, the file loads (unverified)."""
    path = tmp_path / "stripped.h5"
    shutil.copy(original[0], path)
    with h5py.File(path, "a") as f:
        strip_checksums(f)
    with pytest.warns(UnverifiedCheckpointWarning):
        assert_identical(load_tree(path), original[1])
    with pytest.warns(UnverifiedCheckpointWarning):
        nnkit.load(path)


@pytest.mark.parametrize("name", ["params a dataset", "a parameter a group",
                                  "updater state a json number", "parameter of another shape",
                                  "a layer RNG state of the wrong type"])
def test_resuming_from_a_hostile_model_entry_raises_checkpoint_error(
        original: tuple[Path, dict[str, Any]], tmp_path: Path, name: str) -> None:
    path = _hostile_copy(original[0], tmp_path, name)
    model = nnkit.load(original[0])
    x, y = toy_data(64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedCheckpointWarning)
        with pytest.raises(CheckpointError, match=str(path)):
            model.fit(x, y, batch_size=32, epochs=2, verbose=0, resume=path)
