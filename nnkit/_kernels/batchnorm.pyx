# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Batch normalization kernels, used by :class:`nnkit.layers.BatchNormalization`.

    y = gamma * (x - mean) * inv_std + beta,   inv_std = 1 / sqrt(var + eps)

The layer hands its arrays over as 3-D ``(N, C, S)`` views: ``S = H*W`` for images, 1 for
rows of features. Statistics are per channel, over the ``M = N*S`` values of ``x[:, c, :]``.
A parallel part takes a range of channels ``[lo, hi)`` (each channel's statistics are
independent): the kernels get the whole arrays and touch only those channels, so parts
never share an output.

Statistics and gradient sums accumulate in float64, so float32 batches do not lose digits
over many values, and the variance takes two passes (the mean first, then the squared
deviations): one-pass ``E[x^2] - E[x]^2`` cancels catastrophically when ``|mean| >> std``.
gcc does not reorder float additions without -ffast-math, so the sums keep four
independent chains to avoid waiting on one add at a time. Rows (``S == 1``) take loops
over the channels of a row instead: there a channel holds one value per row, and a loop
over one value would cost more than the value.

Backward, with ``xhat = (x - mean) * inv_std`` and the sums over a channel's M values:

    dbeta = sum(dy),   dgamma = sum(dy * xhat)
    dx = gamma * inv_std / M * (M * dy - dbeta - xhat * dgamma)     (batch statistics)
    dx = gamma * inv_std * dy                                       (moving statistics)

The second form is for evaluation mode, where mean and var are constants.
"""
from cython cimport floating
from libc.math cimport sqrt


cdef inline double _sum(const floating* p, Py_ssize_t n) noexcept nogil:
    """The float64 sum of ``n`` contiguous values."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
    cdef Py_ssize_t i, n4 = n - n % 4
    for i in range(0, n4, 4):
        a0 += p[i]
        a1 += p[i + 1]
        a2 += p[i + 2]
        a3 += p[i + 3]
    for i in range(n4, n):
        a0 += p[i]
    return (a0 + a1) + (a2 + a3)


cdef inline double _sum_sq_dev(const floating* p, double m, Py_ssize_t n) noexcept nogil:
    """The float64 sum of ``(p[i] - m)^2`` over ``n`` contiguous values."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, d0, d1, d2, d3
    cdef Py_ssize_t i, n4 = n - n % 4
    for i in range(0, n4, 4):
        d0 = p[i] - m
        d1 = p[i + 1] - m
        d2 = p[i + 2] - m
        d3 = p[i + 3] - m
        a0 += d0 * d0
        a1 += d1 * d1
        a2 += d2 * d2
        a3 += d3 * d3
    for i in range(n4, n):
        d0 = p[i] - m
        a0 += d0 * d0
    return (a0 + a1) + (a2 + a3)


cdef inline double _sum_prod_dev(const floating* dy, const floating* x, double m,
                                 Py_ssize_t n) noexcept nogil:
    """The float64 sum of ``dy[i] * (x[i] - m)`` over ``n`` contiguous values."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
    cdef Py_ssize_t i, n4 = n - n % 4
    for i in range(0, n4, 4):
        a0 += <double>dy[i] * (x[i] - m)
        a1 += <double>dy[i + 1] * (x[i + 1] - m)
        a2 += <double>dy[i + 2] * (x[i + 2] - m)
        a3 += <double>dy[i + 3] * (x[i + 3] - m)
    for i in range(n4, n):
        a0 += <double>dy[i] * (x[i] - m)
    return (a0 + a1) + (a2 + a3)


cdef inline void _affine(const floating* x, floating* y, floating m, floating a, floating b,
                         Py_ssize_t n) noexcept nogil:
    """y = (x - m) * a + b: subtracting the mean first keeps float32 digits when |m| >> std."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = (x[i] - m) * a + b


cdef inline void _input_grad(const floating* x, const floating* dy, floating* dx, floating m,
                             floating k_dy, floating k_x, floating k_0,
                             Py_ssize_t n) noexcept nogil:
    """dx = k_dy * dy + k_x * (x - m) + k_0: the BN input gradient, constants per channel."""
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = k_dy * dy[i] + k_x * (x[i] - m) + k_0


cdef inline void _row_add(const floating* x, double* acc, Py_ssize_t lo,
                          Py_ssize_t hi) noexcept nogil:
    """acc[c] += x[c] over one row's channels."""
    cdef Py_ssize_t c
    for c in range(lo, hi):
        acc[c] += x[c]


cdef inline void _row_add_sq_dev(const floating* x, const double* mean, double* acc,
                                 Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """acc[c] += (x[c] - mean[c])^2 over one row's channels."""
    cdef Py_ssize_t c
    cdef double d
    for c in range(lo, hi):
        d = x[c] - mean[c]
        acc[c] += d * d


cdef inline void _row_affine(const floating* x, floating* y, const double* mean,
                             const double* inv_std, const floating* gamma,
                             const floating* beta, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """y[c] = (x[c] - mean[c]) * gamma[c] * inv_std[c] + beta[c] over one row's channels."""
    cdef Py_ssize_t c
    for c in range(lo, hi):
        y[c] = <floating>((x[c] - mean[c]) * (gamma[c] * inv_std[c]) + beta[c])


cdef inline void _row_add_grads(const floating* dy, const floating* x, const double* mean,
                                double* sum_dy, double* sum_dy_dev, Py_ssize_t lo,
                                Py_ssize_t hi) noexcept nogil:
    """sum_dy[c] += dy[c], sum_dy_dev[c] += dy[c] * (x[c] - mean[c]) over one row's channels."""
    cdef Py_ssize_t c
    for c in range(lo, hi):
        sum_dy[c] += dy[c]
        sum_dy_dev[c] += <double>dy[c] * (x[c] - mean[c])


cdef inline void _row_input_grad(const floating* x, const floating* dy, floating* dx,
                                 const floating* gamma, const double* mean,
                                 const double* inv_std, const double* sum_dy,
                                 const double* sum_dy_xhat, double inv_count, bint batch_stats,
                                 Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """The input gradient of one row (see :func:`_input_grad` for the per-channel form)."""
    cdef Py_ssize_t c
    cdef double g
    if batch_stats:
        for c in range(lo, hi):
            g = gamma[c] * inv_std[c]
            dx[c] = <floating>(g * (dy[c] - sum_dy[c] * inv_count
                                    - (x[c] - mean[c]) * inv_std[c] * sum_dy_xhat[c] * inv_count))
    else:
        for c in range(lo, hi):
            dx[c] = <floating>(gamma[c] * inv_std[c] * dy[c])


cdef _check3(str name, Py_ssize_t n, Py_ssize_t c, Py_ssize_t s, Py_ssize_t n2, Py_ssize_t c2,
             Py_ssize_t s2):
    if n2 != n or c2 != c or s2 != s:
        raise ValueError(f"batchnorm kernel: {name} has shape ({n2}, {c2}, {s2}), expected "
                         f"({n}, {c}, {s})")


cdef _check1(str name, Py_ssize_t c, Py_ssize_t c2):
    if c2 != c:
        raise ValueError(f"batchnorm kernel: {name} has {c2} channels, expected {c}")


cdef _check_range(Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t c):
    if not 0 <= lo <= hi <= c:
        raise ValueError(f"batchnorm kernel: channel range [{lo}, {hi}) is not within [0, {c})")


def batchnorm_forward(const floating[:, :, ::1] x, const floating[::1] gamma,
                      const floating[::1] beta, double[::1] mean, double[::1] var,
                      double[::1] inv_std, double eps, bint batch_stats,
                      floating[:, :, ::1] y, Py_ssize_t lo, Py_ssize_t hi) -> None:
    """Fills ``y`` (N, C, S) with the normalized ``x`` and ``inv_std`` with 1/sqrt(var + eps).

    With ``batch_stats`` the kernel first writes the batch's mean and biased variance into
    ``mean`` and ``var``; otherwise it reads them (the moving statistics). ``gamma``, ``beta``
    and the float64 ``mean``, ``var``, ``inv_std`` hold one value per channel. Only
    channels ``lo`` to ``hi - 1`` are read and written.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], n, c
    cdef double count = <double>N * S
    _check3("y", N, C, S, y.shape[0], y.shape[1], y.shape[2])
    for name, length in (("gamma", gamma.shape[0]), ("beta", beta.shape[0]),
                         ("mean", mean.shape[0]), ("var", var.shape[0]),
                         ("inv_std", inv_std.shape[0])):
        _check1(name, C, length)
    if not eps > 0:
        raise ValueError(f"batchnorm kernel: eps must be positive, got {eps}")
    if batch_stats and N * S == 0:
        raise ValueError("batchnorm kernel: batch statistics of an empty batch")
    _check_range(lo, hi, C)
    if lo == hi:
        return
    with nogil:
        # Every pass runs image by image, channel by channel: in memory order.
        if batch_stats:
            for c in range(lo, hi):
                mean[c] = 0.0
                var[c] = 0.0
            for n in range(N):
                if S == 1:
                    _row_add(&x[n, 0, 0], &mean[0], lo, hi)
                else:
                    for c in range(lo, hi):
                        mean[c] += _sum(&x[n, c, 0], S)
            for c in range(lo, hi):
                mean[c] /= count
            for n in range(N):
                if S == 1:
                    _row_add_sq_dev(&x[n, 0, 0], &mean[0], &var[0], lo, hi)
                else:
                    for c in range(lo, hi):
                        var[c] += _sum_sq_dev(&x[n, c, 0], mean[c], S)
            for c in range(lo, hi):
                var[c] /= count
        for c in range(lo, hi):
            inv_std[c] = 1.0 / sqrt(var[c] + eps)
        if S > 0:
            for n in range(N):
                if S == 1:
                    _row_affine(&x[n, 0, 0], &y[n, 0, 0], &mean[0], &inv_std[0], &gamma[0],
                                &beta[0], lo, hi)
                else:
                    for c in range(lo, hi):
                        _affine(&x[n, c, 0], &y[n, c, 0], <floating>mean[c],
                                <floating>(gamma[c] * inv_std[c]), beta[c], S)


def batchnorm_param_grads(const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
                          const double[::1] mean, const double[::1] inv_std,
                          double[::1] sum_dy, double[::1] sum_dy_xhat,
                          floating[::1] dgamma, floating[::1] dbeta, Py_ssize_t lo,
                          Py_ssize_t hi) -> None:
    """Fills ``dbeta = sum(dy)`` and ``dgamma = sum(dy * xhat)`` per channel.

    The float64 sums are also left in ``sum_dy`` and ``sum_dy_xhat`` for
    :func:`batchnorm_input_grad`; ``mean`` and ``inv_std`` are those of the forward pass.
    Only channels ``lo`` to ``hi - 1`` are read and written.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], n, c
    _check3("dy", N, C, S, dy.shape[0], dy.shape[1], dy.shape[2])
    for name, length in (("mean", mean.shape[0]), ("inv_std", inv_std.shape[0]),
                         ("sum_dy", sum_dy.shape[0]), ("sum_dy_xhat", sum_dy_xhat.shape[0]),
                         ("dgamma", dgamma.shape[0]), ("dbeta", dbeta.shape[0])):
        _check1(name, C, length)
    _check_range(lo, hi, C)
    if lo == hi:
        return
    with nogil:
        for c in range(lo, hi):
            sum_dy[c] = 0.0
            sum_dy_xhat[c] = 0.0
        if S > 0:
            for n in range(N):
                if S == 1:
                    _row_add_grads(&dy[n, 0, 0], &x[n, 0, 0], &mean[0], &sum_dy[0],
                                   &sum_dy_xhat[0], lo, hi)
                else:
                    for c in range(lo, hi):
                        sum_dy[c] += _sum(&dy[n, c, 0], S)
                        sum_dy_xhat[c] += _sum_prod_dev(&dy[n, c, 0], &x[n, c, 0], mean[c], S)
        for c in range(lo, hi):
            sum_dy_xhat[c] *= inv_std[c]  # sum(dy * (x - mean)) * inv_std = sum(dy * xhat)
            dbeta[c] = <floating>sum_dy[c]
            dgamma[c] = <floating>sum_dy_xhat[c]


def batchnorm_input_grad(const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
                         const floating[::1] gamma, const double[::1] mean,
                         const double[::1] inv_std, const double[::1] sum_dy,
                         const double[::1] sum_dy_xhat, bint batch_stats,
                         floating[:, :, ::1] dx, Py_ssize_t lo, Py_ssize_t hi) -> None:
    """Fills ``dx`` from ``dy`` and the sums of :func:`batchnorm_param_grads`.

    ``batch_stats`` says whether the forward pass normalized with the batch's statistics
    (their dependence on ``x`` adds two terms) or with the moving ones. Only channels ``lo``
    to ``hi - 1`` are read and written.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], n, c
    cdef double inv_count, g
    cdef floating k_dy, k_x, k_0
    _check3("dy", N, C, S, dy.shape[0], dy.shape[1], dy.shape[2])
    _check3("dx", N, C, S, dx.shape[0], dx.shape[1], dx.shape[2])
    for name, length in (("gamma", gamma.shape[0]), ("mean", mean.shape[0]),
                         ("inv_std", inv_std.shape[0]), ("sum_dy", sum_dy.shape[0]),
                         ("sum_dy_xhat", sum_dy_xhat.shape[0])):
        _check1(name, C, length)
    _check_range(lo, hi, C)
    if lo == hi or N * S == 0:
        return
    inv_count = 1.0 / (<double>N * S)
    with nogil:
        # Memory order (image, then channel); the per-channel constants are a few flops,
        # cheaper to redo than a scratch array to keep them in.
        for n in range(N):
            if S == 1:
                _row_input_grad(&x[n, 0, 0], &dy[n, 0, 0], &dx[n, 0, 0], &gamma[0], &mean[0],
                                &inv_std[0], &sum_dy[0], &sum_dy_xhat[0], inv_count,
                                batch_stats, lo, hi)
                continue
            for c in range(lo, hi):
                g = gamma[c] * inv_std[c]
                k_dy = <floating>g
                if batch_stats:
                    # g * (dy - sum_dy / M - xhat * sum_dy_xhat / M), xhat = (x - mean) * inv_std
                    k_x = <floating>(-g * inv_std[c] * sum_dy_xhat[c] * inv_count)
                    k_0 = <floating>(-g * sum_dy[c] * inv_count)
                else:
                    k_x = 0
                    k_0 = 0
                _input_grad(&x[n, c, 0], &dy[n, c, 0], &dx[n, c, 0], <floating>mean[c], k_dy,
                            k_x, k_0, S)
