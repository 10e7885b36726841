"""The few ``keras.backend`` settings a Keras script asks for (keras/backend/common.py, 2.2.4).

nnkit's Keras namespace is channels last, like Keras's default: image arrays given to
``fit``/``evaluate``/``predict`` are ``(N, H, W, C)`` and are converted to nnkit's
``(N, C, H, W)`` once per call.
"""
from __future__ import annotations

__all__ = ["image_data_format", "set_image_data_format", "epsilon", "floatx", "backend"]

_EPSILON = 1e-7


def image_data_format() -> str:
    """``'channels_last'``, always."""
    return "channels_last"


def set_image_data_format(data_format: str) -> None:
    """Accepts ``'channels_last'`` only (the one layout this namespace converts from)."""
    if data_format != "channels_last":
        raise ValueError(f"nnkit.keras supports data_format 'channels_last' only, got {data_format!r}")


def epsilon() -> float:
    """Keras's fuzz factor, 1e-7: the optimizers' default epsilon."""
    return _EPSILON


def floatx() -> str:
    """``'float32'``, nnkit's default dtype."""
    return "float32"


def backend() -> str:
    """``'nnkit'``."""
    return "nnkit"
