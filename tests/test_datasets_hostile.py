"""Hostile dataset files: crafted CIFAR-10 python pickles, IDX/gzip/CIFAR files whose headers or
sizes lie, and a fuzz of truncations, bit flips and bursts of small real-format files.

Every load runs in a child process under a 1 GiB address-space limit, so a crash (SIGSEGV) or a
runaway allocation shows up as a failed case instead of killing pytest. Each hostile file must be
refused with an error that is a ``ValueError`` (what the unpickler refuses is also a
``pickle.UnpicklingError``) and names the file; the fuzz cases must load the same arrays or be
refused that way.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import random
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from numpy._core.multiarray import _reconstruct
from numpy._core.numeric import _frombuffer

from helpers import DATA, ROOT
from test_datasets import _py2

LIMIT = 1 << 30  # address space of the child that loads the files
PIXELS, RECORD = 3072, 3073

# The child: reads "[kind, path]" lines, loads each file, prints one JSON line before ("start")
# and one after (arrays or error, and the peak RSS so far). A crash leaves a "start" without its
# result. (ru_maxrss would not do: Linux carries it over from the parent through fork and exec.)
CHILD = r"""
import hashlib, json, pickle, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np
from nnkit.datasets import read_cifar_bin, read_cifar_py, read_idx
READERS = {"idx": read_idx, "cifar-bin": read_cifar_bin, "cifar-py": read_cifar_py}
for line in sys.stdin:
    kind, path = json.loads(line)
    print(json.dumps({"start": path}), flush=True)
    try:
        out = READERS[kind](path)
        arrays = out if isinstance(out, tuple) else (out,)
        result = {"arrays": [[type(a).__name__, a.dtype.str, list(a.shape),
                              hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(),
                              int(a.max()) if a.size else -1] for a in arrays]}
    except BaseException as exc:
        try:
            message = str(exc)[:4000]
        except BaseException:
            message = "<unprintable>"
        result = {"error": type(exc).__name__, "value_error": isinstance(exc, ValueError),
                  "unpickling_error": isinstance(exc, pickle.UnpicklingError), "message": message}
    with open("/proc/self/status") as status:  # VmHWM: peak RSS of this process since exec
        result["maxrss_kb"] = int(status.read().split("VmHWM:")[1].split()[0])
    print(json.dumps(result), flush=True)
"""


def run_loads(items: list[tuple[str, Path]], limit: int = LIMIT, timeout: float = 120.0,
              fresh: bool = False) -> list[dict]:
    """Loads each (kind, path) in child processes; one result dict per item, in order.

    A child that dies (signal, exit) or hangs past ``timeout`` gives ``{"crash": returncode}``
    for the file it was loading, and a new child carries on with the rest. ``fresh`` gives each
    file its own child (so that its ``maxrss_kb``, the child's peak, is that file's alone).
    """
    if fresh:
        return [r for item in items for r in run_loads([item], limit, timeout)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    results: list[dict] = []
    pending = [(kind, str(path)) for kind, path in items]
    while pending:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(limit)], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate("".join(json.dumps(i) + "\n" for i in pending), timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        done = [r for r in lines if "start" not in r]
        results.extend(done)
        started = sum("start" in r for r in lines)
        pending = pending[len(done):]
        if started > len(done):  # died or hung while loading pending[0]
            results.append({"crash": proc.returncode, "stderr": err[-2000:]})
            pending = pending[1:]
        elif pending:
            raise AssertionError(f"child failed before loading anything: {err[-2000:]}")
    return results


def refusal_problem(result: dict, path: Path, match: str | None = None) -> str | None:
    """Why ``result`` is not a clear refusal of ``path`` (None when it is one)."""
    if "crash" in result:
        return f"child died (returncode {result['crash']}): {result['stderr'][-300:]}"
    if "error" not in result:
        return f"loaded instead of refused: {result['arrays']}"
    if not result["value_error"]:
        return f"{result['error']} is not a ValueError: {result['message']}"
    if str(path) not in result["message"]:
        return f"message does not name the file: {result['message']}"
    if match is not None and not re.search(match, result["message"]):
        return f"message does not match {match!r}: {result['message']}"
    return None


# ---------------------------------------------------------------- crafted pickles

class Reduce:
    """Pickles as ``func(*args)`` then (if given) BUILD with ``state``: any call a file can ask for."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def dtype(code: str, state=None) -> Reduce:
    """``numpy.dtype(code, False, True)`` with an optional (forged) ``__setstate__`` state."""
    return Reduce(np.dtype, (code, False, True), state)


def array(shape, dt, data, fortran=False) -> Reduce:
    """An ndarray as numpy pickles it: ``_reconstruct`` then ``__setstate__`` (1, shape, ...)."""
    return Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dt, fortran, data))


def u1_state(**fields) -> tuple:
    """The canonical dtype state of uint8, with some fields replaced."""
    state = dict(version=3, order="|", sub=None, names=None, fields=None, size=-1, align=-1,
                 flags=0)
    state.update(fields)
    return tuple(state.values())


GOOD_DATA = array((1, PIXELS), dtype("u1"), bytes(PIXELS))


def batch(data=GOOD_DATA, labels=None) -> bytes:
    """A protocol-2 CIFAR python batch with ``data`` and ``labels`` (default ``[0]``)."""
    return pickle.dumps({b"data": data, b"labels": [0] if labels is None else labels},
                        protocol=2)


def nested(depth: int) -> bytes:
    """Opcodes for ``[[[...]]]`` ``depth`` lists deep."""
    return b"]" * depth + b"a" * (depth - 1)


def shared_lists(depth: int) -> bytes:
    """L0 = [0]; Lk = [Lk-1, Lk-1]: 2**depth leaves in 20*depth bytes (through the memo)."""
    ops = b"]K\x00ar\x00\x00\x00\x00"  # L0, kept in memo 0
    for k in range(1, depth + 1):
        get = b"j" + struct.pack("<I", k - 1)
        ops += b"0](" + get + get + b"er" + struct.pack("<I", k)  # POP Lk-1, build Lk, memo k
    return ops


def raw_batch(labels_ops: bytes, proto: int = 2) -> bytes:
    """``{b'data': <1x3072 zeros>, b'labels': <labels_ops>}`` with hand-written label opcodes."""
    data = pickle.dumps(GOOD_DATA, protocol=proto)[2:-1]  # without PROTO and STOP
    return (bytes([0x80, proto]) + b"}(C\x04data" + data + b"C\x06labels" + labels_ops + b"u.")


CODECS_ENCODE = b"c_codecs\nencode\n"
HOSTILE_PICKLES: dict[str, tuple[bytes, str]] = {
    # numpy.dtype state from the file: object fields with a refcount flag -> SIGSEGV when freed
    "dtype_object_field": (batch(array((1,), dtype("V8", (3, "|", None, ("a",), {"a": (
        dtype("O"), 0)}, 8, 1, 1)), b"A" * 8)), r"dtype 'V8' refused"),
    "dtype_field_offset": (batch(array((1, PIXELS), dtype("u1", u1_state(
        names=("a",), fields={"a": (dtype("u1"), 1 << 30)})), bytes(PIXELS))),
        r"state of numpy dtype 'u1' refused"),
    "dtype_subarray": (batch(array((1, PIXELS), dtype("u1", u1_state(
        sub=(dtype("u1"), (1 << 20,)))), bytes(PIXELS))), r"state of numpy dtype 'u1' refused"),
    "dtype_itemsize": (batch(array((1, PIXELS), dtype("u1", u1_state(size=1 << 20, align=1)),
                                   bytes(PIXELS))), r"state of numpy dtype 'u1' refused"),
    "dtype_object": (batch(labels=[array((1,), dtype("O"), [0])]), r"dtype 'O8?' refused"),
    "dtype_float": (batch(array((1, PIXELS), dtype("f4"), bytes(4 * PIXELS))),
                    r"dtype 'f4' refused"),
    "dtype_big_endian_labels": (batch(labels=array((1,), dtype("i8", u1_state(order=">")),
                                                   bytes(8))), r"state of numpy dtype 'i8' refused"),
    "dtype_align": (batch(Reduce(np.dtype, ("u1", True, True))), r"numpy dtype.*align"),
    # numpy.ndarray(...) called directly: a negative offset reads the heap before the buffer
    "ndarray_negative_offset": (batch(Reduce(np.ndarray, ((1, PIXELS), "u1", b"x" * 8,
                                                          8 - PIXELS))), r"numpy\.ndarray"),
    "ndarray_no_buffer": (batch(Reduce(np.ndarray, ((1, PIXELS), "u1"))), r"numpy\.ndarray"),
    "ndarray_huge": (batch(Reduce(np.ndarray, ((1 << 40, PIXELS), "u1"))), r"numpy\.ndarray"),
    # ndarray.__setstate__ with a lying shape, a bad shape, or data that is not bytes
    "state_huge_shape_short_data": (batch(array((10 ** 6, PIXELS), dtype("u1"), b"x" * 8)),
                                    r"needs 3072000000 bytes, got 8"),
    "state_huge_dims": (batch(array((1 << 62, 1 << 62), dtype("u1"), b"x" * 8)),
                        r"shape .* refused"),
    "state_negative_dim": (batch(array((-1, PIXELS), dtype("u1"), b"")), r"shape .* refused"),
    "state_bool_dim": (batch(array((True, PIXELS), dtype("u1"), bytes(PIXELS))),
                       r"shape .* refused"),
    "state_text_data": (batch(array((1, 4), dtype("u1"), "abcd")), r"data must be bytes"),
    "state_twice": (pickle.dumps(GOOD_DATA, 2)[:-1] + pickle.dumps(
        (1, (1, PIXELS), dtype("u1"), False, bytes(PIXELS)), 2)[2:-1] + b"b.", r"state .*twice"),
    "state_without_array": (batch(Reduce(_reconstruct, (np.ndarray, (0,), b"b"))),
                            r"array .* no state"),
    "reconstruct_shape": (batch(Reduce(_reconstruct, (np.ndarray, (1 << 40,), b"b"), (
        1, (1, PIXELS), dtype("u1"), False, bytes(PIXELS)))), r"_reconstruct"),
    # _reconstruct with another subtype
    "reconstruct_memmap": (batch(Reduce(_reconstruct, (np.memmap, (0,), b"b"))),
                           r"refused global numpy\.memmap"),
    "reconstruct_matrix": (batch(Reduce(_reconstruct, (np.matrix, (0,), b"b"))),
                           r"refused global numpy\.matrix"),
    "reconstruct_dtype_subtype": (batch(Reduce(_reconstruct, (np.dtype, (0,), b"b"))),
                                  r"_reconstruct .*numpy\.dtype"),
    # protocol 5: out-of-band buffers, a read-only view, _frombuffer with bad arguments
    "out_of_band_buffer": (pickle.dumps({b"data": pickle.PickleBuffer(np.zeros((1, PIXELS),
        np.uint8)), b"labels": [0]}, protocol=5, buffer_callback=lambda b: False),
        r"NEXT_BUFFER|out-of-band"),
    "readonly_buffer": (b"\x80\x05}(C\x04data\x8e" + struct.pack("<Q", PIXELS) + bytes(PIXELS)
                        + b"\x98C\x06labels]K\x00au.", r"READONLY_BUFFER"),
    "frombuffer_short": (batch(Reduce(_frombuffer, (b"abc", dtype("u1"), (1, PIXELS), "C"))),
                         r"needs 3072 bytes, got 3"),
    "frombuffer_axis_order": (batch(Reduce(_frombuffer, (bytes(PIXELS), dtype("u1"),
                                                          (1, PIXELS), "K", (0, 0)))),
                              r"axis_order"),
    "frombuffer_dtype_text": (batch(Reduce(_frombuffer, (bytes(PIXELS), "u1", (1, PIXELS), "C"))),
                              r"_frombuffer refused"),
    # nesting and the memo
    "recursion_bomb": (raw_batch(nested(100_000)), r"nested deeper"),
    "shared_list_bomb": (raw_batch(shared_lists(60)), r"nested deeper"),
    "shared_list_wide": (raw_batch(shared_lists(20)), r"b'labels' must be"),
    "cyclic_list": (raw_batch(b"]r\x00\x00\x00\x00j\x00\x00\x00\x00a"), r"cyclic"),
    "memo_huge_index": (b"\x80\x02Nr\xff\xff\xff\x03.", r"expected a dict"),
    "memo_missing": (b"\x80\x02j\x00\x01\x00\x00.", r"(?i)memo"),
    "memo_put_empty_stack": (b"\x80\x02r\x00\x00\x00\x00.", r"not a readable pickle"),
    # lengths that the file cannot back up
    "binbytes8_huge": (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc", r"truncated"),
    "bytearray8_huge": (b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b"abc", r"truncated"),
    "binunicode8_huge": (b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + b"abc", r"truncated"),
    "frame_huge": (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"}.", r"truncated"),
    "long4_huge": (b"\x80\x02\x8b" + struct.pack("<i", 1 << 30) + b"\x01.", r"truncated"),
    "opcode_flood": (b"\x80\x02" + b"N0" * (1 << 21) + b"}.", r"more than \d+ opcodes"),
    "global_as_key": (b"\x80\x02}" + CODECS_ENCODE + b"K\x00s.", r"_codecs\.encode refused as"),
    "empty_file": (b"", r"truncated|empty"),
    "truncated": (batch()[:-40], r"truncated"),
    # object construction and mutation the file must not get
    "build_on_global": (b"\x80\x02}(C\x04data" + pickle.dumps(GOOD_DATA, 2)[2:-1]
                        + b"C\x06labels]K\x00aC\x01x" + CODECS_ENCODE
                        + b"N}X\x0c\x00\x00\x00__defaults__X\x04\x00\x00\x00zlib\x85s\x86bu.",
                        r"BUILD"),
    "global_as_value": (b"\x80\x02}(C\x04data" + pickle.dumps(GOOD_DATA, 2)[2:-1]
                        + b"C\x06labels]K\x00aC\x01x" + CODECS_ENCODE + b"u.", r"_codecs\.encode"),
    "list_of_text": (b"\x80\x02c__builtin__\nlist\nX\x05\x00\x00\x00abcde\x85R.",
                     r"refused global builtins\.list"),
    "dict_call": (b"\x80\x02c__builtin__\ndict\n)R.", r"refused global builtins\.dict"),
    "persistent_id": (b"\x80\x02X\x01\x00\x00\x00xQ.", r"BINPERSID"),
    "extension_code": (b"\x80\x02\x82\x01.", r"EXT1"),
    "inst_opcode": (b"(X\x02\x00\x00\x00u1inumpy\ndtype\n.", r"INST"),
    "newobj": (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00u1\x85\x81.", r"NEWOBJ"),
    "set_opcodes": (b"\x80\x04\x8f(K\x01\x90.", r"EMPTY_SET"),
    "reduce_non_callable": (b"\x80\x02X\x01\x00\x00\x00x)R.", r"REDUCE"),
    "reduce_on_dtype_spec": (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R)R.",
                             r"REDUCE"),
    "codecs_other_codec": (b"\x80\x02" + CODECS_ENCODE + b"X\x03\x00\x00\x00abcX\x04\x00\x00\x00"
                           b"zlib\x86R.", r"encoding 'zlib'"),
    "labels_junk": (batch(labels=[0.5]), r"b'labels' must be"),
    "labels_huge_int": (batch(labels=[10 ** 5000]), r"b'labels' must be"),
    "labels_bool": (batch(labels=[True]), r"b'labels' must be"),
}


@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each hostile pickle written as a test_batch file and loaded in a child."""
    root = tmp_path_factory.mktemp("hostile")
    paths = {}
    for name, (blob, _) in HOSTILE_PICKLES.items():
        paths[name] = root / name / "test_batch"
        paths[name].parent.mkdir()
        paths[name].write_bytes(blob)
    good = root / "good" / "test_batch"  # loaded last by the same child
    good.parent.mkdir()
    good.write_bytes(batch())
    results = run_loads([("cifar-py", p) for p in [*paths.values(), good]])
    return {name: (path, r) for name, path, r in zip([*paths, "good"], [*paths.values(), good],
                                                      results)}


@pytest.mark.parametrize("name", list(HOSTILE_PICKLES))
def test_hostile_pickle_is_refused_clearly(hostile_results, name):
    path, result = hostile_results[name]
    problem = refusal_problem(result, path, HOSTILE_PICKLES[name][1])
    assert problem is None, f"{name}: {problem}"


def test_hostile_pickles_leave_later_loads_alone(hostile_results):
    """A good batch loaded after all the hostile ones, by the same process, loads as it should
    (a crafted file once set ``__defaults__`` on a function of the unpickler through BUILD)."""
    result = hostile_results["good"][1]
    assert "arrays" in result and result["arrays"][0][2] == [1, 3, 32, 32], result


def test_hostile_pickle_loads_stay_small(hostile_results):
    """No crafted file made its child grow past a few hundred MB (the limit is 1 GiB)."""
    rss = {name: r.get("maxrss_kb", 0) // 1024 for name, (_, r) in hostile_results.items()}
    assert max(rss.values()) < 400, rss


# ---------------------------------------------------------------- IDX, gzip and CIFAR binary files

def idx(count: int, body: bytes, rows: int | None = None, cols: int = 28) -> bytes:
    """An IDX label file (rows None) or image file header declaring ``count``, then ``body``."""
    if rows is None:
        return struct.pack(">II", 0x801, count) + body
    return struct.pack(">IIII", 0x803, count, rows, cols) + body


def gzip_with_zeros(path: Path, head: bytes, zeros: int, level: int = 1) -> Path:
    """``path``: gzip of ``head`` then ``zeros`` zero bytes, written without holding them."""
    packer = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    with open(path, "wb") as f:
        f.write(packer.compress(head))
        block = bytes(1 << 20)
        for _ in range(zeros >> 20):
            f.write(packer.compress(block))
        f.write(packer.flush())
    return path


def sparse(path: Path, head: bytes, size: int) -> Path:
    """``path``: ``head`` then zeros up to ``size`` bytes, as a sparse file (no disk used)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


BIG = 700 << 20  # decompressed, more than the 1 GiB limit allows reading whole (twice, joined)


@pytest.fixture(scope="module")
def lying_files(tmp_path_factory) -> dict[str, tuple[str, Path, str]]:
    """name -> (reader kind, file, what the refusal must say)."""
    root = tmp_path_factory.mktemp("lying")
    labels = idx(10, bytes(range(10)))
    good_gz = gzip.compress(labels, mtime=0)
    crc = bytearray(good_gz)
    crc[-6] ^= 0xFF
    (root / "truncated.gz").write_bytes(good_gz[:-9])
    (root / "crc.gz").write_bytes(bytes(crc))
    (root / "not-gzip.gz").write_bytes(labels)
    (root / "short").write_bytes(labels[:5])
    (root / "cifar-truncated.bin.gz").write_bytes(gzip.compress(bytes(RECORD), mtime=0)[:-9])
    (root / "cifar-label.bin").write_bytes(bytes([10]) + bytes(PIXELS))
    return {
        "idx-trailing-gzip-data": ("idx", gzip_with_zeros(root / "trailing.gz", labels, BIG),
                                   r"trailing data"),
        "idx-count-beyond-gzip": ("idx", gzip_with_zeros(root / "count.gz", idx(1 << 31, b""),
                                                         BIG, 9), r"header declares"),
        "idx-count-beyond-file": ("idx", sparse(root / "count-images", idx(10, b"", 28), 3 << 30),
                                  r"header declares"),
        "idx-truncated-gzip": ("idx", root / "truncated.gz", r"gzip"),
        "idx-crc": ("idx", root / "crc.gz", r"gzip.*CRC"),
        "idx-not-gzip": ("idx", root / "not-gzip.gz", r"gzip"),
        "idx-short": ("idx", root / "short", r"too short"),
        "cifar-not-records": ("cifar-bin", sparse(root / "odd.bin", b"", (3 << 30) + 1), r"3073"),
        "cifar-too-many-records": ("cifar-bin", sparse(root / "huge.bin", b"", RECORD * 10 ** 6),
                                   r"more than 60000 records"),
        "cifar-gzip-bomb": ("cifar-bin", gzip_with_zeros(root / "zeros.bin.gz", b"", BIG),
                            r"more than 60000 records"),
        "cifar-truncated-gzip": ("cifar-bin", root / "cifar-truncated.bin.gz", r"gzip"),
        "cifar-not-gzip": ("cifar-bin", root / "not-gzip.gz", r"gzip"),
        "cifar-label": ("cifar-bin", root / "cifar-label.bin", r"label 10"),
    }


@pytest.fixture(scope="module")
def lying_results(lying_files) -> dict[str, dict]:
    results = run_loads([(kind, path) for kind, path, _ in lying_files.values()], fresh=True)
    return dict(zip(lying_files, results))


@pytest.mark.parametrize("name", ["idx-trailing-gzip-data", "idx-count-beyond-gzip",
                                  "idx-count-beyond-file", "idx-truncated-gzip", "idx-crc",
                                  "idx-not-gzip", "idx-short", "cifar-not-records",
                                  "cifar-too-many-records", "cifar-gzip-bomb",
                                  "cifar-truncated-gzip", "cifar-not-gzip", "cifar-label"])
def test_lying_file_is_refused_without_reading_it_all(lying_files, lying_results, name):
    _, path, match = lying_files[name]
    problem = refusal_problem(lying_results[name], path, match)
    assert problem is None, f"{name}: {problem}"
    assert lying_results[name]["maxrss_kb"] < 400 << 10, lying_results[name]  # well under 1 GiB


def test_mnist_labels_out_of_range_name_the_file(tmp_path):
    from nnkit.datasets import DatasetError, load_mnist
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx(2, bytes(2 * 28 * 28), 28))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx(2, bytes([3, 10])))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte: .*label 10"):
        load_mnist(tmp_path, "test")


# ---------------------------------------------------------------- fuzz

FUZZ_PER_FILE = 60


def fuzz_bases() -> list[tuple[str, str, bytes, bool]]:
    """(name, reader kind, file bytes, whether the format checks its bytes) of small files."""
    rng = np.random.default_rng(0)
    if (DATA / "mnist").is_dir():
        with gzip.open(DATA / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
            images = f.read(16 + 8 * 28 * 28)[16:]
        with gzip.open(DATA / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
            labels = f.read(16)[8:]
    else:
        images, labels = rng.integers(0, 256, 8 * 784, np.uint8).tobytes(), bytes(range(8))
    records = np.frombuffer(rng.integers(0, 256, 3 * RECORD, np.uint8).tobytes(), np.uint8)
    records = records.reshape(3, RECORD).copy()
    records[:, 0] %= 10
    py_batch = {b"batch_label": b"fuzz", b"labels": [int(v) for v in records[:, 0]],
                b"data": records[:, 1:].copy(), b"filenames": [b"a.png", b"b.png", b"c.png"]}
    image_file, label_file = idx(8, images, 28), idx(8, labels)
    bases = [("idx-images", "idx", image_file, False), ("idx-labels", "idx", label_file, False),
             ("idx-images.gz", "idx", gzip.compress(image_file, mtime=0), True),
             ("idx-labels.gz", "idx", gzip.compress(label_file, mtime=0), True),
             ("cifar.bin", "cifar-bin", records.tobytes(), False),
             ("cifar.bin.gz", "cifar-bin", gzip.compress(records.tobytes(), mtime=0), True),
             ("cifar-py2", "cifar-py", b"\x80\x02" + _py2(py_batch) + b".", False),
             ("cifar-p2", "cifar-py", pickle.dumps(py_batch, protocol=2), False),
             ("cifar-p5", "cifar-py", pickle.dumps({**py_batch, b"data": np.asfortranarray(
                 py_batch[b"data"])}, protocol=5), False)]
    if (DATA / "mnist").is_dir():  # one real file as it is
        bases.append(("real-labels.gz", "idx",
                      (DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes(), True))
    return bases


def mutate(blob: bytes, rng: random.Random, gz: bool) -> tuple[str, bytes, bool]:
    """A random truncation, bit flips or burst of ``blob`` (for gzip files, sometimes of the
    content, recompressed): (what was done, new bytes, whether the format can detect it)."""
    how = rng.choice(["truncate", "flip", "burst", "header"] + ["inner"] * gz)
    if how == "inner":
        what, content, _ = mutate(gzip.decompress(blob), rng, False)
        return "inner-" + what, gzip.compress(content, mtime=0), False
    out = bytearray(blob)
    if how == "truncate":
        return how, bytes(out[:rng.randrange(len(out))]), True
    span = min(len(out), 32) if how == "header" else len(out)
    if how in ("flip", "header"):
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(span)] ^= 1 << rng.randrange(8)
    else:
        at = rng.randrange(span)
        out[at:at + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
    return how, bytes(out), True


def valid_arrays(kind: str, arrays: list) -> bool:
    """Whether loaded arrays keep the reader's promise (plain uint8 arrays of matching shapes)."""
    if any(a[0] != "ndarray" or a[1] != "|u1" for a in arrays):
        return False
    if kind == "idx":
        return len(arrays) == 1 and len(arrays[0][2]) in (1, 3)
    (_, _, xshape, _, _), (_, _, yshape, _, ymax) = arrays
    return xshape[1:] == [3, 32, 32] and yshape == xshape[:1] and ymax <= 9


def test_fuzzed_files_load_the_same_or_are_refused_clearly(tmp_path):
    """Each mutation of each small file loads the arrays of the original, or (where the format
    cannot tell: no checksum, or a gzip of mutated content) other arrays that keep the reader's
    promise, or is refused with a ValueError naming the file. Never a crash or another error."""
    rng = random.Random(1234)
    references, cases = {}, []  # cases: (base name, kind, path, what was done, detectable)
    for name, kind, blob, checked in fuzz_bases():
        suffix = ".gz" if name.endswith(".gz") else ""  # the readers pick gzip by the suffix
        (tmp_path / name).mkdir()
        references[name] = (kind, tmp_path / name / f"reference{suffix}")
        references[name][1].write_bytes(blob)
        for i in range(FUZZ_PER_FILE):
            what, mutated, detectable = mutate(blob, rng, bool(suffix))
            path = tmp_path / name / f"case{i}{suffix}"
            path.write_bytes(mutated)
            cases.append((name, kind, path, what, checked and detectable))
    results = run_loads([*references.values(), *[(kind, path) for _, kind, path, _, _ in cases]])
    expected = dict(zip(references, results))
    assert all("arrays" in r for r in expected.values()), expected
    counts = {"identical": 0, "different but valid": 0, "refused": 0}
    failures = []
    for (name, kind, path, what, checked), result in zip(cases, results[len(references):]):
        if "arrays" in result:
            same = result["arrays"] == expected[name]["arrays"]
            if same or (not checked and valid_arrays(kind, result["arrays"])):
                counts["identical" if same else "different but valid"] += 1
                continue
            failures.append(f"{name} {what}: loaded different arrays {result['arrays']}")
        elif (problem := refusal_problem(result, path)) is None:
            counts["refused"] += 1
        else:
            failures.append(f"{name} {what}: {problem}")
    rss = max(r.get("maxrss_kb", 0) for r in results) >> 10
    print(f"\nfuzz: {len(cases)} tried, {len(cases) - len(failures)} held {counts}; largest "
          f"child {rss} MB")
    assert not failures, f"{len(failures)} of {len(cases)} failed:\n" + "\n".join(failures[:30])
