"""CIFAR-10, binary or python version.

Binary version (``cifar-10-batches-bin``): records of <1 label byte><3072 bytes R, G, B planes
of 32x32>. Python version (``cifar-10-batches-py``): one pickled dict per batch with ``b'data'``
(uint8 (N, 3072), same R, G, B plane order) and ``b'labels'`` (list of ints), read through a
restricted unpickler that refuses anything but numpy arrays and plain types. Every problem with
a file is a :class:`~nnkit.datasets._files.DatasetError` (a ``ValueError``) naming it.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from . import _files
from ._files import (DatasetError, check_labels, dataset_dir, describe, max_content_size,
                     open_data, read_bounded)
from .safe_pickle import restricted_load_path

PIXELS = 3 * 32 * 32
RECORD = 1 + PIXELS
NUM_CLASSES = 10
# No batch file holds more than the whole set's 60000 images (the official ones hold 10000):
# the bound on what a binary batch may decompress to, and (with room for the file names and
# labels of each record) on the size of a python batch.
MAX_RECORDS = 60000
MAX_PICKLE_BYTES = MAX_RECORDS * (RECORD + 256)
TRAIN_BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_BATCHES = ["test_batch.bin"]
ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_URLS = ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
ARCHIVE_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _check_record_bytes(size: int, path: Path) -> None:
    """Refuses a batch of ``size`` bytes that is not 1 to :data:`MAX_RECORDS` whole records."""
    if size > MAX_RECORDS * RECORD:
        raise DatasetError(f"{path}: more than {MAX_RECORDS} records of {RECORD} bytes (a "
                           "CIFAR-10 batch holds 10000)")
    if size == 0 or size % RECORD:
        raise DatasetError(f"{path}: {size} bytes is not a whole number of {RECORD}-byte "
                           "CIFAR-10 records")


def read_cifar_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One batch file (``.bin`` or ``.bin.gz``): images (N, 3, 32, 32) uint8, labels (N,) uint8.

    A plain file's size is checked before it is read; a gzip stream is read no further than
    :data:`MAX_RECORDS` records. Any problem is a ``DatasetError`` naming the file.
    """
    path = Path(path)
    with open_data(path) as f:
        if path.suffix != ".gz":
            _check_record_bytes(max_content_size(f, path), path)
        raw = read_bounded(f, MAX_RECORDS * RECORD)
    _check_record_bytes(len(raw), path)
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].copy()
    check_labels(labels, NUM_CLASSES, path)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def read_cifar_py(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One python-version batch (a pickle such as ``data_batch_1``): images (N, 3, 32, 32) uint8,
    labels (N,) uint8.

    A pickle naming any global other than what numpy arrays need, or whose arrays are not plain
    uint8/int32/int64 data, is refused before anything in it runs (see
    :mod:`~nnkit.datasets.safe_pickle`: the error is both a ``pickle.UnpicklingError`` and a
    ``DatasetError``); a harmless pickle of the wrong layout is a ``DatasetError``. Both name the
    path and what was found.
    """
    path = Path(path)
    batch = restricted_load_path(path, max_bytes=MAX_PICKLE_BYTES)
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a dict with b'data' and b'labels', got "
                           f"{type(batch).__name__}")
    data = _field(batch, "data", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == PIXELS):
        got = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise DatasetError(f"{path}: b'data' must be a uint8 array of shape (N, {PIXELS}), "
                           f"got {got}")
    return data.reshape(-1, 3, 32, 32), _labels(_field(batch, "labels", path), data, path)


def _labels(value: object, data: np.ndarray, path: Path) -> np.ndarray:
    """A batch's labels (a list of ints, or an integer array) as uint8, one per row of data."""
    if (isinstance(value, (list, tuple)) and all(type(v) is int for v in value)
            and (not value or -2 ** 63 <= min(value) and max(value) < 2 ** 63)):
        labels = np.array(value, np.int64)
    elif isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        labels = value
    else:
        raise DatasetError(f"{path}: b'labels' must be a list of {len(data)} integers (one per "
                           f"row of b'data' {data.shape}), got {describe(value)}")
    if labels.shape != (len(data),):
        raise DatasetError(f"{path}: b'labels' must be {len(data)} integers (one per row of "
                           f"b'data' {data.shape}), got {labels.dtype} of shape {labels.shape}")
    check_labels(labels, NUM_CLASSES, path)
    return labels.astype(np.uint8)


def _field(batch: dict, key: str, path: Path) -> object:
    """``batch[b'key']`` (Python-2 pickles read with encoding='bytes') or ``batch['key']``."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DatasetError(f"{path}: no {key.encode()!r} in the pickled dict "
                       f"(keys: {describe(list(batch), 120)})")


Reader = Callable[[Path], tuple[np.ndarray, np.ndarray]]


def _batch_path(folder: Path, name: str) -> tuple[Path, Reader] | None:
    """The file of batch ``name`` ('data_batch_1.bin') and its reader: binary first, then python."""
    stem = name[:-len(".bin")]
    candidates = [(folder / name, read_cifar_bin), (folder / (name + ".gz"), read_cifar_bin),
                  (folder / "cifar-10-batches-bin" / name, read_cifar_bin),
                  (folder / stem, read_cifar_py),
                  (folder / "cifar-10-batches-py" / stem, read_cifar_py)]
    for candidate, reader in candidates:
        if candidate.is_file():
            return candidate, reader
    return None


def _extract_from_archive(archive: Path, folder: Path) -> None:
    """Copies the batch files out of the official archive by name (no extractall), streamed,
    none larger than :data:`MAX_RECORDS` records; a damaged archive is a ``DatasetError``."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and name in TRAIN_BATCHES + TEST_BATCHES:
                    _check_record_bytes(member.size, archive / member.name)
                    tmp = folder / (name + ".part")
                    try:
                        with tar.extractfile(member) as src, open(tmp, "wb") as dst:
                            shutil.copyfileobj(src, dst, _files.CHUNK)
                        os.replace(tmp, folder / name)
                    finally:
                        tmp.unlink(missing_ok=True)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{archive}: damaged archive ({exc})") from None


def load_cifar10(data_dir: str | os.PathLike | None = None, split: str = "train",
                 download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 images (N, 3, 32, 32) uint8 and labels (N,) uint8 of 'train' or 'test'.

    Each batch is read from the binary version if present (``data_batch_1.bin``, ``.bin.gz``, or
    ``cifar-10-batches-bin/``), else from the python version (``data_batch_1`` or
    ``cifar-10-batches-py/data_batch_1``, through the restricted unpickler). With
    ``download=True`` a missing batch is fetched through the official ``cifar-10-binary.tar.gz``
    (checksum verified) and its batch files are copied out.
    """
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10: split must be 'train' or 'test', got {split!r}")
    folder = dataset_dir(data_dir, "cifar10")
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    if download and any(_batch_path(folder, n) is None for n in names):
        archive = folder / ARCHIVE
        if not archive.is_file():
            _files.download(ARCHIVE_URLS, archive, ARCHIVE_SHA256)
        _extract_from_archive(archive, folder)
    parts = []
    for name in names:
        found = _batch_path(folder, name)
        if found is None:
            raise FileNotFoundError(
                f"CIFAR-10: {name} (or {name}.gz, or the python-version {name[:-4]}) not in "
                f"{folder}. Pass data_dir= (or --data-dir, or set NNKIT_DATA) to a folder that "
                "holds it, or download=True")
        path, reader = found
        parts.append(reader(path))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
