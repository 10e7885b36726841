"""SINGA 0.3's initial values for parameter and layer fields (``singa.initializations``).

SINGA's ``get_init_values(identifier, **kwargs)`` (tool/python/singa/initializations.py at tag
v0.3.0-rc3) fills the fields of one kind with the values given in ``kwargs`` or its defaults:

| identifier   | fields (defaults)                        |
|--------------|------------------------------------------|
| ``uniform``  | ``low=-scale``, ``high=scale`` (scale 0.05) |
| ``constant`` | ``value=0``                              |
| ``gaussian`` | ``mean=0``, ``std=0.01``                 |
| ``conv2d``   | ``stride=1``, ``pad=0``                  |
| ``lrn2d``    | ``alpha=1``, ``beta=0.75``, ``knorm=1``  |
| ``dropout``  | ``ratio=0.5``                            |

``none`` returns None (a parameter shared from another one). These are SINGA's defaults, not
nnkit's: nnkit's own are in :mod:`nnkit.initializers` and the layers' docstrings.
"""
from __future__ import annotations

from typing import Any

from .. import initializers

#: identifier -> field defaults; ``uniform``'s come from ``scale`` (see :func:`get_init_values`).
DEFAULTS: dict[str, dict[str, float]] = {
    "constant": {"value": 0.0},
    "gaussian": {"mean": 0.0, "std": 0.01},
    "conv2d": {"stride": 1, "pad": 0},
    "lrn2d": {"alpha": 1.0, "beta": 0.75, "knorm": 1.0},
    "dropout": {"ratio": 0.5},
}
UNIFORM_SCALE = 0.05


def get_init_values(identifier: str, **kwargs: Any) -> dict[str, float] | None:
    """The fields of ``identifier`` (a row of the module table), each from ``kwargs`` or its
    default; other keys of ``kwargs`` are not looked at (SINGA passes a layer's whole
    arguments). ``'none'`` gives None. An unknown identifier is a ValueError."""
    if identifier == "none":
        return None
    if identifier == "uniform":
        scale = float(kwargs.get("scale", UNIFORM_SCALE))
        defaults = {"low": -scale, "high": scale}
    elif identifier in DEFAULTS:
        defaults = DEFAULTS[identifier]
    else:
        raise ValueError(f"get_init_values: unknown identifier {identifier!r}; expected one of "
                         f"uniform, {', '.join(DEFAULTS)}, none")
    return {name: kwargs.get(name, value) for name, value in defaults.items()}


def init_spec(kind: str, owner: str, **values: Any) -> initializers.InitSpec:
    """An nnkit init spec for SINGA's parameter init ``kind`` (uniform, gaussian, constant)
    with SINGA's defaults for the values not given; ``scale`` sets a uniform range
    ``[-scale, scale]``. Raises ValueError naming ``owner`` for another kind or a value the
    kind does not take."""
    if kind not in ("uniform", "gaussian", "constant"):
        raise ValueError(f"{owner}: init {kind!r} is not a SINGA parameter init; expected "
                         f"'uniform', 'gaussian' or 'constant'")
    fields = get_init_values(kind, **values)
    extra = sorted(set(values) - set(fields) - ({"scale"} if kind == "uniform" else set()))
    if extra:
        raise ValueError(f"{owner}: init {kind!r} takes {', '.join(sorted(fields))}"
                         f"{' or scale' if kind == 'uniform' else ''}, got {', '.join(extra)}")
    try:
        return initializers.InitSpec(kind, {k: float(v) for k, v in fields.items()})
    except ValueError as e:
        raise ValueError(f"{owner}: {e}") from None
