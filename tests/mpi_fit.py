"""Run by test_distributed.py, under ``mpiexec -n N`` or alone: fit(distributed=...) from Python.

Usage: mpi_fit.py JOB.conf DATA_DIR OUT_DIR STEPS {distributed,local}. Each rank writes its
pid (``pid<rank>``) before training and its parameters, lr and step (``rank<rank>.npz``) after.
"""
import os
import sys
from pathlib import Path

import numpy as np

from nnkit.config import load_job

job_file, data_dir, out, steps, mode = sys.argv[1:]
out = Path(out)
job = load_job(job_file, [], data_dir=data_dir)
model = job.build_model()
x, y = job.load_data("train")
distributed = mode == "distributed"
rank = 0
if distributed:
    from nnkit.distributed import world
    rank = world().rank
(out / f"pid{rank}").write_text(str(os.getpid()))
model.fit(x, y, batch_size=job.batch_size("train"), steps=int(steps), verbose=0,
          run_dir=out / "run", distributed=distributed)
np.savez(out / f"rank{rank}.npz", step=model.trainer.global_step, lr=model.updater.lr,
         **{p.full_name.replace("/", "."): p.data for p in model.params})
