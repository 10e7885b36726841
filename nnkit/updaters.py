"""Updaters: apply one step of an update rule to the parameters of a layer.

    sgd = SGD(lr=0.01, momentum=0.9, decay=5e-4, lr_type="step", gamma=0.1, change_freq=10000)
    sgd.Update(step, layer)        # updates every Param in layer.params

For each parameter ``p`` the rate is ``lr = schedule(step) * p.lr_mult`` and the weight decay
``wd = decay * p.wd_mult``. The gradient first goes through the optional clipping, per
parameter, on the raw gradient: ``clip_norm`` rescales it to norm ``clip_norm`` if its L2
norm is larger, then ``clip_value`` clamps each element to ``[-clip_value, clip_value]``
(Keras's order). Every rule then uses ``g' = g + wd * w``. The arithmetic runs in one fused
pass per parameter (``nnkit/_kernels/update.pyx``), in the parameter's dtype.

Learning rate: ``updater.lr`` is the rate in effect (the schedule at the last step seen by
``Update``, step 0 before any) unless an override was set with ``updater.lr = 0.01``; the
override wins until ``updater.lr = None``. ``updater.base_lr`` is the schedule's base rate.
The schedules and their settings are in :mod:`nnkit.schedules`.

Checkpoints: ``state_dict()`` returns plain values and numpy copies (slots keyed by the
parameter's full name, update counts, the last step, the lr override, the schedule state);
``load_state_dict()`` restores them, and restored slots attach to parameters by full name
when those parameters are next updated, so loading may precede the first ``Update``.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol, Sequence

import numpy as np

from . import parallel, schedules
from ._kernels import update as _kernel
from .layers.base import Param, Workspace

__all__ = ["Updater", "SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]


class HasParams(Protocol):
    """Anything ``Update`` accepts: a layer, or any object with a ``params`` list."""

    params: Sequence[Param]


class _ParamState:
    """What an updater keeps per parameter: its slots, its update count, a clipping buffer."""

    __slots__ = ("slots", "flat", "count", "clip_buffer")

    def __init__(self, slots: dict[str, np.ndarray], count: int = 0) -> None:
        self.slots = slots  # shaped like the param, as checkpoints show them
        self.flat = {k: a.reshape(-1) for k, a in slots.items()}  # views the kernels take
        self.count = count
        self.clip_buffer: np.ndarray | None = None  # scratch, never checkpointed

    def part(self, lo: int, hi: int) -> _ParamState:
        """Elements [lo, hi) of the flat slots, as views, with the same count (a split update)."""
        view = _ParamState({}, self.count)
        view.flat = {k: a[lo:hi] for k, a in self.flat.items()}
        return view


class Updater:
    """Base class: learning-rate schedule, weight decay, clipping, per-parameter state.

    Args:
        lr: the base learning rate of the schedule.
        lr_type: the schedule (see :mod:`nnkit.schedules`); None means ``'fixed'``.
        decay: the weight decay; a parameter's effective decay is ``decay * p.wd_mult``.
        step, step_lr, gamma, change_freq, power, final_lr, final_step: the schedule's
            settings; leave the ones ``lr_type`` does not use at their defaults.
        clip_norm: if set, a parameter's gradient with L2 norm above it is rescaled to it.
        clip_value: if set, each gradient element is clamped to ``[-clip_value, clip_value]``.

    Subclasses implement the rule in ``_apply`` and name their slots in ``slot_names``.
    """

    #: Names of the per-parameter arrays the rule keeps (zero-initialized).
    slot_names: tuple[str, ...] = ()
    #: The subclass's own constructor arguments, in signature order (for ``get_config``).
    own_args: ClassVar[tuple[str, ...]] = ()
    #: The size of the gradient block a fused update computes and applies at a time (see
    #: ``Update``): small enough to stay in a core's L2 or L3 cache. On a Zen 3 VM the MLP's
    #: weight gradients with their momentum updates took 23.3 ms per step in 1 MB blocks,
    #: 24.0 in 512 KB and 25.5-26.4 in 256 KB, against 29.1-31.3 unfused (medians of 40
    #: alternating).
    fused_block_bytes: ClassVar[int] = 1 << 20

    def __init__(self, lr: float = 0.01, lr_type: str | None = None, decay: float = 0.0, *,
                 step: Sequence[int] = (), step_lr: Sequence[float] = (),
                 gamma: float | None = None, change_freq: float | None = None,
                 power: float | None = None, final_lr: float | None = None,
                 final_step: float | None = None, clip_norm: float | None = None,
                 clip_value: float | None = None) -> None:
        lr = self._check("lr", lr, low=0.0)
        try:
            self.schedule = schedules.make_schedule(
                lr, lr_type, step=step, step_lr=step_lr, gamma=gamma, change_freq=change_freq,
                power=power, final_lr=final_lr, final_step=final_step)
        except ValueError as e:
            raise ValueError(f"{self._name()}: {e}") from None
        self.decay = self._check("decay", decay, low=0.0)
        self.clip_norm = self._check_clip("clip_norm", clip_norm)
        self.clip_value = self._check_clip("clip_value", clip_value)
        self.last_step: int | None = None
        self._lr_override: float | None = None
        self._states: dict[Param, _ParamState] = {}  # keyed by object: full names may collide
        self._pending: dict[str, _ParamState] = {}   # loaded, not yet attached to a Param
        self._blocks = Workspace()                   # a fused update's gradient block, per part

    # ----------------------------------------------------------------- helpers
    def _name(self) -> str:
        return type(self).__name__

    def _check(self, name: str, value: Any, low: float | None = None, high: float | None = None,
               strict: bool = False) -> float:
        """``value`` as a finite float, ``low <= v`` (``low < v`` if strict), ``v < high``."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{self._name()}: {name} must be a number, got {value!r}") from None
        ok = math.isfinite(v)
        if low is not None:
            ok = ok and (v > low if strict else v >= low)
        if high is not None:
            ok = ok and v < high
        if not ok:
            lo = "" if low is None else f"{low} {'<' if strict else '<='} "
            hi = "" if high is None else f" < {high}"
            raise ValueError(f"{self._name()}: {name} must satisfy {lo}{name}{hi}, got {value!r}")
        return v

    def _check_clip(self, name: str, value: float | None) -> float | None:
        """A clipping threshold: None (off) or a number > 0."""
        return None if value is None else self._check(name, value, low=0.0, strict=True)

    # ----------------------------------------------------------------- learning rate
    @property
    def lr(self) -> float:
        """The learning rate in effect: the override if set, else the schedule at the last step."""
        if self._lr_override is not None:
            return self._lr_override
        return self.schedule(0 if self.last_step is None else self.last_step)

    @lr.setter
    def lr(self, value: float | None) -> None:
        # None clears the override and hands the rate back to the schedule.
        self._lr_override = None if value is None else self._check("lr", value, low=0.0)

    @property
    def lr_override(self) -> float | None:
        """The rate set by ``updater.lr = ...``, or None when the schedule is in charge."""
        return self._lr_override

    @property
    def base_lr(self) -> float:
        """The schedule's base learning rate."""
        return self.schedule.base_lr

    # ----------------------------------------------------------------- the update
    @property
    def takes_deferred(self) -> bool:
        """True if ``Update`` computes a deferred gradient itself (``Param.defer``): the rule
        is one of the built-in elementwise ones and there is no clipping (which needs the
        whole gradient first)."""
        return (type(self)._apply in _ELEMENTWISE_RULES and self.clip_norm is None
                and self.clip_value is None)

    def Update(self, step: int, layer: HasParams) -> bool:
        """Applies one update, at training step ``step``, to every param of ``layer``.

        Returns True if every value written is finite, False if the update overflowed (or
        was fed a NaN or an infinity): the kernels check each value as they write it, so
        finding a bad step costs no second read of the parameters.

        A param whose gradient was deferred (``Param.defer``, set up by ``fit`` when
        :attr:`takes_deferred`) is updated block by block: a block of the gradient's rows is
        computed into a scratch array of ``fused_block_bytes`` and the rule applied to it while
        it is in the cache, so the gradient is never written to memory and read back (by the
        finiteness check, which takes its bound instead, and by the update). Every other
        param's gradient is read from ``p.grad``. The rule is elementwise, so both compute
        the same formula; only the gradient's sums may round differently, BLAS summing a
        block of another shape in another order (float32: about 1e-7 relative).
        """
        # Check every param first, so that an error never leaves the layer half-updated.
        fused = self.takes_deferred
        views = [self._flat_views(p, with_grad=not (fused and p.deferred is not None))
                 for p in layer.params]
        states = [self._state(p) for p in layer.params]
        self.last_step = int(step)
        base = self.lr
        finite = True
        for p, (w, g), state in zip(layer.params, views, states):
            state.count += 1
            lr, wd = base * p.lr_mult, self.decay * p.wd_mult
            if g is None:
                wrote_finite = self._apply_deferred(p, lr, wd, state)
            else:
                if self.clip_norm is not None or self.clip_value is not None:
                    g = self._clip(g, state)
                wrote_finite = self._apply_in_parts(w, g, lr, wd, state)
            if wrote_finite is None:  # a rule that does not say (a subclass's): read what it wrote
                wrote_finite = _kernel.all_finite(w)
            finite = finite and bool(wrote_finite)
        return finite

    def _apply_deferred(self, p: Param, lr: float, wd: float, state: _ParamState) -> bool:
        """``_apply`` to ``p`` with its deferred gradient computed a block of rows at a time,
        the rows split over the threads (each part with its own block, BLAS on one thread)."""
        deferred = p.deferred
        w = p.data.reshape(p.data.shape[0], -1)
        n, k = w.shape
        rows = max(1, self.fused_block_bytes // (k * w.itemsize))
        results: list[bool | None] = []

        def run(part: int, lo: int, hi: int) -> None:
            block = self._blocks.view(f"block{part}", rows * k, (rows * k,), w.dtype)
            for r in range(lo, hi, rows):
                e = min(hi, r + rows)
                g = block[:(e - r) * k]
                deferred.rows(r, e, g.reshape(e - r, k))
                results.append(self._apply(w[r:e].reshape(-1), g, lr, wd, state.part(r * k, e * k)))

        parallel.split(run, n, deferred.row_values, blas=True)
        return all(results)

    def _apply_in_parts(self, w: np.ndarray, g: np.ndarray, lr: float, wd: float,
                        state: _ParamState) -> bool | None:
        """``_apply``, on contiguous parts of a large param at once when the rule allows it.

        The built-in rules are elementwise, so their kernels run on parts of the flat arrays
        in parallel (``nnkit.parallel``: an update is memory-bound, and the MLP's 5M-value
        weight updates in 1.1-1.6 ms on two cores against 1.9-3.4 ms on one) with the same
        result. A subclass's own ``_apply`` may look at the whole array (a norm, say): it
        runs whole.
        """
        if type(self)._apply not in _ELEMENTWISE_RULES:
            return self._apply(w, g, lr, wd, state)
        results: list[bool | None] = []

        def run(part: int, lo: int, hi: int) -> None:
            whole = lo == 0 and hi == w.size
            results.append(self._apply(w[lo:hi], g[lo:hi], lr, wd,
                                       state if whole else state.part(lo, hi)))

        parallel.split(run, w.size)
        return all(results)

    def _flat_views(self, p: Param, with_grad: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """1-D views of ``p.data`` (must be a writable view) and ``p.grad`` (None without
        ``with_grad``: a deferred gradient, computed by the update), checked."""
        where = f"{self._name()}: param {p.full_name!r}"
        if p.data is None:
            raise RuntimeError(f"{where} has no data: build its layer (run ComputeFeature) first")
        if not p.data.flags.c_contiguous:
            # reshape(-1) would copy, and the update would be lost.
            raise ValueError(f"{where}: data of shape {p.data.shape} is not C-contiguous")
        if not with_grad:
            return p.data.reshape(-1), None
        grad = p.grad
        if grad is None:
            raise RuntimeError(f"{where} has no gradient: run ComputeGradient before Update")
        if grad.shape != p.data.shape or grad.dtype != p.data.dtype:
            raise ValueError(f"{where}: gradient of shape {grad.shape} and dtype "
                             f"{grad.dtype} does not match data of shape {p.data.shape} and "
                             f"dtype {p.data.dtype}")
        return p.data.reshape(-1), np.ascontiguousarray(grad).reshape(-1)

    def _state(self, p: Param) -> _ParamState:
        """The live state of ``p``: existing, restored by full name, or fresh zeros."""
        state = self._states.get(p)
        if state is not None:
            return state
        state = self._pending.get(p.full_name)
        if state is None:
            state = _ParamState({k: np.zeros_like(p.data) for k in self.slot_names})
        else:
            for key, arr in state.slots.items():
                if arr.shape != p.data.shape:
                    raise ValueError(f"{self._name()}: restored slot {key!r} of param "
                                     f"{p.full_name!r} has shape {arr.shape}, but the param has "
                                     f"shape {p.data.shape}")
            # A checkpoint of another dtype is converted once, here.
            state = _ParamState({k: np.ascontiguousarray(a, p.data.dtype)
                                 for k, a in state.slots.items()}, state.count)
            del self._pending[p.full_name]  # only once it fits
        self._states[p] = state
        return state

    def _clip(self, g: np.ndarray, state: _ParamState) -> np.ndarray:
        """The clipped gradient, in the param's scratch buffer (``p.grad`` is left as it is)."""
        buf = state.clip_buffer
        if buf is None or buf.shape != g.shape or buf.dtype != g.dtype:
            buf = state.clip_buffer = np.empty_like(g)
        buf[...] = g
        if self.clip_norm is not None:
            norm = math.sqrt(float(np.dot(buf, buf)))
            if norm > self.clip_norm:
                buf *= self.clip_norm / norm
        if self.clip_value is not None:
            np.clip(buf, -self.clip_value, self.clip_value, out=buf)
        return buf

    def _apply(self, w: np.ndarray, g: np.ndarray, lr: float, wd: float,
               state: _ParamState) -> bool | None:
        """Applies the rule to flat ``w`` in place; ``state.count`` already includes this update.

        Returns True if every value written into ``w`` is finite (what the kernels return),
        or None if the rule does not tell (``Update`` then reads ``w`` to find out).
        """
        raise NotImplementedError

    # ----------------------------------------------------------------- config and state
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this updater: ``type(u)(**u.get_config())``."""
        sched = self.schedule.get_config()
        settings = {k: sched.get(k, () if k in ("step", "step_lr") else None)
                    for k in schedules.SETTINGS}
        return {"lr": sched["base_lr"], "lr_type": sched["lr_type"], "decay": self.decay,
                **{k: getattr(self, k) for k in self.own_args},
                **settings, "clip_norm": self.clip_norm, "clip_value": self.clip_value}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as plain values and numpy copies.

        Raises ValueError if two updated params share a full name (their slots would clash).
        """
        named: dict[str, _ParamState] = {}
        for p, state in self._states.items():
            if p.full_name in named:
                raise ValueError(f"{self._name()}: two updated params are named "
                                 f"{p.full_name!r}; give their layers distinct names before "
                                 f"saving the updater state")
            named[p.full_name] = state
        for name, state in self._pending.items():
            named.setdefault(name, state)  # loaded but not yet used: keep it
        return {
            "type": self._name(),
            "last_step": self.last_step,
            "lr_override": self._lr_override,
            "schedule": self.schedule.state_dict(),
            "slots": {name: {k: a.copy() for k, a in s.slots.items()} for name, s in named.items()},
            "counts": {name: s.count for name, s in named.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict`; slots attach to params by full name at their next update.

        Replaces all per-parameter state. Without a ``'schedule'`` entry the current schedule
        is kept (to resume with a different schedule on purpose).
        """
        kind = state.get("type", self._name())
        if kind != self._name():
            raise ValueError(f"{self._name()}: cannot load the state of a {kind} updater")
        slots, counts = state.get("slots", {}), state.get("counts", {})
        pending: dict[str, _ParamState] = {}
        for name, arrays in slots.items():
            if set(arrays) != set(self.slot_names):
                raise ValueError(f"{self._name()}: state of param {name!r} has slots "
                                 f"{sorted(arrays)}, this updater uses {sorted(self.slot_names)}")
            pending[name] = _ParamState({k: np.array(a) for k, a in arrays.items()},
                                        int(counts.get(name, 0)))
        override = state.get("lr_override")
        override = None if override is None else self._check("lr_override", override, low=0.0)
        last = state.get("last_step")
        if "schedule" in state:  # the last check: it applies the schedule state when it passes
            try:
                self.schedule.load_state_dict(state["schedule"])
            except ValueError as e:
                raise ValueError(f"{self._name()}: {e}") from None
        self.last_step = None if last is None else int(last)
        self._lr_override = override
        self._states = {}
        self._pending = pending

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()
                         if v is not None and v != ())
        return f"{self._name()}({args})"


class SGD(Updater):
    """Stochastic gradient descent with Caffe's momentum.

    ``v = mu*v + lr*g'; w -= v`` with ``g' = g + wd*w``. With ``momentum=0`` this is plain
    SGD, ``w -= lr*g'``, and no slot is kept.
    """

    own_args = ("momentum",)

    def __init__(self, lr: float = 0.01, lr_type: str | None = None, decay: float = 0.0,
                 momentum: float = 0.0, **kwargs: Any) -> None:
        super().__init__(lr, lr_type, decay, **kwargs)
        self.momentum = self._check("momentum", momentum, low=0.0, high=1.0)
        self.slot_names = ("momentum",) if self.momentum else ()

    def _apply(self, w: np.ndarray, g: np.ndarray, lr: float, wd: float,
               state: _ParamState) -> bool:
        if self.momentum:
            return _kernel.sgd_momentum(w, g, state.flat["momentum"], lr, wd, self.momentum)
        return _kernel.sgd(w, g, lr, wd)


class Nesterov(Updater):
    """Nesterov's accelerated gradient in Caffe's form.

    ``v_prev = v; v = mu*v + lr*g'; w -= (1+mu)*v - mu*v_prev`` with ``g' = g + wd*w``.
    """

    own_args = ("momentum",)
    slot_names = ("momentum",)

    def __init__(self, lr: float = 0.01, lr_type: str | None = None, decay: float = 0.0,
                 momentum: float = 0.9, **kwargs: Any) -> None:
        super().__init__(lr, lr_type, decay, **kwargs)
        self.momentum = self._check("momentum", momentum, low=0.0, high=1.0)

    def _apply(self, w: np.ndarray, g: np.ndarray, lr: float, wd: float,
               state: _ParamState) -> bool:
        return _kernel.nesterov(w, g, state.flat["momentum"], lr, wd, self.momentum)


class AdaGrad(Updater):
    """AdaGrad (Duchi et al. 2011).

    ``h += g'^2; w -= lr*g' / (sqrt(h) + eps)`` with ``g' = g + wd*w``.
    """

    own_args = ("epsilon",)
    slot_names = ("sum_sq_grad",)

    def __init__(self, lr: float = 0.01, lr_type: str | None = None, decay: float = 0.0,
                 epsilon: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(lr, lr_type, decay, **kwargs)
        self.epsilon = self._check("epsilon", epsilon, low=0.0, strict=True)

    def _apply(self, w: np.ndarray, g: np.ndarray, lr: float, wd: float,
               state: _ParamState) -> bool:
        return _kernel.adagrad(w, g, state.flat["sum_sq_grad"], lr, wd, self.epsilon)


class RMSProp(Updater):
    """RMSProp (Tieleman & Hinton 2012).

    ``h = rho*h + (1-rho)*g'^2; w -= lr*g' / (sqrt(h) + eps)`` with ``g' = g + wd*w``.
    """

    own_args = ("rho", "epsilon")
    slot_names = ("mean_sq_grad",)

    def __init__(self, lr: float = 0.01, lr_type: str | None = None, decay: float = 0.0,
                 rho: float = 0.9, epsilon: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(lr, lr_type, decay, **kwargs)
        self.rho = self._check("rho", rho, low=0.0, high=1.0)
        self.epsilon = self._check("epsilon", epsilon, low=0.0, strict=True)

    def _apply(self, w: np.ndarray, g: np.ndarray, lr: float, wd: float,
               state: _ParamState) -> bool:
        return _kernel.rmsprop(w, g, state.flat["mean_sq_grad"], lr, wd, self.rho, self.epsilon)


class AdaDelta(Updater):
    """AdaDelta (Zeiler 2012).

    ``h = rho*h + (1-rho)*g'^2; d = sqrt(u+eps)/sqrt(h+eps)*g'; u = rho*u + (1-rho)*d^2;
    w -= lr*d`` with ``g' = g + wd*w``. The paper has no learning rate: keep ``lr=1``.
    """

    own_args = ("rho", "epsilon")
    slot_names = ("mean_sq_grad", "mean_sq_delta")

    def __init__(self, lr: float = 1.0, lr_type: str | None = None, decay: float = 0.0,
                 rho: float = 0.95, epsilon: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(lr, lr_type, decay, **kwargs)
        self.rho = self._check("rho", rho, low=0.0, high=1.0)
        self.epsilon = self._check("epsilon", epsilon, low=0.0, strict=True)

    def _apply(self, w: np.ndarray, g: np.ndarray, lr: float, wd: float,
               state: _ParamState) -> bool:
        return _kernel.adadelta(w, g, state.flat["mean_sq_grad"], state.flat["mean_sq_delta"],
                         lr, wd, self.rho, self.epsilon)


class Adam(Updater):
    """Adam (Kingma & Ba 2015), bias-corrected.

    With ``t`` the number of updates of this param so far (1-based) and ``g' = g + wd*w``:
    ``m = b1*m + (1-b1)*g'; v = b2*v + (1-b2)*g'^2;
    w -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)``. The default ``lr`` is the paper's 0.001.
    """

    own_args = ("beta1", "beta2", "epsilon")
    slot_names = ("m", "v")

    def __init__(self, lr: float = 0.001, lr_type: str | None = None, decay: float = 0.0,
                 beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8,
                 **kwargs: Any) -> None:
        super().__init__(lr, lr_type, decay, **kwargs)
        self.beta1 = self._check("beta1", beta1, low=0.0, high=1.0)
        self.beta2 = self._check("beta2", beta2, low=0.0, high=1.0)
        self.epsilon = self._check("epsilon", epsilon, low=0.0, strict=True)

    def _apply(self, w: np.ndarray, g: np.ndarray, lr: float, wd: float,
               state: _ParamState) -> bool:
        t = state.count
        return _kernel.adam(w, g, state.flat["m"], state.flat["v"], lr, wd, self.beta1, self.beta2,
                     self.epsilon, 1.0 - self.beta1 ** t, 1.0 - self.beta2 ** t)


#: The built-in rules' ``_apply``: elementwise, so ``Updater._apply_in_parts`` may split them.
_ELEMENTWISE_RULES = frozenset(cls._apply for cls in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta,
                                                     Adam))

#: Every updater class by name: what model configs and job configs (lower-cased) may name.
UPDATERS: dict[str, type[Updater]] = {cls.__name__: cls for cls in (SGD, Nesterov, AdaGrad, RMSProp,
                                                                   AdaDelta, Adam)}
