"""Data-parallel training over MPI: ``mpiexec -n N nnkit train job.conf``, ``fit(..., distributed=True)``.

Every rank holds the whole model and the whole data set, and draws the same example order.
Each global batch of n examples is cut into ``size`` contiguous shards, one per rank (rank r
takes examples ``n r // size`` up to ``n (r + 1) // size``: uneven when n does not divide); a
batch of fewer examples than ranks goes whole to every rank, each weighted ``1 / size``. After the backward pass, :meth:`World.reduce`
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

Nothing depends on the number of ranks: under a distributed model Dropout draws per-example
streams (the mask of example i of step s depends only on the seed, s and i's place in the
global batch) and BatchNormalization normalises with the global batch's statistics (one
all-reduce of per-channel sums and counts forward, one of the gradient sums backward), both
through :meth:`World.allreduce` (see ``Layer.distribute``, which the model calls before each
batch). An error on one rank aborts the whole job (``MPI_Abort``).

In a hand-written per-layer loop, :class:`AllReduceUpdater` wraps any updater so that
``updater.Update(step, layer)`` first makes that layer's gradients the global batch's.

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
        self._n_global = 0  # examples in the last global batch (0: none sharded yet)
        self._weight = 0.0
        #: Where this rank's shard of the last global batch starts (Dropout's example streams).
        self.first_example = 0
        self._buffers: dict[tuple[int, np.dtype], np.ndarray] = {}  # one per size: per-layer reduces

    # ------------------------------------------------------------------ sharding and reduction
    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of the global batch ``idx`` (remembered for :meth:`reduce`).

        A batch of fewer examples than ranks (an epoch's tail, say after ``set batch_size``) is
        not cut: every rank takes all of it with weight ``1 / size``, so the reduced gradient,
        the synchronised statistics and the Dropout masks are still one process's.
        """
        n = len(idx)
        if n == 0:
            raise ValueError("distributed training: an empty batch has nothing to share")
        self._n_global = n
        if n < self.size:
            self._weight = 1.0 / self.size
            self.first_example = 0
            return idx
        lo, hi = n * self.rank // self.size, n * (self.rank + 1) // self.size
        self._weight = (hi - lo) / n
        self.first_example = lo
        return idx[lo:hi]

    @property
    def shard_weight(self) -> float:
        """This rank's weight in the last global batch (:meth:`shard`): its share of the examples."""
        if self._n_global == 0:
            raise RuntimeError("distributed training: no batch was sharded yet; take this rank's "
                               "examples with world.shard(batch_indices) first")
        return self._weight

    def allreduce(self, array: np.ndarray, weighted: bool = False) -> np.ndarray:
        """Sums the contiguous ``array`` over the ranks, in place; returns it.

        ``weighted``: each rank's array is first scaled by its :attr:`shard_weight`, so means
        over the shards become the global batch's mean (uneven shards included).
        """
        if weighted:
            array *= self.shard_weight
        start = time.perf_counter()
        self.comm.Allreduce(self._mpi.IN_PLACE, array, op=self._mpi.SUM)
        self.allreduce_seconds += time.perf_counter() - start
        return array

    def reduce(self, params: Sequence[Any], logs: dict[str, Any]) -> None:
        """Replaces each ``p.grad`` and the numeric ``logs`` with their global-batch means (in place).

        One fused buffer, one ``Allreduce`` (sum), in the fixed parameter order; the gradients
        are means over the shard, so each is weighted by its shard's share of the global batch.
        """
        keys = sorted(k for k, v in logs.items() if k != "size" and isinstance(v, (int, float, np.floating)))
        sizes = [p.grad.size for p in params]
        total = sum(sizes) + len(keys)
        dtype = np.dtype(params[0].grad.dtype if params else np.float64)
        buf = self._buffers.get((total, dtype))
        if buf is None:
            buf = self._buffers[total, dtype] = np.empty(total, dtype=dtype)
        weight = self.shard_weight
        offset = 0
        for p, n in zip(params, sizes):
            np.multiply(p.grad.reshape(-1), weight, out=buf[offset:offset + n])
            offset += n
        buf[offset:] = [float(logs[k]) * weight for k in keys]
        self.allreduce(buf)
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
        layers = getattr(model, "layers", [])
        if self.rank == 0:  # an unseeded Dropout gets its generator here, not one per rank later
            for layer in layers:
                if getattr(layer, "rng", False) is None:
                    layer.rng = np.random.default_rng()
        # Layer generators key Dropout's example streams: rank 0's, everywhere.
        rngs = self.broadcast({i: layer.rng.bit_generator.state for i, layer in enumerate(layers)
                               if getattr(layer, "rng", None) is not None})
        state = self.broadcast(trainer.state_dict())
        if self.rank != 0:
            for i, bit_state in rngs.items():
                layers[i].rng = layers[i].rng or np.random.default_rng()
                layers[i].rng.bit_generator.state = bit_state
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


class AllReduceUpdater:
    """An updater whose ``Update(step, layer)`` first all-reduces that layer's gradients.

    For the hand-written per-layer loop: each rank feeds its shard (:meth:`World.shard`),
    runs ComputeFeature and ComputeGradient, then ``Update(step, layer)`` replaces each of
    the layer's ``p.grad`` (the mean over this rank's shard) with the global batch's mean
    gradient (one fused ``MPI_Allreduce`` per layer, weighted by shard size, as
    :meth:`World.reduce`) and applies the wrapped updater's rule, identically on every rank.
    Everything else (``lr``, ``state_dict``, settings) is the wrapped updater's::

        sgd = AllReduceUpdater(SGD(lr=0.1, momentum=0.9))
        sgd.Update(i + 1, layer)     # the global batch's update of layer, on every rank
        sgd.lr = 0.01                # the wrapped SGD's learning rate

    Args:
        updater: any nnkit updater (or an object with ``Update(step, layer)``).
        world: the ranks to reduce over; by default the process's :func:`world`.
    """

    _OWN = ("updater", "world")

    def __init__(self, updater: Any, world: World | None = None) -> None:
        object.__setattr__(self, "updater", updater)
        object.__setattr__(self, "world", world if world is not None else _process_world())

    def Update(self, step: int, layer: Any) -> bool:
        """The global batch's gradients of ``layer`` (every rank calls it), then the update."""
        if layer.params:  # the same on every rank (same model): no collective for an activation
            self.world.reduce(layer.params, {})
        return self.updater.Update(step, layer)

    def __getattr__(self, name: str) -> Any:  # what this class does not have: the updater's
        if name in self._OWN:  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.updater, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.updater, name, value)

    def __repr__(self) -> str:
        return f"AllReduceUpdater({self.updater!r}, rank {self.world.rank} of {self.world.size})"


_WORLD: World | None = None


def world() -> World:
    """The process's :class:`World` (made, and mpi4py imported, on first use)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = World()
    return _WORLD


_process_world = world  # for AllReduceUpdater, whose argument is named world
