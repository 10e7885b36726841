# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Softmax cross-entropy loss and top-k hits on ``(N, K)`` scores with int64 labels.

Labels must already be checked to lie in ``[0, K)``: the kernels index with them unchecked.
Outputs are passed in by the caller; loops run with the GIL released.

Top-k convention (``tf.math.in_top_k``, Keras ``top_k_categorical_accuracy``): a row is a
hit when fewer than ``k`` scores are strictly greater than the label's score, so ties at the
boundary count in the label's favour. A NaN label score is never a hit.
"""
from cython cimport floating

from ._math cimport fexp as _exp
from libc.math cimport log
from libc.stdint cimport int64_t


cdef inline bint _in_topk(const floating[:, ::1] x, Py_ssize_t n, int64_t label,
                          Py_ssize_t k) noexcept nogil:
    """Whether fewer than k scores of row n are strictly greater than the label's score."""
    cdef floating v = x[n, label]
    cdef Py_ssize_t j, greater = 0
    if v != v:
        return False
    for j in range(x.shape[1]):
        if x[n, j] > v:
            greater += 1
            if greater >= k:
                return False
    return True


def softmax_loss_forward(const floating[:, ::1] x, const int64_t[::1] labels,
                         floating[:, ::1] probs) -> tuple:
    """Fills ``probs`` with softmax(x) per row; returns (sum of -log p[label], top-1 hits).

    The log-probability is taken as ``(x[label] - max) - log(sum exp(x - max))`` instead of
    ``log(probs[label])``, which would be -inf as soon as the probability underflows.
    """
    cdef Py_ssize_t n, k
    cdef Py_ssize_t K = x.shape[1]
    cdef floating m, total, e
    cdef double loss = 0
    cdef Py_ssize_t hits = 0
    with nogil:
        for n in range(x.shape[0]):
            m = x[n, 0]
            for k in range(1, K):
                if x[n, k] > m:
                    m = x[n, k]
            total = 0
            for k in range(K):
                e = _exp(x[n, k] - m)
                probs[n, k] = e
                total += e
            loss += log(<double>total) - (<double>x[n, labels[n]] - m)
            total = 1 / total
            for k in range(K):
                probs[n, k] *= total
            if _in_topk(x, n, labels[n], 1):
                hits += 1
    return loss, hits


def softmax_loss_backward(const floating[:, ::1] probs, const int64_t[::1] labels,
                          double scale, floating[:, ::1] dx) -> None:
    """dx = (probs - onehot(labels)) * scale in one pass (scale is 1/N for a batch mean)."""
    cdef Py_ssize_t n, k
    cdef floating s = <floating>scale
    with nogil:
        for n in range(probs.shape[0]):
            for k in range(probs.shape[1]):
                dx[n, k] = probs[n, k] * s
            dx[n, labels[n]] -= s


def topk_hits(const floating[:, ::1] x, const int64_t[::1] labels, Py_ssize_t k) -> int:
    """The number of rows whose label is among the k highest scores (ties favour the label)."""
    cdef Py_ssize_t n, hits = 0
    with nogil:
        for n in range(x.shape[0]):
            if _in_topk(x, n, labels[n], k):
                hits += 1
    return hits
