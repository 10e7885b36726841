"""``nnkit runs``: list, show, compare, tag, note, remove, export and reindex recorded runs.

    nnkit runs list [--owner O] [--status S] [--tag T] [--since WHEN] [--where EXPR] [--sweep ID]
                    [--sort KEY] [--asc] [--limit N] [--page P] [--json]
    nnkit runs show RUN [--json]
    nnkit runs compare RUN RUN... [--all] [--json]
    nnkit runs tag RUN TAG...          nnkit runs untag RUN TAG...
    nnkit runs note RUN TEXT           nnkit runs rm RUN... [--delete-files]
    nnkit runs export --csv [FILE]     nnkit runs export --mlflow URI [--experiment NAME]
    nnkit runs reindex RUN_DIR...

Every command takes ``--store PATH`` (default ``$NNKIT_HOME/experiments.db``). RUN is a run id,
a unique id prefix, a run name or a run directory. ``list`` and ``show`` first mark the runs
whose process is gone ``interrupted`` (:meth:`Store.mark_stale`).

The ``nnkit`` command line (:mod:`nnkit.cli`) builds the parser from :func:`add_parser` and runs
:func:`main`; bad input (an unknown RUN, a bad ``--where``) raises :class:`BadInput`, which it
reports with exit status 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from datetime import datetime
from typing import Any, Iterable, TextIO

from .queue import remote_of
from .store import RunRecord, Store, StoreError, SweepRecord
from .summary import STATUSES, lower_is_better

DEFAULT_LIMIT = 20


class BadInput(Exception):
    """A bad argument of ``nnkit runs`` (exit status 2)."""


# ============================================================================ formatting
def _when(seconds: float | None) -> str:
    return "-" if seconds is None else datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _clean(text: Any) -> str:
    """One line of text for a table cell: control characters (a run named with escapes) shown
    as ``?``, so a record cannot move the terminal's cursor or colour it."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", str(text))


def table(headers: list[str], rows: list[list[str]], out: TextIO) -> None:
    """Prints ``rows`` under ``headers`` in aligned columns."""
    cells = [[_clean(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)


def record_dict(store: Store, run: RunRecord, params: bool = False) -> dict[str, Any]:
    """A run as plain JSON data: the record, duration, progress, metrics, best (and params)."""
    data: dict[str, Any] = {key: getattr(run, key) for key in RunRecord.__dataclass_fields__}
    data["tags"] = list(run.tags)
    data.update(duration=run.duration, progress=run.progress, metrics=store.metrics(run.id),
                best=store.best(run.id))
    if params:
        data["params"] = store.params(run.id)
    return data


# ============================================================================ parsing
def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: an ISO date or time (``2026-12-01``, ``2026-12-01T09:30``) or an age
    (``30m``, ``12h``, ``3d``, ``2w``); epoch seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[match.group(2)]
        return (time.time() if now is None else now) - float(match.group(1)) * unit
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise BadInput(f"--since {text!r}: expected a date (2026-12-01), a time (2026-12-01T09:30) "
                       "or an age (30m, 12h, 3d, 2w)") from None


def _mark_stale(store: Store) -> None:
    """Marks the runs whose process is gone; a store we may only read is listed as it is."""
    try:
        store.mark_stale()
    except StoreError as e:
        if "readonly" not in str(e) and "read-only" not in str(e):
            raise


def sweep_id(store: Store, ref: str | None) -> str | None:
    """The id of the sweep ``--sweep`` names (None without one); BadInput if none or several match."""
    if ref is None:
        return None
    try:
        return store.get_sweep(ref).id
    except LookupError as e:
        raise BadInput(str(e.args[0] if e.args else e)) from None


def point_text(point: dict[str, Any] | None) -> str:
    """A sweep point as its overrides, ``updater.lr=0.01 run.steps=5`` (``-`` for none)."""
    if not point:
        return "-"
    return " ".join(f"{key}={_number(value)}" for key, value in point.items())


def _get(store: Store, ref: str) -> RunRecord:
    try:
        return store.get(ref)
    except LookupError as e:
        raise BadInput(str(e.args[0] if e.args else e)) from None


def add_parser(sub: Any, add_store: Any = None) -> argparse.ArgumentParser:
    """Adds ``runs`` and its subcommands to the ``nnkit`` subparsers ``sub``."""
    runs = sub.add_parser("runs", help="list, compare and edit recorded runs",
                          description="The experiment store: every run with a run directory is "
                                      "recorded there. RUN is a run id, a unique id prefix, a name or "
                                      "a run directory.")
    commands = runs.add_subparsers(dest="runs_command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help)
        p.add_argument("--store", metavar="PATH", help="the store (default $NNKIT_HOME/experiments.db, "
                                                        "NNKIT_HOME defaulting to ~/.nnkit)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="print tracebacks of failures")
        p.set_defaults(runs_func=globals()[f"cmd_{name}"])
        return p

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--owner", help="only this owner's runs")
        p.add_argument("--status", action="append", choices=STATUSES, help="only runs in this status "
                       "(repeat for several)")
        p.add_argument("--tag", action="append", default=[], help="only runs with this tag (repeat: all of them)")
        p.add_argument("--since", help="only runs created since: 2026-12-01, 2026-12-01T09:30, or an age: 3d, 12h")
        p.add_argument("--where", metavar="EXPR", help="a condition on config fields and metrics, e.g. "
                       "'updater.lr<0.01 and test_error<=0.05' (and, or, not, parentheses; tag=T, owner=O)")
        p.add_argument("--sweep", metavar="ID", help="only the runs of this sweep (its id, a unique id prefix "
                       "or its name; `nnkit sweep` makes them)")

    p = command("list", "list recorded runs, newest first")
    filters(p)
    p.add_argument("--sort", metavar="KEY", help="created (default), name, status, duration, owner, step, "
                   "or a metric name such as test_error (runs without it come last)")
    p.add_argument("--asc", action="store_true", help="ascending (default: descending; for an error "
                   "metric, give --asc for the best first)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"runs per page (default {DEFAULT_LIMIT})")
    p.add_argument("--page", type=int, default=1, help="which page (from 1)")
    p.add_argument("--json", action="store_true", help="print a JSON list of the records")
    p = command("show", "everything recorded about a run")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = command("compare", "configuration differences and metrics of runs, side by side")
    p.add_argument("runs", metavar="RUN", nargs="+")
    p.add_argument("--all", action="store_true", help="show the config fields that agree too")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = command("tag", "add tags to a run")
    p.add_argument("run", metavar="RUN")
    p.add_argument("tags", metavar="TAG", nargs="+")
    p = command("untag", "remove tags from a run")
    p.add_argument("run", metavar="RUN")
    p.add_argument("tags", metavar="TAG", nargs="+")
    p = command("note", "set a run's notes")
    p.add_argument("run", metavar="RUN")
    p.add_argument("text", metavar="TEXT")
    p = command("rm", "forget runs (their run directories stay unless --delete-files)")
    p.add_argument("runs", metavar="RUN", nargs="+")
    p.add_argument("--delete-files", action="store_true", help="also delete the run directories")
    p = command("export", "write runs to a CSV file or an MLflow tracking store")
    filters(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--csv", nargs="?", const="-", metavar="FILE", help="CSV to FILE (default stdout)")
    target.add_argument("--mlflow", metavar="URI", help="an MLflow tracking URI (file:/path/mlruns, "
                        "http://host:5000); needs the extra nnkit[mlflow]")
    p.add_argument("--experiment", default="nnkit", help="the MLflow experiment (default nnkit)")
    p = command("reindex", "(re)build the records of run directories from their files")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    return runs


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Runs the ``nnkit runs`` subcommand of ``args``; returns the exit status."""
    out = out or sys.stdout
    store = Store(args.store)
    try:
        return args.runs_func(store, args, out)
    except StoreError as e:
        raise BadInput(str(e)) from None


# ============================================================================ commands
def cmd_list(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """``nnkit runs list``."""
    if args.limit < 1 or args.page < 1:
        raise BadInput(f"--limit {args.limit} / --page {args.page}: both must be >= 1")
    filters = dict(owner=args.owner, status=args.status, tags=args.tag,
                   since=None if args.since is None else parse_since(args.since), where=args.where,
                   sweep=sweep_id(store, args.sweep))
    _mark_stale(store)
    try:
        total = store.count(**filters)
        runs = store.runs(**filters, sort=args.sort, descending=not args.asc, limit=args.limit,
                          offset=(args.page - 1) * args.limit)
    except ValueError as e:
        raise BadInput(str(e)) from None
    if args.json:
        json.dump([record_dict(store, run) for run in runs], out, indent=1)
        print(file=out)
        return 0
    sort_metric = args.sort if args.sort and args.sort not in ("created", "name", "status", "duration",
                                                                "owner", "step") else None
    metric = sort_metric or "test_error"
    rows = []
    for run in runs:
        best = store.best(run.id).get(metric)
        rows.append([run.id, run.name or "-", run.owner or "-", run.status,
                     "-" if run.progress is None else f"{100 * run.progress:.0f}%", str(run.step),
                     _number(best), _duration(run.duration), _when(run.created), run.sweep_id or "-",
                     ",".join(run.tags)] + ([point_text(run.point)] if args.sweep else []))
    if not runs:
        print(f"no recorded runs{' match' if total == 0 and any(filters.values()) else ''} in {store.path}",
              file=out)
        return 0
    table(["ID", "NAME", "OWNER", "STATUS", "DONE", "STEP", f"BEST {metric}".upper(), "DURATION", "CREATED",
           "SWEEP", "TAGS"] + (["POINT"] if args.sweep else []), rows, out)
    first = (args.page - 1) * args.limit + 1
    more = f"; --page {args.page + 1} for more" if first + len(runs) - 1 < total else ""
    print(f"runs {first}-{first + len(runs) - 1} of {total}{more}", file=out)
    return 0


def cmd_show(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """``nnkit runs show RUN``."""
    _mark_stale(store)
    run = _get(store, args.run)
    data = record_dict(store, run, params=True)
    if args.json:
        json.dump(data, out, indent=1)
        print(file=out)
        return 0
    lines = [("id", run.id), ("name", run.name), ("owner", run.owner), ("status", run.status),
             ("tags", ", ".join(run.tags) or "-"), ("notes", run.notes or "-"),
             ("sweep", f"{run.sweep_id} at {point_text(run.point)}" if run.sweep_id else "-"),
             ("created", _when(run.created)), ("started", _when(run.started)), ("ended", _when(run.ended)),
             ("duration", _duration(run.duration)),
             ("step", f"{run.step}" + (f" of {run.total_steps}" if run.total_steps else "")),
             ("host / pid", f"{run.host or '-'} / {run.pid or '-'}"), ("heartbeat", _when(run.heartbeat)),
             ("run dir", run.run_dir or "-"), ("config hash", run.config_hash or "-"),
             ("nnkit", run.nnkit_version or "-"), ("git commit", run.git_commit or "-")]
    remote = remote_of(store, run.id)
    if remote is not None:  # host / pid above are its head's: where it trains is the Dask worker
        lines.insert(10, ("remote", f"Dask worker {remote[1] or '(not started)'}, head inbox {remote[0]}"))
    for key, value in lines:
        print(f"{key + ':':13}{_clean(value)}", file=out)
    if data["metrics"]:
        print("metrics:", file=out)
        table(["  METRIC", "LATEST", "BEST"], [[f"  {k}", _number(v), _number(data["best"].get(k))]
                                              for k, v in data["metrics"].items()], out)
    if data["params"]:
        print("config:", file=out)
        for key, value in data["params"].items():
            print(f"  {_clean(key)} = {_clean(value)}", file=out)
    return 0


def cmd_compare(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """``nnkit runs compare RUN RUN...``."""
    runs = [_get(store, ref) for ref in args.runs]
    params = [store.params(run.id) for run in runs]
    keys = sorted(set().union(*params))
    differ = [k for k in keys if len({p.get(k) for p in params}) > 1]
    shown = keys if args.all else differ
    best = [store.best(run.id) for run in runs]
    latest = [store.metrics(run.id) for run in runs]
    metrics = sorted(set().union(*latest))
    if args.json:
        json.dump({"runs": [run.id for run in runs],
                   "config": {k: [p.get(k) for p in params] for k in shown},
                   "metrics": {k: [m.get(k) for m in latest] for k in metrics},
                   "best": {k: [b.get(k) for b in best] for k in metrics}}, out, indent=1)
        print(file=out)
        return 0
    headers = ["", *[f"{run.id} ({run.name})" for run in runs]]
    rows = [["status", *[run.status for run in runs]], ["step", *[str(run.step) for run in runs]],
            ["duration", *[_duration(run.duration) for run in runs]]]
    print("run:", file=out)
    table(headers, rows, out)
    print(f"\nconfig ({'all fields' if args.all else 'the fields that differ'}):", file=out)
    if shown:
        table(headers, [[k, *[p.get(k, "-") for p in params]] for k in shown], out)
    else:
        print("  the same job config" + ("" if all(params) else " (some runs have none recorded)"), file=out)
    print("\nmetrics (latest / best):", file=out)
    table(headers, [[k, *[f"{_number(m.get(k))} / {_number(b.get(k))}" for m, b in zip(latest, best)]]
                    for k in metrics], out)
    return 0


def cmd_tag(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """``nnkit runs tag RUN TAG...``."""
    run = _get(store, args.run)
    try:
        store.tag(run.id, *args.tags)
    except ValueError as e:
        raise BadInput(str(e)) from None
    print(f"{run.id}: tags {', '.join(store.get(run.id).tags)}", file=out)
    return 0


def cmd_untag(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """``nnkit runs untag RUN TAG...``."""
    run = _get(store, args.run)
    store.untag(run.id, *args.tags)
    print(f"{run.id}: tags {', '.join(store.get(run.id).tags) or '(none)'}", file=out)
    return 0


def cmd_note(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """``nnkit runs note RUN TEXT``."""
    run = _get(store, args.run)
    store.note(run.id, args.text)
    print(f"{run.id}: noted", file=out)
    return 0


def cmd_rm(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """``nnkit runs rm RUN... [--delete-files]``."""
    runs = [_get(store, ref) for ref in args.runs]  # every RUN checked before any is removed
    for run in runs:
        try:
            store.remove(run.id, delete_files=args.delete_files)
        except ValueError as e:
            raise BadInput(str(e)) from None
        kept = f"; its files stay in {run.run_dir}" if run.run_dir and not args.delete_files else ""
        gone = f"; deleted {run.run_dir}" if run.run_dir and args.delete_files else ""
        print(f"removed {run.id} ({run.name}){kept}{gone}", file=out)
    return 0


def cmd_reindex(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """``nnkit runs reindex RUN_DIR...``."""
    try:
        ids = store.reindex(*args.run_dirs)
    except ValueError as e:
        raise BadInput(str(e)) from None
    for run_dir, run_id in zip(args.run_dirs, ids):
        print(f"{run_id}  {run_dir}", file=out)
    return 0


def _selected(store: Store, args: argparse.Namespace) -> list[RunRecord]:
    try:
        return store.runs(owner=args.owner, status=args.status, tags=args.tag,
                          since=None if args.since is None else parse_since(args.since), where=args.where,
                          sweep=sweep_id(store, args.sweep))
    except ValueError as e:
        raise BadInput(str(e)) from None


def cmd_export(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """``nnkit runs export --csv [FILE] | --mlflow URI``."""
    runs = _selected(store, args)
    if args.mlflow:
        from .export import to_mlflow
        try:
            done = to_mlflow(store, runs, args.mlflow, args.experiment)
        except ImportError as e:
            raise BadInput(f"--mlflow: {e}") from None
        for run_id, mlflow_id, new in done:
            print(f"{run_id} -> MLflow run {mlflow_id}" + ("" if new else " (exported before: updated)"), file=out)
        return 0
    if args.csv == "-":
        write_csv(store, runs, out)
    else:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            write_csv(store, runs, f)
        print(f"{len(runs)} runs -> {args.csv}", file=sys.stderr)
    return 0


# ============================================================================ sweeps (nnkit sweep)
def sweep_status(store: Store, ref: str, out: TextIO, metric: str | None = None, as_json: bool = False) -> int:
    """``nnkit sweep --status SWEEP``: the sweep, then its runs (oldest first) with their
    status, step, best ``metric`` (default: the sweep's own, else test_error) and point."""
    _mark_stale(store)
    try:
        sweep = store.get_sweep(ref)
    except LookupError as e:
        raise BadInput(str(e.args[0] if e.args else e)) from None
    runs = store.sweep_runs(sweep.id)
    metric = metric or sweep.spec.get("metric") or "test_error"
    if as_json:
        extra = {"log": store.sweep_log(sweep.id)} if sweep.kind == "pbt" else {}
        json.dump({"sweep": {key: getattr(sweep, key) for key in SweepRecord.__dataclass_fields__},
                   "runs": [record_dict(store, run) for run in runs], **extra}, out, indent=1)
        print(file=out)
        return 0
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    print(f"sweep {sweep.id} ({sweep.name or 'unnamed'}): {sweep.kind}, {sweep.status}, created "
          f"{_when(sweep.created)}; {len(runs)} runs"
          + (": " + ", ".join(f"{n} {status}" for status, n in counts.items()) if counts else ""), file=out)
    trials: dict[str, str] = {}
    if sweep.kind == "optuna":
        from .optuna_sweep import optuna_study_name, study_trials
        print(f"optuna study {optuna_study_name(sweep.id)} in {sweep.spec.get('storage')}", file=out)
        trials = study_trials(sweep)
    best = {run.id: store.best(run.id).get(metric) for run in runs}
    table(["RUN", "NAME", "STATUS", "STEP", f"BEST {metric}".upper()] + (["TRIAL"] if trials else []) + ["POINT"],
          [[run.id, run.name or "-", run.status, str(run.step), _number(best[run.id])]
           + ([trials.get(run.id, "-")] if trials else []) + [point_text(run.point)] for run in runs], out)
    scored = [run for run in runs if best[run.id] is not None]
    if scored:
        pick = min if lower_is_better(metric) else max
        top = pick(scored, key=lambda run: best[run.id])
        print(f"best: run {top.id} {metric} {_number(best[top.id])} at {point_text(top.point)}", file=out)
    if sweep.kind == "pbt":
        from .pbt import describe_decisions
        for line in describe_decisions(store.sweep_log(sweep.id)):
            print(line, file=out)
    return 0


def sweep_list(store: Store, out: TextIO) -> int:
    """``nnkit sweep --list``: every sweep, newest first, with how many runs it has."""
    sweeps = store.list_sweeps()
    if not sweeps:
        print(f"no sweeps in {store.path}", file=out)
        return 0
    table(["SWEEP", "NAME", "KIND", "STATUS", "RUNS", "CREATED"],
          [[s.id, s.name or "-", s.kind, s.status, str(store.count(sweep=s.id)), _when(s.created)] for s in sweeps],
          out)
    return 0


def write_csv(store: Store, runs: Iterable[RunRecord], out: TextIO) -> None:
    """The runs as CSV: the record's fields, ``metric:NAME`` (latest), ``best:NAME`` and
    ``param:KEY`` columns (empty where a run has none)."""
    columns = [c for c in RunRecord.__dataclass_fields__ if c != "config_text"] + ["duration"]
    rows = []
    extra: dict[str, None] = {}
    for run in runs:
        row: dict[str, Any] = {c: getattr(run, c) for c in columns}
        row["tags"] = ",".join(run.tags)
        row["point"] = None if run.point is None else json.dumps(run.point, sort_keys=True)
        row.update({f"metric:{k}": v for k, v in store.metrics(run.id).items()})
        row.update({f"best:{k}": v for k, v in store.best(run.id).items()})
        row.update({f"param:{k}": v for k, v in store.params(run.id).items()})
        extra.update(dict.fromkeys(k for k in row if k not in columns))
        rows.append(row)
    writer = csv.DictWriter(out, fieldnames=columns + sorted(extra), restval="")
    writer.writeheader()
    writer.writerows(rows)


__all__ = ["add_parser", "main", "BadInput", "write_csv", "parse_since", "table", "point_text", "sweep_id",
           "sweep_status", "sweep_list"]
