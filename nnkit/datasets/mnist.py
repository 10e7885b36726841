"""MNIST and Fashion-MNIST: the official IDX files, gzipped or not."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ._files import (DatasetError, check_labels, dataset_dir, find_or_fetch, max_content_size,
                     open_data, read_exactly)

IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
NUM_CLASSES = 10

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
    """Reads an IDX image (N, rows, cols) or label (N,) file, gzipped or not, as uint8.

    The header is checked against the file before the data is read: a plain file must be
    exactly header + declared bytes, a gzip file must be able to hold them, and its stream is
    read only that far (plus one byte, to refuse trailing data). Any problem is a
    :class:`DatasetError` naming the file.
    """
    path = Path(path)
    with open_data(path) as f:
        head = f.read(8)
        if len(head) < 8:
            raise DatasetError(f"{path}: too short for an IDX file ({len(head)} bytes)")
        magic, count = struct.unpack(">II", head)
        if magic == LABEL_MAGIC:
            shape: tuple[int, ...] = (count,)
        elif magic == IMAGE_MAGIC:
            dims = f.read(8)
            if len(dims) < 8:
                raise DatasetError(f"{path}: too short for an IDX image file ({8 + len(dims)} "
                                   "bytes, its header alone is 16)")
            shape = (count, *struct.unpack(">II", dims))
        else:
            raise DatasetError(f"{path}: not an IDX image or label file (magic 0x{magic:08x})")
        header = 4 * (1 + len(shape))
        expected = count * int(np.prod(shape[1:], dtype=np.int64))  # Python int: no overflow
        room = max_content_size(f, path) - header
        if path.suffix == ".gz" and expected > room:
            raise DatasetError(f"{path}: the header declares shape {shape} ({expected} bytes), "
                               f"more than a gzip file of {os.fstat(f.fileno()).st_size} bytes "
                               "can hold")
        if path.suffix != ".gz" and expected != room:
            raise DatasetError(f"{path}: {header + room} bytes, expected {header + expected} "
                               f"for shape {shape}, as the header declares")
        data = read_exactly(f, expected, path, f"shape {shape} (from the header)")
    return np.frombuffer(data, np.uint8).reshape(shape)


def _load(data_dir, subdir: str, files: dict[str, str], mirrors: list[str], split: str,
          download: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in ("train", "test"):
        raise ValueError(f"{what}: split must be 'train' or 'test', got {split!r}")
    folder = dataset_dir(data_dir, subdir)
    prefix = "train" if split == "train" else "t10k"
    arrays, paths = [], []
    for kind, ndim in (("images-idx3-ubyte", 3), ("labels-idx1-ubyte", 1)):
        stem = f"{prefix}-{kind}"
        path = find_or_fetch(folder, [stem + ".gz", stem], [m + stem + ".gz" for m in mirrors],
                             files[stem], download, what)
        arrays.append(read_idx(path))
        paths.append(path)
        if arrays[-1].ndim != ndim:  # e.g. a label file saved under the image file's name
            raise DatasetError(f"{path}: an IDX {'image' if ndim == 3 else 'label'} file was "
                               f"expected, this one holds shape {arrays[-1].shape}")
    images, labels = arrays
    check_labels(labels, NUM_CLASSES, paths[1])
    if len(images) != len(labels):
        raise DatasetError(f"{what} {split}: {len(images)} images in {paths[0]} but "
                           f"{len(labels)} labels in {paths[1]}")
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
