# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Batched im2col/col2im and the layout moves around the convolution GEMM.

The convolution runs as ONE matrix product per batch:

    col  (C*kh*kw, N*OH*OW)   im2col of the whole batch
    out  (F, N*OH*OW)        = W (F, C*kh*kw) @ col
    y    (N, F, OH*OW)       scatter_bias(out) adds the bias on the way

and backward uses the transposes of the same pieces (``gather_sum`` builds the
(F, N*OH*OW) gradient and the bias gradient in one pass; ``col2im`` folds the column
gradient back onto the image).

Column ``n*OH*OW + oh*OW + ow`` of ``col`` is output pixel (oh, ow) of image n; row
``(c*kh + i)*kw + j`` is input channel c seen through kernel tap (i, j). All functions
write into arrays passed by the caller and allocate nothing.
"""
from cython cimport floating


cdef inline void _zero(floating* dst, Py_ssize_t m) noexcept nogil:
    """Sets ``dst[:m]`` to zero with a plain loop the compiler inlines and vectorizes.

    Row pieces here are short (8 to 32 values for CIFAR), and a libc memset/memcpy call per
    piece measured slower than the inline loop.
    """
    cdef Py_ssize_t k
    for k in range(m):
        dst[k] = 0


cdef inline void _copy(floating* dst, const floating* src, Py_ssize_t m) noexcept nogil:
    """dst[:m] = src[:m] (see _zero for why this is not memcpy)."""
    cdef Py_ssize_t k
    for k in range(m):
        dst[k] = src[k]


cdef inline Py_ssize_t _out_size(Py_ssize_t size, Py_ssize_t k, Py_ssize_t stride,
                                 Py_ssize_t pad) noexcept nogil:
    """floor((size + 2*pad - k) / stride) + 1, for size + 2*pad >= k (checked by the caller)."""
    return (size + 2 * pad - k) // stride + 1


cdef inline Py_ssize_t _first_valid(Py_ssize_t pad, Py_ssize_t tap, Py_ssize_t stride,
                                    Py_ssize_t n_out) noexcept nogil:
    """The first output index o with o*stride - pad + tap >= 0 (clamped to [0, n_out])."""
    cdef Py_ssize_t need = pad - tap
    if need <= 0:
        return 0
    # ceil division of a positive number; cdivision is safe here.
    need = (need + stride - 1) // stride
    return need if need < n_out else n_out


cdef inline Py_ssize_t _end_valid(Py_ssize_t size, Py_ssize_t pad, Py_ssize_t tap,
                                  Py_ssize_t stride, Py_ssize_t n_out,
                                  Py_ssize_t first) noexcept nogil:
    """One past the last output index o with o*stride - pad + tap < size (at least ``first``)."""
    cdef Py_ssize_t last = size - 1 + pad - tap
    if last < 0:
        return first
    last = last // stride + 1
    if last > n_out:
        last = n_out
    return last if last > first else first


cdef int _check_geometry(str name, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t kh, Py_ssize_t kw,
                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw) except -1:
    """Raises ValueError unless the geometry is valid and the column array is (C*kh*kw, N*OH*OW).

    The kernels divide by the stride and write OH*OW values per row without bounds checks,
    so this guard is what keeps a wrong call from corrupting memory.
    """
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"{name}: kernel ({kh}, {kw}) and stride ({sh}, {sw}) must be >= 1 "
                         f"and pad ({ph}, {pw}) >= 0")
    if H + 2 * ph < kh or W + 2 * pw < kw:
        raise ValueError(f"{name}: kernel ({kh}, {kw}) is larger than the padded input "
                         f"({H + 2 * ph}, {W + 2 * pw})")
    cdef Py_ssize_t OH = _out_size(H, kh, sh, ph), OW = _out_size(W, kw, sw, pw)
    if rows != C * kh * kw or cols != N * OH * OW:
        raise ValueError(f"{name}: column array has shape ({rows}, {cols}), expected "
                         f"({C * kh * kw}, {N * OH * OW}) for input ({N}, {C}, {H}, {W})")
    return 0


def im2col(const floating[:, :, :, ::1] x, floating[:, ::1] col,
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t ph, Py_ssize_t pw) -> None:
    """Unfolds the batch ``x`` (N, C, H, W) into ``col`` (C*kh*kw, N*OH*OW), zero padded.

    Padding positions are written as zeros, so ``col`` needs no initialization.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH, OW, OHW
    cdef Py_ssize_t n, c, i, j, oh, ow, r, ih, oh_lo, oh_hi, ow_lo, ow_hi, off
    cdef floating* dst
    cdef const floating* src
    _check_geometry("im2col", N, C, H, W, col.shape[0], col.shape[1], kh, kw, sh, sw, ph, pw)
    OH = _out_size(H, kh, sh, ph)
    OW = _out_size(W, kw, sw, pw)
    OHW = OH * OW
    with nogil:
        # col is written strictly in memory order (row r, then image n, then oh, ow): col is
        # the big array (82 MB for CIFAR conv2 at batch 100), x is small enough to stay in
        # cache, so this beats walking x in order and scattering writes across col's rows.
        for c in range(C):
            for i in range(kh):
                oh_lo = _first_valid(ph, i, sh, OH)
                oh_hi = _end_valid(H, ph, i, sh, OH, oh_lo)
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    ow_lo = _first_valid(pw, j, sw, OW)
                    ow_hi = _end_valid(W, pw, j, sw, OW, ow_lo)
                    off = j - pw
                    for n in range(N):
                        dst = &col[r, n * OHW]
                        # Rows of the output that look at the top/bottom padding.
                        _zero(dst, oh_lo * OW)
                        _zero(dst + oh_hi * OW, (OH - oh_hi) * OW)
                        for oh in range(oh_lo, oh_hi):
                            ih = oh * sh - ph + i
                            src = &x[n, c, ih, 0]
                            dst = &col[r, n * OHW + oh * OW]
                            _zero(dst, ow_lo)
                            _zero(dst + ow_hi, OW - ow_hi)
                            if sw == 1:
                                _copy(dst + ow_lo, src + ow_lo + off, ow_hi - ow_lo)
                            else:
                                for ow in range(ow_lo, ow_hi):
                                    dst[ow] = src[ow * sw + off]


def col2im(const floating[:, ::1] dcol, floating[:, :, :, ::1] dx,
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t ph, Py_ssize_t pw) -> None:
    """Folds ``dcol`` (C*kh*kw, N*OH*OW) back onto ``dx`` (N, C, H, W), the adjoint of im2col.

    ``dx`` is overwritten (zeroed, then every overlapping tap is added); values that fell on
    the padding are dropped.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH, OW, OHW
    cdef Py_ssize_t n, c, i, j, oh, ow, r, ih, oh_lo, oh_hi, ow_lo, ow_hi, off, cnt
    cdef floating* dst
    cdef const floating* src
    _check_geometry("col2im", N, C, H, W, dcol.shape[0], dcol.shape[1], kh, kw, sh, sw, ph, pw)
    OH = _out_size(H, kh, sh, ph)
    OW = _out_size(W, kw, sw, pw)
    OHW = OH * OW
    with nogil:
        # dcol is read strictly in memory order and dx (small, cached) takes the scattered
        # adds, for the same reason as in im2col.
        _zero(&dx[0, 0, 0, 0], N * C * H * W)
        for c in range(C):
            for i in range(kh):
                oh_lo = _first_valid(ph, i, sh, OH)
                oh_hi = _end_valid(H, ph, i, sh, OH, oh_lo)
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    ow_lo = _first_valid(pw, j, sw, OW)
                    ow_hi = _end_valid(W, pw, j, sw, OW, ow_lo)
                    off = j - pw
                    cnt = ow_hi - ow_lo
                    for n in range(N):
                        for oh in range(oh_lo, oh_hi):
                            ih = oh * sh - ph + i
                            src = &dcol[r, n * OHW + oh * OW + ow_lo]
                            dst = &dx[n, c, ih, 0]
                            if sw == 1:
                                # Both sides contiguous: the compiler vectorizes this.
                                dst = dst + ow_lo + off
                                for ow in range(cnt):
                                    dst[ow] += src[ow]
                            else:
                                dst = dst + ow_lo * sw + off
                                for ow in range(cnt):
                                    dst[ow * sw] += src[ow]


def scatter_bias(const floating[:, ::1] out, const floating[::1] bias,
                 floating[:, :, ::1] y) -> None:
    """``y[n, f, p] = out[f, n*P + p] + bias[f]``: (F, N*P) -> (N, F, P).

    ``bias`` has length F, or length 0 for a convolution without bias.
    """
    cdef Py_ssize_t N = y.shape[0], F = y.shape[1], P = y.shape[2]
    cdef Py_ssize_t n, f, p
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating b = 0
    cdef floating* dst
    cdef const floating* src
    if out.shape[0] != F or out.shape[1] != N * P or (has_bias and bias.shape[0] != F):
        raise ValueError(f"scatter_bias: out ({out.shape[0]}, {out.shape[1]}), bias ({bias.shape[0]},) "
                         f"do not fit y ({N}, {F}, {P})")
    with nogil:
        for f in range(F):
            if has_bias:
                b = bias[f]
            for n in range(N):
                src = &out[f, n * P]
                dst = &y[n, f, 0]
                for p in range(P):
                    dst[p] = src[p] + b


cdef inline double _copy_sum(floating* dst, const floating* src, Py_ssize_t m) noexcept nogil:
    """Copies ``m`` values and returns their sum, accumulated in double.

    Four independent accumulators keep the adds from waiting on each other (a single chain
    is latency bound and the compiler may not reorder floating-point sums).
    """
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0
    cdef Py_ssize_t k = 0
    cdef floating v0, v1, v2, v3
    while k + 4 <= m:
        v0 = src[k]
        v1 = src[k + 1]
        v2 = src[k + 2]
        v3 = src[k + 3]
        dst[k] = v0
        dst[k + 1] = v1
        dst[k + 2] = v2
        dst[k + 3] = v3
        a0 += v0
        a1 += v1
        a2 += v2
        a3 += v3
        k += 4
    while k < m:
        v0 = src[k]
        dst[k] = v0
        a0 += v0
        k += 1
    return (a0 + a1) + (a2 + a3)


def gather_sum(const floating[:, :, ::1] dy, floating[:, ::1] dy_t,
               floating[::1] dbias) -> None:
    """``dy_t[f, n*P + p] = dy[n, f, p]`` and ``dbias[f] = sum over n, p of dy[n, f, p]``.

    ``dbias`` has length F, or length 0 to skip the bias gradient.
    """
    cdef Py_ssize_t N = dy.shape[0], F = dy.shape[1], P = dy.shape[2]
    cdef Py_ssize_t n, f
    cdef bint has_bias = dbias.shape[0] > 0
    cdef double acc  # accumulate in double: N*P terms in float32 lose digits
    if dy_t.shape[0] != F or dy_t.shape[1] != N * P or (has_bias and dbias.shape[0] != F):
        raise ValueError(f"gather_sum: dy_t ({dy_t.shape[0]}, {dy_t.shape[1]}), dbias ({dbias.shape[0]},) "
                         f"do not fit dy ({N}, {F}, {P})")
    with nogil:
        for f in range(F):
            acc = 0
            for n in range(N):
                acc += _copy_sum(&dy_t[f, n * P], &dy[n, f, 0], P)
            if has_bias:
                dbias[f] = <floating>acc
