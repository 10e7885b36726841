"""Datasets: MNIST, Fashion-MNIST and CIFAR-10 readers with a cache dir and verified download.

Every loader takes ``data_dir`` (default ``$NNKIT_DATA`` or ``~/.nnkit/datasets``) and a
``split`` ('train' or 'test') and returns uint8 images (N, C, H, W or N, H, W) and labels;
``load(name, ...)`` picks the loader by name. CIFAR-10 is read from the binary version or, through
a restricted unpickler, the python version. ``preprocessing`` has the normalization helpers
(``scale``, ``mean_image``, ``subtract_mean``, ``normalize``, ``channel_stats``, ``standardize``).
``read_source`` reads one data source of a job (by split or from explicit files).

A file that is there but not what it should be (truncated, damaged gzip, a header that does not
fit the file, a refused pickle...) is a ``DatasetError``, a ``ValueError`` whose message names the
file; a missing file is ``FileNotFoundError``.
"""
from ._files import DatasetError, default_data_dir
from .cifar import load_cifar10, read_cifar_bin, read_cifar_py
from .mnist import load_fashion_mnist, load_mnist, read_idx
from .preprocessing import channel_stats, mean_image, normalize, scale, standardize, subtract_mean
from .registry import DATASETS, SHAPES, load, read_files, read_source

__all__ = ["DatasetError", "default_data_dir", "load", "DATASETS", "SHAPES", "read_files", "read_source", "normalize", "load_mnist", "load_fashion_mnist",
           "load_cifar10", "read_idx", "read_cifar_bin", "read_cifar_py", "scale", "mean_image",
           "subtract_mean", "channel_stats", "standardize"]
