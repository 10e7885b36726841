"""SINGA 0.3's ``Parameter``: how one weight or bias is initialized and scaled.

Follows tool/python/singa/parameter.py (tag v0.3.0-rc3): ``Parameter(name=, lr=, wd=, init=,
value=, scale=, low=, high=, mean=, std=)``. ``lr`` and ``wd`` scale the updater's learning
rate and weight decay for this parameter (default 1; nnkit's ``Param.lr_mult``/``wd_mult``).
``init`` is ``'uniform'`` (``[-scale, scale]``, scale 0.05, or ``low``/``high``),
``'gaussian'`` (mean 0, std 0.01) or ``'constant'`` (0), with the defaults of
:mod:`nnkit.singa.initializations`; without ``init`` SINGA's ParamGen proto defaults apply:
uniform on ``[-1, 1]`` (src/proto/job.proto, ``ParamGenProto``). A layer given
``w_param=``/``b_param=`` uses it instead of its own defaults; the layer's ``w_lr``,
``w_std``... arguments still apply on top, as in SINGA's ``set_param_field``.

Not supported (they build SINGA's RBM and autoencoder nets): ``init='none'``, ``share_from``
and ``level``; each is a ValueError.
"""
from __future__ import annotations

from typing import Any

from .. import initializers
from .initializations import init_spec

#: ``ParamGenProto``'s defaults for a parameter created without ``init``.
PROTO_UNIFORM = {"low": -1.0, "high": 1.0}
_INIT_FIELDS = ("value", "scale", "low", "high", "mean", "std")


class Parameter:
    """One parameter's init and its learning-rate and weight-decay multipliers.

    Attributes:
        name: the name given, else None (nnkit names parameters ``layer/weight``, ``layer/bias``).
        lr_scale, wd_scale: the multipliers.
        kind, values: the init kind and the values given for it (defaults fill in the rest).
    """

    def __init__(self, **kwargs: Any) -> None:
        for unsupported in ("share_from", "level"):
            if unsupported in kwargs:
                raise ValueError(f"Parameter: {unsupported}= (shared parameters of SINGA's RBM and "
                                 f"autoencoder nets) is not supported by nnkit.singa")
        if kwargs.get("init") == "none":
            raise ValueError("Parameter: init='none' (a parameter shared from another) is not "
                             "supported by nnkit.singa")
        unknown = set(kwargs) - {"name", "lr", "wd", "init", *_INIT_FIELDS}
        if unknown:
            raise TypeError(f"Parameter: unknown argument(s) {', '.join(sorted(unknown))}")
        self.name: str | None = kwargs.get("name")
        self.lr_scale = float(kwargs.get("lr", 1.0))
        self.wd_scale = float(kwargs.get("wd", 1.0))
        self.kind = kwargs.get("init", "uniform")
        self.values = {k: kwargs[k] for k in _INIT_FIELDS if k in kwargs}
        if "init" not in kwargs:
            self.values = {**PROTO_UNIFORM, **self.values}
        self.spec()  # bad values fail here, where they are given

    def spec(self, **overrides: Any) -> initializers.InitSpec:
        """The nnkit init spec, with ``overrides`` (a layer's ``w_std``...) on top."""
        return init_spec(self.kind, "Parameter", **{**self.values, **overrides})

    def update(self, **fields: Any) -> None:
        """Sets fields after construction, as SINGA's ``Parameter.update``."""
        for key in ("lr", "wd"):
            if key in fields:
                setattr(self, f"{key}_scale", float(fields.pop(key)))
        if "init" in fields:
            self.kind = fields.pop("init")
        self.values.update(fields)
        self.spec()

    def __repr__(self) -> str:
        return (f"Parameter(name={self.name!r}, init={self.kind!r}, values={self.values}, "
                f"lr={self.lr_scale}, wd={self.wd_scale})")
