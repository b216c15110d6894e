/* y = x @ w^T (+ bias) for one or two rows of x: the decode step's shape.
 *
 * The step is bound by reading the weights once; MKL's sgemm for N=1-2 reaches ~70 % of the read bandwidth
 * on the CPUs we measured, this loop ~100 % (bench/README.md). Each thread streams a contiguous band of
 * weight rows front to back (one stream, so the hardware prefetcher keeps up), both input rows stay in L1.
 * OpenMP here binds to the libgomp PyTorch already loaded (same soname), so it shares PyTorch's threads.
 * Plain C with GCC/Clang vector types: no intrinsics, so one source builds for AVX2, AVX-512 and NEON. */
#include <stddef.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));

static inline v16 load16(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }

static inline float hsum16(v16 v)
{
    float s = 0.0f;
    for (int k = 0; k < 16; k++)
        s += v[k];
    return s;
}

#define PREFETCH_AHEAD 1024   /* floats: 4 KiB ahead of the loads, measured best of 0/256/1024 */

static void row2(const float *w, const float *x0, const float *x1, long in, float *y0, float *y1)
{
    v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
    long i = 0;
    for (; i + 64 <= in; i += 64) {
        __builtin_prefetch(w + i + PREFETCH_AHEAD, 0, 0);
        __builtin_prefetch(w + i + PREFETCH_AHEAD + 32, 0, 0);
        v16 q0 = load16(w + i), q1 = load16(w + i + 16), q2 = load16(w + i + 32), q3 = load16(w + i + 48);
        a0 += q0 * load16(x0 + i); a1 += q1 * load16(x0 + i + 16);
        a2 += q2 * load16(x0 + i + 32); a3 += q3 * load16(x0 + i + 48);
        b0 += q0 * load16(x1 + i); b1 += q1 * load16(x1 + i + 16);
        b2 += q2 * load16(x1 + i + 32); b3 += q3 * load16(x1 + i + 48);
    }
    float s0 = hsum16((a0 + a1) + (a2 + a3)), s1 = hsum16((b0 + b1) + (b2 + b3));
    for (; i < in; i++) {
        s0 += w[i] * x0[i];
        s1 += w[i] * x1[i];
    }
    *y0 = s0;
    *y1 = s1;
}

static void row1(const float *w, const float *x0, long in, float *y0)
{
    v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    long i = 0;
    for (; i + 64 <= in; i += 64) {
        __builtin_prefetch(w + i + PREFETCH_AHEAD, 0, 0);
        __builtin_prefetch(w + i + PREFETCH_AHEAD + 32, 0, 0);
        a0 += load16(w + i) * load16(x0 + i);
        a1 += load16(w + i + 16) * load16(x0 + i + 16);
        a2 += load16(w + i + 32) * load16(x0 + i + 32);
        a3 += load16(w + i + 48) * load16(x0 + i + 48);
    }
    float s0 = hsum16((a0 + a1) + (a2 + a3));
    for (; i < in; i++)
        s0 += w[i] * x0[i];
    *y0 = s0;
}

/* w: (out, in) row-major; x: (rows, in); y: (rows, out); bias: (out) or NULL; rows 1 or 2. Returns 0, or -1
 * for a row count it does not handle. */
int troubadour_gemv(const float *w, const float *x, const float *bias, float *y,
                    long out, long in, int rows, int threads)
{
    if (rows != 1 && rows != 2)
        return -1;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long o = 0; o < out; o++) {
        const float *wr = w + o * in;
        float b = bias ? bias[o] : 0.0f;
        if (rows == 2) {
            float s0, s1;
            row2(wr, x, x + in, in, &s0, &s1);
            y[o] = s0 + b;
            y[out + o] = s1 + b;
        } else {
            float s0;
            row1(wr, x, in, &s0);
            y[o] = s0 + b;
        }
    }
    return 0;
}
