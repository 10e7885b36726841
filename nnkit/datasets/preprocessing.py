"""Input normalization: scaling, Caffe-style mean subtraction, per-channel standardization.

A batch ``x`` is (N, ...): (N, C, H, W) images, (N, H, W) grayscale images or (N, D) features,
of any numeric dtype (typically the uint8 the loaders return). Every function returns a new
array (float32 unless said otherwise) and never modifies its input. Statistics are accumulated
in float64 (a float32 running sum over 50000 images loses digits) and returned as float32.

Typical use (statistics from the training split only, applied to both splits)::

    mean = mean_image(x_train)                       # Caffe: mean image, (C, H, W)
    x_train, x_test = subtract_mean(x_train, mean), subtract_mean(x_test, mean)

    mean, std = channel_stats(x_train)               # per channel, (C,)
    x_train, x_test = standardize(x_train, mean, std), standardize(x_test, mean, std)
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

# float64 elements per chunk in channel_stats: bounds its scratch memory (~32 MB)
CHUNK_ELEMENTS = 1 << 22


def _numeric(x: ArrayLike, what: str, min_ndim: int = 0) -> np.ndarray:
    """``x`` as an array, checked to be boolean/integer/float with at least ``min_ndim`` axes."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf" or x.ndim < min_ndim:
        need = (f"a numeric batch (N, ...) of at least {min_ndim} axes" if min_ndim
                else "a numeric array")
        raise ValueError(f"{what}: expected {need}, got {x.dtype} array of shape {x.shape}")
    return x


def _per_sample(x: np.ndarray, value: ArrayLike, what: str, caller: str) -> np.ndarray:
    """``value`` shaped to broadcast against the batch ``x``.

    Accepted: one sample's shape ``x.shape[1:]`` (e.g. a mean image), a per-channel vector (C,)
    when ``x`` is (N, C, H, W), or a scalar.
    """
    value = _numeric(value, f"{caller}: {what}")
    if value.shape == x.shape[1:] or value.ndim == 0:
        return value
    if value.ndim == 1 and x.ndim == 4 and value.shape[0] == x.shape[1]:
        return value.reshape(-1, 1, 1)
    channels = f" or per channel ({x.shape[1]},)" if x.ndim == 4 else ""
    raise ValueError(f"{caller}: {what} of shape {value.shape} does not fit x of shape {x.shape}: "
                     f"expected per sample {x.shape[1:]}{channels}, or a scalar")


def _float_dtype(dtype: DTypeLike, caller: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"{caller}: dtype must be a floating type, got {dtype}")
    return dtype


def scale(x: ArrayLike, factor: float = 1 / 255, dtype: DTypeLike = np.float32) -> np.ndarray:
    """``x * factor`` as a new ``dtype`` array; by default uint8 pixels 0..255 -> float32 0..1.

    The product is computed in ``dtype`` (no float64 copy of the whole set), so it may differ
    from the exactly rounded ``x / 255`` by one unit in the last place.
    """
    dtype = _float_dtype(dtype, "scale")
    x = _numeric(x, "scale: x")
    return np.multiply(x, dtype.type(factor), dtype=dtype)


def mean_image(x: ArrayLike) -> np.ndarray:
    """The per-pixel mean over the batch axis: float32 of one sample's shape, e.g. (C, H, W).

    This is Caffe's mean image (``compute_image_mean``); compute it on the training split.
    """
    x = _numeric(x, "mean_image: x", min_ndim=2)
    if len(x) == 0:
        raise ValueError(f"mean_image: x of shape {x.shape} has no samples")
    return x.mean(axis=0, dtype=np.float64).astype(np.float32)


def channel_stats(x: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation over all samples and pixels.

    ``x`` is (N, C, ...) with the channel on axis 1; returns two float32 arrays of shape (C,),
    for :func:`standardize`. Two passes in float64 (mean, then squared deviations), chunked over
    N so the scratch memory stays small whatever the size of the set.
    """
    x = _numeric(x, "channel_stats: x", min_ndim=2)
    if x.size == 0:
        raise ValueError(f"channel_stats: x of shape {x.shape} has no elements")
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, dtype=np.float64)
    centre = mean.reshape((1, -1) + (1,) * (x.ndim - 2))
    squares = np.zeros_like(mean)
    step = max(1, CHUNK_ELEMENTS // max(1, x[0].size))
    for start in range(0, len(x), step):
        dev = np.subtract(x[start:start + step], centre, dtype=np.float64)
        np.square(dev, out=dev)
        squares += dev.sum(axis=axes)
    count = x.size // x.shape[1]
    return mean.astype(np.float32), np.sqrt(squares / count).astype(np.float32)


def subtract_mean(x: ArrayLike, mean: ArrayLike) -> np.ndarray:
    """``x - mean`` as a new float32 array (Caffe's mean subtraction).

    ``mean`` is a mean image of one sample's shape (from :func:`mean_image`), a per-channel
    mean of shape (C,) for (N, C, H, W) images, or a scalar.
    """
    x = _numeric(x, "subtract_mean: x", min_ndim=2)
    mean = _per_sample(x, mean, "mean", "subtract_mean")
    return np.subtract(x, mean, dtype=np.float32)


def normalize(x: ArrayLike, mean: ArrayLike | None = None, factor: float | None = None) -> np.ndarray:
    """Caffe's input transform ``(x - mean) * factor`` as a new float32 array.

    ``mean`` as in :func:`subtract_mean` (None: nothing subtracted); ``factor`` None keeps the
    values (a float32 copy).
    """
    if mean is not None:
        x = subtract_mean(x, mean)
    if factor is not None:
        return scale(x, factor)
    return np.asarray(_numeric(x, "normalize: x"), dtype=np.float32)


def standardize(x: ArrayLike, mean: ArrayLike, std: ArrayLike) -> np.ndarray:
    """``(x - mean) / std`` as a new float32 array.

    ``mean`` and ``std`` each have one sample's shape, or are per channel (C,) for (N, C, H, W)
    images (as :func:`channel_stats` returns), or are scalars. Every ``std`` must be positive.
    """
    x = _numeric(x, "standardize: x", min_ndim=2)
    mean = _per_sample(x, mean, "mean", "standardize")
    std = _per_sample(x, std, "std", "standardize")
    if not np.all(std > 0):
        raise ValueError(f"standardize: std must be positive everywhere, got min {std.min()}")
    out = np.subtract(x, mean, dtype=np.float32)
    return np.divide(out, std, out=out, dtype=np.float32)
