"""CIFAR-10, binary version: records of <1 label byte><3072 bytes R, G, B planes of 32x32>."""
from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import numpy as np

from ._files import dataset_dir
from . import _files

RECORD = 1 + 3 * 32 * 32
TRAIN_BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_BATCHES = ["test_batch.bin"]
ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_URLS = ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
ARCHIVE_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_cifar_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One batch file (``.bin`` or ``.bin.gz``): images (N, 3, 32, 32) uint8, labels (N,) uint8."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) == 0 or len(raw) % RECORD:
        raise ValueError(f"{path}: {len(raw)} bytes is not a whole number of {RECORD}-byte "
                         "CIFAR-10 records")
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].copy()


def _batch_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / (name + ".gz"), folder / "cifar-10-batches-bin" / name):
        if candidate.is_file():
            return candidate
    return None


def _extract_from_archive(archive: Path, folder: Path) -> None:
    """Copies the batch files out of the official archive by name (no extractall)."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if member.isfile() and name in TRAIN_BATCHES + TEST_BATCHES:
                data = tar.extractfile(member).read()
                tmp = folder / (name + ".part")
                tmp.write_bytes(data)
                os.replace(tmp, folder / name)


def load_cifar10(data_dir: str | os.PathLike | None = None, split: str = "train",
                 download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 images (N, 3, 32, 32) uint8 and labels (N,) uint8 of 'train' or 'test'.

    With ``download=True`` a missing batch is fetched through the official
    ``cifar-10-binary.tar.gz`` (checksum verified) and its batch files are copied out.
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
        path = _batch_path(folder, name)
        if path is None:
            raise FileNotFoundError(
                f"CIFAR-10: {name} (or {name}.gz) not in {folder}. Pass data_dir= (or --data-dir, "
                "or set NNKIT_DATA) to a folder that holds it, or download=True")
        parts.append(read_cifar_bin(path))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
