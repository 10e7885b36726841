"""Learning-rate schedules: each formula at several steps and boundaries, every error, state."""
from __future__ import annotations

import math

import pytest

from nnkit.schedules import SCHEDULES, make_schedule

# (lr_type, base lr, settings, reference formula written out independently, steps to check)
CASES = [
    ("fixed", 0.1, {}, lambda s: 0.1, [0, 1, 1000]),
    ("step", 0.1, {"gamma": 0.5, "change_freq": 3},
     lambda s: 0.1 * 0.5 ** (s // 3), [0, 2, 3, 5, 6, 7, 30]),
    ("step", 0.01, {},  # defaults: gamma 0.997, change_freq 60
     lambda s: 0.01 * 0.997 ** (s // 60), [0, 59, 60, 119, 120, 6000]),
    ("manual", 123.0, {"step": (0, 60000, 65000), "step_lr": (0.001, 0.0001, 0.00001)},
     lambda s: 0.001 if s < 60000 else (0.0001 if s < 65000 else 0.00001),
     [0, 1, 59999, 60000, 64999, 65000, 10**6]),
    ("manual", 1.0, {"step": (10, 20), "step_lr": (0.5, 0.25)},
     lambda s: 0.5 if s < 20 else 0.25, [0, 9, 10, 19, 20, 21]),
    ("exponential", 0.1, {"gamma": 0.9}, lambda s: 0.1 * 0.9 ** s, [0, 1, 2, 17]),
    ("exponential", 0.1, {"gamma": 0.5, "change_freq": 4},
     lambda s: 0.1 * 0.5 ** (s / 4), [0, 1, 3, 4, 8, 10]),
    ("inverse", 0.1, {"gamma": 1e-4, "power": 0.75},
     lambda s: 0.1 * (1 + 1e-4 * s) ** -0.75, [0, 1, 100, 10**5]),
    ("inverse_t", 0.1, {"change_freq": 10}, lambda s: 0.1 / (1 + s / 10), [0, 1, 10, 25]),
    ("linear", 0.1, {"final_lr": 0.01, "final_step": 100},
     lambda s: 0.1 + (0.01 - 0.1) * min(s, 100) / 100, [0, 1, 50, 99, 100, 101, 500]),
    ("poly", 0.1, {"final_step": 100, "power": 2.0},
     lambda s: 0.1 * (1 - min(s, 100) / 100) ** 2, [0, 1, 50, 99, 100, 101, 500]),
]


@pytest.mark.parametrize("lr_type, lr, settings, formula, steps", CASES)
def test_formula(lr_type, lr, settings, formula, steps) -> None:
    sched = make_schedule(lr, lr_type, **settings)
    for s in steps:
        assert sched(s) == pytest.approx(formula(s), rel=1e-12, abs=0), (lr_type, s)
        assert isinstance(sched(s), float)


def test_every_lr_type_has_a_case() -> None:
    assert {c[0] for c in CASES} == set(SCHEDULES)


def test_boundary_values_exact() -> None:
    assert make_schedule(0.1, "linear", final_lr=0.01, final_step=100)(100) == 0.01
    assert make_schedule(0.1, "linear", final_lr=0.01, final_step=100)(10**6) == 0.01
    assert make_schedule(0.1, "poly", final_step=100, power=1.0)(100) == 0.0
    assert make_schedule(0.1, "step", gamma=0.5, change_freq=3)(3) == 0.05
    assert make_schedule(0.1, "step", gamma=0.5, change_freq=3)(2) == 0.1


def test_none_is_fixed_and_unset_values_are_ignored() -> None:
    sched = make_schedule(0.3, None, gamma=None, step=(), step_lr=[])
    assert sched.lr_type == "fixed" and sched(7) == 0.3


def test_manual_base_lr_reads_as_first_rate() -> None:
    sched = make_schedule(0.01, "manual", step=[0, 5], step_lr=[0.2, 0.1])
    assert sched.base_lr == 0.2
    assert sched.get_config() == {"lr_type": "manual", "base_lr": 0.2, "step": (0, 5),
                                  "step_lr": (0.2, 0.1)}


@pytest.mark.parametrize("lr_type, settings, message", [
    ("step", {"gamma": 0.5, "power": 2}, "'step' does not use power"),
    ("fixed", {"gamma": 0.5}, "'fixed' does not use gamma"),
    ("manual", {"step": (0,), "step_lr": (0.1,), "final_step": 3}, "does not use final_step"),
    ("manual", {"step": (0, 10)}, "'manual' needs step_lr"),
    ("manual", {}, "'manual' needs step, step_lr"),
    ("manual", {"step": (0, 10), "step_lr": (0.1,)}, "step has 2 entries but step_lr has 1"),
    ("manual", {"step": (0, 10, 10), "step_lr": (0.1, 0.2, 0.3)}, "strictly increasing"),
    ("manual", {"step": (5, 3), "step_lr": (0.1, 0.2)}, "strictly increasing"),
    ("manual", {"step": (0, 1.5), "step_lr": (0.1, 0.2)}, "not a whole number"),
    ("manual", {"step": 5, "step_lr": 0.1}, "must be sequences"),
    ("manual", {"step": (0, 5), "step_lr": (0.1, "x")}, "step_lr[1] must be a number"),
    ("exponential", {}, "'exponential' needs gamma"),
    ("exponential", {"gamma": -0.5}, "gamma must be > 0"),
    ("inverse", {"gamma": 0.1}, "'inverse' needs power"),
    ("inverse", {"gamma": -0.1, "power": 0.5}, "gamma must be >= 0"),
    ("inverse_t", {}, "'inverse_t' needs change_freq"),
    ("inverse_t", {"change_freq": 0}, "change_freq must be > 0"),
    ("step", {"change_freq": -1}, "change_freq must be > 0"),
    ("step", {"gamma": "fast"}, "gamma must be a number"),
    ("linear", {"final_lr": 0.1}, "'linear' needs final_step"),
    ("linear", {"final_lr": 0.1, "final_step": 0}, "final_step must be > 0"),
    ("poly", {"final_step": 10}, "'poly' needs power"),
    ("poly", {"final_step": 10, "power": -1}, "power must be >= 0"),
    ("exponential", {"gamma": math.inf}, "gamma must be finite"),
])
def test_errors(lr_type, settings, message) -> None:
    with pytest.raises(ValueError) as info:
        make_schedule(0.1, lr_type, **settings)
    assert message in str(info.value)


def test_unknown_lr_type_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown lr_type 'cosine'") as info:
        make_schedule(0.1, "cosine")
    for name in SCHEDULES:
        assert name in str(info.value)


def test_unused_setting_lists_the_used_ones() -> None:
    with pytest.raises(ValueError, match=r"it takes gamma, change_freq"):
        make_schedule(0.1, "step", final_lr=0.3)


def test_bad_base_lr() -> None:
    with pytest.raises(ValueError, match="lr must be a number"):
        make_schedule("a lot", "fixed")


@pytest.mark.parametrize("lr_type, lr, settings, formula, steps", CASES)
def test_config_rebuilds_and_state_round_trips(lr_type, lr, settings, formula, steps) -> None:
    sched = make_schedule(lr, lr_type, **settings)
    cfg = sched.get_config()
    rebuilt = make_schedule(cfg.pop("base_lr"), cfg.pop("lr_type"), **cfg)
    assert [rebuilt(s) for s in steps] == [sched(s) for s in steps]

    # A schedule of the same type with other values takes the saved state over.
    other = make_schedule(lr * 3, lr_type, **_perturbed(lr_type, settings))
    other.load_state_dict(sched.state_dict())
    assert [other(s) for s in steps] == [sched(s) for s in steps]
    assert other.state_dict() == sched.state_dict()


def _perturbed(lr_type: str, settings: dict) -> dict:
    """Valid settings for ``lr_type`` that differ from ``settings``."""
    if lr_type == "manual":
        return {"step": (0, 1), "step_lr": (9.0, 8.0)}
    return {k: v * 2 for k, v in settings.items()}


def test_load_state_checks_type_and_is_atomic() -> None:
    sched = make_schedule(0.1, "step", gamma=0.5, change_freq=3)
    with pytest.raises(ValueError, match="lr_type 'poly' into an 'step' schedule"):
        sched.load_state_dict(make_schedule(0.1, "poly", final_step=3, power=1).state_dict())
    with pytest.raises(ValueError, match="change_freq must be > 0"):
        sched.load_state_dict({"lr_type": "step", "base_lr": 1.0, "gamma": 0.1, "change_freq": 0})
    with pytest.raises(ValueError, match="has no base_lr"):
        sched.load_state_dict({"lr_type": "step"})
    # The failed loads changed nothing.
    assert sched.get_config() == {"lr_type": "step", "base_lr": 0.1, "gamma": 0.5,
                                  "change_freq": 3.0}
