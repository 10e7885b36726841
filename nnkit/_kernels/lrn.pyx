# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Local response normalization kernels, used by :class:`nnkit.layers.LRN2D`.

    y = x * scale^-beta,   scale = k + alpha/n * S,   S = sum of x^2 over the window of x

The layer hands its (N, C, H, W) arrays over as 2-D ``(blocks, rows * cols)`` views:

- across channels: one block per image, ``rows = C``, ``cols = H*W``; the window runs over
  ``rows`` (``before = size // 2`` channels, ``after = (size - 1) // 2``, zero-padded).
- within channel: one block per channel plane, ``rows = H``, ``cols = W``; the window is a
  ``size x size`` box centred on the pixel (``size`` odd), zero-padded.

Window sums are running sums (add the entry that enters, subtract the one that leaves), so
their cost does not depend on ``size``; the box is separable (rows, then columns). They
accumulate in float64 scratch so float32 inputs do not drift over many channels.

Forward keeps ``scale`` for backward (training) or nothing (inference); backward computes
``scale^-beta`` again from it (for beta = 0.75, the common case, two square roots and a
division), so the layer holds one array of the input's size rather than two.

Backward (Caffe's formula), with ``r = dy * y / scale``:

    dx = dy * scale^-beta - (2 * alpha * beta / n) * x * (sum of r over the windows holding x)

The windows holding entry c are those of c - after .. c + before: the same running sums with
``before`` and ``after`` swapped (they differ only across channels with an even size).
"""
from cython cimport floating
from libc.math cimport exp, expf, log, logf, sqrt, sqrtf


cdef inline void _window_sum(const double* src, double* dst, Py_ssize_t length, Py_ssize_t width,
                             Py_ssize_t step, Py_ssize_t stride, Py_ssize_t before,
                             Py_ssize_t after) noexcept nogil:
    """dst[i] = sum of src[i - before .. i + after] (clipped to 0 .. length-1).

    Each of ``length`` positions (``step`` apart) holds ``width`` independent values
    (``stride`` apart); the previous output row serves as the running accumulator.
    """
    cdef Py_ssize_t i, m, j
    cdef Py_ssize_t last = after if after < length - 1 else length - 1
    cdef double* cur
    cdef const double* prev
    cdef const double* add
    cdef const double* sub
    cdef bint enters, leaves
    for m in range(width):
        dst[m * stride] = 0.0
    for j in range(last + 1):
        add = src + j * step
        for m in range(width):
            dst[m * stride] += add[m * stride]
    for i in range(1, length):
        cur = dst + i * step
        prev = cur - step
        enters = i + after < length
        leaves = i - before - 1 >= 0
        add = src + (i + after) * step if enters else src
        sub = src + (i - before - 1) * step if leaves else src
        # Four loops rather than branches inside one, so each stays vectorizable.
        if enters and leaves:
            for m in range(width):
                cur[m * stride] = prev[m * stride] + add[m * stride] - sub[m * stride]
        elif enters:
            for m in range(width):
                cur[m * stride] = prev[m * stride] + add[m * stride]
        elif leaves:
            for m in range(width):
                cur[m * stride] = prev[m * stride] - sub[m * stride]
        else:
            for m in range(width):
                cur[m * stride] = prev[m * stride]


cdef inline double* _block_sums(double* vals, double* tmp, bint across, Py_ssize_t rows,
                                Py_ssize_t cols, Py_ssize_t before,
                                Py_ssize_t after) noexcept nogil:
    """Window sums of one block of ``vals``; returns whichever scratch holds the result."""
    if across:
        # Slide over channels; each channel plane is a contiguous vector of cols pixels.
        _window_sum(vals, tmp, rows, cols, cols, 1, before, after)
        return tmp
    # Separable box: along each image row first, then down the columns (contiguous rows).
    _window_sum(vals, tmp, cols, rows, 1, cols, before, after)
    _window_sum(tmp, vals, rows, cols, cols, 1, before, after)
    return vals


cdef inline void _squares(const floating* x, double* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef double v
    for i in range(n):
        v = x[i]
        out[i] = v * v


cdef inline floating _pow_075(floating s) noexcept nogil:
    """s^-3/4 = 1 / (sqrt(s) * sqrt(sqrt(s))): beta 0.75 (Caffe, AlexNet), far cheaper than
    exp/log and within a few ulp."""
    cdef floating q
    if floating is float:
        q = sqrtf(s)
        return 1 / (q * sqrtf(q))
    else:
        q = sqrt(s)
        return 1 / (q * sqrt(q))


cdef inline floating _pow(floating s, floating nbeta) noexcept nogil:
    """s^nbeta, for any other beta."""
    if floating is float:
        return expf(nbeta * logf(s))
    else:
        return exp(nbeta * log(s))


cdef inline double _scale_of(double total, double k, double alpha_n) noexcept nogil:
    # Running sums can leave a rounding residue below zero when the window empties.
    return k + alpha_n * (total if total > 0.0 else 0.0)


cdef inline void _forward_finish(const floating* x, const double* sums, floating* scale,
                                 floating* y, Py_ssize_t n, double k, double alpha_n,
                                 double beta) noexcept nogil:
    """scale = k + alpha/n * S (stored unless ``scale`` is NULL), y = x * scale^-beta for n
    contiguous entries. Forward and backward compute scale^-beta alike (_pow_075, _pow),
    so backward's is forward's, bit for bit. One loop per case, so each vectorizes."""
    cdef Py_ssize_t i
    cdef floating s
    cdef floating nbeta = <floating>(-beta)
    if beta == 0.75 and scale != NULL:
        for i in range(n):
            s = <floating>_scale_of(sums[i], k, alpha_n)
            scale[i] = s
            y[i] = x[i] * _pow_075(s)
    elif beta == 0.75:
        for i in range(n):
            y[i] = x[i] * _pow_075(<floating>_scale_of(sums[i], k, alpha_n))
    elif scale != NULL:
        for i in range(n):
            s = <floating>_scale_of(sums[i], k, alpha_n)
            scale[i] = s
            y[i] = x[i] * _pow(s, nbeta)
    else:
        for i in range(n):
            y[i] = x[i] * _pow(<floating>_scale_of(sums[i], k, alpha_n), nbeta)


cdef inline void _ratios(const floating* dy, const floating* y, const floating* scale,
                         double* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = <double>(dy[i] * y[i] / scale[i])


cdef inline void _backward_finish(const floating* x, const floating* dy, const floating* scale,
                                  const double* sums, floating* dx, Py_ssize_t n,
                                  double coef, double beta) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating c = <floating>coef
    cdef floating nbeta = <floating>(-beta)
    if beta == 0.75:
        for i in range(n):
            dx[i] = dy[i] * _pow_075(scale[i]) - c * x[i] * <floating>sums[i]
    else:
        for i in range(n):
            dx[i] = dy[i] * _pow(scale[i], nbeta) - c * x[i] * <floating>sums[i]


cdef _check(str name, Py_ssize_t blocks, Py_ssize_t length, Py_ssize_t b2, Py_ssize_t l2):
    if b2 != blocks or l2 != length:
        raise ValueError(f"lrn kernel: {name} has shape ({b2}, {l2}), expected "
                         f"({blocks}, {length})")


cdef _check_args(Py_ssize_t blocks, Py_ssize_t length, Py_ssize_t rows, Py_ssize_t cols,
                 Py_ssize_t nvals, Py_ssize_t ntmp, Py_ssize_t size, bint across):
    if rows * cols != length:
        raise ValueError(f"lrn kernel: blocks of {length} entries are not {rows} x {cols}")
    if nvals < length or ntmp < length:
        raise ValueError(f"lrn kernel: scratch of {nvals} and {ntmp} entries, need {length}")
    if size < 1 or (not across and size % 2 == 0):
        raise ValueError(f"lrn kernel: invalid window size {size}")


def lrn_forward(floating[:, ::1] x, floating[:, ::1] scale, floating[:, ::1] y,
                double[::1] vals, double[::1] tmp, bint across, Py_ssize_t rows,
                Py_ssize_t cols, Py_ssize_t size, double alpha, double beta, double k) -> None:
    """Fills ``y`` and ``scale`` from ``x`` (all ``(blocks, rows*cols)``); a ``scale`` of no
    blocks keeps nothing (inference).

    ``vals`` and ``tmp`` are float64 scratch of at least ``rows * cols`` entries.
    """
    cdef Py_ssize_t blocks = x.shape[0], length = x.shape[1], b
    cdef Py_ssize_t before = size // 2 if across else (size - 1) // 2
    cdef Py_ssize_t after = (size - 1) // 2
    cdef double alpha_n = alpha / (size if across else size * size)
    cdef double* sums
    _check_args(blocks, length, rows, cols, vals.shape[0], tmp.shape[0], size, across)
    cdef bint keep = scale.shape[0] > 0
    if keep:
        _check("scale", blocks, length, scale.shape[0], scale.shape[1])
    _check("y", blocks, length, y.shape[0], y.shape[1])
    if blocks == 0 or length == 0:
        return
    with nogil:
        for b in range(blocks):
            _squares(&x[b, 0], &vals[0], length)
            sums = _block_sums(&vals[0], &tmp[0], across, rows, cols, before, after)
            _forward_finish(&x[b, 0], sums, &scale[b, 0] if keep else NULL, &y[b, 0], length,
                            k, alpha_n, beta)


def lrn_backward(floating[:, ::1] x, floating[:, ::1] y, floating[:, ::1] scale,
                 floating[:, ::1] dy, floating[:, ::1] dx, double[::1] vals, double[::1] tmp,
                 bint across, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t size, double alpha,
                 double beta) -> None:
    """Fills ``dx`` from ``dy`` and the forward pass's ``x``, ``y`` and ``scale``."""
    cdef Py_ssize_t blocks = x.shape[0], length = x.shape[1], b
    cdef Py_ssize_t before = size // 2 if across else (size - 1) // 2
    cdef Py_ssize_t after = (size - 1) // 2
    cdef double coef = 2.0 * alpha * beta / (size if across else size * size)
    cdef double* sums
    _check_args(blocks, length, rows, cols, vals.shape[0], tmp.shape[0], size, across)
    _check("y", blocks, length, y.shape[0], y.shape[1])
    _check("scale", blocks, length, scale.shape[0], scale.shape[1])
    _check("dy", blocks, length, dy.shape[0], dy.shape[1])
    _check("dx", blocks, length, dx.shape[0], dx.shape[1])
    if blocks == 0 or length == 0:
        return
    with nogil:
        for b in range(blocks):
            _ratios(&dy[b, 0], &y[b, 0], &scale[b, 0], &vals[0], length)
            # The windows holding entry i are those of i - after .. i + before.
            sums = _block_sums(&vals[0], &tmp[0], across, rows, cols, after, before)
            _backward_finish(&x[b, 0], &dy[b, 0], &scale[b, 0], sums, &dx[b, 0], length, coef,
                             beta)
