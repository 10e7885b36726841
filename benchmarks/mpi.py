"""Data-parallel training over MPI: images/s of the CIFAR-10 CNN, 1 rank x 2 threads against
2 ranks x 1 thread, and the all-reduce's time per step.

    PYTHONPATH=. python benchmarks/mpi.py --data-dir ../shared/data            # 3 pairs, 20 steps
    PYTHONPATH=. python benchmarks/mpi.py --data-dir ../shared/data --pairs 1 --steps 10

Each measurement is its own process (or ``mpiexec -n 2`` job): it builds
``examples/cifar10_cnn.conf`` (global batch 100) on the first ``--examples`` CIFAR-10 training
images, trains 2 warm-up steps, then times ``--steps`` steps of ``fit``; rank 0 reports
images/s (global batch x steps / seconds) and, on 2 ranks, the time spent in the one
``MPI_Allreduce`` per step (which includes waiting for the slower rank) and that of the same
all-reduce alone, both ranks ready. 1-rank and 2-rank runs alternate, ``--pairs`` times; the medians
are printed. Threads: ``NNKIT_NUM_THREADS`` (nnkit's own helper threads; BLAS is held to one
thread per part by nnkit.parallel). Not a test: on a shared machine the numbers scatter.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "examples" / "cifar10_cnn.conf"


def worker(args: argparse.Namespace) -> None:
    from nnkit.config import load_job
    job = load_job(JOB, [f"data.train.limit={args.examples}"], data_dir=args.data_dir)
    model = job.build_model()
    x, y = job.load_data("train")
    batch = job.batch_size("train")
    distributed = args.ranks > 1
    model.fit(x, y, batch_size=batch, steps=2, verbose=0, distributed=distributed)  # warm-up
    world = None
    if distributed:
        from nnkit.distributed import world as get_world
        world = get_world()
        world.allreduce_seconds = 0.0
        world.comm.Barrier()
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, steps=args.steps, verbose=0, distributed=distributed)
    seconds = time.perf_counter() - start
    params = sum(p.data.size for p in model.params)
    bare = None
    if world is not None:  # the same buffer with both ranks ready: transfer alone, no waiting
        import numpy as np
        from mpi4py import MPI
        buf = np.zeros(params, np.float32)
        world.comm.Barrier()
        begin = time.perf_counter()
        for _ in range(args.steps):
            world.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        bare = 1000 * (time.perf_counter() - begin) / args.steps
    if world is None or world.rank == 0:
        print(json.dumps({"images_per_s": batch * args.steps / seconds, "params": params,
                          "allreduce_ms_per_step": None if world is None
                          else 1000 * world.allreduce_seconds / args.steps,
                          "bare_allreduce_ms": bare}))


def measure(ranks: int, threads: int, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NNKIT_NUM_THREADS": str(threads), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", "--ranks", str(ranks), "--steps", str(args.steps),
           "--examples", str(args.examples), "--data-dir", args.data_dir]
    if ranks > 1:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks)] + cmd
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--examples", type=int, default=5000)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    one, two = [], []
    for _ in range(args.pairs):
        one.append(measure(1, 2, args))
        two.append(measure(2, 1, args))
    params = one[0]["params"]
    print(f"CIFAR-10 CNN, {params} parameters, global batch 100, {args.steps} steps, {args.pairs} pairs")
    print(f"1 rank x 2 threads: {statistics.median(r['images_per_s'] for r in one):.0f} images/s")
    print(f"2 ranks x 1 thread: {statistics.median(r['images_per_s'] for r in two):.0f} images/s, "
          f"allreduce {statistics.median(r['allreduce_ms_per_step'] for r in two):.2f} ms/step in training "
          f"(waiting for the slower rank included), "
          f"{statistics.median(r['bare_allreduce_ms'] for r in two):.2f} ms alone "
          f"({2 * params * 4 / 1e6:.2f} MB per rank and step)")


if __name__ == "__main__":
    main()
