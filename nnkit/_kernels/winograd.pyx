# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Winograd F(4x4, 5x5) transforms: a 5x5, stride-1 convolution with 6.25x fewer GEMM flops.

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016): each 4x4
block of outputs (a *tile*) is ``A^T [ (G g G^T) * (B^T d B) ] A`` for its 8x8 input patch
``d`` and a 5x5 kernel ``g``, with ``*`` the elementwise product. Summed over input
channels, the elementwise products become 64 independent GEMMs, one per cell (xi, nu) of
the 8x8 transformed tile: ``M[xi nu] (F, T) = U[xi nu] (F, C) @ V[xi nu] (C, T)``, 64 * F * C
multiplications per tile where the direct form takes 16 * 25 * F * C.

The matrices follow from Toom-Cook interpolation at the points 0, 1, -1, 2, -2, 1/2, -1/2
and infinity (G is ``nnkit.layers.convolution.WINOGRAD_G``; ``tests/test_winograd.py``
derives all three from the points and checks that they compute a correlation):

    B^T = [[1, 0, -21/4, 0, 21/4, 0, -1, 0],      A^T = [[1, 1, 1, 1, 1, 1, 1, 0],
           [0, 1, 1, -17/4, -17/4, 1, 1, 0],             [0, 1, -1, 2, -2, 1/2, -1/2, 0],
           [0, -1, 1, 17/4, -17/4, -1, 1, 0],            [0, 1, 1, 4, 4, 1/4, 1/4, 0],
           [0, 1/2, 1/4, -5/2, -5/4, 2, 1, 0],           [0, 1, -1, 8, -8, 1/8, -1/8, 1]]
           [0, -1/2, 1/4, 5/2, -5/4, -2, 1, 0],
           [0, 2, 4, -5/2, -5, 1/2, 1, 0],
           [0, -2, 4, 5/2, -5, -1/2, 1, 0],
           [0, -1, 0, 21/4, 0, -21/4, 0, 1]]

These kernels do the input transform (``V`` from the images, zero padding included), the
output transform (``M`` to the NCHW output, plus the bias) and its adjoint for the weight
gradient (``dM = A dY A^T`` from the output gradient, whose GEMMs with V give
``dU[xi nu] = dM[xi nu] @ V[xi nu].T`` and, through G, the filters' gradient
``G^T dU G``); the weight transform and the GEMMs are numpy's. Tiles are numbered tile
row by tile row, the chunk's images side by side in each: tile (g, th, tw) is column
``(th * G + g) * TW + tw`` of V and M, with TH, TW = ceil(OH / 4), ceil(OW / 4) (the GEMMs
take the columns in any order; this one makes every transform's loop run over the whole
chunk). Outputs of a last, partly filled tile row or column are computed and dropped.

The loops are C (``winograd.h``), one channel (or filter) of all the chunk's images at a
time, with contiguous loads only. The row transform reads the 8 input columns of tile
``tw`` as ``p0[tw], ..., p3[tw], q0[tw], ..., q3[tw]``, where ``pk`` holds the cells
4 tw + k of the padded row and ``qk`` the cells 4 (tw + 1) + k, the images' rows side by
side. The column transform keeps the rows of each phase (row mod 4) apart, so that row
4 th + a of tile column t sits at t + (a / 4) * G * TW of its phase: it and the output
transform run over all the tiles of the chunk at once. Every function writes into arrays
its caller owns (the scratch sizes are ``input_scratch`` and ``output_scratch``); none
allocates.
"""
from cython cimport floating

#: Cells of a transformed tile (8 x 8): the GEMMs per chunk, V's and M's first axis.
CELLS = 64
#: Outputs per tile side.
TILE = 4

cdef extern from "winograd.h" nogil:
    void nnkit_winograd_input_float(const float *x, Py_ssize_t g, Py_ssize_t c, Py_ssize_t h,
                                    Py_ssize_t w, Py_ssize_t ph, Py_ssize_t pw, float *v,
                                    float *scratch)
    void nnkit_winograd_input_double(const double *x, Py_ssize_t g, Py_ssize_t c,
                                     Py_ssize_t h, Py_ssize_t w, Py_ssize_t ph, Py_ssize_t pw,
                                     double *v, double *scratch)
    void nnkit_winograd_output_float(const float *m, const float *bias, Py_ssize_t g,
                                     Py_ssize_t f, Py_ssize_t oh, Py_ssize_t ow, float *y,
                                     float *scratch)
    void nnkit_winograd_output_double(const double *m, const double *bias, Py_ssize_t g,
                                      Py_ssize_t f, Py_ssize_t oh, Py_ssize_t ow, double *y,
                                      double *scratch)
    void nnkit_winograd_grad_output_float(const float *dy, Py_ssize_t g, Py_ssize_t f,
                                          Py_ssize_t oh, Py_ssize_t ow, float *dm, double *db,
                                          float *scratch)
    void nnkit_winograd_grad_output_double(const double *dy, Py_ssize_t g, Py_ssize_t f,
                                           Py_ssize_t oh, Py_ssize_t ow, double *dm,
                                           double *db, double *scratch)


cpdef Py_ssize_t input_scratch(Py_ssize_t g, Py_ssize_t h, Py_ssize_t w, Py_ssize_t ph,
                               Py_ssize_t pw):
    """Values of scratch ``winograd_input`` needs for G (H, W) images padded by (ph, pw)."""
    cdef Py_ssize_t th = (h + 2 * ph - 1) // 4, tw = (w + 2 * pw - 1) // 4
    # p and q (4 phases of every padded row), u (the row transforms), one padded row
    return 8 * (4 * th + 4) * g * tw + 32 * (th + 1) * g * tw + 4 * tw + 4


cpdef Py_ssize_t output_scratch(Py_ssize_t g, Py_ssize_t oh, Py_ssize_t ow):
    """Values of scratch ``winograd_output`` and ``winograd_grad_output`` need for G
    (OH, OW) output planes per filter."""
    return 48 * g * plane_tiles(oh, ow)


cpdef Py_ssize_t plane_tiles(Py_ssize_t oh, Py_ssize_t ow):
    """Tiles (4x4 output blocks) of one (OH, OW) output plane: ceil(OH / 4) * ceil(OW / 4)."""
    return ((oh + 3) // 4) * ((ow + 3) // 4)


cdef int _check_scratch(Py_ssize_t have, Py_ssize_t need) except -1:
    """Raises unless a kernel's scratch holds ``need`` values."""
    if have < need:
        raise ValueError(f"winograd kernel: scratch of {have} values, needs {need}")
    return 0


cdef int _check_output_tiles(str name, tuple shape, Py_ssize_t g, Py_ssize_t f,
                             Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t per_filter, str what,
                             Py_ssize_t scratch) except -1:
    """The checks of the output transform and its adjoint: tiles ``name`` (64, F, tiles) of
    G (OH, OW) planes per filter, ``per_filter`` values (``what``) for F filters or none,
    and the scratch."""
    cdef Py_ssize_t tiles = g * plane_tiles(oh, ow)
    if shape != (CELLS, f, tiles):
        raise ValueError(f"winograd kernel: {name} is {shape}, needs ({CELLS}, {f}, {tiles})")
    if per_filter not in (0, f):
        raise ValueError(f"winograd kernel: {per_filter} {what} for {f} filters")
    return _check_scratch(scratch, output_scratch(g, oh, ow))


def winograd_input(const floating[:, :, :, ::1] x, floating[:, :, ::1] v,
                   Py_ssize_t ph, Py_ssize_t pw, floating[::1] scratch):
    """V (64, C, G*TH*TW) = B^T d B of every 8x8 patch of the images x (G, C, H, W).

    The convolution's padding is (ph, pw): output (OH, OW) = (H + 2 ph - 4, W + 2 pw - 4).
    """
    cdef Py_ssize_t g = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t oh = h + 2 * ph - 4, ow = w + 2 * pw - 4
    if not (oh >= 1 and ow >= 1 and ph >= 0 and pw >= 0):
        raise ValueError(f"winograd kernel: no 5x5 output for {h}x{w} images padded by "
                         f"({ph}, {pw})")
    cdef Py_ssize_t tiles = g * plane_tiles(oh, ow)
    if not (v.shape[0] == CELLS and v.shape[1] == c and v.shape[2] == tiles):
        raise ValueError(f"winograd kernel: V is {tuple(v.shape)[:3]}, needs ({CELLS}, {c}, {tiles})")
    _check_scratch(scratch.shape[0], input_scratch(g, h, w, ph, pw))
    if g == 0 or c == 0:
        return
    with nogil:
        if floating is float:
            nnkit_winograd_input_float(&x[0, 0, 0, 0], g, c, h, w, ph, pw, &v[0, 0, 0],
                                       &scratch[0])
        else:
            nnkit_winograd_input_double(&x[0, 0, 0, 0], g, c, h, w, ph, pw, &v[0, 0, 0],
                                        &scratch[0])


def winograd_output(const floating[:, :, ::1] m, const floating[::1] bias,
                    floating[:, :, :, ::1] y, floating[::1] scratch):
    """y (G, F, OH, OW) = A^T M A (+ bias) for the tiles M (64, F, G*TH*TW).

    ``bias`` has F values, or none for no bias.
    """
    cdef Py_ssize_t g = y.shape[0], f = y.shape[1], oh = y.shape[2], ow = y.shape[3]
    _check_output_tiles("M", tuple(m.shape)[:3], g, f, oh, ow, bias.shape[0], "biases",
                        scratch.shape[0])
    if g == 0 or f == 0 or oh == 0 or ow == 0:
        return
    cdef const floating* b = &bias[0] if bias.shape[0] > 0 else NULL
    with nogil:
        if floating is float:
            nnkit_winograd_output_float(&m[0, 0, 0], b, g, f, oh, ow, &y[0, 0, 0, 0],
                                        &scratch[0])
        else:
            nnkit_winograd_output_double(&m[0, 0, 0], b, g, f, oh, ow, &y[0, 0, 0, 0],
                                         &scratch[0])


def winograd_grad_output(const floating[:, :, :, ::1] dy, floating[:, :, ::1] dm,
                         double[::1] db, floating[::1] scratch):
    """dM (64, F, G*TH*TW) = A dY A^T for the 4x4 tiles dY of dy (G, F, OH, OW); db += sums.

    The adjoint of ``winograd_output``: the gradient of its M for the output gradient dy
    (outputs past the edge, which it drops, count as zero). ``db`` has F values, to which
    the sum of each filter's planes is added, or none.
    """
    cdef Py_ssize_t g = dy.shape[0], f = dy.shape[1], oh = dy.shape[2], ow = dy.shape[3]
    _check_output_tiles("dM", tuple(dm.shape)[:3], g, f, oh, ow, db.shape[0],
                        "bias gradients", scratch.shape[0])
    if g == 0 or f == 0 or oh == 0 or ow == 0:
        return
    cdef double* sums = &db[0] if db.shape[0] > 0 else NULL
    with nogil:
        if floating is float:
            nnkit_winograd_grad_output_float(&dy[0, 0, 0, 0], g, f, oh, ow, &dm[0, 0, 0],
                                             sums, &scratch[0])
        else:
            nnkit_winograd_grad_output_double(&dy[0, 0, 0, 0], g, f, oh, ow, &dm[0, 0, 0],
                                              sums, &scratch[0])
