# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Runs a kernel on contiguous parts of a batch at once: one part here, the others on helpers.

The kernels are single-threaded: OpenMP is out, because its worker threads spin while they
wait, against OpenBLAS's, and on a 2-core machine that costs several times over. So between
two matrix products a layer's kernel keeps one core busy and leaves the others idle.
``split`` hands all but the first part of the batch to helper threads that *sleep* on a
queue while idle, and runs the first part itself. The kernels release the GIL, so the parts
really run in parallel; a part never shares an output or scratch array with another, so
the result does not depend on the split.

Matrix products: OpenBLAS's own threads spin for a while after each product (about 0.1 s),
so a part running on a helper thread after a multi-threaded product gets almost no time on
the other core. Every layer that calls BLAS therefore does so in a split with
``blas=True`` (the convolution's parts each run an im2col + GEMM pipeline of their own; the
dense layer's parts each compute a slice of the outputs), which sets OpenBLAS to one
thread while its parts run and restores the previous count after: the cores are then
shared out by nnkit, one part each, and no pool spins against another. A split of a
single part (a small batch) leaves BLAS its threads: its products are all there is to
parallelize. nnkit finds OpenBLAS among the libraries
loaded into the process (numpy's) and calls its ``openblas_set_num_threads``; where there is
no OpenBLAS to control (another BLAS, another OS), BLAS splits run in one part, and the BLAS
keeps its threads. The setting is process-wide while a split runs: another thread's numpy
product at that moment runs on one thread.

The number of threads is the number of cores (``os.sched_getaffinity``), at most
``MAX_THREADS``; ``NNKIT_NUM_THREADS=1`` in the environment turns the helpers off. Parts
hold at least ``MIN_PART_VALUES`` values: handing a part over costs some 20-50 us, so a
small batch runs in the calling thread alone. A split that finds the helpers busy (another
thread is in a split) also runs alone, so concurrent callers never wait on each other.
"""
import ctypes
import os
import queue
import threading

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


def _openblas_controls():
    """(get, set) of the loaded OpenBLAS's thread count, or None if there is none to control.

    numpy's wheels bundle OpenBLAS under a prefixed, 64-bit-integer name
    (``scipy_openblas_set_num_threads64_``); distribution builds use the plain name.
    """
    import numpy  # noqa: F401  (numpy loads its BLAS, which is then mapped)
    paths = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                # address perms offset device inode path (no negative indexing here:
                # this module is compiled with wraparound=False)
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and "openblas" in fields[5].lower():
                    paths.add(fields[5].strip())
    except OSError:  # not Linux: no way to find the library loaded by numpy
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("", ""), ("scipy_", "64_"), ("", "64_"), ("scipy_", "")):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype = ctypes.c_int
                set_.argtypes = [ctypes.c_int]
                set_.restype = None
                return get, set_
    return None


class _Helper:
    """One daemon thread that runs the jobs it is given, one at a time."""

    def __init__(self) -> None:
        self.jobs = queue.SimpleQueue()
        self.done = queue.SimpleQueue()
        thread = threading.Thread(target=self._loop, name="nnkit-kernel-helper", daemon=True)
        thread.start()

    def _loop(self) -> None:
        while True:
            fn, args = self.jobs.get()  # sleeps (no spinning) until there is work
            try:
                fn(*args)
                self.done.put(None)
            except BaseException as e:  # re-raised in the caller
                self.done.put(e)


_helpers = []
_busy = threading.Lock()  # held for the duration of a split that uses the helpers
_threads = _thread_count()
_blas = _openblas_controls()


def _forget_helpers() -> None:
    """In a forked child the helper threads are gone: start new ones when needed."""
    global _busy
    _helpers.clear()
    _busy = threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


def thread_count() -> int:
    """The number of threads ``split`` uses, the caller included."""
    return _threads


def parts(n: int, item_values: int = 1, blas: bool = False) -> list:
    """The [lo, hi) ranges ``split`` cuts range(n) into, for items of ``item_values`` values.

    At most one part per thread, each of at least ``MIN_PART_VALUES`` values (except a
    single part: all of a small batch); one part for a BLAS split without OpenBLAS control.
    """
    if blas and _blas is None:
        return [(0, n)]
    per_part = max(1, -(-MIN_PART_VALUES // max(1, item_values)))
    count = max(1, min(_threads, n // per_part))
    return [(n * i // count, n * (i + 1) // count) for i in range(count)]


def split(fn, n: int, item_values: int = 1, blas: bool = False) -> list:
    """Calls ``fn(part, lo, hi)`` for each part [lo, hi) of range(n), the parts in parallel.

    ``item_values`` is the number of values of one item (say, one image), which sets how
    many parts a batch is worth (see ``parts``); ``blas`` says that ``fn`` calls BLAS
    (OpenBLAS then runs single-threaded, see the module notes). Part 0 runs in the calling
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
            previous = _blas[0]()
            _blas[1](1)
            try:
                _run(fn, ranges)
            finally:
                _blas[1](previous)
        else:
            _run(fn, ranges)
    finally:
        _busy.release()
    return ranges


def _run(fn, ranges: list) -> None:
    """Runs the parts: the first here, the others on the helpers."""
    while len(_helpers) < len(ranges) - 1:
        _helpers.append(_Helper())
    for helper, (lo, hi), i in zip(_helpers, ranges[1:], range(1, len(ranges))):
        helper.jobs.put((fn, (i, lo, hi)))
    error = None
    try:
        fn(0, *ranges[0])
    except BaseException as e:
        error = e
    for helper, _ in zip(_helpers, ranges[1:]):  # wait for every helper, even after an error
        result = helper.done.get()
        if error is None and result is not None:
            error = result
    if error is not None:
        raise error
