/* One instance of the Winograd F(2x2, 5x5) transforms (see winograd.h), for the element
 * type WINO_T, named with WINO_NAME(base), compiled with the attributes WINO_ATTR.
 * Included once per (type, instruction set); defines nothing else.
 */

/* o_k[i] = (B^T d)[k] for d = (d0[i], ..., d5[i]), i < n: B^T of F(2, 5). The six outputs
 * are separate restrict parameters: gcc 12 does not vectorize the loop when they are
 * offsets of one pointer (seen with -fopt-info-vec). */
WINO_ATTR static void WINO_NAME(transform6)(
        const WINO_T *restrict d0, const WINO_T *restrict d1, const WINO_T *restrict d2,
        const WINO_T *restrict d3, const WINO_T *restrict d4, const WINO_T *restrict d5,
        WINO_T *restrict o0, WINO_T *restrict o1, WINO_T *restrict o2, WINO_T *restrict o3,
        WINO_T *restrict o4, WINO_T *restrict o5, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        o0[i] = 4 * d0[i] - 5 * d2[i] + d4[i];
        o1[i] = -4 * (d1[i] + d2[i]) + d3[i] + d4[i];
        o2[i] = 4 * (d1[i] - d2[i]) - d3[i] + d4[i];
        o3[i] = 2 * (d3[i] - d1[i]) - d2[i] + d4[i];
        o4[i] = 2 * (d1[i] - d3[i]) - d2[i] + d4[i];
        o5[i] = 4 * d1[i] - 5 * d3[i] + d5[i];
    }
}

/* V (36, C, G*TH*TW) = B^T d B for every 6x6 patch d of x (G, C, H, W), pad (ph, pw). */
WINO_ATTR static void WINO_NAME(nnkit_winograd_input)(
        const WINO_T *restrict x, ptrdiff_t g_count, ptrdiff_t c_count, ptrdiff_t h,
        ptrdiff_t w, ptrdiff_t ph, ptrdiff_t pw, WINO_T *restrict v,
        WINO_T *restrict scratch) {
    const ptrdiff_t th_count = (h + 2 * ph - 3) / 2, tw_count = (w + 2 * pw - 3) / 2;
    const ptrdiff_t rows = 2 * th_count + 4, half = tw_count + 2;  /* padded rows, E/O cells */
    const ptrdiff_t plane_tiles = th_count * tw_count;
    const ptrdiff_t cell = c_count * g_count * plane_tiles;        /* V's stride per cell */
    /* e, o: even and odd cells of each padded row; u[nu][parity][k][tw]: the row transform
     * of padded row 2k + parity (th_count + 2 rows of each parity). */
    WINO_T *restrict e = scratch, *restrict o = scratch + rows * half;
    WINO_T *restrict u = o + rows * half;
    const ptrdiff_t u_rows = (th_count + 2) * tw_count;            /* per (nu, parity) */
    for (ptrdiff_t g = 0; g < g_count; g++) {
        for (ptrdiff_t c = 0; c < c_count; c++) {
            const WINO_T *plane = x + (g * c_count + c) * h * w;
            for (ptrdiff_t r = 0; r < rows; r++) {
                const ptrdiff_t ir = r - ph;
                WINO_T *er = e + r * half, *or_ = o + r * half;
                for (ptrdiff_t k = 0; k < half; k++) {
                    const ptrdiff_t c0 = 2 * k - pw, c1 = c0 + 1;
                    const int inside = 0 <= ir && ir < h;
                    er[k] = inside && 0 <= c0 && c0 < w ? plane[ir * w + c0] : 0;
                    or_[k] = inside && 0 <= c1 && c1 < w ? plane[ir * w + c1] : 0;
                }
                /* Row transform: 6 outputs per tile from cells e[tw..tw+2], o[tw..tw+2]. */
                WINO_T *ur = u + (r & 1) * u_rows + (r >> 1) * tw_count;
                WINO_NAME(transform6)(er, or_, er + 1, or_ + 1, er + 2, or_ + 2, ur,
                                      ur + 2 * u_rows, ur + 4 * u_rows, ur + 6 * u_rows,
                                      ur + 8 * u_rows, ur + 10 * u_rows, tw_count);
            }
            /* Column transform B^T over rows 2th .. 2th+5: for tile t = th*TW + tw, row
             * 2th + 2a is even row th + a, at t + a*TW: every read runs over the plane. */
            WINO_T *out = v + c * (g_count * plane_tiles) + g * plane_tiles;
            for (ptrdiff_t nu = 0; nu < 6; nu++) {
                const WINO_T *ue = u + 2 * nu * u_rows, *uo = ue + u_rows;
                WINO_T *vn = out + nu * cell;
                WINO_NAME(transform6)(ue, uo, ue + tw_count, uo + tw_count, ue + 2 * tw_count,
                                      uo + 2 * tw_count, vn, vn + 6 * cell, vn + 12 * cell,
                                      vn + 18 * cell, vn + 24 * cell, vn + 30 * cell,
                                      plane_tiles);
            }
        }
    }
}

/* y0[i] = (A^T m)[0] + b, y1[i] = (A^T m)[1] + b for m = (m0[i], ..., m5[i]), i < n: A^T of
 * F(2, 5). Separate restrict parameters, as for transform6. */
WINO_ATTR static void WINO_NAME(collapse6)(
        const WINO_T *restrict m0, const WINO_T *restrict m1, const WINO_T *restrict m2,
        const WINO_T *restrict m3, const WINO_T *restrict m4, const WINO_T *restrict m5,
        WINO_T *restrict y0, WINO_T *restrict y1, WINO_T b, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        y0[i] = m0[i] + m1[i] + m2[i] + m3[i] + m4[i] + b;
        y1[i] = m1[i] - m2[i] + 2 * (m3[i] - m4[i]) + m5[i] + b;
    }
}

/* y (G, F, OH, OW) = A^T M A (+ bias, if not NULL) for the tiles M (36, F, G*TH*TW). */
WINO_ATTR static void WINO_NAME(nnkit_winograd_output)(
        const WINO_T *restrict m, const WINO_T *restrict bias, ptrdiff_t g_count,
        ptrdiff_t f_count, ptrdiff_t oh, ptrdiff_t ow, WINO_T *restrict y,
        WINO_T *restrict scratch) {
    const ptrdiff_t th_count = (oh + 1) / 2, tw_count = (ow + 1) / 2;
    const ptrdiff_t plane_tiles = th_count * tw_count;
    const ptrdiff_t cell = f_count * g_count * plane_tiles;
    WINO_T *restrict z = scratch;                       /* z[2 xi + j][t]: A^T over nu */
    WINO_T *restrict q = scratch + 12 * plane_tiles;    /* q[2 i + j][t]: the outputs */
    for (ptrdiff_t g = 0; g < g_count; g++) {
        for (ptrdiff_t f = 0; f < f_count; f++) {
            const WINO_T b = bias ? bias[f] : 0;
            const WINO_T *in = m + f * (g_count * plane_tiles) + g * plane_tiles;
            for (ptrdiff_t xi = 0; xi < 6; xi++) {
                const WINO_T *mx = in + 6 * xi * cell;
                WINO_T *z0 = z + 2 * xi * plane_tiles;
                WINO_NAME(collapse6)(mx, mx + cell, mx + 2 * cell, mx + 3 * cell, mx + 4 * cell,
                                     mx + 5 * cell, z0, z0 + plane_tiles, 0, plane_tiles);
            }
            for (ptrdiff_t j = 0; j < 2; j++) {  /* A^T over xi: q[2 i + j] */
                const WINO_T *zj = z + j * plane_tiles;
                const ptrdiff_t s = 2 * plane_tiles;             /* next xi */
                WINO_NAME(collapse6)(zj, zj + s, zj + 2 * s, zj + 3 * s, zj + 4 * s, zj + 5 * s,
                                     q + j * plane_tiles, q + (2 + j) * plane_tiles, b,
                                     plane_tiles);
            }
            WINO_T *plane = y + (g * f_count + f) * oh * ow;
            for (ptrdiff_t row = 0; row < oh; row++) {
                const ptrdiff_t th = row >> 1, i = row & 1;
                const WINO_T *even = q + 2 * i * plane_tiles + th * tw_count;
                const WINO_T *odd = even + plane_tiles;
                WINO_T *yr = plane + row * ow;
                const ptrdiff_t full = ow / 2;
                for (ptrdiff_t tw = 0; tw < full; tw++) {
                    yr[2 * tw] = even[tw];
                    yr[2 * tw + 1] = odd[tw];
                }
                if (ow & 1)
                    yr[ow - 1] = even[full];
            }
        }
    }
}

/* o_k[i] = (A y)[k] for y = (y0[i], y1[i]), i < n: A = (A^T)^T of F(2, 5), the adjoint of
 * collapse6. Separate restrict parameters, as for transform6. */
WINO_ATTR static void WINO_NAME(expand6)(
        const WINO_T *restrict y0, const WINO_T *restrict y1, WINO_T *restrict o0,
        WINO_T *restrict o1, WINO_T *restrict o2, WINO_T *restrict o3, WINO_T *restrict o4,
        WINO_T *restrict o5, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        o0[i] = y0[i];
        o1[i] = y0[i] + y1[i];
        o2[i] = y0[i] - y1[i];
        o3[i] = y0[i] + 2 * y1[i];
        o4[i] = y0[i] - 2 * y1[i];
        o5[i] = y1[i];
    }
}

/* dM (36, F, G*TH*TW) = A dY A^T for every 2x2 tile dY of dy (G, F, OH, OW), the outputs
 * past a last, half-filled tile row or column taken as zero: the adjoint of the output
 * transform. db[f] += the sum of dy's planes of filter f, unless db is NULL. */
WINO_ATTR static void WINO_NAME(nnkit_winograd_grad_output)(
        const WINO_T *restrict dy, ptrdiff_t g_count, ptrdiff_t f_count, ptrdiff_t oh,
        ptrdiff_t ow, WINO_T *restrict dm, double *restrict db, WINO_T *restrict scratch) {
    const ptrdiff_t th_count = (oh + 1) / 2, tw_count = (ow + 1) / 2;
    const ptrdiff_t plane_tiles = th_count * tw_count;
    const ptrdiff_t cell = f_count * g_count * plane_tiles;
    WINO_T *restrict q = scratch;                       /* q[2 i + j][t]: dY[i, j] */
    WINO_T *restrict z = scratch + 4 * plane_tiles;     /* z[6 i + nu][t]: A over j */
    const ptrdiff_t full = ow / 2;
    for (ptrdiff_t g = 0; g < g_count; g++) {
        for (ptrdiff_t f = 0; f < f_count; f++) {
            const WINO_T *plane = dy + (g * f_count + f) * oh * ow;
            if ((oh | ow) & 1)
                for (ptrdiff_t k = 0; k < 4 * plane_tiles; k++)
                    q[k] = 0;
            double sum = 0;
            for (ptrdiff_t row = 0; row < oh; row++) {
                const ptrdiff_t th = row >> 1, i = row & 1;
                WINO_T *even = q + 2 * i * plane_tiles + th * tw_count;
                WINO_T *odd = even + plane_tiles;
                const WINO_T *yr = plane + row * ow;
                for (ptrdiff_t tw = 0; tw < full; tw++) {
                    even[tw] = yr[2 * tw];
                    odd[tw] = yr[2 * tw + 1];
                }
                if (ow & 1)
                    even[full] = yr[ow - 1];
                for (ptrdiff_t k = 0; k < ow; k++)
                    sum += yr[k];
            }
            if (db)
                db[f] += sum;
            for (ptrdiff_t i = 0; i < 2; i++) {  /* A over j: z[6 i + nu] */
                WINO_T *zi = z + 6 * i * plane_tiles;
                WINO_NAME(expand6)(q + 2 * i * plane_tiles, q + (2 * i + 1) * plane_tiles, zi,
                                   zi + plane_tiles, zi + 2 * plane_tiles, zi + 3 * plane_tiles,
                                   zi + 4 * plane_tiles, zi + 5 * plane_tiles, plane_tiles);
            }
            WINO_T *out = dm + f * (g_count * plane_tiles) + g * plane_tiles;
            for (ptrdiff_t nu = 0; nu < 6; nu++) {  /* A over i: dM[6 xi + nu] */
                WINO_T *on = out + nu * cell;
                WINO_NAME(expand6)(z + nu * plane_tiles, z + (6 + nu) * plane_tiles, on,
                                   on + 6 * cell, on + 12 * cell, on + 18 * cell,
                                   on + 24 * cell, on + 30 * cell, plane_tiles);
            }
        }
    }
}
