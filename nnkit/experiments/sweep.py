"""Sweeps: many runs of one job, each with some config fields overridden (a *point*).

    nnkit sweep JOB.conf --grid 'updater.lr=0.1,0.01' --grid 'model.layer[1].dense.output_dim=256,512'
    nnkit sweep JOB.conf --random 8 --random-param 'updater.lr=loguniform(1e-4,1e-1)' --seed 0
    nnkit sweep JOB.conf --optuna 'updater.lr=loguniform(1e-4,1e-1)' --trials 20 --metric test_error

A point is a dict ``{field path: value}``; its paths are the ones ``--set`` takes and its values
become ``--set path=value`` overrides of the job. This module makes the points and queues them:
:func:`grid_points` (the cartesian product, in the order given, the last path varying fastest,
as ``itertools.product``), :func:`random_points` (``N`` draws from the distributions of
:func:`parse_distribution`, reproducible with a seed) and :func:`queue_sweep`, which builds the
job of every point first (so one bad point queues nothing) and then records the sweep and
queues one run per point for ``nnkit worker``. The Optuna driver is
:mod:`nnkit.experiments.optuna_sweep`.

Building a point's job (overrides, validation) is the config's business: the caller passes
``make_config(point) -> job text``, which raises for a bad point.
"""
from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .queue import enqueue
from .store import Store

#: The distributions of ``--random-param`` and ``--optuna`` (Optuna's names in brackets).
DISTRIBUTIONS = {
    "uniform": "uniform(LOW,HIGH): a float drawn evenly from [LOW, HIGH] (suggest_float)",
    "loguniform": "loguniform(LOW,HIGH): a float whose log is uniform, LOW > 0 (suggest_float log=True)",
    "int": "int(LOW,HIGH): an integer from LOW to HIGH, both included (suggest_int)",
    "choice": "choice(A,B,...): one of the values, each as likely (suggest_categorical)",
}
_CALL = re.compile(r"\s*(\w+)\s*\((.*)\)\s*", re.S)


class SweepError(ValueError):
    """A bad sweep argument (a value list, a distribution); the message names it."""


def split_values(text: str) -> list[str]:
    """``0.1,0.01`` -> ``["0.1", "0.01"]``: commas split, except inside brackets or quotes
    (``[1, 2],[3]`` is two list values of a repeated field)."""
    values, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(text):
        if quote:
            quote = "" if c == quote and text[i - 1] != "\\" else quote
        elif c in "\"'":
            quote = c
        elif c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
        elif c == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    return values


def typed(text: str) -> Any:
    """A value as a point keeps it: an int or a float when the text is one, else the text."""
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def override_text(value: Any) -> str:
    """A point's value as the text of a ``--set`` override (floats in full precision)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def point_overrides(point: dict[str, Any]) -> list[str]:
    """A point as ``--set`` items: ``["updater.lr=0.01", ...]``."""
    return [f"{path}={override_text(value)}" for path, value in point.items()]


def parse_assignment(item: str, flag: str) -> tuple[str, str]:
    """``PATH=TEXT`` -> ``(PATH, TEXT)``; SweepError naming ``flag`` and the item otherwise."""
    path, sep, text = item.partition("=")
    if not sep or not path.strip() or not text.strip():
        raise SweepError(f"{flag} {item!r}: expected PATH=VALUES, e.g. updater.lr=0.1,0.01")
    return path.strip(), text.strip()


@dataclass(frozen=True)
class Distribution:
    """One field's distribution: ``kind`` (a key of :data:`DISTRIBUTIONS`) and its arguments."""

    kind: str
    args: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        """One draw from ``rng``."""
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        low, high = self.args
        if self.kind == "int":
            return int(rng.integers(low, high, endpoint=True))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return float(rng.uniform(low, high))

    def first(self) -> Any:
        """A value it can take (its low end, or its first choice): to check a path before drawing."""
        return self.args[0]

    def to_json(self) -> dict[str, Any]:
        """JSON data for the sweep's spec."""
        return {"kind": self.kind, "args": list(self.args)}

    def to_optuna(self) -> Any:
        """The Optuna distribution (``optuna.distributions``) drawing the same values."""
        from optuna import distributions as od
        if self.kind == "choice":
            return od.CategoricalDistribution(list(self.args))
        if self.kind == "int":
            return od.IntDistribution(*self.args)
        return od.FloatDistribution(float(self.args[0]), float(self.args[1]), log=self.kind == "loguniform")


def parse_distribution(text: str, label: str) -> Distribution:
    """``loguniform(1e-4,1e-1)``, ``uniform(0,0.5)``, ``int(16,256)``, ``choice(relu,tanh)``, or a
    plain list ``0.1,0.01`` (a choice). SweepError naming ``label`` if it is not one."""
    call = _CALL.fullmatch(text)
    if call is None or call.group(1) not in DISTRIBUTIONS:
        if call is None and text.strip():  # a plain list of values
            return Distribution("choice", tuple(typed(v) for v in split_values(text)))
        raise SweepError(f"{label}: cannot read {text!r}; expected one of: " + "; ".join(DISTRIBUTIONS.values()))
    kind, args = call.group(1), [typed(v) for v in split_values(call.group(2))]
    if kind == "choice":
        if not call.group(2).strip() or any(a == "" for a in args):
            raise SweepError(f"{label}: choice() needs values, e.g. choice(relu,tanh)")
        return Distribution(kind, tuple(args))
    usage = DISTRIBUTIONS[kind]
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise SweepError(f"{label}: {text!r}: expected {usage}")
    low, high = args
    if kind == "int" and not all(isinstance(a, int) for a in args):
        raise SweepError(f"{label}: {text!r}: int() takes whole numbers, e.g. int(16,256)")
    if not low < high:
        raise SweepError(f"{label}: {text!r}: LOW must be less than HIGH")
    if kind == "loguniform" and low <= 0:
        raise SweepError(f"{label}: {text!r}: loguniform needs LOW > 0")
    return Distribution(kind, (low, high) if kind == "int" else (float(low), float(high)))


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``--grid`` items -> ``{path: [values]}`` in the order given; a path given twice is an error."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        path, text = parse_assignment(item, "--grid")
        values = [typed(v) for v in split_values(text)]
        if any(v == "" for v in values):
            raise SweepError(f"--grid {item!r}: an empty value (two commas, or one at an end)")
        if path in grid:
            raise SweepError(f"--grid {path}: given twice; list all its values in one --grid")
        grid[path] = values
    return grid


def parse_params(items: Sequence[str], flag: str) -> dict[str, Distribution]:
    """``--random-param`` / ``--optuna`` items -> ``{path: Distribution}`` in the order given."""
    params: dict[str, Distribution] = {}
    for item in items:
        path, text = parse_assignment(item, flag)
        if path in params:
            raise SweepError(f"{flag} {path}: given twice")
        params[path] = parse_distribution(text, f"{flag} {item}")
    return params


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values (the cartesian product, the last path fastest)."""
    paths = list(grid)
    return [dict(zip(paths, values)) for values in itertools.product(*(grid[p] for p in paths))]


def random_points(params: dict[str, Distribution], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` points drawn from ``params`` by ``numpy.random.default_rng(seed)``: the same seed,
    the same points."""
    if n < 1:
        raise SweepError(f"--random {n}: give the number of runs, at least 1")
    rng = np.random.default_rng(seed)
    return [{path: dist.sample(rng) for path, dist in params.items()} for _ in range(n)]


def queue_sweep(store: Store, kind: str, spec: dict[str, Any], points: Sequence[dict[str, Any]],
                make_config: Callable[[dict[str, Any]], str], *, name: str | None = None,
                owner: str | None = None, tags: tuple[str, ...] = (),
                retries: int = 0) -> tuple[str, list[str]]:
    """Builds the job of every point (``make_config`` raises for a bad one: then nothing is
    recorded), records the sweep and queues one run per point; returns the sweep id and the
    run ids, in the order of ``points``. A run is named ``<name>-<i>`` (``i`` from 0)."""
    json.dumps(list(points))  # a point that is not JSON data fails before anything is written
    texts = [make_config(point) for point in points]
    sweep_id = store.create_sweep(kind, spec, name=name)
    base = name or f"sweep-{sweep_id}"
    run_ids = [enqueue(store, text, name=f"{base}-{i}", owner=owner, tags=tags, retries=retries,
                       sweep_id=sweep_id, point=point) for i, (point, text) in enumerate(zip(points, texts))]
    return sweep_id, run_ids


__all__ = ["DISTRIBUTIONS", "Distribution", "SweepError", "parse_distribution", "parse_grid", "parse_params",
           "grid_points", "random_points", "queue_sweep", "point_overrides", "override_text", "split_values",
           "typed", "parse_assignment"]
