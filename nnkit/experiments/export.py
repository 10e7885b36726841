"""``nnkit runs export --mlflow URI``: recorded runs into an MLflow tracking store.

Each nnkit run becomes one MLflow run of the experiment (``nnkit`` by default), tagged
``nnkit.run_id`` so that exporting again updates it instead of making a copy: the flattened job
config as params, the metric series of ``events.jsonl`` (epoch, test and train events, with
their steps and times; the latest values for a run without a directory) as metrics, and the
run directory's ``job.conf``, ``run.json``, ``metrics.json`` and ``events.jsonl`` as artifacts.
Needs the optional extra ``nnkit[mlflow]`` (``mlflow-skinny``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from ..training.events import EVENTS_FILE, read_jsonl
from .rundir import JOB_FILE, RUN_FILE
from .store import RunRecord, Store
from .summary import metric_values

#: nnkit's statuses as MLflow's (RunStatus names).
MLFLOW_STATUS = {"queued": "SCHEDULED", "running": "RUNNING", "paused": "RUNNING", "finished": "FINISHED",
                 "failed": "FAILED", "stopped": "KILLED", "interrupted": "KILLED"}
ARTIFACTS = (JOB_FILE, RUN_FILE, "metrics.json", EVENTS_FILE)
_MAX_PARAM = 6000  # MLflow's limit on a param value (characters)


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImportError("MLflow is not installed: pip install 'nnkit[mlflow]' (mlflow-skinny)") from None
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps its file store in maintenance mode behind this switch; naming a file
        # URI is asking for it (a database store needs the full mlflow, with SQLAlchemy).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def metric_series(run: RunRecord, store: Store) -> list[tuple[str, float, int, int]]:
    """``(name, value, timestamp_ms, step)`` of every metric the run's events report."""
    series = []
    if run.run_dir and (Path(run.run_dir) / EVENTS_FILE).is_file():
        items, _ = read_jsonl(Path(run.run_dir) / EVENTS_FILE)
        for _, event in items:
            if not isinstance(event, dict):
                continue
            step = event.get("step") if isinstance(event.get("step"), int) else 0
            when = int(1000 * event["time"]) if isinstance(event.get("time"), (int, float)) else 0
            series += [(name, value, when, step) for name, value in metric_values(event)]
    if not series:  # no directory (a recorded in-memory fit): the latest values
        when = int(1000 * (run.ended or run.heartbeat or run.created or 0))
        series = [(name, value, when, run.step) for name, value in store.metrics(run.id).items()]
    return series


def to_mlflow(store: Store, runs: Iterable[RunRecord], uri: str, experiment: str = "nnkit"
              ) -> list[tuple[str, str, bool]]:
    """Exports ``runs`` to the MLflow tracking store at ``uri``; returns ``(nnkit id, MLflow
    run id, whether it was new)`` for each."""
    from mlflow.entities import Metric, Param, RunTag
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    done = []
    for run in runs:
        old = client.search_runs([experiment_id], filter_string=f"tags.`nnkit.run_id` = '{_quote(run.id)}'",
                                 max_results=1)
        tags = {"nnkit.run_id": run.id, "mlflow.user": run.owner or "", "nnkit.status": run.status,
                "nnkit.tags": ",".join(run.tags), "mlflow.note.content": run.notes or "",
                "nnkit.run_dir": run.run_dir or "", "nnkit.config_hash": run.config_hash or "",
                "nnkit.version": run.nnkit_version or "", "mlflow.source.git.commit": run.git_commit or "",
                "nnkit.host": run.host or ""}
        tags = {k: v for k, v in tags.items() if v}
        if old:
            mlflow_run = old[0]
            logged_params = set(mlflow_run.data.params)
            logged_metrics = set()  # MLflow keeps every logged point; only new steps are added
            for key in mlflow_run.data.metrics:
                logged_metrics |= {(key, m.step, m.timestamp) for m in client.get_metric_history(
                    mlflow_run.info.run_id, key)}
        else:
            mlflow_run = client.create_run(experiment_id, start_time=int(1000 * (run.started or run.created or 0)),
                                           tags=tags, run_name=run.name)
            logged_params, logged_metrics = set(), set()
        mlflow_id = mlflow_run.info.run_id
        params = [Param(k, v[:_MAX_PARAM]) for k, v in store.params(run.id).items() if k not in logged_params]
        metrics = [Metric(name, value, when, step) for name, value, when, step in metric_series(run, store)
                   if (name, step, when) not in logged_metrics]
        for start in range(0, max(len(params), 1), 100):
            client.log_batch(mlflow_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(mlflow_id, metrics=metrics[start:start + 1000])
        client.log_batch(mlflow_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if run.run_dir:
            for name in ARTIFACTS:
                path = Path(run.run_dir) / name
                if path.is_file():
                    client.log_artifact(mlflow_id, os.fspath(path))
        status = MLFLOW_STATUS.get(run.status, "RUNNING")
        if status in ("FINISHED", "FAILED", "KILLED"):
            client.set_terminated(mlflow_id, status=status,
                                  end_time=int(1000 * run.ended) if run.ended is not None else None)
        done.append((run.id, mlflow_id, not old))
    return done


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
