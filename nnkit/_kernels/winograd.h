/* Winograd F(4x4, 5x5) input and output transforms and the output transform's adjoint
 * (nnkit/_kernels/winograd.pyx has the algorithm and the layouts), for float and double.
 *
 * The loops run over one tile row of all the chunk's images (the row transform) or over all
 * the chunk's tiles (G*TH*TW: the column, output and adjoint transforms), reading and
 * writing contiguous runs through restrict-qualified parameters, so gcc vectorizes them. On x86-64 each is compiled twice, for the baseline SSE2 and for AVX2 + FMA, and the
 * CPU picks at run time (as scaled_tanh.h does).
 */
#ifndef NNKIT_WINOGRAD_H
#define NNKIT_WINOGRAD_H

#include <stddef.h>
#include <string.h>
#if defined(__SSE2__)
#include <xmmintrin.h>
#define NNKIT_WINO_HAVE_SSE 1
#else
#define NNKIT_WINO_HAVE_SSE 0
#endif

/* WINO_SSE: the float instances transpose 4x4 blocks with SSE (x86-64's baseline). */
#define WINO_T float
#define WINO_SSE NNKIT_WINO_HAVE_SSE
#define WINO_ATTR
#define WINO_NAME(base) base##_float_baseline
#include "winograd_body.h"
#undef WINO_T
#undef WINO_NAME
#undef WINO_SSE
#define WINO_T double
#define WINO_SSE 0
#define WINO_NAME(base) base##_double_baseline
#include "winograd_body.h"
#undef WINO_T
#undef WINO_NAME
#undef WINO_SSE
#undef WINO_ATTR

#if defined(__x86_64__) && defined(__GNUC__)
#define NNKIT_WINO_AVX2 1
#define WINO_ATTR __attribute__((target("avx2,fma")))
#define WINO_T float
#define WINO_SSE 1
#define WINO_NAME(base) base##_float_avx2
#include "winograd_body.h"
#undef WINO_T
#undef WINO_NAME
#undef WINO_SSE
#define WINO_T double
#define WINO_SSE 0
#define WINO_NAME(base) base##_double_avx2
#include "winograd_body.h"
#undef WINO_T
#undef WINO_NAME
#undef WINO_SSE
#undef WINO_ATTR
#endif

static int nnkit_winograd_use_avx2(void) {
#ifdef NNKIT_WINO_AVX2
    static int cached = -1;
    if (cached < 0)
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return cached;
#else
    return 0;
#endif
}

#ifdef NNKIT_WINO_AVX2
#define NNKIT_WINO_DISPATCH(base, type, ...)                      \
    do {                                                          \
        if (nnkit_winograd_use_avx2()) base##_##type##_avx2(__VA_ARGS__); \
        else base##_##type##_baseline(__VA_ARGS__);              \
    } while (0)
#else
#define NNKIT_WINO_DISPATCH(base, type, ...) base##_##type##_baseline(__VA_ARGS__)
#endif

static void nnkit_winograd_input_float(const float *x, ptrdiff_t g, ptrdiff_t c, ptrdiff_t h,
                                       ptrdiff_t w, ptrdiff_t ph, ptrdiff_t pw, float *v,
                                       float *scratch) {
    NNKIT_WINO_DISPATCH(nnkit_winograd_input, float, x, g, c, h, w, ph, pw, v, scratch);
}

static void nnkit_winograd_input_double(const double *x, ptrdiff_t g, ptrdiff_t c,
                                        ptrdiff_t h, ptrdiff_t w, ptrdiff_t ph, ptrdiff_t pw,
                                        double *v, double *scratch) {
    NNKIT_WINO_DISPATCH(nnkit_winograd_input, double, x, g, c, h, w, ph, pw, v, scratch);
}

static void nnkit_winograd_output_float(const float *m, const float *bias, ptrdiff_t g,
                                        ptrdiff_t f, ptrdiff_t oh, ptrdiff_t ow, float *y,
                                        float *scratch) {
    NNKIT_WINO_DISPATCH(nnkit_winograd_output, float, m, bias, g, f, oh, ow, y, scratch);
}

static void nnkit_winograd_output_double(const double *m, const double *bias, ptrdiff_t g,
                                         ptrdiff_t f, ptrdiff_t oh, ptrdiff_t ow, double *y,
                                         double *scratch) {
    NNKIT_WINO_DISPATCH(nnkit_winograd_output, double, m, bias, g, f, oh, ow, y, scratch);
}

static void nnkit_winograd_grad_output_float(const float *dy, ptrdiff_t g, ptrdiff_t f,
                                             ptrdiff_t oh, ptrdiff_t ow, float *dm, double *db,
                                             float *scratch) {
    NNKIT_WINO_DISPATCH(nnkit_winograd_grad_output, float, dy, g, f, oh, ow, dm, db, scratch);
}

static void nnkit_winograd_grad_output_double(const double *dy, ptrdiff_t g, ptrdiff_t f,
                                              ptrdiff_t oh, ptrdiff_t ow, double *dm,
                                              double *db, double *scratch) {
    NNKIT_WINO_DISPATCH(nnkit_winograd_grad_output, double, dy, g, f, oh, ow, dm, db, scratch);
}

#endif
