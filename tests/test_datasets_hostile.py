"""Hostile dataset files: IDX/gzip/CIFAR files whose headers or sizes lie.

Every load runs in a child process under a 1 GiB address-space limit, so a crash (SIGSEGV) or a
runaway allocation shows up as a failed case instead of killing pytest. Each hostile file must be
refused with an error that is a ``ValueError`` and names the file.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from helpers import ROOT

LIMIT = 1 << 30  # address space of the child that loads the files
PIXELS, RECORD = 3072, 3073

# The child: reads "[kind, path]" lines, loads each file, prints one JSON line before ("start")
# and one after (arrays or error, and the peak RSS so far). A crash leaves a "start" without its
# result. (ru_maxrss would not do: Linux carries it over from the parent through fork and exec.)
CHILD = r"""
import hashlib, json, pickle, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
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
