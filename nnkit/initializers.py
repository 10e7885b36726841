"""Parameter initialization.

An :class:`InitSpec` names a kind and its values; :func:`initialize` draws an array from it.

| kind             | values (defaults)            | draws                                          |
|------------------|------------------------------|------------------------------------------------|
| ``uniform``      | ``low=-0.05``, ``high=0.05`` | U(low, high)                                   |
| ``gaussian``     | ``mean=0``, ``std=0.01``     | N(mean, std^2)                                 |
| ``constant``     | ``value=0``                  | value everywhere                               |
| ``glorot_uniform`` | -                          | U(-a, a), a = sqrt(6 / (fan_in + fan_out))     |
| ``he_normal``    | -                            | N(0, 2 / fan_in)                               |

``fan_in`` is the number of inputs feeding one output (``in`` for Dense, ``C*kh*kw`` for a
convolution) and ``fan_out`` the number of outputs one input feeds (``out``, ``F*kh*kw``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS: dict[str, dict[str, float]] = {
    "uniform": {"low": -0.05, "high": 0.05},
    "gaussian": {"mean": 0.0, "std": 0.01},
    "constant": {"value": 0.0},
    "glorot_uniform": {},
    "he_normal": {},
}

# Which kind a value implies when no kind is named (``w_std=0.01`` means gaussian).
_KIND_OF_VALUE = {"std": "gaussian", "mean": "gaussian", "low": "uniform", "high": "uniform",
                  "value": "constant"}


@dataclass(frozen=True)
class InitSpec:
    """How to initialize one parameter: a kind and its values (missing ones take defaults)."""

    kind: str
    values: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown init {self.kind!r}; expected one of {', '.join(KINDS)}")
        unknown = set(self.values) - set(KINDS[self.kind])
        if unknown:
            raise ValueError(f"init {self.kind!r} takes {sorted(KINDS[self.kind]) or 'no values'}, "
                             f"got {sorted(unknown)}")
        check_values(self.kind, self.values)

    def value(self, key: str) -> float:
        """The value of ``key``, or the kind's default."""
        return float(self.values.get(key, KINDS[self.kind][key]))


def check_values(kind: str, values: dict[str, Any], prefix: str = "") -> None:
    """Raises ValueError unless the values of an init of ``kind`` can be drawn from: finite,
    ``std >= 0``, ``low <= high`` (defaults fill in missing ones). Messages name each value
    as ``{prefix}_{key}`` (a layer's argument, ``w_std``) when ``prefix`` is given. Values the
    kind does not take are left to :class:`InitSpec`, which names them."""
    def label(key: str) -> str:
        return f"{prefix}_{key}" if prefix else key

    known = KINDS.get(kind, {})
    full = {**known, **{k: v for k, v in values.items() if k in known}}
    for key, value in full.items():
        if not math.isfinite(float(value)):
            raise ValueError(f"{label(key)} must be finite, got {value!r}")
    if "std" in full and float(full["std"]) < 0:
        raise ValueError(f"{label('std')} must be >= 0, got {full['std']!r}")
    if "low" in full and float(full["low"]) > float(full["high"]):
        raise ValueError(f"{label('low')} = {full['low']!r} must be <= {label('high')} = "
                         f"{full['high']!r}")


def spec_from(kind: str | None, values: dict[str, Any], default: InitSpec,
              prefix: str = "") -> InitSpec:
    """Builds a spec from a layer's arguments: an explicit kind, else one implied by values.

    ``prefix`` (``'w'``, ``'b'``) names the values in errors as the layer's arguments.
    """
    values = {k: float(v) for k, v in values.items() if v is not None}
    if kind is None:
        implied = {_KIND_OF_VALUE[k] for k in values}
        if len(implied) > 1:
            raise ValueError(f"init values {sorted(values)} mix kinds {sorted(implied)}: name init=")
        if not implied:
            return default
        kind = implied.pop()
    check_values(kind, values, prefix)  # before InitSpec's own check: this names the argument
    return InitSpec(kind, values)


def initialize(spec: InitSpec, shape: tuple[int, ...], fan_in: int, fan_out: int,
               rng: np.random.Generator, dtype: Any = np.float32) -> np.ndarray:
    """Draws a new array of ``shape`` and ``dtype`` from ``spec`` using ``rng``."""
    kind = spec.kind
    if kind == "uniform":
        out = rng.uniform(spec.value("low"), spec.value("high"), size=shape)
    elif kind == "gaussian":
        out = rng.normal(spec.value("mean"), spec.value("std"), size=shape)
    elif kind == "constant":
        out = np.full(shape, spec.value("value"))
    elif kind == "glorot_uniform":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        out = rng.uniform(-limit, limit, size=shape)
    else:  # he_normal
        out = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
    return np.ascontiguousarray(out, dtype=dtype)


UNIFORM = InitSpec("uniform")
ZERO = InitSpec("constant")
