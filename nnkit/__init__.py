"""nnkit: a CPU neural-network framework for people who watch and steer their training.

Declare layers, feed them, and train either layer by layer (``Feed``, ``ComputeFeature``,
``ComputeGradient``, ``updater.Update``) or through a ``Sequential`` model's ``fit``.

The public names (``nnkit.Sequential``, ``nnkit.Dense``, ``nnkit.load``, ``from nnkit import *``)
live in :mod:`nnkit._api`, which this package imports on the first use of one of them (PEP 562
module ``__getattr__``): it loads the model, the layers and their kernels, the job config and
h5py, and a command that needs none of them (``nnkit ctl``, ``nnkit watch``) starts without.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from ._api import *  # noqa: F401,F403
    from ._api import __all__


def _load_api() -> Any:
    """The public API module, imported once; its names are then plain attributes of the package."""
    api = importlib.import_module("._api", __name__)  # also registers the job schema with the model
    globals().update({name: getattr(api, name) for name in api.__all__}, __all__=list(api.__all__))
    return api


def __getattr__(name: str) -> Any:
    """The public names on first use; a submodule (``nnkit.datasets``) is imported by itself."""
    if name.startswith("__") and name != "__all__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name != "__all__" and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # `from .. import checkpoint` too
    api = _load_api()
    if name == "__all__" or name in api.__all__:
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_load_api().__all__))
