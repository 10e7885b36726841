"""Runs a kernel on contiguous parts of a batch at once: one part here, the others on helpers.

The kernels are single-threaded: OpenMP is out, because its worker threads spin while they
wait, against OpenBLAS's, and on a 2-core machine that costs several times over. So between
two matrix products a layer's kernel keeps one core busy and leaves the others idle.
``split`` hands all but the first part of the batch to helper threads that *sleep* on a
queue while idle, and runs the first part itself. The kernels release the GIL, so the parts
really run in parallel; a part never shares an output or scratch array with another, so
the result does not depend on the split.

Hand-offs: waking a sleeping thread is most of what a split costs on a virtual machine (a
split of two parts that do nothing took 68.6 us on a 2-core one). So a helper that finished
a job first spins for SPIN_SECONDS (200 us), without the GIL, on a counter of the jobs it
was given (``nnkit._kernels.handoff``), and only then sleeps on its queue; the caller spins
likewise for its helpers' parts before it sleeps. The empty split then took 38.5 us, and
the CIFAR-10 CNN's inference step at batch 100 0.974 and 0.984 of its time without the
spins (medians of 11 alternating rounds in one process, two runs; spins of 50 us and 1 ms
gave 0.984 and 0.985), its training step 0.988; the MLP's training step 1.005, the CNN's at
batch 1 (no split there has two parts) 0.97. The spins are short, so they are not the pools
spinning against each other that the notes below keep out: a product right after a split
shares its core with a helper's spin for at most 200 us.

Matrix products: OpenBLAS's own threads spin for a while after each product (about 0.1 s),
so a part running on a helper thread after a multi-threaded product gets almost no time on
the other core. Every layer that calls BLAS therefore does so in a split with
``blas=True`` (the convolution's parts each run an im2col + GEMM pipeline of their own; the
dense layer's parts each compute a slice of the outputs), which sets the BLAS to one
thread while its parts run and restores the previous count after: the cores are then
shared out by nnkit, one part each, and no pool spins against another (a dense layer
calling BLAS whole on its two threads made the CIFAR-10 CNN's step 55 -> 95 ms). A split of a
single part (a small batch) leaves BLAS its threads: its products are all there is to
parallelize. nnkit holds the BLAS to one thread through threadpoolctl (the field's standard
for it: OpenBLAS, MKL, BLIS, on every OS); where there is no BLAS it can control, BLAS
splits run in one part, and the BLAS keeps its threads. The setting is process-wide while a
split runs: another thread's numpy product at that moment runs on one thread; and while
other code holds a threadpoolctl limit in another thread, that thread stays in charge of
OpenBLAS (threadpoolctl lets one thread at a time control its shared pool).

This is plumbing around the kernels, not a kernel: plain Python (the parts' heavy work runs
in the kernels, which release the GIL).

The number of threads is the number of cores (``os.sched_getaffinity``), at most
``MAX_THREADS``; ``NNKIT_NUM_THREADS=1`` in the environment turns the helpers off. Parts
hold at least ``MIN_PART_VALUES`` values: handing a part over costs some 20-50 us, so a
small batch runs in the calling thread alone. A split that finds the helpers busy (another
thread is in a split) also runs alone, so concurrent callers never wait on each other.
"""
from __future__ import annotations

import contextvars
import os
import queue
import threading
from collections.abc import Callable

import numpy as np
from threadpoolctl import ThreadpoolController

from ._kernels import handoff

#: The most threads a split uses (the caller included).
MAX_THREADS = 8
#: The fewest values a part holds: about 50-100 us of work for the simpler kernels.
MIN_PART_VALUES = 1 << 16


def _thread_count() -> int:
    """The number of threads a split may use: the env override, else the usable cores."""
    env = os.environ.get("NNKIT_NUM_THREADS")
    if env:
        return max(1, min(MAX_THREADS, int(env)))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


def _blas_controller() -> ThreadpoolController | None:
    """threadpoolctl's handle on the BLAS libraries loaded (numpy's), or None if there is none."""
    import numpy  # noqa: F401  (numpy loads its BLAS, which threadpoolctl then finds)
    blas = ThreadpoolController().select(user_api="blas")
    return blas if blas.lib_controllers else None


#: How long a helper spins, without the GIL, for its next job after one, and the caller for
#: its helpers' parts, before sleeping on the queue (module notes).
SPIN_SECONDS = 200e-6
#: Hand-off counters, two per helper: jobs given (``2 i``) and jobs done (``2 i + 1``).
_counters = np.zeros(2 * MAX_THREADS, np.int64)


class _Helper:
    """One daemon thread that runs the jobs it is given, one at a time."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.given = 0  # jobs given so far (the caller's count; the helper keeps its own)
        self.jobs = queue.SimpleQueue()
        self.done = queue.SimpleQueue()
        thread = threading.Thread(target=self._loop, name="nnkit-kernel-helper", daemon=True)
        thread.start()

    def give(self, fn: Callable[..., None], args: tuple) -> None:
        """Queues ``fn(*args)``, then counts it where a spinning helper sees it."""
        self.jobs.put((fn, args))
        self.given += 1
        handoff.post(_counters, 2 * self.index, self.given)

    def result(self) -> BaseException | None:
        """Waits for the last job given: None, or the exception it raised."""
        handoff.wait_until(_counters, 2 * self.index + 1, self.given, int(SPIN_SECONDS * 1e9))
        return self.done.get()  # at once if the spin saw it done

    def _loop(self) -> None:
        taken = 0
        while True:
            handoff.wait_until(_counters, 2 * self.index, taken + 1, int(SPIN_SECONDS * 1e9))
            fn, args = self.jobs.get()  # at once after a spin that saw the job, else it sleeps
            taken += 1
            try:
                fn(*args)
                result = None
            except BaseException as e:  # re-raised in the caller
                result = e
            self.done.put(result)
            handoff.post(_counters, 2 * self.index + 1, taken)


_helpers = []
_busy = threading.Lock()  # held for the duration of a split that uses the helpers
_threads = _thread_count()
_blas = _blas_controller()


def _forget_helpers() -> None:
    """In a forked child the helper threads are gone: start new ones when needed."""
    global _busy
    _helpers.clear()
    _counters[:] = 0
    _busy = threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


def blas_kernels() -> str | None:
    """The kernel set numpy's OpenBLAS runs ('Haswell', 'SkylakeX', ...), None for another BLAS.

    OpenBLAS picks it when it loads, from the CPU or the ``OPENBLAS_CORETYPE`` environment
    variable (threadpoolctl reports it as the library's ``architecture``).
    """
    for lib in (_blas.lib_controllers if _blas is not None else []):
        if lib.internal_api == "openblas":
            return getattr(lib, "architecture", None)
    return None


def thread_count() -> int:
    """The number of threads ``split`` uses, the caller included."""
    return _threads


def parts(n: int, item_values: int = 1, blas: bool = False) -> list[tuple[int, int]]:
    """The [lo, hi) ranges ``split`` cuts range(n) into, for items of ``item_values`` values.

    At most one part per thread, each of at least ``MIN_PART_VALUES`` values (except a
    single part: all of a small batch); one part for a BLAS split without BLAS control.
    """
    if blas and _blas is None:
        return [(0, n)]
    per_part = max(1, -(-MIN_PART_VALUES // max(1, item_values)))
    count = max(1, min(_threads, n // per_part))
    return [(n * i // count, n * (i + 1) // count) for i in range(count)]


def split(fn: Callable[[int, int, int], None], n: int, item_values: int = 1,
          blas: bool = False) -> list[tuple[int, int]]:
    """Calls ``fn(part, lo, hi)`` for each part [lo, hi) of range(n), the parts in parallel.

    ``item_values`` is the number of values of one item (say, one image), which sets how
    many parts a batch is worth (see ``parts``); ``blas`` says that ``fn`` calls BLAS
    (the BLAS then runs single-threaded, see the module notes). Part 0 runs in the calling
    thread, the others on helper threads; ``split`` returns the parts' ranges when all are
    done, and re-raises the first exception any of them raised. ``fn`` must release the GIL
    for its heavy work (the kernels and numpy's matmul do), and must give each part its own
    output and scratch arrays.
    """
    ranges = parts(n, item_values, blas)
    if len(ranges) == 1 or not _busy.acquire(blocking=False):
        fn(0, 0, n)  # a small batch: BLAS, if called, keeps its own threads
        return [(0, n)]
    try:
        if blas:
            with _blas.limit(limits=1):  # restores the previous counts on the way out
                _run(fn, ranges)
        else:
            _run(fn, ranges)
    finally:
        _busy.release()
    return ranges


def _run(fn: Callable[[int, int, int], None], ranges: list[tuple[int, int]]) -> None:
    """Runs the parts: the first here, the others on the helpers."""
    while len(_helpers) < len(ranges) - 1:
        _helpers.append(_Helper(len(_helpers)))
    for helper, (lo, hi), i in zip(_helpers, ranges[1:], range(1, len(ranges))):
        # In a copy of the caller's context: its np.errstate (context-local) holds for its parts.
        helper.give(contextvars.copy_context().run, (fn, i, lo, hi))
    error = None
    try:
        fn(0, *ranges[0])
    except BaseException as e:
        error = e
    for helper, _ in zip(_helpers, ranges[1:]):  # wait for every helper, even after an error
        result = helper.result()
        if error is None and result is not None:
            error = result
    if error is not None:
        raise error
