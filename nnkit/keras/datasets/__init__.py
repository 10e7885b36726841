"""``keras.datasets``: ``mnist``, ``fashion_mnist`` and ``cifar10``, each with ``load_data()``.

They read nnkit's dataset folder (``$NNKIT_DATA`` or ``~/.nnkit/datasets``, see
:mod:`nnkit.datasets`) and download what is missing there, checksums verified, instead of
Keras's ``~/.keras/datasets`` files. Shapes and dtypes are Keras's (keras/datasets/*.py, 2.2.4).
"""
from . import cifar10, fashion_mnist, mnist

__all__ = ["mnist", "fashion_mnist", "cifar10"]
