"""Running means weighted by batch size: the one place nnkit averages metrics over batches.

Keras's ``BaseLogger`` rule, ``totals[k] += v * batch_size; mean[k] = totals[k] / seen``,
used for the Trainer's epoch means (and so the progress bar's), ``nnkit train``'s display
windows and the run's final train metrics, and ``Loss.display()``.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

_COUNT = "_count"  # the key of the example count in state_dict (checkpoints store it so)


class RunningMeans:
    """Sums of ``value * weight`` per key and the total weight; :meth:`means` divides them.

    Args:
        skip: keys that are not averaged (counters and settings such as ``batch`` or ``lr``).
        keys: the keys of :meth:`add_row`'s values, in order (for callers adding the same
            keys every batch, such as the loss layer, without building a dict per batch).
    """

    def __init__(self, skip: Iterable[str] = (), keys: Iterable[str] = ()) -> None:
        self.skip = frozenset(skip)
        self.keys = tuple(keys)
        self.count = 0
        self.sums: dict[str, float] = {}

    def add(self, values: Mapping[str, Any], weight: int = 1) -> None:
        """Adds one batch: every number in ``values`` (None and skipped keys are left out)."""
        self.count += weight
        for key, value in values.items():
            self._add(key, value, weight)

    def add_row(self, weight: int, *values: Any) -> None:
        """Adds one batch given as values of :attr:`keys`, in order: the same as
        ``add(dict(zip(keys, values)), weight)``."""
        if len(values) != len(self.keys):
            raise ValueError(f"add_row: got {len(values)} values for the keys {self.keys}")
        self.count += weight
        for key, value in zip(self.keys, values):
            self._add(key, value, weight)

    def _add(self, key: str, value: Any, weight: int) -> None:
        if key not in self.skip and isinstance(value, (int, float)) and not isinstance(value, bool):
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight

    def means(self) -> dict[str, float]:
        """The weighted mean of each key so far (empty before the first :meth:`add`)."""
        if not self.count:
            return {}
        return {key: total / self.count for key, total in self.sums.items()}

    def mean(self, key: str) -> float:
        """The weighted mean of one key (NaN before the first batch that had it)."""
        return self.sums[key] / self.count if self.count and key in self.sums else math.nan

    def reset(self) -> None:
        """Forgets every batch."""
        self.count = 0
        self.sums = {}

    def state_dict(self) -> dict[str, float]:
        """The sums and the count, for checkpoints (``{"_count": n, key: sum, ...}``)."""
        return {_COUNT: self.count, **self.sums} if self.count else {}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restores what :meth:`state_dict` returned."""
        state = dict(state or {})
        self.count = int(state.pop(_COUNT, 0))
        self.sums = {key: float(value) for key, value in state.items()}
