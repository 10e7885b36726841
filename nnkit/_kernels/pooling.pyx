# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Max and average pooling kernels over stacks of planes (P, H, W).

A plane is one (example, channel) image: the layer reshapes NCHW to (N*C, H, W) for free.

Two ways through a plane, each where it was measured faster:

* **By rows** (the forward passes without positions: ``max_values``, ``avg_forward``):
  for each output row, the image rows of its windows are folded into one row (max or
  sum, a contiguous vector loop over the width), then each window's columns of that row
  are folded (a loop over the outputs, unrolled for the usual windows). No copy of the
  plane and no tables. Single-threaded on the CIFAR-10 shapes (3x3 windows, stride 2)
  this took 0.68 (max, 32x32 planes), 0.55-0.57 (16x16) and 0.44-0.55 (8x8) of the time of
  the scratch route below, 0.37-0.57 for 2x2 windows on 24x24, and 1.01 (average) for
  3x3 windows of stride 1 on 13x13 (best of 5 runs of 20 each, one Zen 5 core).
* **Through a scratch** (max pooling with positions, ``max_forward``; average pooling's
  backward pass, ``avg_backward``). Average pooling's backward pass by rows (spreading
  each output row's gradients over a row, then adding that row to its window's image
  rows) took 1.4-1.5 of this route's time on 16x16 and 8x8 planes. Max pooling with
  positions by rows (columns first, then rows, so that ties still go to the first maximum
  in row-major window order) took 1.32 of it on 32x32 planes with 3x3 windows of stride
  2, whose 3-cell windows of every other column did not vectorize.

The scratch route makes every window whole and every load contiguous by first copying a
group of planes into a *scratch* laid out for the windows (the layer sizes it and builds
its index tables once per input shape, see ``nnkit.layers.pooling``):

* it covers every window entirely, padding and (ceil mode) the cells past the padding
  included: ``rows = (out_h - 1) * sh + kh`` padded rows, padded row ``r`` being image
  row ``r - ph``;
* each padded row is split into ``sw`` phases, phase ``c`` holding padded columns
  ``c, c + sw, c + 2 sw, ...`` (image columns ``c - pw, c - pw + sw, ...``): ``wq =
  out_w + (kw - 1) // sw`` cells per plane. Window column ``j`` of an output row is then
  the contiguous run of phase ``j % sw`` from cell ``j // sw`` on, whatever the stride;
* ``group`` planes sit side by side in each phase row, plane ``g`` from cell ``g * wq``,
  so one pass over a row computes ``count`` outputs (``group * wq`` rounded up to a
  multiple of 4): long vectorized loops without scalar tails even for small images. The
  outputs that straddle two planes, or lie past the last, are computed and dropped.
  Phase rows are ``pitch = count + (kw - 1) // sw`` cells apart.

Max pooling fills the cells outside the image with the nearest image cell. A window
always contains that nearest cell and meets the copy right next to it in row-major order,
so the maximum, its first position and NaN propagation are exactly those of the window
clipped to the image: padding never wins. Average pooling's backward pass spreads
``scale[oh, ow] * dy[oh, ow]`` over the window, ``scale`` being 1 / (the window's cells
inside the padded image), Caffe's divisor (the forward pass by rows uses the same).

The scratch holds ``(rows * sw + 1) * pitch`` cells: the phase rows, then a zero row.
The layer's tables index it as for the group's first plane (plane ``g``'s cells are
``g * wq`` further on):

* ``phases[c]``: the [lo, hi) cells of phase ``c`` that are image columns;
* ``src``: for every scratch cell, the plane index of the nearest image cell (to turn
  the position of a maximum into the argmax);
* ``border``: (scratch index, plane index of the nearest image cell) for each cell
  outside the image, which max pooling fills with that copy;
* ``dst``: for each plane cell, the scratch cell where average pooling's backward pass
  sums its gradient, or one in the zero row if no window reads it.

The kernels check the shapes of what they are given, and trust the tables' entries. The
trailing ints of every scratch kernel are ``kh, kw, sh, sw, ph, pw, wq, group``; of every
kernel by rows, ``kh, kw, sh, sw, ph, pw``.

Every function writes into arrays its caller owns; none allocates.
"""
from cython cimport floating
from libc.math cimport INFINITY

# Py_ssize_t, not int, for loop indices: Python builds extensions with -fwrapv, under
# which gcc cannot prove that int index arithmetic does not wrap and stops vectorizing.
# The fast paths are inline functions called with constant window sizes and strides, so
# that gcc unrolls the window loops and vectorizes across the outputs of a row.


cdef Py_ssize_t _pitch(Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t wq, Py_ssize_t group,
                       Py_ssize_t scratch, Py_ssize_t count, Py_ssize_t count2) except -1:
    """The scratch's phase-row pitch, after checking every buffer against the geometry.

    The loops do not check bounds: a caller's mistake must fail here, not corrupt memory.
    """
    cdef Py_ssize_t pitch = count + (kw - 1) // sw
    cdef Py_ssize_t cells = (((out_h - 1) * sh + kh) * sw + 1) * pitch
    if (min(kh, kw, sh, sw, group) < 1 or wq != out_w + (kw - 1) // sw
            or count != (group * wq + 3) // 4 * 4 or count2 != count or scratch < cells):
        raise ValueError(
            f"pooling kernel: buffers do not fit the geometry (scratch {scratch} cells for "
            f"{cells}, rows of {count} and {count2} outputs for {group} x {wq})")
    return pitch


cdef int _expect(str what, Py_ssize_t got, Py_ssize_t want) except -1:
    """Raises unless a table or buffer dimension is what the geometry needs."""
    if got != want:
        raise ValueError(f"pooling kernel: {what} is {got}, the geometry needs {want}")
    return 0


cdef inline Py_ssize_t _offset(Py_ssize_t r, Py_ssize_t j, Py_ssize_t sw,
                               Py_ssize_t pitch) noexcept nogil:
    """The scratch index of cell (r, j) of an output row's first window."""
    return (r * sw + j % sw) * pitch + j // sw


cdef inline int _copy_row(const floating* image_row, floating* phase, Py_ssize_t sw,
                          Py_ssize_t first, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """phase[m] = image_row[first + m * sw] for m in [lo, hi); nonzero if it copied a NaN."""
    cdef Py_ssize_t m
    cdef floating v
    cdef int nan = 0
    for m in range(lo, hi):
        v = image_row[first + m * sw]
        phase[m] = v
        nan |= v != v
    return nan


cdef int _split_planes(const floating[:, :, ::1] x, Py_ssize_t p0, Py_ssize_t n,
                       floating* s, Py_ssize_t rows, Py_ssize_t sw, Py_ssize_t ph,
                       Py_ssize_t pw, Py_ssize_t wq, Py_ssize_t pitch,
                       const int[:, ::1] phases) noexcept nogil:
    """Copies the image cells of planes p0 .. p0 + n - 1 into the scratch.

    ``phases[c]`` bounds the cells of phase ``c`` that are image columns. The other cells
    are left alone. Returns nonzero if a plane holds a NaN.
    """
    cdef Py_ssize_t height = min(x.shape[1], rows - ph), g, h, c
    cdef const floating* image_row
    cdef floating* d
    cdef int nan = 0
    for g in range(n):
        for h in range(height):
            image_row = &x[p0 + g, h, 0]
            d = s + (h + ph) * sw * pitch + g * wq
            for c in range(sw):
                # A constant stride lets gcc vectorize the strided loads.
                if sw == 2:
                    nan |= _copy_row(image_row, d + c * pitch, 2, c - pw, phases[c, 0],
                                     phases[c, 1])
                elif sw == 1:
                    nan |= _copy_row(image_row, d, 1, -pw, phases[0, 0], phases[0, 1])
                else:
                    nan |= _copy_row(image_row, d + c * pitch, sw, c - pw, phases[c, 0],
                                     phases[c, 1])
    return nan


cdef inline void _zero(floating* a, Py_ssize_t n) noexcept nogil:
    """a[:n] = 0 (gcc turns it into memset)."""
    cdef Py_ssize_t i
    for i in range(n):
        a[i] = 0


# ----------------------------------------------------------------------------- max
cdef inline void _max_pass(const floating* s, int at, Py_ssize_t count,
                           floating* best, int* where) noexcept nogil:
    """Folds one window cell, s[i] for output i, into each output's maximum.

    ``where[i]`` records the winning cell's offset ``at`` from the window's first cell.
    Strictly greater wins, so the first maximum in visiting order stays; a NaN always wins,
    so NaN propagates (as in PyTorch).
    """
    cdef Py_ssize_t i
    cdef floating v
    cdef bint take
    for i in range(count):
        v = s[i]
        take = (v > best[i]) | (v != v)
        best[i] = v if take else best[i]
        where[i] = at if take else where[i]


cdef inline void _max_row(const floating* s, Py_ssize_t count, Py_ssize_t kh, Py_ssize_t kw,
                          Py_ssize_t sw, Py_ssize_t pitch, floating* best,
                          int* where) noexcept nogil:
    """One output row's maxima, NaN-free planes only; ``s`` points at its first window cell.

    Visits the window cells in row-major order, as ``_max_pass`` would one pass each, but
    all for one output before the next: with constant ``kh``, ``kw``, ``sw`` each maximum
    stays in a vector register. Without NaNs there is no NaN test to pay in every cell.
    """
    cdef Py_ssize_t i, dh, j, at
    cdef floating v, b
    cdef int w
    cdef bint take
    for i in range(count):
        b = s[i]
        w = 0
        for dh in range(kh):
            for j in range(kw):
                at = _offset(dh, j, sw, pitch)
                v = s[at + i]
                take = v > b
                b = v if take else b
                w = <int>at if take else w
        best[i] = b
        where[i] = w


def max_forward(const floating[:, :, ::1] x, floating[:, :, ::1] y, int[:, :, ::1] argmax,
                const int[::1] src, const int[:, ::1] phases, const int[:, ::1] border,
                floating[::1] scratch, floating[::1] best, int[::1] where,
                int kh, int kw, int sh, int sw, int ph, int pw, int wq, int group):
    """y[p, oh, ow] = max of x[p] over the window; argmax gets its flat index h * W + w.

    ``src``, ``phases``, ``border``: the tables (see the module notes); ``best``/``where``:
    one row of ``count`` outputs. The first maximum in row-major window order wins ties; a
    NaN wins over any number. Without positions, ``max_values`` is faster.
    """
    cdef Py_ssize_t planes = x.shape[0], out_h = y.shape[1], out_w = y.shape[2]
    cdef Py_ssize_t count = best.shape[0], rows = (out_h - 1) * sh + kh
    cdef Py_ssize_t pitch = _pitch(out_h, out_w, kh, kw, sh, sw, wq, group, scratch.shape[0],
                                   count, where.shape[0])
    cdef Py_ssize_t q, p0, n, g, b, oh, ow, i, dh, j, at, row
    cdef floating* s = &scratch[0]
    cdef floating* d
    cdef const floating* xp
    cdef bint nan
    _expect("number of output planes", y.shape[0], planes)
    _expect("argmax rows", argmax.shape[1], out_h)
    _expect("argmax columns", argmax.shape[2], out_w)
    _expect("number of argmax planes", argmax.shape[0], planes)
    _expect("len(src)", src.shape[0], rows * sw * pitch)
    _expect("len(phases)", phases.shape[0], sw)
    _expect("phases.shape[1]", phases.shape[1], 2)
    _expect("border.shape[1]", border.shape[1], 2)
    with nogil:
        _zero(s, scratch.shape[0])  # no stale denormals or NaNs in the dropped outputs
        for q in range((planes + group - 1) // group):  # a group of n planes from p0
            p0 = q * group
            n = min(group, planes - p0)
            nan = _split_planes(x, p0, n, s, rows, sw, ph, pw, wq, pitch, phases)
            for g in range(n):  # the cells outside the image copy the nearest image cell
                xp = &x[p0 + g, 0, 0]
                d = s + g * wq
                for b in range(border.shape[0]):
                    d[border[b, 0]] = xp[border[b, 1]]
            for oh in range(out_h):
                row = _offset(oh * sh, 0, sw, pitch)  # the row's first window cell
                # The usual windows unrolled; any other (or NaNs), one pass per window cell.
                if kh == 3 and kw == 3 and sw == 2 and not nan:
                    _max_row(s + row, count, 3, 3, 2, pitch, &best[0], &where[0])
                elif kh == 2 and kw == 2 and sw == 2 and not nan:
                    _max_row(s + row, count, 2, 2, 2, pitch, &best[0], &where[0])
                else:
                    for i in range(count):
                        best[i] = s[row + i]
                        where[i] = 0
                    for dh in range(kh):
                        for j in range(kw):
                            at = _offset(dh, j, sw, pitch)
                            _max_pass(s + row + at, <int>at, count, &best[0], &where[0])
                for g in range(n):
                    for ow in range(out_w):
                        i = g * wq + ow
                        y[p0 + g, oh, ow] = best[i]
                        argmax[p0 + g, oh, ow] = src[row + where[i] + ow]


def max_backward(const floating[:, :, ::1] dy, const int[:, :, ::1] argmax,
                 floating[:, ::1] dx):
    """dx[p] (planes flattened to H * W) = each dy[p, oh, ow] added at argmax[p, oh, ow].

    The argmax entries are trusted: ``max_forward`` wrote them.
    """
    cdef Py_ssize_t planes = dy.shape[0], size = dx.shape[1]
    cdef Py_ssize_t outputs = dy.shape[1] * dy.shape[2]
    cdef Py_ssize_t p, i
    cdef const floating* g
    cdef const int* arg
    cdef floating* d
    _expect("number of input-gradient planes", dx.shape[0], planes)
    _expect("argmax rows", argmax.shape[1], dy.shape[1])
    _expect("argmax columns", argmax.shape[2], dy.shape[2])
    _expect("number of argmax planes", argmax.shape[0], planes)
    with nogil:
        for p in range(planes):
            g = &dy[p, 0, 0]
            arg = &argmax[p, 0, 0]
            d = &dx[p, 0]
            _zero(d, size)  # one plane at a time, filled while in cache
            for i in range(outputs):
                d[arg[i]] += g[i]


# ----------------------------------------------------------------------------- average
cdef inline void _add(floating* acc, const floating* s, Py_ssize_t count) noexcept nogil:
    """acc[i] += s[i]: one window cell of each output's sum (or gradient)."""
    cdef Py_ssize_t i
    for i in range(count):
        acc[i] += s[i]


def avg_backward(const floating[:, :, ::1] dy, floating[:, :, ::1] dx, const int[::1] dst,
                 floating[::1] scratch, floating[::1] acc, const floating[:, ::1] scale,
                 int kh, int kw, int sh, int sw, int ph, int pw, int wq, int group):
    """dx[p, h, w] = sum over the windows covering (h, w) of scale[oh, ow] * dy[p, oh, ow].

    ``dst``: the scratch index of each plane cell (see the module notes); ``acc``: one
    row of ``count`` scaled gradients.
    """
    cdef Py_ssize_t planes = dy.shape[0], out_h = dy.shape[1], out_w = dy.shape[2]
    cdef Py_ssize_t count = acc.shape[0], cells = dst.shape[0]
    cdef Py_ssize_t pitch = _pitch(out_h, out_w, kh, kw, sh, sw, wq, group, scratch.shape[0],
                                   count, count)
    cdef Py_ssize_t size = (((out_h - 1) * sh + kh) * sw + 1) * pitch
    cdef Py_ssize_t q, p0, n, g, t, oh, ow, dh, j, row
    cdef floating* dxp
    cdef floating* s = &scratch[0]
    cdef floating* d
    _expect("number of input-gradient planes", dx.shape[0], planes)
    _expect("len(dst)", cells, dx.shape[1] * dx.shape[2])
    with nogil:
        # The outputs between planes stay zero and add nothing; those past the last plane
        # of a short group may hold stale gradients, but nothing reads where they add.
        _zero(&acc[0], count)
        for q in range((planes + group - 1) // group):  # a group of n planes from p0
            p0 = q * group
            n = min(group, planes - p0)
            _zero(s, size)
            for oh in range(out_h):
                for g in range(n):
                    for ow in range(out_w):
                        acc[g * wq + ow] = dy[p0 + g, oh, ow] * scale[oh, ow]
                row = _offset(oh * sh, 0, sw, pitch)
                # Each pass adds to distinct cells, so it vectorizes whatever the window.
                for dh in range(kh):
                    for j in range(kw):
                        _add(s + row + _offset(dh, j, sw, pitch), &acc[0], count)
            for g in range(n):
                dxp = &dx[p0 + g, 0, 0]
                d = s + g * wq
                for t in range(cells):
                    dxp[t] = d[dst[t]]


# ----------------------------------------------------------------------------- by rows
# ``row`` holds one folded row at offset ``pw``, after ``pw`` cells of padding and with
# enough after it for the last window (``row_cells``).

cdef inline floating _later_max(floating a, floating b, bint nan) noexcept nogil:
    """The running maximum ``b`` after a later cell ``a``; with ``nan``, a NaN wins either way."""
    if nan:
        return a if (a > b) | (a != a) else b
    return a if a > b else b


cdef inline bint _has_nan(const floating* a, Py_ssize_t n) noexcept nogil:
    """Whether a[:n] holds a NaN: one vector pass, so NaN-free planes skip the NaN test."""
    cdef Py_ssize_t i
    cdef int nan = 0
    for i in range(n):
        nan |= a[i] != a[i]
    return nan != 0


cdef inline void _fold_rows(const floating* x, Py_ssize_t width, Py_ssize_t r0, Py_ssize_t r1,
                            floating* v, bint is_max, bint nan) noexcept nogil:
    """v[w] = the max (or sum) of x[r, w] over the image rows r0 <= r < r1, in row order."""
    cdef Py_ssize_t r, w
    cdef const floating* row = x + r0 * width
    for w in range(width):
        v[w] = row[w]
    for r in range(r0 + 1, r1):
        row = x + r * width
        if is_max:
            for w in range(width):
                v[w] = _later_max(row[w], v[w], nan)
        else:
            for w in range(width):
                v[w] += row[w]


cdef inline void _fold_columns(const floating* v, Py_ssize_t outputs, Py_ssize_t kw,
                               Py_ssize_t sw, const floating* scale, floating* out,
                               bint is_max, bint nan) noexcept nogil:
    """out[o] = the max (or scaled sum) of v[o * sw + j] for j < kw, in column order."""
    cdef Py_ssize_t o, j
    cdef floating a
    for o in range(outputs):
        a = v[o * sw]
        for j in range(1, kw):
            if is_max:
                a = _later_max(v[o * sw + j], a, nan)
            else:
                a += v[o * sw + j]
        out[o] = a if is_max else a * scale[o]


cdef inline void _fold_plane(const floating* x, floating* y, const floating* scale,
                             floating* row, Py_ssize_t height, Py_ssize_t width,
                             Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw,
                             Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                             bint is_max, bint nan) noexcept nogil:
    """One plane's pooled outputs, row by row."""
    cdef Py_ssize_t oh, r0
    for oh in range(out_h):
        r0 = oh * sh - ph
        _fold_rows(x, width, max(r0, 0), min(r0 + kh, height), row + pw, is_max, nan)
        # The usual windows unrolled (constant kw, sw); any other, the general loop.
        if kw == 3 and sw == 2:
            _fold_columns(row, out_w, 3, 2, scale + oh * out_w, y + oh * out_w, is_max, nan)
        elif kw == 2 and sw == 2:
            _fold_columns(row, out_w, 2, 2, scale + oh * out_w, y + oh * out_w, is_max, nan)
        else:
            _fold_columns(row, out_w, kw, sw, scale + oh * out_w, y + oh * out_w, is_max, nan)


cdef int _check_rows(Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h, Py_ssize_t out_w,
                     Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                     Py_ssize_t pw, Py_ssize_t row) except -1:
    """Raises unless every window starts inside the padded image and ends past its start
    (so each holds an image cell) and ``row`` holds a padded row: the loops read no
    further."""
    if (min(kh, kw, sh, sw, out_h, out_w) < 1 or not 0 <= ph < kh or not 0 <= pw < kw
            or (out_h - 1) * sh - ph >= height or (out_w - 1) * sw - pw >= width):
        raise ValueError(
            f"pooling kernel: {out_h}x{out_w} outputs do not fit a {height}x{width} plane "
            f"with window {kh}x{kw}, stride {sh}x{sw}, pad {ph}x{pw}")
    if row < row_cells(width, out_w, kw, sw, pw):
        raise ValueError(f"pooling kernel: a row buffer of {row} cells for "
                         f"{row_cells(width, out_w, kw, sw, pw)}")
    return 0


cpdef Py_ssize_t row_cells(Py_ssize_t width, Py_ssize_t out_w, Py_ssize_t kw, Py_ssize_t sw,
                           Py_ssize_t pw):
    """The cells of one padded row: ``pw`` before the image's, the last window's after."""
    return max(pw + width, (out_w - 1) * sw + kw)


def max_values(const floating[:, :, ::1] x, floating[:, :, ::1] y, floating[::1] row,
               int kh, int kw, int sh, int sw, int ph, int pw):
    """y[p, oh, ow] = max of x[p] over the window, without positions (inference).

    Padding cells hold -inf: every window has an image cell, so they never win. A NaN in
    a window propagates.
    """
    cdef Py_ssize_t planes = x.shape[0], height = x.shape[1], width = x.shape[2]
    cdef Py_ssize_t out_h = y.shape[1], out_w = y.shape[2], p, i
    cdef floating* r = &row[0]
    cdef floating none = -INFINITY
    _expect("number of output planes", y.shape[0], planes)
    _check_rows(height, width, out_h, out_w, kh, kw, sh, sw, ph, pw, row.shape[0])
    with nogil:
        for i in range(row.shape[0]):
            r[i] = none
        for p in range(planes):
            if _has_nan(&x[p, 0, 0], height * width):
                _fold_plane(&x[p, 0, 0], &y[p, 0, 0], r, r, height, width, out_h, out_w,
                            kh, kw, sh, sw, ph, pw, True, True)
            else:
                _fold_plane(&x[p, 0, 0], &y[p, 0, 0], r, r, height, width, out_h, out_w,
                            kh, kw, sh, sw, ph, pw, True, False)


def avg_forward(const floating[:, :, ::1] x, floating[:, :, ::1] y, const floating[:, ::1] scale,
             floating[::1] row, int kh, int kw, int sh, int sw, int ph, int pw):
    """y[p, oh, ow] = scale[oh, ow] * sum of x[p] over the window (padding counts zero)."""
    cdef Py_ssize_t planes = x.shape[0], height = x.shape[1], width = x.shape[2]
    cdef Py_ssize_t out_h = y.shape[1], out_w = y.shape[2], p
    cdef floating* r = &row[0]
    _expect("number of output planes", y.shape[0], planes)
    _expect("scale rows", scale.shape[0], out_h)
    _expect("scale columns", scale.shape[1], out_w)
    _check_rows(height, width, out_h, out_w, kh, kw, sh, sw, ph, pw, row.shape[0])
    with nogil:
        _zero(r, row.shape[0])
        for p in range(planes):
            _fold_plane(&x[p, 0, 0], &y[p, 0, 0], &scale[0, 0], r, height, width, out_h,
                        out_w, kh, kw, sh, sw, ph, pw, False, False)

