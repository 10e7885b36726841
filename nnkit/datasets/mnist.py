"""MNIST and Fashion-MNIST: the official IDX files, gzipped or not."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ._files import dataset_dir, find_or_fetch

IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801

# file stem -> sha256 of the official .gz file
MNIST_FILES = {
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_FILES = {
    "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
FASHION_MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX image (N, rows, cols) or label (N,) file, gzipped or not, as uint8."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for an IDX file ({len(raw)} bytes)")
    magic, count = np.frombuffer(raw[:8], ">u4")
    if magic == LABEL_MAGIC:
        shape, offset = (int(count),), 8
    elif magic == IMAGE_MAGIC:
        rows, cols = np.frombuffer(raw[8:16], ">u4")
        shape, offset = (int(count), int(rows), int(cols)), 16
    else:
        raise ValueError(f"{path}: not an IDX image or label file (magic 0x{int(magic):08x})")
    expected = offset + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


def _load(data_dir, subdir: str, files: dict[str, str], mirrors: list[str], split: str,
          download: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in ("train", "test"):
        raise ValueError(f"{what}: split must be 'train' or 'test', got {split!r}")
    folder = dataset_dir(data_dir, subdir)
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem = f"{prefix}-{kind}"
        path = find_or_fetch(folder, [stem + ".gz", stem], [m + stem + ".gz" for m in mirrors],
                             files[stem], download, what)
        arrays.append(read_idx(path))
    images, labels = arrays
    if len(images) != len(labels):
        raise ValueError(f"{what} {split}: {len(images)} images but {len(labels)} labels in {folder}")
    return images, labels


def load_mnist(data_dir: str | os.PathLike | None = None, split: str = "train",
               download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (N, 28, 28) uint8 and labels (N,) uint8 of the 'train' or 'test' split."""
    return _load(data_dir, "mnist", MNIST_FILES, MNIST_MIRRORS, split, download, "MNIST")


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, split: str = "train",
                       download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (N, 28, 28) uint8 and labels (N,) uint8, same layout as MNIST."""
    return _load(data_dir, "fashion-mnist", FASHION_FILES, FASHION_MIRRORS, split, download,
                 "Fashion-MNIST")
