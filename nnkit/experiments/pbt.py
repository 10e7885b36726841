"""Population-based training (Jaderberg et al. 2017) as steering: a sweep of kind ``pbt``.

    nnkit sweep JOB.conf --pbt --population 4 --interval-epochs 1 --perturb 0.8,1.2 \\
        --metric test_error --direction minimize --quantile 0.25

:func:`queue_population` records the sweep and queues its members for ``nnkit worker`` (each a
run of the job with its own seed and, optionally, its own starting learning rate), each in a
run directory of the sweep's folder that it may load checkpoints from (its *load roots*, passed
to ``nnkit train --load-root``). :class:`PBTDriver` then watches the members' ``epoch`` events:
when every started member has ended interval ``k`` (epoch ``k * interval_epochs``) or finished,
it ranks them by the metric of that epoch and, for each of the bottom ``quantile`` still
training, *exploits* and *explores* through the ordinary command channel, waiting for each
answer: ``pause``; ``load_weights`` of a checkpoint the best member writes for it
(``checkpoint path=pbt-<k>.h5``: parameters, layer state and the updater's slots, as the paper
copies the weights); ``set lr=<the best's lr * a factor drawn from perturb>`` (the
hyperparameter, copied and perturbed); ``checkpoint path=pbt-<k>-loaded.h5`` (the weights as
loaded, for audit); ``resume``. Every decision is logged in the sweep (:meth:`Store.log_sweep`).

Every change is an acknowledged command in the member's own ``events.jsonl``, so
:func:`replay` rebuilds from those events alone the schedule each member followed: its learning
rate from step to step and the weights it loaded.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..training.checkpoints import latest_checkpoint
from ..training.control import deliver, make_command
from ..training.events import EVENTS_FILE, jsonl_reader, poll_answer, read_jsonl
from .store import RunRecord, Store
from .optuna_sweep import STALE_EVERY
from .queue import cancel
from .summary import ENDED
from .sweep import queue_sweep

#: How long the driver waits for a member's answer to one command (seconds).
ANSWER_TIMEOUT = 60.0


@dataclass(frozen=True)
class PBTSpec:
    """What a PBT sweep does; stored as the sweep's spec.

    ``population``: members; ``interval_epochs``: epochs between two exploit/explore steps;
    ``perturb``: the factors the copied learning rate is multiplied by (one drawn at random);
    ``metric``: a field of the members' ``epoch`` events (``test_error``, ``val_loss``...);
    ``direction``: ``minimize`` or ``maximize``; ``quantile``: the fraction of the ranked
    members that exploit (at least one of two or more); ``seed``: the driver's random draws
    and the members' seeds (``seed + i``); ``init_lrs``: each member's starting learning rate
    (empty: the job's).
    """

    population: int
    interval_epochs: int = 1
    perturb: tuple[float, ...] = (0.8, 1.2)
    metric: str = "test_error"
    direction: str = "minimize"
    quantile: float = 0.25
    seed: int = 0
    init_lrs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.population < 2:
            problems.append(f"--population {self.population}: a population needs at least 2 members")
        if self.interval_epochs < 1:
            problems.append(f"--interval-epochs {self.interval_epochs}: must be >= 1")
        if not self.perturb or not all(math.isfinite(f) and f > 0 for f in self.perturb):
            problems.append(f"--perturb {','.join(map(str, self.perturb))}: factors must be numbers > 0")
        if self.direction not in ("minimize", "maximize"):
            problems.append(f"--direction {self.direction}: expected minimize or maximize")
        if not 0 < self.quantile <= 0.5:
            problems.append(f"--quantile {self.quantile}: must be in (0, 0.5]")
        if self.init_lrs and (len(self.init_lrs) != self.population or min(self.init_lrs) < 0):
            problems.append(f"--init-lr: give {self.population} learning rates >= 0, one per member")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON data (the sweep record's ``spec``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PBTSpec":
        """The spec a sweep record stores."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("perturb", "init_lrs"):
            known[key] = tuple(known.get(key) or ())
        return cls(**known)


def member_points(spec: PBTSpec) -> list[dict[str, Any]]:
    """Each member's overrides of the job: its seed, and its starting learning rate if given."""
    return [{"seed": spec.seed + i, **({"updater.lr": spec.init_lrs[i]} if spec.init_lrs else {})}
            for i in range(spec.population)]


def queue_population(store: Store, spec: PBTSpec, make_config: Callable[[dict[str, Any]], str],
                     sweep_root: str | os.PathLike, *, name: str | None = None, owner: str | None = None,
                     tags: tuple[str, ...] = (), retries: int = 0,
                     job: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    """Records a ``pbt`` sweep and queues its members; returns the sweep id and the run ids.

    ``job``: more of the sweep's spec (what ``nnkit sweep`` records of every sweep: the job
    file and its ``--set`` items).

    ``make_config(point) -> job text`` builds a member's job (it raises for a bad one: then
    nothing is recorded). The members run in ``<sweep_root>/<sweep name>/<name>-<i>`` and may
    load from each other's run directories (and nothing else of the machine).
    """
    def placement(sweep_id: str, base: str) -> list[dict[str, Any]]:
        folder = Path(sweep_root).resolve() / base
        dirs = [folder / f"{base}-{i}" for i in range(spec.population)]
        for run_dir in dirs:  # made now: a member's load roots exist before any member runs
            run_dir.mkdir(parents=True, exist_ok=True)
        return [{"run_dir": run_dir, "load_roots": tuple(dirs)} for run_dir in dirs]
    return queue_sweep(store, "pbt", {**(job or {}), **spec.to_json()}, member_points(spec), make_config, name=name,
                       owner=owner, tags=tags, retries=retries, placement=placement)


# ============================================================================ the members' events
@dataclass
class Member:
    """What the driver knows of one member, read from its run directory's ``events.jsonl``."""

    run_id: str
    name: str
    run_dir: Path
    epochs: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch index -> its event
    lr: float | None = None  # the learning rate of its latest batch
    ended: bool = False
    offset: int = 0

    @property
    def started(self) -> bool:
        """Whether it has written events (a worker has started it)."""
        return self.offset > 0

    def read(self, status: str) -> None:
        """Reads the events written since the last read; ``status``: its record's status."""
        items, self.offset = read_jsonl(self.run_dir / EVENTS_FILE, self.offset)
        for _, event in items:
            if not isinstance(event, dict):
                continue
            if event.get("type") == "epoch" and isinstance(event.get("epoch"), int):
                self.epochs[event["epoch"]] = event
            if isinstance(event.get("lr"), (int, float)) and event.get("type") in ("loss", "epoch"):
                self.lr = float(event["lr"])
        self.ended = status in ENDED


def _answer_text(answer: dict[str, Any] | None) -> str:
    if answer is None:
        return "no answer"
    return "ack" if answer["type"] == "ack" else f"error: {answer.get('message')}"


class PBTDriver:
    """Runs the exploit/explore steps of sweep ``sweep_id`` until every member has ended.

    ``poll``: seconds between two reads of the members' events; ``echo``: where a line per
    decision goes (stderr by default); ``answer_timeout``: seconds to wait for each answer.
    """

    def __init__(self, store: Store, sweep_id: str, *, poll: float = 0.2, answer_timeout: float = ANSWER_TIMEOUT,
                 echo: Callable[[str], None] | None = None) -> None:
        self.store, self.sweep = store, store.get_sweep(sweep_id)
        if self.sweep.kind != "pbt":
            raise ValueError(f"sweep {sweep_id} is a {self.sweep.kind} sweep, not a pbt one")
        self.spec = PBTSpec.from_json(self.sweep.spec)
        self.poll, self.answer_timeout = poll, answer_timeout
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.rng = np.random.default_rng(self.spec.seed)
        self.members = [Member(r.id, r.name or r.id, Path(r.run_dir)) for r in self._records()]
        self.interval = 1 + len([e for e in store.sweep_log(sweep_id) if "interval" in e])  # a restart goes on

    def _records(self) -> list[RunRecord]:
        records = sorted(self.store.sweep_runs(self.sweep.id), key=lambda r: (r.created or 0, r.name or ""))
        missing = [r.id for r in records if not r.run_dir]
        if missing:
            raise ValueError(f"sweep {self.sweep.id}: members without a run directory: {', '.join(missing)}")
        return records

    def refresh(self) -> None:
        """Reads every member's new events and its record's status."""
        status = {r.id: r.status for r in self.store.sweep_runs(self.sweep.id)}
        for member in self.members:
            member.read(status.get(member.run_id, "stopped"))

    def run(self) -> int:
        """Steers until every member has ended, then marks the sweep finished; returns the
        number of interval decisions made. Ctrl-C stops the sweep: its queued members are
        cancelled, its running ones sent ``stop`` (then KeyboardInterrupt goes on); a failure of
        the driver marks it failed."""
        made, looked = 0, time.monotonic()
        try:
            while True:
                if time.monotonic() - looked > STALE_EVERY:  # a member whose worker died unseen ends interrupted
                    self.store.mark_stale()
                    looked = time.monotonic()
                self.refresh()
                if self.step():
                    made += 1
                    continue
                if all(m.ended for m in self.members):
                    break
                time.sleep(self.poll)
        except KeyboardInterrupt:
            self.stop_members()
            self.store.set_sweep_status(self.sweep.id, "stopped")
            self.echo(f"nnkit sweep: pbt sweep {self.sweep.id} stopped (Ctrl-C); its queued members were "
                      "cancelled, its running ones sent stop")
            raise
        except BaseException:
            self.store.set_sweep_status(self.sweep.id, "failed")
            raise
        self.store.set_sweep_status(self.sweep.id, "finished")
        return made

    def stop_members(self) -> None:
        """Cancels the members still queued and sends ``stop`` to those still training."""
        for member in self.members:
            if not cancel(self.store, member.run_id) and self.store.get(member.run_id).status not in ENDED:
                deliver(member.run_dir, make_command("stop"))

    def step(self) -> bool:
        """Makes the decision of the next interval if every started member has reached it (or
        ended); True if one was made (or the interval was passed over)."""
        epoch = self.interval * self.spec.interval_epochs - 1
        started = [m for m in self.members if m.started]
        if not started or not all(epoch in m.epochs or m.ended for m in started):
            return False
        reached = [m for m in started if epoch in m.epochs]
        if not reached and all(m.ended for m in self.members):
            return False  # nobody got this far: the run is over
        entry = self.decide(self.interval, epoch, reached)
        self.store.log_sweep(self.sweep.id, entry)
        self.interval += 1
        return True

    def _score(self, member: Member, epoch: int) -> float:
        value = member.epochs[epoch].get(self.spec.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return math.inf  # a member without the metric, or gone non-finite, ranks last
        return float(value) if self.spec.direction == "minimize" else -float(value)

    def decide(self, interval: int, epoch: int, reached: Sequence[Member]) -> dict[str, Any]:
        """Ranks the members that reached ``epoch`` and exploits and explores for the bottom
        quantile; returns the log entry of the decision."""
        ranked = sorted(reached, key=lambda m: self._score(m, epoch))
        entry: dict[str, Any] = {
            "interval": interval, "epoch": epoch, "metric": self.spec.metric,
            "ranking": [{"run": m.run_id, "name": m.name, "value": m.epochs[epoch].get(self.spec.metric),
                         "lr": m.epochs[epoch].get("lr")} for m in ranked],
            "exploits": []}
        count = max(1, int(len(ranked) * self.spec.quantile)) if len(ranked) >= 2 else 0
        targets = [m for m in ranked[len(ranked) - count:] if not m.ended] if count else []
        if not targets:
            self.echo(f"nnkit sweep: pbt interval {interval} (epoch {epoch + 1}): nothing to exploit")
            return entry
        best = ranked[0]
        source = self._source(best, interval)
        entry.update(best=best.run_id, source=None if source is None else str(source))
        for member in targets:
            entry["exploits"].append(self._exploit(member, best, source, interval))
        return entry

    def _ask(self, member: Member, name: str, **args: Any) -> dict[str, Any] | None:
        """Sends one command to the member and waits for its answer: None if none came in
        ``answer_timeout`` seconds or the member ended first (an ended run answers nothing)."""
        command = make_command(name, **args)
        read = jsonl_reader(member.run_dir / EVENTS_FILE, deliver(member.run_dir, command))
        deadline = time.monotonic() + self.answer_timeout
        while True:
            answer = poll_answer(read, command["id"], min(1.0, max(0.0, deadline - time.monotonic())), 0.02)
            if answer is not None or time.monotonic() >= deadline:
                return answer
            if self.store.get(member.run_id).status in ENDED:
                return poll_answer(read, command["id"], 0, 0.02)  # what it wrote before it ended

    def _source(self, best: Member, interval: int) -> Path | None:
        """The best member's checkpoint to load: one it writes now, or its latest if it ended."""
        if not best.ended:
            answer = self._ask(best, "checkpoint", path=f"pbt-{interval}.h5")
            if answer is not None and answer["type"] == "ack":
                return Path(answer["path"])
        return latest_checkpoint(best.run_dir)

    def _exploit(self, member: Member, best: Member, source: Path | None, interval: int) -> dict[str, Any]:
        """Pause, load the best's weights, set a perturbed copy of its lr, checkpoint, resume."""
        factor = float(self.rng.choice(self.spec.perturb))
        lr = None if best.lr is None else best.lr * factor
        record: dict[str, Any] = {"run": member.run_id, "name": member.name, "from": best.run_id,
                                  "from_name": best.name,
                                  "factor": factor, "lr": lr, "answers": {}}
        answers = record["answers"]
        if source is None:  # the best has no checkpoint to give (it ended without one)
            self.echo(f"nnkit sweep: pbt interval {interval}: {best.name} has no checkpoint; {member.name} left alone")
            return record
        paused = self._ask(member, "pause")
        answers["pause"] = _answer_text(paused)
        if paused is None or paused["type"] != "ack":
            self.echo(f"nnkit sweep: pbt interval {interval}: {member.name} did not pause "
                      f"({answers['pause']}); left alone")
            return record
        try:
            loaded = self._ask(member, "load_weights", path=str(source))
            answers["load_weights"] = _answer_text(loaded)
            if loaded is not None and loaded["type"] == "ack":  # explore only what was exploited
                record["step"] = loaded.get("step")
                if lr is not None:
                    answers["set"] = _answer_text(self._ask(member, "set", lr=lr))
                saved = self._ask(member, "checkpoint", path=f"pbt-{interval}-loaded.h5")
                answers["checkpoint"] = _answer_text(saved)
                if saved is not None and saved["type"] == "ack":
                    record["checkpoint"] = saved["path"]
        finally:
            answers["resume"] = _answer_text(self._ask(member, "resume"))
        self.echo(f"nnkit sweep: pbt interval {interval}: {member.name} <- {best.name}'s weights "
                  f"({source}), lr {lr if lr is None else f'{lr:.6g}'} (x{factor:g}); "
                  + ", ".join(f"{k} {v}" for k, v in answers.items()))
        return record


# ============================================================================ replay
@dataclass(frozen=True)
class Change:
    """One acknowledged change of a member: ``set`` of its learning rate, or ``load_weights``."""

    step: int
    command: str
    lr: float | None = None   # set: the new learning rate (None: back to the schedule)
    path: str | None = None   # load_weights: the checkpoint loaded
    source_step: int | None = None


@dataclass(frozen=True)
class Schedule:
    """What a member followed, from its events alone: its first learning rate and every change."""

    run_dir: str
    initial_lr: float | None
    changes: tuple[Change, ...]

    def lr_at(self, step: int) -> float | None:
        """The learning rate of batch ``step`` (counted from 1): the last ``set`` acknowledged
        before it (a command acknowledged at step s applies from batch s + 1), else the first."""
        lr = self.initial_lr
        for change in self.changes:
            if change.command == "set" and change.step < step:
                lr = change.lr
        return lr


def replay(run_dir: str | os.PathLike) -> Schedule:
    """The schedule of learning rates and weight loads a run followed, read from its
    ``events.jsonl`` alone: the acknowledged ``set lr`` and ``load_weights`` commands, in order,
    and the learning rate of its first batch. A resume from a checkpoint at step ``c`` (its
    ``started`` status) drops the changes acknowledged after ``c``, which the checkpoint has not
    seen (a learning rate set by hand is in it)."""
    items, _ = read_jsonl(Path(run_dir) / EVENTS_FILE)
    initial, changes = None, []
    for _, event in items:
        if not isinstance(event, dict):
            continue
        if initial is None and event.get("type") == "loss" and isinstance(event.get("lr"), (int, float)):
            initial = float(event["lr"])
        if (event.get("type") == "status" and event.get("state") == "started" and isinstance(event.get("step"), int)
                and event["step"] > 0):
            # Resumed from its checkpoint at that step (a requeued member): what came after is undone.
            changes = [c for c in changes if c.step <= event["step"]]
        if event.get("type") != "ack" or not isinstance(event.get("step"), int):
            continue
        values = event.get("values") if isinstance(event.get("values"), dict) else {}
        if event.get("command") == "set" and "lr" in values:
            changes.append(Change(event["step"], "set", lr=values["lr"]))
        elif event.get("command") == "load_weights":
            changes.append(Change(event["step"], "load_weights", path=event.get("path"),
                                  source_step=event.get("source_step")))
    return Schedule(str(run_dir), initial, tuple(changes))


def replay_sweep(store: Store, sweep_id: str) -> dict[str, Schedule]:
    """Each member's :func:`replay`, by run name (the store only says where the members ran)."""
    return {r.name or r.id: replay(r.run_dir) for r in store.sweep_runs(sweep_id) if r.run_dir}


def describe_schedules(schedules: dict[str, Schedule]) -> list[str]:
    """The lines ``nnkit sweep --replay`` prints: per member its first lr and each change."""
    lines = []
    for name, schedule in schedules.items():
        lines.append(f"{name} ({schedule.run_dir}): lr {schedule.initial_lr} from step 1")
        for change in schedule.changes:
            if change.command == "set":
                lines.append(f"  step {change.step}: set lr={json.dumps(change.lr)}")
            else:
                lines.append(f"  step {change.step}: load_weights {change.path} (its step {change.source_step})")
    return lines


def describe_decisions(log: Sequence[dict[str, Any]]) -> list[str]:
    """The lines ``nnkit sweep --status`` adds for a PBT sweep: per interval the ranking, then
    each exploit (who took whose weights, the new lr, the answers that were not acks)."""
    lines = []
    for entry in log:
        if "interval" not in entry:
            continue
        ranking = ", ".join(f"{r['name']} {r['value']:.4g}" if isinstance(r.get("value"), (int, float))
                            else f"{r['name']} -" for r in entry.get("ranking", []))
        lines.append(f"interval {entry['interval']} (epoch {entry['epoch'] + 1}), {entry.get('metric')}: "
                     f"{ranking or 'no member reached it'}")
        for x in entry.get("exploits", []):
            refused = {k: v for k, v in x.get("answers", {}).items() if v != "ack"}
            lr = "-" if x.get("lr") is None else f"{x['lr']:.6g}"
            lines.append(f"  {x['name']} <- {x.get('from_name', x['from'])}'s weights, lr {lr} (x{x['factor']:g})"
                         + ("" if not refused else "; " + ", ".join(f"{k}: {v}" for k, v in refused.items())))
    return lines


__all__ = ["PBTSpec", "PBTDriver", "Member", "queue_population", "member_points", "replay", "replay_sweep",
           "describe_schedules", "describe_decisions", "Schedule", "Change", "ANSWER_TIMEOUT"]
