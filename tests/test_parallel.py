"""The kernels' fork-join helper, and layers giving the same results however a batch is split."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from gradcheck import Source
from nnkit import parallel
from nnkit.layers import LRN2D, Activation, AvgPooling2D, Convolution2D, Dense, MaxPooling2D
from nnkit.layers import convolution


@pytest.fixture
def threads(monkeypatch):
    """Sets the thread count and makes every item worth its own part."""
    def set_threads(count: int) -> None:
        monkeypatch.setattr(parallel, "_threads", count)
    monkeypatch.setattr(parallel, "MIN_PART_VALUES", 1)
    return set_threads


def test_parts_cover_the_range_in_order(threads):
    threads(3)
    assert parallel.parts(10) == [(0, 3), (3, 6), (6, 10)]
    assert parallel.parts(2) == [(0, 1), (1, 2)]  # never an empty part
    assert parallel.parts(0) == [(0, 0)]
    threads(1)
    assert parallel.parts(10) == [(0, 10)]


def test_parts_hold_at_least_min_part_values(monkeypatch):
    monkeypatch.setattr(parallel, "_threads", 4)
    monkeypatch.setattr(parallel, "MIN_PART_VALUES", 100)
    assert parallel.parts(10, 10) == [(0, 10)]              # 100 values: one part
    assert parallel.parts(10, 25) == [(0, 5), (5, 10)]      # 250 values: two parts of 125
    assert len(parallel.parts(1000, 50)) == 4               # capped by the threads


def test_split_runs_every_part_once_and_the_first_here(threads):
    threads(3)
    seen = {}
    lock = threading.Lock()

    def fn(part: int, lo: int, hi: int) -> None:
        with lock:
            seen[part] = (lo, hi, threading.get_ident())

    parallel.split(fn, 7)
    assert [seen[p][:2] for p in sorted(seen)] == [(0, 2), (2, 4), (4, 7)]
    assert seen[0][2] == threading.get_ident()
    assert len({seen[p][2] for p in seen}) == 3  # three threads


def test_split_reraises_after_every_part_finished(threads):
    threads(2)
    finished = []

    def fn(part: int, lo: int, hi: int) -> None:
        if part == 1:
            raise KeyError("helper failed")
        threading.Event().wait(0.05)
        finished.append(part)

    with pytest.raises(KeyError, match="helper failed"):
        parallel.split(fn, 4)
    assert finished == [0]
    parallel.split(lambda part, lo, hi: finished.append(part), 4)  # still usable
    assert sorted(finished) == [0, 0, 1]


@pytest.mark.parametrize("spin", [0.0, 200e-6, 0.05])
def test_hand_offs_with_and_without_spinning(threads, monkeypatch, spin):
    """Helpers take their jobs whether they spin for them (the next split comes within the
    spin), sleep at once (no spin), or sleep after spinning (a pause longer than the spin),
    and every part's result and exception reaches the caller."""
    threads(3)
    monkeypatch.setattr(parallel, "SPIN_SECONDS", spin)
    out = np.zeros(30)

    def fn(part: int, lo: int, hi: int) -> None:
        out[lo:hi] += part + 1

    for round_ in range(20):
        parallel.split(fn, 30)
        if round_ % 5 == 4:
            threading.Event().wait(0.002)  # past a 200 us spin (the helpers sleep), within 50 ms
    assert out.tolist() == [20.0] * 10 + [40.0] * 10 + [60.0] * 10

    def failing(part: int, lo: int, hi: int) -> None:
        if part == 2:
            raise KeyError(f"part {part}")

    for _ in range(3):
        with pytest.raises(KeyError, match="part 2"):
            parallel.split(failing, 30)


def test_wait_until_sees_a_post_from_another_thread():
    from nnkit._kernels import handoff

    counters = np.zeros(2, np.int64)
    assert not handoff.wait_until(counters, 0, 1, 0)           # one look, not there
    assert not handoff.wait_until(counters, 0, 1, 2_000_000)   # 2 ms, nobody posts
    poster = threading.Timer(0.01, handoff.post, (counters, 0, 3))
    poster.start()
    assert handoff.wait_until(counters, 0, 2, 5_000_000_000)   # 3 >= 2, long before 5 s
    poster.join()
    assert counters.tolist() == [3, 0]
    with pytest.raises(IndexError, match="counter 2 of 2"):
        handoff.post(counters, 2, 1)
    with pytest.raises(IndexError, match="counter -1 of 2"):
        handoff.wait_until(counters, -1, 1, 0)


def test_a_split_inside_a_split_runs_alone(threads):
    threads(2)
    inner = []

    def fn(part: int, lo: int, hi: int) -> None:
        if part == 0:  # the helpers are busy: the inner split must not wait for them
            parallel.split(lambda p, a, b: inner.append((p, a, b)), 6)

    parallel.split(fn, 2)
    assert inner == [(0, 0, 6)]


# ----------------------------------------------------------------- layers: split == unsplit
def _run_layer(layer_factory, x: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Forward and backward of a fresh layer; returns the output, dx and the param grads."""
    layer = layer_factory()
    src = Source(x)
    layer.ComputeFeature(src)
    rng = np.random.default_rng(seed)
    if layer.params:
        layer.SetParams(*(rng.standard_normal(p.data.shape) for p in layer.params))
        layer.ComputeFeature(src)
    layer.grad = rng.standard_normal(layer.data.shape).astype(x.dtype)
    layer.ComputeGradient()
    return [layer.data.copy(), src.grad.copy(), *(p.grad.copy() for p in layer.params)]


LAYERS = {
    "conv transposed route": lambda: Convolution2D(3, 3, 1, 1),
    "conv col2im route": lambda: Convolution2D(6, 3, 1, 1),
    "conv strided": lambda: Convolution2D(2, 3, 2, 1),
    "max pooling": lambda: MaxPooling2D((3, 3), 2),
    "avg pooling": lambda: AvgPooling2D((3, 3), 2),
    "lrn across": lambda: LRN2D(3, alpha=0.1, beta=0.75),
    "lrn within": lambda: LRN2D(3, alpha=0.1, beta=0.75, norm_region="within_channel"),
    "dense": lambda: Dense(5),
    "relu": lambda: Activation("relu"),
    "stanh": lambda: Activation("stanh"),
}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_give_the_same_results_however_split(threads, monkeypatch, name, dtype):
    # Small chunks too, so that each part of the batch runs several convolution chunks.
    monkeypatch.setattr(convolution, "CHUNK_COLUMNS", 60)
    monkeypatch.setattr(convolution, "CHUNK_VALUES", 0)
    x = np.random.default_rng(1).standard_normal((7, 4, 9, 8)).astype(dtype)
    threads(1)
    alone = _run_layer(LAYERS[name], x)
    threads(3)
    split = _run_layer(LAYERS[name], x)
    # The parts sum the convolution's dW and db separately, and the dense layer's column
    # slices may take other BLAS kernel paths: only the rounding of those differs.
    # Everything else is computed exactly as without a split.
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    exact = 0 if name == "dense" else 2
    for a, b in zip(alone[:exact], split[:exact]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(alone[exact:], split[exact:]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


def test_conv_gradients_when_a_split_finds_the_helpers_busy(threads, monkeypatch):
    # A split that runs alone must not add the other parts' sums left by an earlier split.
    monkeypatch.setattr(convolution, "CHUNK_COLUMNS", 60)
    monkeypatch.setattr(convolution, "CHUNK_VALUES", 0)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 4, 9, 8))
    threads(3)
    layer = Convolution2D(3, 3, 1, 1)
    layer.ComputeFeature(Source(x))
    layer.grad = rng.standard_normal(layer.data.shape)
    layer.ComputeGradient()  # three parts, each with nonzero sums
    assert all(np.abs(p.grad).max() > 0 for p in layer.params)
    layer.grad = np.zeros_like(layer.grad)
    with parallel._busy:  # as if another thread were in a split: this one runs alone
        layer.ComputeGradient()
    for p in layer.params:
        np.testing.assert_array_equal(p.grad, 0)


def _blas_threads() -> list[int]:
    """Every loaded BLAS's thread count, asked afresh of the libraries."""
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.skipif(parallel._blas is None, reason="no BLAS to control in this process")
def test_a_blas_split_runs_the_blas_single_threaded_and_restores_it(threads):
    with parallel._blas.limit(limits=2):  # two threads even under OPENBLAS_NUM_THREADS=1
        before = _blas_threads()
        assert before and max(before) > 1
        seen = []
        threads(2)
        parallel.split(lambda part, lo, hi: seen.append(_blas_threads()), 4, blas=True)
        assert seen == [[1] * len(before)] * 2 and _blas_threads() == before
        threads(1)  # one part: BLAS keeps its own threads
        parallel.split(lambda part, lo, hi: seen.append(_blas_threads()), 4, blas=True)
        assert seen[2:] == [before]


@pytest.mark.skipif(parallel._blas is None, reason="no BLAS to control in this process")
def test_blas_splits_hold_the_blas_from_any_thread(threads):
    """A background run's splits come from its own thread, after the main thread's."""
    threads(2)
    before = _blas_threads()
    seen = []
    parallel.split(lambda part, lo, hi: None, 4, blas=True)  # the main thread first
    worker = threading.Thread(target=parallel.split, args=(lambda part, lo, hi: seen.append(_blas_threads()), 4),
                              kwargs={"blas": True})
    worker.start(), worker.join()
    assert seen == [[1] * len(before)] * 2 and _blas_threads() == before


def test_without_blas_control_blas_splits_run_alone(threads, monkeypatch):
    threads(2)
    monkeypatch.setattr(parallel, "_blas", None)
    assert parallel.parts(4, blas=True) == [(0, 4)]
    assert parallel.parts(4) == [(0, 2), (2, 4)]
