"""Keras 2 scripts on nnkit: ``from nnkit import keras`` or ``import nnkit.keras as keras``.

A thin namespace over nnkit's own layers, updaters and training loop, mirroring Keras 2.2.4's
modules (the last multi-backend release): :mod:`.layers`, :mod:`.models`, :mod:`.optimizers`,
:mod:`.losses`, :mod:`.utils`, :mod:`.datasets`, :mod:`.callbacks`, :mod:`.backend`. Names,
arguments and defaults are Keras's; what differs is written where it differs. ``import nnkit``
does not import this package.
"""
from . import backend, callbacks, datasets, layers, losses, models, optimizers, utils

__all__ = ["backend", "callbacks", "datasets", "layers", "losses", "models", "optimizers", "utils"]
__version__ = "2.2.4"  # the Keras release whose API this mirrors
