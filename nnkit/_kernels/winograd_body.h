/* One instance of the Winograd F(4x4, 5x5) transforms (see winograd.h), for the element
 * type WINO_T, named with WINO_NAME(base), compiled with the attributes WINO_ATTR.
 * Included once per (type, instruction set); defines nothing else.
 */

/* o_k[i] = (B^T d)[k] for d = (d0[i], ..., d7[i]), i < n: B^T of F(4, 5). The eight
 * outputs are separate restrict parameters: gcc 12 does not vectorize the loop when they
 * are offsets of one pointer (seen with -fopt-info-vec). */
WINO_ATTR static inline __attribute__((always_inline)) void WINO_NAME(transform8)(
        const WINO_T *restrict d0, const WINO_T *restrict d1, const WINO_T *restrict d2,
        const WINO_T *restrict d3, const WINO_T *restrict d4, const WINO_T *restrict d5,
        const WINO_T *restrict d6, const WINO_T *restrict d7,
        WINO_T *restrict o0, WINO_T *restrict o1, WINO_T *restrict o2, WINO_T *restrict o3,
        WINO_T *restrict o4, WINO_T *restrict o5, WINO_T *restrict o6, WINO_T *restrict o7,
        ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        const WINO_T a1 = d1[i], a2 = d2[i], a3 = d3[i], a4 = d4[i], a5 = d5[i], a6 = d6[i];
        o0[i] = d0[i] - d6[i] + (WINO_T)5.25 * (a4 - a2);
        o7[i] = d7[i] - a1 + (WINO_T)5.25 * (a3 - a5);
        /* The other rows pair up as s + t and s - t (points p and -p). */
        const WINO_T s1 = a2 + a6 - (WINO_T)4.25 * a4, t1 = a1 + a5 - (WINO_T)4.25 * a3;
        o1[i] = s1 + t1;
        o2[i] = s1 - t1;
        const WINO_T s2 = (WINO_T)0.25 * a2 - (WINO_T)1.25 * a4 + a6;
        const WINO_T t2 = (WINO_T)0.5 * a1 - (WINO_T)2.5 * a3 + 2 * a5;
        o3[i] = s2 + t2;
        o4[i] = s2 - t2;
        const WINO_T s3 = 4 * a2 - 5 * a4 + a6, t3 = 2 * a1 - (WINO_T)2.5 * a3 + (WINO_T)0.5 * a5;
        o5[i] = s3 + t3;
        o6[i] = s3 - t3;
    }
}

/* V (64, C, T) = B^T d B for every 8x8 patch d of x (G, C, H, W), pad (ph, pw); tile
 * (g, th, tw) is column (th * G + g) * TW + tw of V (winograd.pyx). */
WINO_ATTR static void WINO_NAME(nnkit_winograd_input)(
        const WINO_T *restrict x, ptrdiff_t g_count, ptrdiff_t c_count, ptrdiff_t h,
        ptrdiff_t w, ptrdiff_t ph, ptrdiff_t pw, WINO_T *restrict v,
        WINO_T *restrict scratch) {
    const ptrdiff_t th_count = (h + 2 * ph - 1) / 4, tw_count = (w + 2 * pw - 1) / 4;
    const ptrdiff_t rows = 4 * th_count + 4;                      /* padded rows */
    const ptrdiff_t gt = g_count * tw_count;                      /* one row of every image */
    const ptrdiff_t tiles = th_count * gt;                        /* the chunk's tiles */
    const ptrdiff_t cell = c_count * tiles;                       /* V's stride per cell */
    /* p[k][r][g][tw]: cell 4 tw + k of padded row r of image g; q likewise cell
     * 4 (tw + 1) + k (the row transform's second half). u[nu][phase][a][g][tw]: the row
     * transform of padded row 4a + phase (th_count + 1 rows of each phase). */
    const ptrdiff_t pq = rows * gt;
    WINO_T *restrict p = scratch;
    WINO_T *restrict q = p + 4 * pq;
    WINO_T *restrict u = q + 4 * pq;
    const ptrdiff_t u_rows = (th_count + 1) * gt;                 /* per (nu, phase) */
    /* One padded row, cells 0 .. 4 TW + 3 (which cover w + 2 pw): its padding stays zero,
     * each image row is copied into cells pw .. pw + w - 1. */
    WINO_T *restrict padded = u + 32 * u_rows;
    for (ptrdiff_t k = 0; k < 4 * tw_count + 4; k++)
        padded[k] = 0;
    for (ptrdiff_t c = 0; c < c_count; c++) {
        for (ptrdiff_t g = 0; g < g_count; g++) {
            const WINO_T *plane = x + (g * c_count + c) * h * w;
            for (ptrdiff_t r = 0; r < rows; r++) {
                const ptrdiff_t ir = r - ph;
                WINO_T *p0 = p + r * gt + g * tw_count, *q0 = q + (p0 - p);
                WINO_T *p1 = p0 + pq, *p2 = p1 + pq, *p3 = p2 + pq;
                WINO_T *q1 = q0 + pq, *q2 = q1 + pq, *q3 = q2 + pq;
                if (ir < 0 || ir >= h) {  /* a padding row */
                    for (ptrdiff_t j = 0; j < tw_count; j++)
                        p0[j] = p1[j] = p2[j] = p3[j] = q0[j] = q1[j] = q2[j] = q3[j] = 0;
                    continue;
                }
                /* Cells 4 j + k of the padded row into p, cells 4 (j + 1) + k into q:
                 * copied without a test from the padded copy (a test per cell took twice
                 * the instructions). */
                memcpy(padded + pw, plane + ir * w, w * sizeof(WINO_T));
                for (ptrdiff_t j = 0; j < tw_count; j++) {
                    const WINO_T *cell = padded + 4 * j;
                    p0[j] = cell[0];
                    p1[j] = cell[1];
                    p2[j] = cell[2];
                    p3[j] = cell[3];
                    q0[j] = cell[4];
                    q1[j] = cell[5];
                    q2[j] = cell[6];
                    q3[j] = cell[7];
                }
            }
        }
        /* Row transform, all the chunk's images at once: 8 outputs per tile. In a loop of
         * its own, after every row is filled, so that no vector load has to wait on the
         * scalar stores it spans (store forwarding). */
        for (ptrdiff_t r = 0; r < rows; r++) {
            const WINO_T *p0 = p + r * gt, *q0 = q + r * gt;
            WINO_T *ur = u + (r & 3) * u_rows + (r >> 2) * gt;
            const ptrdiff_t s = 4 * u_rows;                              /* next nu */
            WINO_NAME(transform8)(p0, p0 + pq, p0 + 2 * pq, p0 + 3 * pq,
                                  q0, q0 + pq, q0 + 2 * pq, q0 + 3 * pq,
                                  ur, ur + s, ur + 2 * s, ur + 3 * s, ur + 4 * s,
                                  ur + 5 * s, ur + 6 * s, ur + 7 * s, gt);
        }
        /* Column transform B^T over rows 4th .. 4th+7: row 4th + a of tile column
         * (th * G + g) * TW + tw is row th + a/4 of phase a%4, at that column + (a/4) * G*TW
         * of the phase: every read runs over all the chunk's tiles. */
        WINO_T *out = v + c * tiles;
        for (ptrdiff_t nu = 0; nu < 8; nu++) {
            const WINO_T *u0 = u + 4 * nu * u_rows, *u1 = u0 + u_rows;
            const WINO_T *u2 = u1 + u_rows, *u3 = u2 + u_rows;
            WINO_T *vn = out + nu * cell;
            const ptrdiff_t s = 8 * cell;                                /* next xi */
            WINO_NAME(transform8)(u0, u1, u2, u3, u0 + gt, u1 + gt, u2 + gt, u3 + gt,
                                  vn, vn + s, vn + 2 * s, vn + 3 * s, vn + 4 * s,
                                  vn + 5 * s, vn + 6 * s, vn + 7 * s, tiles);
        }
    }
}

/* y_k[i] = (A^T m)[k] + b for m = (m0[i], ..., m7[i]), i < n: A^T of F(4, 5).
 * Separate restrict parameters, as for transform8. */
WINO_ATTR static void WINO_NAME(collapse8)(
        const WINO_T *restrict m0, const WINO_T *restrict m1, const WINO_T *restrict m2,
        const WINO_T *restrict m3, const WINO_T *restrict m4, const WINO_T *restrict m5,
        const WINO_T *restrict m6, const WINO_T *restrict m7,
        WINO_T *restrict y0, WINO_T *restrict y1, WINO_T *restrict y2, WINO_T *restrict y3,
        WINO_T b, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        const WINO_T p1 = m1[i] + m2[i], q1 = m1[i] - m2[i];   /* points +-1, +-2, +-1/2 */
        const WINO_T p2 = m3[i] + m4[i], q2 = m3[i] - m4[i];
        const WINO_T p3 = m5[i] + m6[i], q3 = m5[i] - m6[i];
        y0[i] = m0[i] + p1 + p2 + p3 + b;
        y1[i] = q1 + 2 * q2 + (WINO_T)0.5 * q3 + b;
        y2[i] = p1 + 4 * p2 + (WINO_T)0.25 * p3 + b;
        y3[i] = q1 + 8 * q2 + (WINO_T)0.125 * q3 + m7[i] + b;
    }
}

/* Output row `row` of every image g (at row + g * plane, OW values) from its tiles'
 * columns j = 0..3: column j of the row's tile (g, tw) is q0[j * s + g * TW + tw]. With OW
 * a multiple of 4 each tile's 4 values are contiguous in the output, and float moves 4
 * tiles at a time by a 4x4 transpose (SSE), across the images' boundaries: the scalar
 * stores, one row of one image at a time, took over half the output transform's
 * instructions on 16-wide planes. */
WINO_ATTR static inline __attribute__((always_inline)) void WINO_NAME(scatter_row)(
        const WINO_T *restrict q0, ptrdiff_t s, ptrdiff_t g_count, ptrdiff_t tw_count,
        WINO_T *restrict row, ptrdiff_t plane, ptrdiff_t ow) {
    const WINO_T *q1 = q0 + s, *q2 = q1 + s, *q3 = q2 + s;
    if (ow & 3) {  /* a last, partial tile: image by image */
        const ptrdiff_t full = ow / 4;
        for (ptrdiff_t g = 0; g < g_count; g++) {
            WINO_T *yr = row + g * plane;
            const ptrdiff_t o = g * tw_count;
            for (ptrdiff_t t = 0; t < full; t++) {
                yr[4 * t] = q0[o + t];
                yr[4 * t + 1] = q1[o + t];
                yr[4 * t + 2] = q2[o + t];
                yr[4 * t + 3] = q3[o + t];
            }
            const WINO_T *last[3] = {q0 + o, q1 + o, q2 + o};
            for (ptrdiff_t j = 0; j < (ow & 3); j++)
                yr[4 * full + j] = last[j][full];
        }
        return;
    }
    const ptrdiff_t n = g_count * tw_count;
    ptrdiff_t t = 0, g = 0, tw = 0;            /* tile t is (g, tw) */
#if WINO_SSE
    if ((tw_count & 3) == 0) {  /* 4 tiles of one image: 16 outputs in a run */
        for (g = 0; g < g_count; g++)
            for (tw = 0; tw < tw_count; tw += 4) {
                const ptrdiff_t u = g * tw_count + tw;
                __m128 a = _mm_loadu_ps(q0 + u), b = _mm_loadu_ps(q1 + u);
                __m128 c = _mm_loadu_ps(q2 + u), d = _mm_loadu_ps(q3 + u);
                _MM_TRANSPOSE4_PS(a, b, c, d);
                WINO_T *out = row + g * plane + 4 * tw;
                _mm_storeu_ps(out, a);
                _mm_storeu_ps(out + 4, b);
                _mm_storeu_ps(out + 8, c);
                _mm_storeu_ps(out + 12, d);
            }
        return;
    }
    for (; t + 4 <= n; t += 4) {
        __m128 a = _mm_loadu_ps(q0 + t), b = _mm_loadu_ps(q1 + t);
        __m128 c = _mm_loadu_ps(q2 + t), d = _mm_loadu_ps(q3 + t);
        _MM_TRANSPOSE4_PS(a, b, c, d);         /* a: tile t's 4 values, b: t + 1's, ... */
        __m128 tile[4] = {a, b, c, d};
        for (int k = 0; k < 4; k++) {
            _mm_storeu_ps(row + g * plane + 4 * tw, tile[k]);
            if (++tw == tw_count) {
                tw = 0;
                g++;
            }
        }
    }
#endif
    for (; t < n; t++) {
        WINO_T *out = row + g * plane + 4 * tw;
        out[0] = q0[t];
        out[1] = q1[t];
        out[2] = q2[t];
        out[3] = q3[t];
        if (++tw == tw_count) {
            tw = 0;
            g++;
        }
    }
}

/* The inverse of scatter_row: q0[j * s + g * TW + tw] = column j of row `row`'s tile
 * (g, tw), for every image g (a last, partial tile's missing columns are left as they
 * are). */
WINO_ATTR static inline __attribute__((always_inline)) void WINO_NAME(gather_row)(
        const WINO_T *restrict row, ptrdiff_t plane, ptrdiff_t ow, ptrdiff_t g_count,
        ptrdiff_t tw_count, WINO_T *restrict q0, ptrdiff_t s) {
    WINO_T *q1 = q0 + s, *q2 = q1 + s, *q3 = q2 + s;
    if (ow & 3) {  /* a last, partial tile: image by image */
        const ptrdiff_t full = ow / 4;
        for (ptrdiff_t g = 0; g < g_count; g++) {
            const WINO_T *yr = row + g * plane;
            const ptrdiff_t o = g * tw_count;
            for (ptrdiff_t t = 0; t < full; t++) {
                q0[o + t] = yr[4 * t];
                q1[o + t] = yr[4 * t + 1];
                q2[o + t] = yr[4 * t + 2];
                q3[o + t] = yr[4 * t + 3];
            }
            WINO_T *last[3] = {q0 + o, q1 + o, q2 + o};
            for (ptrdiff_t j = 0; j < (ow & 3); j++)
                last[j][full] = yr[4 * full + j];
        }
        return;
    }
    const ptrdiff_t n = g_count * tw_count;
    ptrdiff_t t = 0, g = 0, tw = 0;            /* tile t is (g, tw) */
#if WINO_SSE
    if ((tw_count & 3) == 0) {  /* 4 tiles of one image: 16 values in a run */
        for (g = 0; g < g_count; g++)
            for (tw = 0; tw < tw_count; tw += 4) {
                const WINO_T *in = row + g * plane + 4 * tw;
                __m128 a = _mm_loadu_ps(in), b = _mm_loadu_ps(in + 4);
                __m128 c = _mm_loadu_ps(in + 8), d = _mm_loadu_ps(in + 12);
                _MM_TRANSPOSE4_PS(a, b, c, d);
                const ptrdiff_t u = g * tw_count + tw;
                _mm_storeu_ps(q0 + u, a);
                _mm_storeu_ps(q1 + u, b);
                _mm_storeu_ps(q2 + u, c);
                _mm_storeu_ps(q3 + u, d);
            }
        return;
    }
    for (; t + 4 <= n; t += 4) {
        __m128 tile[4];
        for (int k = 0; k < 4; k++) {
            tile[k] = _mm_loadu_ps(row + g * plane + 4 * tw);
            if (++tw == tw_count) {
                tw = 0;
                g++;
            }
        }
        _MM_TRANSPOSE4_PS(tile[0], tile[1], tile[2], tile[3]);
        _mm_storeu_ps(q0 + t, tile[0]);
        _mm_storeu_ps(q1 + t, tile[1]);
        _mm_storeu_ps(q2 + t, tile[2]);
        _mm_storeu_ps(q3 + t, tile[3]);
    }
#endif
    for (; t < n; t++) {
        const WINO_T *in = row + g * plane + 4 * tw;
        q0[t] = in[0];
        q1[t] = in[1];
        q2[t] = in[2];
        q3[t] = in[3];
        if (++tw == tw_count) {
            tw = 0;
            g++;
        }
    }
}

/* y (G, F, OH, OW) = A^T M A (+ bias, if not NULL) for the tiles M (64, F, T), tile
 * (g, th, tw) at column (th * G + g) * TW + tw. */
WINO_ATTR static void WINO_NAME(nnkit_winograd_output)(
        const WINO_T *restrict m, const WINO_T *restrict bias, ptrdiff_t g_count,
        ptrdiff_t f_count, ptrdiff_t oh, ptrdiff_t ow, WINO_T *restrict y,
        WINO_T *restrict scratch) {
    const ptrdiff_t th_count = (oh + 3) / 4, tw_count = (ow + 3) / 4;
    const ptrdiff_t gt = g_count * tw_count, pt = th_count * gt;   /* the chunk's tiles */
    const ptrdiff_t cell = f_count * pt;
    WINO_T *restrict z = scratch;                       /* z[4 xi + j][t]: A^T over nu */
    WINO_T *restrict q = scratch + 32 * pt;             /* q[4 i + j][t]: the outputs */
    for (ptrdiff_t f = 0; f < f_count; f++) {  /* all the chunk's images at once */
        const WINO_T b = bias ? bias[f] : 0;
        const WINO_T *in = m + f * pt;
        for (ptrdiff_t xi = 0; xi < 8; xi++) {
            const WINO_T *mx = in + 8 * xi * cell;
            WINO_T *z0 = z + 4 * xi * pt;
            WINO_NAME(collapse8)(mx, mx + cell, mx + 2 * cell, mx + 3 * cell, mx + 4 * cell,
                                 mx + 5 * cell, mx + 6 * cell, mx + 7 * cell,
                                 z0, z0 + pt, z0 + 2 * pt, z0 + 3 * pt, 0, pt);
        }
        for (ptrdiff_t j = 0; j < 4; j++) {  /* A^T over xi: q[4 i + j] */
            const WINO_T *zj = z + j * pt;
            const ptrdiff_t s = 4 * pt;                      /* next xi */
            WINO_NAME(collapse8)(zj, zj + s, zj + 2 * s, zj + 3 * s, zj + 4 * s, zj + 5 * s,
                                 zj + 6 * s, zj + 7 * s, q + j * pt, q + (4 + j) * pt,
                                 q + (8 + j) * pt, q + (12 + j) * pt, b, pt);
        }
        WINO_T *planes = y + f * oh * ow;                   /* image g's at g * F*OH*OW */
        for (ptrdiff_t row = 0; row < oh; row++) {
            const WINO_T *q0 = q + 4 * (row & 3) * pt + (row >> 2) * gt;
            WINO_NAME(scatter_row)(q0, pt, g_count, tw_count, planes + row * ow,
                                   f_count * oh * ow, ow);
        }
    }
}

/* o_k[i] = (A y)[k] for y = (y0[i], ..., y3[i]), i < n: A = (A^T)^T of F(4, 5), the
 * adjoint of collapse8. Separate restrict parameters, as for transform8. */
WINO_ATTR static void WINO_NAME(expand8)(
        const WINO_T *restrict y0, const WINO_T *restrict y1, const WINO_T *restrict y2,
        const WINO_T *restrict y3, WINO_T *restrict o0, WINO_T *restrict o1,
        WINO_T *restrict o2, WINO_T *restrict o3, WINO_T *restrict o4, WINO_T *restrict o5,
        WINO_T *restrict o6, WINO_T *restrict o7, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        const WINO_T a0 = y0[i], a1 = y1[i], a2 = y2[i], a3 = y3[i];
        const WINO_T s1 = a0 + a2, t1 = a1 + a3;
        const WINO_T s2 = a0 + 4 * a2, t2 = 2 * a1 + 8 * a3;
        const WINO_T s3 = a0 + (WINO_T)0.25 * a2, t3 = (WINO_T)0.5 * a1 + (WINO_T)0.125 * a3;
        o0[i] = a0;
        o1[i] = s1 + t1;
        o2[i] = s1 - t1;
        o3[i] = s2 + t2;
        o4[i] = s2 - t2;
        o5[i] = s3 + t3;
        o6[i] = s3 - t3;
        o7[i] = a3;
    }
}

/* dM (64, F, T) = A dY A^T for every 4x4 tile dY of dy (G, F, OH, OW), the outputs past
 * a last, partly filled tile row or column taken as zero: the adjoint of the output
 * transform (same tile columns). db[f] += the sum of dy's planes of filter f, unless db is
 * NULL. */
WINO_ATTR static void WINO_NAME(nnkit_winograd_grad_output)(
        const WINO_T *restrict dy, ptrdiff_t g_count, ptrdiff_t f_count, ptrdiff_t oh,
        ptrdiff_t ow, WINO_T *restrict dm, double *restrict db, WINO_T *restrict scratch) {
    const ptrdiff_t th_count = (oh + 3) / 4, tw_count = (ow + 3) / 4;
    const ptrdiff_t gt = g_count * tw_count, pt = th_count * gt;   /* the chunk's tiles */
    const ptrdiff_t cell = f_count * pt;
    WINO_T *restrict q = scratch;                       /* q[4 i + j][t]: dY[i, j] */
    WINO_T *restrict z = scratch + 16 * pt;             /* z[8 i + nu][t]: A over j */
    for (ptrdiff_t f = 0; f < f_count; f++) {  /* all the chunk's images at once */
        if ((oh | ow) & 3)
            for (ptrdiff_t k = 0; k < 16 * pt; k++)
                q[k] = 0;
        double sum = 0;
        const WINO_T *planes = dy + f * oh * ow;           /* image g's at g * F*OH*OW */
        for (ptrdiff_t row = 0; row < oh; row++) {
            WINO_T *q0 = q + 4 * (row & 3) * pt + (row >> 2) * gt;
            WINO_NAME(gather_row)(planes + row * ow, f_count * oh * ow, ow, g_count, tw_count,
                                  q0, pt);
        }
        for (ptrdiff_t g = 0; g < g_count; g++) {
            const WINO_T *plane = planes + g * f_count * oh * ow;
            for (ptrdiff_t k = 0; k < oh * ow; k++)
                sum += plane[k];
        }
        if (db)
            db[f] += sum;
        for (ptrdiff_t i = 0; i < 4; i++) {  /* A over j: z[8 i + nu] */
            const WINO_T *qi = q + 4 * i * pt;
            WINO_T *zi = z + 8 * i * pt;
            WINO_NAME(expand8)(qi, qi + pt, qi + 2 * pt, qi + 3 * pt, zi, zi + pt,
                               zi + 2 * pt, zi + 3 * pt, zi + 4 * pt, zi + 5 * pt,
                               zi + 6 * pt, zi + 7 * pt, pt);
        }
        WINO_T *out = dm + f * pt;
        for (ptrdiff_t nu = 0; nu < 8; nu++) {  /* A over i: dM[8 xi + nu] */
            WINO_T *on = out + nu * cell;
            const ptrdiff_t s = 8 * cell;                    /* next xi */
            WINO_NAME(expand8)(z + nu * pt, z + (8 + nu) * pt, z + (16 + nu) * pt,
                               z + (24 + nu) * pt, on, on + s, on + 2 * s, on + 3 * s,
                               on + 4 * s, on + 5 * s, on + 6 * s, on + 7 * s, pt);
        }
    }
}
