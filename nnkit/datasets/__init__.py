"""Datasets: MNIST, Fashion-MNIST and CIFAR-10 readers with a cache dir and verified download.

Every loader takes ``data_dir`` (default ``$NNKIT_DATA`` or ``~/.nnkit/datasets``) and a
``split`` ('train' or 'test') and returns uint8 images (N, C, H, W or N, H, W) and labels.
"""
from ._files import default_data_dir
from .cifar import load_cifar10, read_cifar_bin
from .mnist import load_fashion_mnist, load_mnist, read_idx

__all__ = ["default_data_dir", "load_mnist", "load_fashion_mnist", "load_cifar10", "read_idx",
           "read_cifar_bin"]
