"""Learning-rate schedules: small objects mapping a training step to a learning rate.

A schedule is built by :func:`make_schedule` from a base rate, an ``lr_type`` and the
settings that type uses. ``schedule(step)`` returns the rate at that step (``step`` counts
from 0). Like PyTorch's ``lr_scheduler`` objects, a schedule carries state that can be saved
(``state_dict()``) and restored (``load_state_dict()``); here the state is its base rate and
settings, since the step itself is supplied by the caller (the updater remembers it).

With ``s = step``, ``lr`` the base rate, ``m = min(s, final_step)``; settings in brackets are
optional, with their defaults:

| lr_type         | settings                      | lr at step ``s``                             |
|-----------------|-------------------------------|----------------------------------------------|
| ``fixed``       | -                             | ``lr``                                       |
| ``step``        | [gamma=0.997, change_freq=60] | ``lr * gamma ** floor(s / change_freq)``     |
| ``manual``      | step, step_lr                 | ``step_lr[i]``, last i: ``s >= step[i]`` (1) |
| ``exponential`` | gamma, [change_freq=1]        | ``lr * gamma ** (s / change_freq)`` (2)      |
| ``inverse``     | gamma, power                  | ``lr * (1 + gamma * s) ** (-power)`` (3)     |
| ``inverse_t``   | change_freq                   | ``lr / (1 + s / change_freq)``               |
| ``linear``      | final_lr, final_step          | ``lr + (final_lr - lr) * m / final_step``    |
| ``poly``        | final_step, power             | ``lr * (1 - m / final_step) ** power`` (4)   |

(1) ``step_lr[0]`` before ``step[0]``; ``step`` must be strictly increasing and pair up with
``step_lr``. ``manual`` ignores ``lr`` (its base rate reads as ``step_lr[0]``).
(2) Caffe's ``exp`` when ``change_freq=1``. (3) Caffe's ``inv``. (4) Caffe's ``poly`` with
``max_iter = final_step``.

Divisors (``change_freq``, ``final_step``) and the ``gamma`` of ``step``/``exponential`` must
be > 0; the ``gamma`` of ``inverse`` and the ``power`` of ``poly`` must be >= 0 (no power of a
negative number), and so must the rates ``step_lr`` and ``final_lr``, like ``lr``. A setting the chosen ``lr_type`` does not use is an error, so a typo in a
config never silently trains with a different schedule.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

__all__ = ["Schedule", "Fixed", "Step", "Manual", "Exponential", "Inverse", "InverseT", "Linear",
           "Poly", "SCHEDULES", "SETTINGS", "make_schedule"]

#: Every schedule setting name, in the order updaters take them as arguments.
SETTINGS = ("step", "step_lr", "gamma", "change_freq", "power", "final_lr", "final_step")


def _is_unset(value: Any) -> bool:
    """None and an empty sequence mean 'not given' (the updaters' argument defaults)."""
    return value is None or (isinstance(value, (tuple, list)) and len(value) == 0)


def _number(lr_type: str, name: str, value: Any) -> float:
    """``value`` as a finite float, or a ValueError naming the schedule and setting."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"lr_type {lr_type!r}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"lr_type {lr_type!r}: {name} must be finite, got {value!r}")
    return out


class Schedule:
    """Base class: ``schedule(step) -> lr``, with config and state for checkpoints.

    Subclasses set ``lr_type``, the settings they ``require`` and those with ``defaults``,
    optionally check them in ``_validate``, and implement ``rate(step)``.
    """

    lr_type: ClassVar[str]
    required: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}
    #: Settings that must be > 0 (divisors, and bases raised to fractional powers).
    positive: ClassVar[tuple[str, ...]] = ()
    #: Settings that must be >= 0 (bases of powers, and rates such as final_lr).
    nonnegative: ClassVar[tuple[str, ...]] = ()

    def __init__(self, base_lr: float, **settings: Any) -> None:
        self.base_lr = 0.0
        self.settings: dict[str, Any] = {}
        self._configure(base_lr, settings)

    # ----------------------------------------------------------------- configuration
    def _configure(self, base_lr: float, settings: dict[str, Any]) -> None:
        """Validates ``base_lr`` and ``settings`` and, only if all is well, adopts them."""
        name = self.lr_type
        settings = {k: v for k, v in settings.items() if not _is_unset(v)}
        used = (*self.required, *self.defaults)
        unused = [k for k in settings if k not in used]
        if unused:
            takes = ", ".join(used) if used else "no settings"
            raise ValueError(f"lr_type {name!r} does not use {', '.join(sorted(unused))} "
                             f"(it takes {takes})")
        missing = [k for k in self.required if k not in settings]
        if missing:
            raise ValueError(f"lr_type {name!r} needs {', '.join(missing)}")
        values = {**self.defaults, **settings}
        for key in self.positive:
            if _number(name, key, values[key]) <= 0:
                raise ValueError(f"lr_type {name!r}: {key} must be > 0, got {values[key]!r}")
        for key in self.nonnegative:
            if _number(name, key, values[key]) < 0:
                raise ValueError(f"lr_type {name!r}: {key} must be >= 0, got {values[key]!r}")
        values = self._validate(values)
        self.base_lr = _number(name, "lr", base_lr)
        self.settings = values

    def _validate(self, values: dict[str, Any]) -> dict[str, Any]:
        """Converts and checks the settings; numbers become floats unless overridden."""
        return {k: _number(self.lr_type, k, v) for k, v in values.items()}

    # ----------------------------------------------------------------- the rate
    def __call__(self, step: int) -> float:
        """The learning rate at ``step`` (0-based)."""
        return float(self.rate(step))

    def rate(self, step: int) -> float:
        """The formula of this schedule (see the module docstring)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- config and state
    def get_config(self) -> dict[str, Any]:
        """``{'lr_type', 'base_lr', **settings}``: what :func:`make_schedule` takes back."""
        return {"lr_type": self.lr_type, "base_lr": self.base_lr, **self.settings}

    def state_dict(self) -> dict[str, Any]:
        """The state to checkpoint (plain values): base rate, lr_type and settings."""
        return self.get_config()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict`; its ``lr_type`` must be this schedule's."""
        state = dict(state)
        lr_type = state.pop("lr_type", None)
        if lr_type != self.lr_type:
            raise ValueError(f"cannot load a schedule state of lr_type {lr_type!r} into an "
                             f"{self.lr_type!r} schedule")
        if "base_lr" not in state:
            raise ValueError(f"schedule state for {self.lr_type!r} has no base_lr")
        self._configure(state.pop("base_lr"), state)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "lr_type")
        return f"{type(self).__name__}({args})"


class Fixed(Schedule):
    """``lr`` at every step."""

    lr_type = "fixed"

    def rate(self, step: int) -> float:
        return self.base_lr


class Step(Schedule):
    """``lr * gamma ** floor(step / change_freq)``: times ``gamma`` every ``change_freq`` steps."""

    lr_type = "step"
    defaults = {"gamma": 0.997, "change_freq": 60}
    positive = ("gamma", "change_freq")

    def rate(self, step: int) -> float:
        s = self.settings
        return self.base_lr * s["gamma"] ** math.floor(step / s["change_freq"])


class Manual(Schedule):
    """The rate of the last ``i`` with ``step >= step[i]``; before ``step[0]``, ``step_lr[0]``.

    The base rate is ignored and reads as ``step_lr[0]``.
    """

    lr_type = "manual"
    required = ("step", "step_lr")

    def _configure(self, base_lr: float, settings: dict[str, Any]) -> None:
        # The rates come from step_lr; the base is only reported, as the first of them.
        super()._configure(0.0, settings)
        self.base_lr = self.settings["step_lr"][0]

    def _validate(self, values: dict[str, Any]) -> dict[str, Any]:
        try:
            steps, rates = list(values["step"]), list(values["step_lr"])
        except TypeError:
            raise ValueError("lr_type 'manual': step and step_lr must be sequences, got "
                             f"{values['step']!r} and {values['step_lr']!r}") from None
        if len(steps) != len(rates):
            raise ValueError(f"lr_type 'manual': step has {len(steps)} entries but step_lr has "
                             f"{len(rates)}; they must pair up")
        for i, s in enumerate(steps):
            if not _number("manual", f"step[{i}]", s).is_integer():
                raise ValueError(f"lr_type 'manual': step[{i}] = {s!r} is not a whole number")
        steps = [int(s) for s in steps]
        for i in range(1, len(steps)):
            if steps[i] <= steps[i - 1]:
                raise ValueError(f"lr_type 'manual': step must be strictly increasing, got "
                                 f"step[{i - 1}] = {steps[i - 1]} then step[{i}] = {steps[i]}")
        rates = [_number("manual", f"step_lr[{i}]", r) for i, r in enumerate(rates)]
        for i, r in enumerate(rates):
            if r < 0:  # a rate, like lr: a negative one would climb the loss
                raise ValueError(f"lr_type 'manual': step_lr[{i}] must be >= 0, got {r!r}")
        return {"step": tuple(steps), "step_lr": tuple(rates)}

    def rate(self, step: int) -> float:
        steps, rates = self.settings["step"], self.settings["step_lr"]
        current = rates[0]
        for s, r in zip(steps, rates):
            if step < s:
                break
            current = r
        return current


class Exponential(Schedule):
    """``lr * gamma ** (step / change_freq)``; with ``change_freq=1`` this is Caffe's ``exp``."""

    lr_type = "exponential"
    required = ("gamma",)
    defaults = {"change_freq": 1}
    positive = ("gamma", "change_freq")

    def rate(self, step: int) -> float:
        s = self.settings
        return self.base_lr * s["gamma"] ** (step / s["change_freq"])


class Inverse(Schedule):
    """``lr * (1 + gamma * step) ** (-power)`` (Caffe's ``inv``)."""

    lr_type = "inverse"
    required = ("gamma", "power")
    nonnegative = ("gamma",)

    def rate(self, step: int) -> float:
        s = self.settings
        return self.base_lr * (1.0 + s["gamma"] * step) ** (-s["power"])


class InverseT(Schedule):
    """``lr / (1 + step / change_freq)``."""

    lr_type = "inverse_t"
    required = ("change_freq",)
    positive = ("change_freq",)

    def rate(self, step: int) -> float:
        return self.base_lr / (1.0 + step / self.settings["change_freq"])


class Linear(Schedule):
    """``lr + (final_lr - lr) * min(step, final_step) / final_step``: a ramp, then flat.

    From ``final_step`` on it returns ``final_lr`` itself (the formula's value, exactly).
    """

    lr_type = "linear"
    required = ("final_lr", "final_step")
    positive = ("final_step",)
    nonnegative = ("final_lr",)  # a rate, like lr

    def rate(self, step: int) -> float:
        s = self.settings
        if step >= s["final_step"]:
            return s["final_lr"]  # the formula's value, without its rounding error
        return self.base_lr + (s["final_lr"] - self.base_lr) * step / s["final_step"]


class Poly(Schedule):
    """``lr * (1 - min(step, final_step) / final_step) ** power`` (Caffe's ``poly``)."""

    lr_type = "poly"
    required = ("final_step", "power")
    positive = ("final_step",)
    nonnegative = ("power",)

    def rate(self, step: int) -> float:
        s = self.settings
        return self.base_lr * (1.0 - min(step, s["final_step"]) / s["final_step"]) ** s["power"]


#: lr_type -> schedule class.
SCHEDULES: dict[str, type[Schedule]] = {
    cls.lr_type: cls for cls in (Fixed, Step, Manual, Exponential, Inverse, InverseT, Linear, Poly)}


def make_schedule(base_lr: float, lr_type: str | None = None, **settings: Any) -> Schedule:
    """Builds the schedule ``lr_type`` (None means ``'fixed'``) with base rate ``base_lr``.

    ``settings`` are the keyword settings of the module table; None or an empty sequence
    counts as not given. Raises ValueError for an unknown ``lr_type``, a missing or
    inconsistent setting, or a setting ``lr_type`` does not use.
    """
    lr_type = "fixed" if lr_type is None else lr_type
    cls = SCHEDULES.get(lr_type) if isinstance(lr_type, str) else None
    if cls is None:
        raise ValueError(f"unknown lr_type {lr_type!r}; valid ones: {', '.join(SCHEDULES)}")
    return cls(base_lr, **settings)
