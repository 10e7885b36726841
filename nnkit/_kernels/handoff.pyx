# cython: language_level=3, boundscheck=False, wraparound=False
"""Spin-waits on a counter without the GIL: the hand-offs of ``nnkit.parallel``.

A thread that waits for another's next step spins on a shared int64 counter for a short
while instead of sleeping at once on a queue: waking a sleeping thread takes tens of
microseconds on a virtual machine, as long as a small kernel. The counters are an int64
array; ``post`` stores with release order and ``wait_until`` loads with acquire order, so
what a thread wrote before it posted (a job on a queue) is there when the waiter sees the
count.
"""
from libc.stdint cimport int64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>
    static inline int64_t nnkit_now_ns(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
    }
    static inline int64_t nnkit_load(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void nnkit_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    /* A pause between reads of the counter: the spinning core yields to its sibling. */
    #if defined(__x86_64__) || defined(__i386__)
    static inline void nnkit_relax(void) { __builtin_ia32_pause(); }
    #else
    static inline void nnkit_relax(void) { }
    #endif
    """
    int64_t nnkit_now_ns() nogil
    int64_t nnkit_load(const int64_t *p) nogil
    void nnkit_store(int64_t *p, int64_t v) nogil
    void nnkit_relax() nogil


cdef int64_t *_counter(int64_t[::1] counters, Py_ssize_t i) except NULL:
    if i < 0 or i >= counters.shape[0]:
        raise IndexError(f"handoff: counter {i} of {counters.shape[0]}")
    return &counters[i]


def wait_until(int64_t[::1] counters, Py_ssize_t i, int64_t value,
               int64_t nanoseconds) -> bool:
    """Spins, without the GIL, until ``counters[i] >= value`` or ``nanoseconds`` have
    passed; returns whether the count came (one read, without spinning, for 0 ns)."""
    cdef int64_t *p = _counter(counters, i)
    cdef int64_t deadline
    cdef bint came = nnkit_load(p) >= value
    if came or nanoseconds <= 0:
        return came
    with nogil:
        deadline = nnkit_now_ns() + nanoseconds
        while not came and nnkit_now_ns() < deadline:
            for _ in range(64):
                nnkit_relax()
            came = nnkit_load(p) >= value
    return came


def post(int64_t[::1] counters, Py_ssize_t i, int64_t value) -> None:
    """Sets ``counters[i] = value`` (a release store: what was written before it is seen
    first by a thread that sees the value)."""
    nnkit_store(_counter(counters, i), value)
