"""Data-parallel training over MPI: ``mpiexec -n N nnkit train job.conf``, ``fit(..., distributed=True)``.

Every rank holds the whole model and the whole data set, and draws the same example order.
Each global batch is cut into ``size`` contiguous shards (uneven when the batch does not
divide: ``np.array_split``), one per rank. After the backward pass, :meth:`World.reduce`
weights each rank's gradients (the mean over its shard) by its shard's size, packs every
parameter's gradient into one contiguous buffer in the model's parameter order, and sums it
with a single ``MPI_Allreduce``; dividing by the global batch size gives the gradient of the
global batch, identical on every rank, so every rank applies the same update. The batch's
logs (loss, metrics) ride in the same buffer and become the global batch's.

Rank 0 alone writes events, checkpoints and the store record and reads the commands; at every
safe point :meth:`World.sync` sends rank 0's steering state (learning rate and updater
settings, batch size, stop requests, the plan) to the others, so a command takes effect on
every rank at the same batch. Ranks waiting there (rank 0 paused) poll a non-blocking
broadcast with sleeps instead of spinning.

Limits: Dropout draws and BatchNormalization statistics are per rank (each rank's layer RNG
and its shard's statistics), so models with them train correctly but not bit-identically to
a 1-rank run; an error on one rank aborts the whole job (``MPI_Abort``).

mpi4py is imported only when a :class:`World` is made (``pip install 'nnkit[mpi]'``).
"""
from __future__ import annotations

import os
import pickle
import time
from typing import Any, Sequence

import numpy as np

#: Environment variables that MPI launchers (MPICH's Hydra, Open MPI, Slurm's PMI) set in each rank.
_LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def launched_by_mpi() -> bool:
    """True in a process started by ``mpiexec`` with more than one rank (no mpi4py import)."""
    for name in _LAUNCHER_VARS:
        value = os.environ.get(name)
        if value is not None:
            return name == "PMIX_RANK" or int(value) > 1
    return False


class World:
    """This process's place among the ranks, and the collectives data-parallel training needs.

    Attributes:
        rank: this process's rank (0 writes, reads commands and prints).
        size: the number of ranks.
        allreduce_seconds: total time spent in the gradient all-reduce (for benchmarks).
    """

    def __init__(self, comm: Any = None) -> None:
        try:
            from mpi4py import MPI
        except ImportError as e:  # pragma: no cover - the extra is missing
            raise ImportError("distributed training needs mpi4py and an MPI: pip install 'nnkit[mpi]'") from e
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.allreduce_seconds = 0.0
        self._n_local = self._n_global = 0
        self._buffer: np.ndarray | None = None

    # ------------------------------------------------------------------ sharding and reduction
    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of the global batch ``idx`` (remembered for :meth:`reduce`)."""
        n = len(idx)
        if n < self.size:
            raise ValueError(f"distributed training: a batch of {n} examples cannot be shared by "
                             f"{self.size} ranks (use a batch size, and a data set, whose batches "
                             f"have at least {self.size} examples)")
        bounds = [n * r // self.size for r in range(self.size + 1)]
        self._n_global = n
        self._n_local = bounds[self.rank + 1] - bounds[self.rank]
        return idx[bounds[self.rank]:bounds[self.rank + 1]]

    def reduce(self, params: Sequence[Any], logs: dict[str, Any]) -> None:
        """Replaces each ``p.grad`` and the numeric ``logs`` with their global-batch means (in place).

        One fused buffer, one ``Allreduce`` (sum), in the fixed parameter order; the gradients
        are means over the shard, so each is weighted by its shard's share of the global batch.
        """
        keys = sorted(k for k, v in logs.items() if k != "size" and isinstance(v, (int, float, np.floating)))
        sizes = [p.grad.size for p in params]
        total = sum(sizes) + len(keys)
        dtype = params[0].grad.dtype if params else np.float64
        if self._buffer is None or self._buffer.size != total or self._buffer.dtype != dtype:
            self._buffer = np.empty(total, dtype=dtype)
        buf = self._buffer
        weight = self._n_local / self._n_global
        offset = 0
        for p, n in zip(params, sizes):
            np.multiply(p.grad.reshape(-1), weight, out=buf[offset:offset + n])
            offset += n
        buf[offset:] = [float(logs[k]) * weight for k in keys]
        start = time.perf_counter()
        self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)
        self.allreduce_seconds += time.perf_counter() - start
        offset = 0
        for p, n in zip(params, sizes):
            p.grad.reshape(-1)[:] = buf[offset:offset + n]
            offset += n
        logs.update({k: float(v) for k, v in zip(keys, buf[offset:])})
        logs["size"] = self._n_global

    # ------------------------------------------------------------------ rank 0 to the others
    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank; waiting ranks sleep between polls (a paused rank 0)."""
        data = pickle.dumps(obj) if self.rank == 0 else b""
        length = np.array([len(data)], dtype=np.int64)
        request = self.comm.Ibcast(length, root=0)
        pause = 0.0005
        while not request.Test():
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        payload = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == 0 else np.empty(int(length[0]), np.uint8)
        self.comm.Bcast(payload, root=0)
        return obj if self.rank == 0 else pickle.loads(payload.tobytes())

    def start(self, trainer: Any) -> None:
        """Gives every rank rank 0's parameters, layer state and data order, before the first batch."""
        model = trainer.model
        for p in model.params:
            self.comm.Bcast(p.data, root=0)
        state = self.broadcast(trainer.state_dict())
        if self.rank != 0:
            trainer.load_state_dict(state, "rank 0's trainer state")

    def sync(self, trainer: Any) -> None:
        """At the safe point: rank 0's steering state (what commands change) on every rank."""
        updater = trainer.updater
        mine = {"batch_size": trainer.batch_size, "requested": trainer.requested,
                "target_epoch": trainer.target_epoch, "target_step": trainer.target_step,
                "lr": updater.lr_override,
                "updater": {name: getattr(updater, name)
                            for name in ("decay", "clip_norm", "clip_value", *updater.own_args)}}
        state = self.broadcast(mine)
        if self.rank == 0:
            return
        trainer.batch_size = state["batch_size"]
        trainer.target_epoch, trainer.target_step = state["target_epoch"], state["target_step"]
        trainer.clear_request()  # rank 0's word, not this rank's own signal, ends the loop
        if state["requested"] is not None:
            trainer.request(state["requested"])
        updater.lr = state["lr"]
        for name, value in state["updater"].items():
            if getattr(updater, name) != value:
                setattr(updater, name, value)

    def abort(self, code: int = 1) -> None:
        """Ends every rank at once (after an error on this one)."""
        self.comm.Abort(code)


_WORLD: World | None = None


def world() -> World:
    """The process's :class:`World` (made, and mpi4py imported, on first use)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = World()
    return _WORLD
