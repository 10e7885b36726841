# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""im2col/col2im and the layout moves around the GEMMs (the convolution's, the dense layer's).

The convolution layer runs a few images (N of them) at a time, one matrix product each:

    col  (C*kh*kw, N*OH*OW)   im2col of the images
    out  (F, N*OH*OW)        = W (F, C*kh*kw) @ col
    y    (N, F, OH*OW)       scatter_bias(out) adds the bias on the way

and backward uses the transposes of the same pieces (``gather_sum`` builds the
(F, N*OH*OW) gradient and accumulates the bias gradient in one pass; ``col2im`` folds the
column gradient back onto the image).

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


cdef int _check_geometry(str name, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t rows, Py_ssize_t cols, const Py_ssize_t* padded,
                         Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                         Py_ssize_t ph, Py_ssize_t pw) except -1:
    """Raises ValueError unless the geometry is valid and the arrays have the shapes it needs.

    The column array must be (C*kh*kw, N*OH*OW) and the padded scratch (N, C, H + 2*ph,
    W + 2*pw). The kernels divide by the stride and index both without bounds checks, so
    this guard is what keeps a wrong call from corrupting memory.
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
    if (padded[0] != N or padded[1] != C or padded[2] != H + 2 * ph
            or padded[3] != W + 2 * pw):
        raise ValueError(f"{name}: padded scratch has shape ({padded[0]}, {padded[1]}, "
                         f"{padded[2]}, {padded[3]}), expected ({N}, {C}, {H + 2 * ph}, "
                         f"{W + 2 * pw})")
    return 0


cdef inline void _pad_plane(const floating* src, floating* dst, Py_ssize_t H, Py_ssize_t W,
                            Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """dst (H + 2*ph, W + 2*pw) = the plane src (H, W) inside a border of zeros."""
    cdef Py_ssize_t h, Wp = W + 2 * pw
    cdef floating* row
    _zero(dst, ph * Wp)
    for h in range(H):
        row = dst + (h + ph) * Wp
        _zero(row, pw)
        _copy(row + pw, src + h * W, W)
        _zero(row + pw + W, pw)
    _zero(dst + (H + ph) * Wp, ph * Wp)


cdef inline void _unfold(floating* dst, const floating* src, Py_ssize_t rows,
                         Py_ssize_t width, Py_ssize_t pitch, Py_ssize_t sw) noexcept nogil:
    """dst[r*width + w] = src[r*pitch + w*sw]: one kernel tap of one padded plane.

    Stride 1 is a block copy of ``width``-long rows; the widths of the usual image sizes
    get constant-length copies, which gcc unrolls into a few vector moves.
    """
    cdef Py_ssize_t r, w
    if sw == 1:
        if width == 32:
            for r in range(rows):
                _copy(dst + r * 32, src + r * pitch, 32)
        elif width == 16:
            for r in range(rows):
                _copy(dst + r * 16, src + r * pitch, 16)
        elif width == 8:
            for r in range(rows):
                _copy(dst + r * 8, src + r * pitch, 8)
        else:
            for r in range(rows):
                _copy(dst + r * width, src + r * pitch, width)
    else:
        for r in range(rows):
            for w in range(width):
                dst[r * width + w] = src[r * pitch + w * sw]


cdef inline void _add(floating* dst, const floating* src, Py_ssize_t m) noexcept nogil:
    """dst[:m] += src[:m] (an inline loop, like _copy)."""
    cdef Py_ssize_t k
    for k in range(m):
        dst[k] += src[k]


cdef inline void _fold(floating* dst, const floating* src, Py_ssize_t rows,
                       Py_ssize_t width, Py_ssize_t pitch, Py_ssize_t sw) noexcept nogil:
    """dst[r*pitch + w*sw] += src[r*width + w]: the adjoint of ``_unfold``."""
    cdef Py_ssize_t r, w
    if sw == 1:
        for r in range(rows):
            _add(dst + r * pitch, src + r * width, width)
    else:
        for r in range(rows):
            for w in range(width):
                dst[r * pitch + w * sw] += src[r * width + w]


def im2col(const floating[:, :, :, ::1] x, floating[:, ::1] col,
           floating[:, :, :, ::1] padded, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
           Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw) -> None:
    """Unfolds the batch ``x`` (N, C, H, W) into ``col`` (C*kh*kw, N*OH*OW), zero padded.

    ``padded`` is scratch of shape (N, C, H + 2*ph, W + 2*pw); it and ``col`` are fully
    overwritten, so neither needs initialization.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH, OW, OHW, Wp
    cdef Py_ssize_t n, c, i, j, r
    _check_geometry("im2col", N, C, H, W, col.shape[0], col.shape[1], padded.shape, kh, kw,
                    sh, sw, ph, pw)
    OH = _out_size(H, kh, sh, ph)
    OW = _out_size(W, kw, sw, pw)
    OHW = OH * OW
    Wp = W + 2 * pw
    with nogil:
        # A padded copy first (small: it stays in cache), so that every tap is a plain
        # strided block copy with no bounds logic. The caller hands over a few images at a
        # time, so col stays in cache too for the GEMM that reads it next.
        for n in range(N):
            for c in range(C):
                _pad_plane(&x[n, c, 0, 0], &padded[n, c, 0, 0], H, W, ph, pw)
        # col is written strictly in memory order: row r, then image n.
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    for n in range(N):
                        _unfold(&col[r, n * OHW], &padded[n, c, i, j], OH, OW, sh * Wp, sw)


def col2im(const floating[:, ::1] dcol, floating[:, :, :, ::1] dx,
           floating[:, :, :, ::1] padded, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
           Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw) -> None:
    """Folds ``dcol`` (C*kh*kw, N*OH*OW) back onto ``dx`` (N, C, H, W), the adjoint of im2col.

    Every overlapping tap is summed in ``padded`` (scratch, (N, C, H + 2*ph, W + 2*pw)),
    whose interior then overwrites ``dx``: values that fell on the padding are dropped.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH, OW, OHW, Hp, Wp
    cdef Py_ssize_t n, c, i, j, r, h
    _check_geometry("col2im", N, C, H, W, dcol.shape[0], dcol.shape[1], padded.shape, kh, kw,
                    sh, sw, ph, pw)
    OH = _out_size(H, kh, sh, ph)
    OW = _out_size(W, kw, sw, pw)
    OHW = OH * OW
    Hp = H + 2 * ph
    Wp = W + 2 * pw
    with nogil:
        _zero(&padded[0, 0, 0, 0], N * C * Hp * Wp)
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    for n in range(N):
                        _fold(&padded[n, c, i, j], &dcol[r, n * OHW], OH, OW, sh * Wp, sw)
        for n in range(N):
            for c in range(C):
                for h in range(H):
                    _copy(&dx[n, c, h, 0], &padded[n, c, h + ph, pw], W)


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
               double[::1] dbias) -> None:
    """``dy_t[f, n*P + p] = dy[n, f, p]`` and ``dbias[f] += sum over n, p of dy[n, f, p]``.

    ``dbias`` accumulates (in double, so that the chunks of a large batch add up without
    losing float32 digits): the caller zeroes it before the first chunk. It has length F,
    or length 0 to skip the bias gradient.
    """
    cdef Py_ssize_t N = dy.shape[0], F = dy.shape[1], P = dy.shape[2]
    cdef Py_ssize_t n, f
    cdef bint has_bias = dbias.shape[0] > 0
    cdef double acc
    if dy_t.shape[0] != F or dy_t.shape[1] != N * P or (has_bias and dbias.shape[0] != F):
        raise ValueError(f"gather_sum: dy_t ({dy_t.shape[0]}, {dy_t.shape[1]}), dbias ({dbias.shape[0]},) "
                         f"do not fit dy ({N}, {F}, {P})")
    with nogil:
        for f in range(F):
            acc = 0
            for n in range(N):
                acc += _copy_sum(&dy_t[f, n * P], &dy[n, f, 0], P)
            if has_bias:
                dbias[f] += acc


def scatter_bias_rows(const floating[:, ::1] out, const floating[::1] bias,
                      floating[:, :, ::1] y) -> None:
    """``y[n, f, p] = out[n*P + p, f] + bias[f]``: (N*P, F) -> (N, F, P).

    The product with one row per output pixel, (N*P, F), is the layout OpenBLAS's AVX-512
    kernels run fastest (see ``nnkit.layers.convolution``); this turns it back into NCHW.
    ``bias`` has length F, or length 0 for none.
    """
    cdef Py_ssize_t N = y.shape[0], F = y.shape[1], P = y.shape[2]
    cdef Py_ssize_t n, f, p, p0, p1
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating b = 0
    cdef floating* dst
    cdef const floating* src
    if out.shape[0] != N * P or out.shape[1] != F or (has_bias and bias.shape[0] != F):
        raise ValueError(f"scatter_bias_rows: out ({out.shape[0]}, {out.shape[1]}), bias "
                         f"({bias.shape[0]},) do not fit y ({N}, {F}, {P})")
    with nogil:
        for n in range(N):
            # Blocks of 64 pixels: the block's rows of out stay in L1 while every f reads them.
            for p0 in range(0, P, 64):
                p1 = min(P, p0 + 64)
                for f in range(F):
                    if has_bias:
                        b = bias[f]
                    src = &out[n * P, f]
                    dst = &y[n, f, 0]
                    for p in range(p0, p1):
                        dst[p] = src[p * F] + b


def gather_rows_sum(const floating[:, :, ::1] dy, floating[:, ::1] rows,
                    double[::1] dbias) -> None:
    """``rows[n*P + p, f] = dy[n, f, p]`` and ``dbias[f] += sum over n, p of dy[n, f, p]``.

    The transpose of ``scatter_bias_rows``, for backward; ``dbias`` accumulates as in
    ``gather_sum`` (length F, or 0 to skip it).
    """
    cdef Py_ssize_t N = dy.shape[0], F = dy.shape[1], P = dy.shape[2]
    cdef Py_ssize_t n, f, p, p0, p1
    cdef bint has_bias = dbias.shape[0] > 0
    cdef double acc
    cdef floating v
    cdef floating* dst
    cdef const floating* src
    if rows.shape[0] != N * P or rows.shape[1] != F or (has_bias and dbias.shape[0] != F):
        raise ValueError(f"gather_rows_sum: rows ({rows.shape[0]}, {rows.shape[1]}), dbias "
                         f"({dbias.shape[0]},) do not fit dy ({N}, {F}, {P})")
    with nogil:
        for n in range(N):
            for p0 in range(0, P, 64):
                p1 = min(P, p0 + 64)
                for f in range(F):
                    src = &dy[n, f, 0]
                    dst = &rows[n * P, f]
                    acc = 0
                    for p in range(p0, p1):
                        v = src[p]
                        dst[p * F] = v
                        acc += v
                    if has_bias:
                        dbias[f] += acc


def transpose_bias(const floating[:, ::1] src, const floating[::1] bias,
                   floating[:, :] dst) -> None:
    """``dst[c, r] = src[r, c] + bias[r]``: (R, C) -> (C, R), ``bias`` of length R or 0.

    ``dst`` may be a slice of columns of a larger array (a parallel part's share of y).

    The dense layer's output, computed as ``y.T`` (the faster layout), into ``y``. Tiles of
    16 x 16 stay in L1 while both sides are read and written in order, unlike numpy's
    transposed add (116 against 49 us for (2500, 64)).
    """
    cdef Py_ssize_t R = src.shape[0], C = src.shape[1]
    cdef Py_ssize_t r, c, r0, c0, r1, c1
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating b = 0
    if dst.shape[0] != C or dst.shape[1] != R or (has_bias and bias.shape[0] != R):
        raise ValueError(f"transpose_bias: src ({R}, {C}), bias ({bias.shape[0]},) do not fit "
                         f"dst ({dst.shape[0]}, {dst.shape[1]})")
    with nogil:
        for r0 in range(0, R, 16):
            r1 = min(R, r0 + 16)
            for c0 in range(0, C, 16):
                c1 = min(C, c0 + 16)
                for c in range(c0, c1):
                    for r in range(r0, r1):
                        if has_bias:
                            b = bias[r]
                        dst[c, r] = src[r, c] + b
