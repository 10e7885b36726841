"""Run by test_distributed.py, under ``mpiexec -n N`` or alone: fit(distributed=...) from Python.

Usage: mpi_fit.py JOB.conf DATA_DIR OUT_DIR STEPS {distributed,local,layers,layers-distributed,layers-updater}.
Each rank writes its pid (``pid<rank>``) before training and its parameters, layer state, lr, batch size and step
(``rank<rank>.npz``) after. The ``layers`` modes run the per-layer loop: alone, with ``World.reduce`` before the
updates, or with an ``AllReduceUpdater`` (each ``Update`` reduces its layer).
"""
import os
import sys
from pathlib import Path

import numpy as np

from nnkit.config import load_job

job_file, data_dir, out, steps, mode = sys.argv[1:]
out = Path(out)
if mode.startswith("layers"):  # the per-layer loop; "layers-distributed" under mpiexec
    import nnkit
    from nnkit import Activation, Dense, ImageInput, LabelInput, Loss, SGD
    from nnkit.datasets import load_mnist
    from nnkit.distributed import AllReduceUpdater, world
    images, labels = load_mnist(data_dir, "train")
    x = images[:2000].reshape(2000, -1).astype(np.float32) / 255
    nn = [ImageInput(28, 28), Dense(32), Activation("relu"), Dense(10)]
    nnkit.set_seed(nn, 0)
    label, loss, sgd = LabelInput(), Loss("softmaxloss"), SGD(lr=0.1, momentum=0.9)
    w = world() if mode != "layers" else None
    if mode == "layers-updater":
        sgd = AllReduceUpdater(sgd)
    for i in range(int(steps)):
        idx = np.arange(i * 33, (i + 1) * 33)
        mine = idx if w is None else w.shard(idx)
        nn[0].Feed(x[mine])
        label.Feed(labels[mine])
        for h in range(1, len(nn)):
            nn[h].ComputeFeature(nn[h - 1])
        loss.ComputeFeature(nn[-1], label)
        loss.ComputeGradient()
        for h in range(len(nn) - 1, 0, -1):
            nn[h].ComputeGradient()
        if mode == "layers-distributed":
            w.reduce([p for layer in nn for p in layer.params], {})
        for h in range(1, len(nn)):
            sgd.Update(i + 1, nn[h])
    np.savez(out / f"rank{0 if w is None else w.rank}.npz",
             **{f"{h}.{p.name}": p.data for h, layer in enumerate(nn) for p in layer.params})
    sys.exit(0)
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
         batch_size=model.trainer.batch_size,
         **{p.full_name.replace("/", "."): p.data for p in model.params},
         **{"state." + k.replace("/", "."): v for k, v in model.state_arrays().items()})
