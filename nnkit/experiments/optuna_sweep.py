"""An Optuna study driven over the work queue: each trial is a queued run, trained by the workers.

``nnkit sweep JOB.conf --optuna PATH=DIST ... --trials N --metric M --direction D`` runs
:class:`OptunaSweep` in the foreground: it is the *driver*, the only process that talks to
Optuna. It follows Optuna's ask-and-tell interface
(https://optuna.readthedocs.io/en/stable/tutorial/20_recipes/009_ask_and_tell.html):

1. ``study.ask(distributions)`` gives a trial with its parameters (a point); the driver builds
   the point's job and queues it as a run of the sweep (:func:`~nnkit.experiments.queue.enqueue`),
   so trials train on the queue's workers, on as many machines as run ``nnkit worker``;
2. it follows each trial's run: the run's record in the store (status, final metrics) and the
   ``epoch`` events of its run directory, each epoch's metric reported with
   ``trial.report(value, step=epoch)`` (the epoch's index, from 0 as events count it);
3. when ``trial.should_prune()`` says so (the study's pruner, e.g. ``MedianPruner`` or
   ``ThresholdPruner``: https://optuna.readthedocs.io/en/stable/reference/pruners.html), the
   driver sends the run the ordinary ``stop`` command (as ``nnkit ctl RUN stop`` does; the run
   checkpoints and ends ``stopped``) and tells Optuna ``TrialState.PRUNED``;
4. a run that finished is told with its metric as the store has it (the latest value); one that
   failed, or stopped or was interrupted (no retries left) without the driver asking, is told
   ``FAIL``.

The study lives in its own Optuna storage (by default an RDB SQLite file next to the store,
``<store>.optuna.db``), never in nnkit's store; the sweep's spec names the storage and study,
and each trial carries the run id as the user attribute ``nnkit_run_id``.

How many trials are out at once: ``parallel`` runs at most, or (None) as many as the workers
take: a new trial is asked whenever none of the sweep's runs waits in the queue, so every idle
worker finds one and one waits. Ctrl-C stops the sweep: queued runs are cancelled, running ones
sent ``stop``, their trials told ``FAIL``, the sweep marked ``stopped``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..training.events import EVENTS_FILE, read_jsonl
from .queue import cancel, enqueue, will_retry
from .store import Store, SweepRecord
from .summary import ENDED, metric_values
from .sweep import Distribution

#: Seconds between two looks at the runs in flight.
POLL = 0.5
#: Seconds between two liveness checks of the runs (:meth:`Store.mark_stale`): no worker may be left to make them.
STALE_EVERY = 10.0
#: ``--pruner`` names (``threshold=X`` takes a value).
PRUNERS = ("median", "none", "threshold=X")


def default_study_storage(store: Store) -> str:
    """``<store>.optuna.db`` beside the store (``experiments.db`` -> ``experiments.optuna.db``)."""
    return str(Path(store.path).resolve().with_suffix(".optuna.db"))


def optuna_study_name(sweep_id: str) -> str:
    """The name of sweep ``sweep_id``'s study in its storage (the spec's ``storage``)."""
    return f"nnkit-sweep-{sweep_id}"


def study_trials(sweep: SweepRecord) -> dict[str, str]:
    """``{run id: "NUMBER STATE"}`` of an Optuna sweep's trials, read from its study's storage;
    empty when Optuna or the storage cannot be had (the runs' records still say how they went)."""
    try:
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=optuna_study_name(sweep.id), storage=sweep.spec["storage"])
        trials = study.get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001  (no optuna, a moved file, an unreachable database)
        return {}
    return {t.user_attrs["nnkit_run_id"]: f"{t.number} {t.state.name}"
            for t in trials if "nnkit_run_id" in t.user_attrs}


def storage_url(storage: str) -> str:
    """An Optuna storage URL: a URL as it is, a path as ``sqlite:///ABSOLUTE/PATH``."""
    return storage if "://" in storage else f"sqlite:///{Path(storage).expanduser().resolve()}"


def make_pruner(text: str, direction: str) -> Any:
    """``median`` (``MedianPruner()``, Optuna's defaults), ``none`` (``NopPruner``) or
    ``threshold=X`` (``ThresholdPruner``: prune once an epoch's value is worse than X, i.e.
    above it when minimizing, below it when maximizing). ValueError for another text."""
    import optuna
    name, _, value = text.partition("=")
    if name == "median" and not value:
        return optuna.pruners.MedianPruner()
    if name == "none" and not value:
        return optuna.pruners.NopPruner()
    if name == "threshold":
        try:
            limit = float(value)
        except ValueError:
            limit = math.nan
        if math.isfinite(limit):
            side = "upper" if direction == "minimize" else "lower"
            return optuna.pruners.ThresholdPruner(**{side: limit})
    raise ValueError(f"--pruner {text!r}: expected median, none or threshold=X (a number)")


@dataclass
class _Trial:
    """A trial out on the queue: its Optuna trial, its run and what was read of its events."""

    trial: Any
    run_id: str
    offset: int = 0
    reported: set[int] = field(default_factory=set)
    told: bool = False  # pruned: told PRUNED, the run still stopping


class OptunaSweep:
    """The driver of one Optuna sweep (see the module doc); :meth:`run` until all trials are told.

    ``make_config(point) -> job text`` builds a trial's job (raises ValueError for a point that
    makes a bad job: that trial is told FAIL); ``stop_run(run_dir)`` sends the ``stop`` command.
    """

    def __init__(self, store: Store, sweep_id: str, study: Any, distributions: dict[str, Distribution],
                 make_config: Callable[[dict[str, Any]], str], stop_run: Callable[[str], None], *,
                 metric: str, trials: int, parallel: int | None = None, name: str | None = None,
                 owner: str | None = None, tags: tuple[str, ...] = (), retries: int = 0, poll: float = POLL,
                 echo: Callable[[str], None] | None = None) -> None:
        self.store, self.sweep_id, self.study, self.metric = store, sweep_id, study, metric
        self.distributions = {path: dist.to_optuna() for path, dist in distributions.items()}
        self.make_config, self.stop_run = make_config, stop_run
        self.trials, self.parallel, self.poll = trials, parallel, poll
        self.run_options = dict(owner=owner, tags=tags, retries=retries)
        self.base = name or f"sweep-{sweep_id}"
        self.echo = echo or (lambda line: print(line, flush=True))
        self.out: dict[str, _Trial] = {}  # run id -> its trial, while the run is live
        self.asked = 0

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Asks, queues, follows and tells until ``trials`` trials are told; returns 0, or 130
        after Ctrl-C (the sweep stopped)."""
        looked = time.monotonic()
        try:
            while self.asked < self.trials or self.out:
                while self.asked < self.trials and self._room():
                    self._ask()
                if time.monotonic() - looked > STALE_EVERY:  # a run whose worker died unseen ends interrupted
                    self.store.mark_stale()
                    looked = time.monotonic()
                for run_id in list(self.out):
                    self._follow(run_id)
                time.sleep(self.poll)
        except KeyboardInterrupt:
            self._stop_all()
            self.store.set_sweep_status(self.sweep_id, "stopped")
            self.echo(f"sweep {self.sweep_id}: stopped (Ctrl-C); its queued runs were cancelled, "
                      "its running ones sent stop")
            return 130
        except BaseException:  # the driver failed (the store, the study): the sweep says so, not running forever
            self.store.set_sweep_status(self.sweep_id, "failed")
            raise
        self.store.set_sweep_status(self.sweep_id, "finished")
        self._summary()
        return 0

    def _room(self) -> bool:
        if self.parallel is not None:
            return len(self.out) < self.parallel
        # As many as the workers take: ask again whenever none of ours waits in the queue.
        return not any(self.store.get(run_id).status == "queued" for run_id in self.out)

    def _ask(self) -> None:
        import optuna
        trial = self.study.ask(self.distributions)
        number = self.asked
        self.asked += 1
        point = {path: trial.params[path] for path in self.distributions}
        try:
            text = self.make_config(point)
        except ValueError as e:  # this point makes a bad job (ConfigError is a ValueError)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.echo(f"trial {trial.number}: {_point(point)}: not queued, told FAIL: {e}")
            return
        run_id = enqueue(self.store, text, name=f"{self.base}-{number}", sweep_id=self.sweep_id, point=point,
                         **self.run_options)
        trial.set_user_attr("nnkit_run_id", run_id)
        self.out[run_id] = _Trial(trial, run_id)
        self.echo(f"trial {trial.number}: run {run_id} queued: {_point(point)}")

    def _follow(self, run_id: str) -> None:
        """Reports the run's new epochs (pruning it if the pruner says so); tells a run that ended."""
        import optuna
        out = self.out[run_id]
        try:
            record = self.store.get(run_id)  # before the events: an ended run's epochs are all written by now
        except LookupError:  # someone removed the record (nnkit runs rm)
            del self.out[run_id]
            if not out.told:
                self.study.tell(out.trial, state=optuna.trial.TrialState.FAIL)
            self.echo(f"trial {out.trial.number}: run {run_id} was removed from the store: told FAIL")
            return
        if record.run_dir and not out.told:
            self._report(out, Path(record.run_dir) / EVENTS_FILE)
        if record.status not in ENDED or will_retry(self.store, run_id):
            return
        del self.out[run_id]
        if out.told:
            self.echo(f"trial {out.trial.number}: run {run_id} {record.status} after the prune")
            return
        value = self.store.metrics(run_id).get(self.metric)
        if record.status == "finished" and value is not None:
            self.study.tell(out.trial, value)
            self.echo(f"trial {out.trial.number}: run {run_id} finished: {self.metric} {value:.6g}")
        else:
            self.study.tell(out.trial, state=optuna.trial.TrialState.FAIL)
            why = f"no {self.metric} recorded" if record.status == "finished" else record.status
            self.echo(f"trial {out.trial.number}: run {run_id} {record.status}: told FAIL ({why})")

    def _report(self, out: _Trial, events: Path) -> None:
        import optuna
        if not events.exists():
            return
        items, out.offset = read_jsonl(events, out.offset)
        for _, event in items:
            if out.told or not isinstance(event, dict) or event.get("type") != "epoch":
                continue
            epoch = event.get("epoch")
            value = dict(metric_values(event)).get(self.metric)
            if not isinstance(epoch, int) or value is None or epoch in out.reported:
                continue  # a resumed run repeats no epoch to Optuna
            out.reported.add(epoch)
            out.trial.report(value, step=epoch)
            if out.trial.should_prune():
                record = self.store.get(out.run_id)
                self.stop_run(record.run_dir)
                self.study.tell(out.trial, state=optuna.trial.TrialState.PRUNED)
                out.told = True
                self.echo(f"trial {out.trial.number}: run {out.run_id} pruned after epoch {epoch + 1} "
                          f"({self.metric} {value:.6g}): stop sent")

    def _stop_all(self) -> None:
        import optuna
        for run_id, out in list(self.out.items()):
            if not cancel(self.store, run_id):
                record = self.store.get(run_id)
                if record.run_dir and record.status not in ENDED:
                    self.stop_run(record.run_dir)
            if not out.told:
                self.study.tell(out.trial, state=optuna.trial.TrialState.FAIL)
        self.out.clear()

    def _summary(self) -> None:
        import optuna
        done = [t for t in self.study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            self.echo(f"sweep {self.sweep_id}: no trial completed")
            return
        best = self.study.best_trial
        self.echo(f"sweep {self.sweep_id}: best trial {best.number} (run {best.user_attrs.get('nnkit_run_id')}): "
                  f"{self.metric} {best.value:.6g} at {_point(best.params)}")


def _point(point: dict[str, Any]) -> str:
    from .sweep import point_overrides
    return " ".join(point_overrides(point))


__all__ = ["OptunaSweep", "default_study_storage", "optuna_study_name", "study_trials", "storage_url",
           "make_pruner", "PRUNERS", "POLL", "STALE_EVERY"]
