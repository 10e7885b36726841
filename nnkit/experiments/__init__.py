"""The experiment store: every run with a run directory recorded in an SQLite index.

    from nnkit.experiments import Store
    store = Store()                       # $NNKIT_HOME/experiments.db (default ~/.nnkit/)
    for run in store.runs(where="updater.lr<0.01", sort="test_error", limit=10):
        print(run.id, run.name, run.status, store.best(run.id).get("test_error"))

Importing this package registers the recorder with :mod:`nnkit.training.run` (``import nnkit``'s
public API, ``nnkit train`` and the child processes of recorded runs import it), so each run
with a run directory is recorded; :func:`record` records one without. The run directory
stays the source of truth; :meth:`Store.reindex` rebuilds records from run directories.
:mod:`nnkit.experiments.queue` is the work queue over the store (``nnkit queue``, ``nnkit worker``).
"""
from __future__ import annotations

from .recorder import Recorder, configure, record
from .rundir import RUN_FILE, default_owner, flatten_config, read_run_dir
from .store import (SCHEMA_VERSION, AmbiguousRun, RunNotFound, RunRecord, Store, StoreError, SweepNotFound,
                    SweepRecord, default_store_path, nnkit_home)
from .summary import ENDED, STATUSES

__all__ = ["Store", "RunRecord", "SweepRecord", "SweepNotFound",
           "RunNotFound", "AmbiguousRun", "StoreError", "default_store_path",
           "nnkit_home", "record", "configure", "Recorder", "read_run_dir", "flatten_config",
           "default_owner", "RUN_FILE", "SCHEMA_VERSION", "STATUSES", "ENDED"]
