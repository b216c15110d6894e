/* y = x @ w^T (+ bias) for one to eight rows of x: the decode step's shape.
 *
 * The step is bound by reading the weights once; MKL's sgemm for N=1-2 reaches ~70 % of the read bandwidth
 * on the CPUs we measured, these loops ~100 % (bench/README.md). The engine's weights are stored as column
 * panels (troubadour_panels, panels.py); troubadour_gemv takes row-major weights no panel width divides.
 * Each thread streams a contiguous run of weights front to back (one stream, so the hardware prefetcher
 * keeps up) while the input rows stay in L1.
 * OpenMP here binds to the libgomp PyTorch already loaded (same soname), so it shares PyTorch's threads.
 * troubadour_attend (at the end) is the decode step's self-attention over the KV cache, streamed the same way.
 * Plain C with GCC/Clang vector types: no intrinsics, so one source builds for AVX2, AVX-512 and NEON. */
#include <stddef.h>
#include <string.h>
#include <omp.h>

typedef float v16 __attribute__((vector_size(64)));

static inline v16 load16(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

/* Halving adds: a loop over the 16 lanes compiled to 15 scalar adds, a fifth of the 8-row kernel's time.
 * Shuffles where the compiler has them: taking the address of an accumulator (memcpy) made GCC keep every
 * accumulator of the loop on the stack. */
static inline float hsum16(v16 v)
{
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
    v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 c = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
#else
    v8 a, b;
    memcpy(&a, &v, sizeof a);
    memcpy(&b, (char *)&v + sizeof a, sizeof b);
    a += b;
    v4 c, d;
    memcpy(&c, &a, sizeof c);
    memcpy(&d, (char *)&a + sizeof c, sizeof d);
    c += d;
#endif
    return (c[0] + c[2]) + (c[1] + c[3]);
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

/* Three to eight rows (batched prompts). Every weight is read once and used for every input row, so the input
 * rows must stay in L1: the columns go in blocks of BLOCK floats (8 rows x 4 KiB = 32 KiB), and a group of
 * GROUP weight rows is swept once per block, prefetching the same columns of the next rows. R is a constant
 * after inlining (4 or 8; unused rows repeat row 0 and are not stored); U vectors per row per iteration keep
 * eight accumulators in flight for either R. Two weight rows (outputs) share each load of the inputs: with one,
 * eight rows made 9 loads per 8 FMAs and the load ports, not the FMA units, set the pace (44 -> 56 GB/s
 * measured, bench/README.md). Each output keeps its own accumulators, so its sums are added in the same order
 * as with one output per sweep. */
#define BLOCK 1024
#define GROUP 32

static inline __attribute__((always_inline)) void sweep(const int R, const int NO, const float *const *xr,
                                                       const float *w, long in, int rows, long out, long o,
                                                       long k0, long k1, const float *bias, float *y)
{
    enum { ACC = 8 };
    const int U = ACC / R;
    const float *wr = w + o * in;
    v16 a[2][ACC];
    for (int n = 0; n < NO; n++)
        for (int k = 0; k < ACC; k++)
            a[n][k] = (v16){0};
    long i = k0;
    for (; i + 16 * U <= k1; i += 16 * U) {
        for (int u = 0; u < U; u++) {
            v16 q[2];
            for (int n = 0; n < NO; n++) {
                __builtin_prefetch(wr + (NO + n) * in + i + 16 * u, 0, 0);   /* one per 64-byte line */
                q[n] = load16(wr + n * in + i + 16 * u);
            }
            for (int r = 0; r < R; r++) {
                v16 xv = load16(xr[r] + i + 16 * u);
                for (int n = 0; n < NO; n++)
                    a[n][r * U + u] += q[n] * xv;
            }
        }
    }
    for (int n = 0; n < NO; n++) {
        for (int r = 0; r < rows; r++) {
            v16 t = a[n][r * U];
            for (int u = 1; u < U; u++)
                t += a[n][r * U + u];
            float s = hsum16(t);
            for (long j = i; j < k1; j++)
                s += wr[n * in + j] * xr[r][j];
            float *dst = y + r * out + o + n;
            *dst = (k0 == 0 ? (bias ? bias[o + n] : 0.0f) : *dst) + s;
        }
    }
}

static inline __attribute__((always_inline)) void rows_group(const int R, const float *w, const float *x,
                                                            long in, int rows, long out, long o0, long o1,
                                                            const float *bias, float *y)
{
    const float *xr[8];
    for (int r = 0; r < R; r++)
        xr[r] = x + (r < rows ? r : 0) * in;
    for (long k0 = 0; k0 < in; k0 += BLOCK) {
        long k1 = k0 + BLOCK < in ? k0 + BLOCK : in;
        long o = o0;
        for (; o + 2 <= o1; o += 2)
            sweep(R, 2, xr, w, in, rows, out, o, k0, k1, bias, y);
        if (o < o1)
            sweep(R, 1, xr, w, in, rows, out, o, k0, k1, bias, y);
    }
}

/* w: (out, in) row-major; x: (rows, in); y: (rows, out); bias: (out) or NULL; rows 1 to 8. Returns 0, or -1
 * for a row count it does not handle. */
int troubadour_gemv(const float *w, const float *x, const float *bias, float *y,
                    long out, long in, int rows, int threads)
{
    if (rows < 1 || rows > 8)
        return -1;
    if (rows > 2) {
        long groups = (out + GROUP - 1) / GROUP;
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (long g = 0; g < groups; g++) {
            long o0 = g * GROUP, o1 = o0 + GROUP < out ? o0 + GROUP : out;
            if (rows <= 4)
                rows_group(4, w, x, in, rows, out, o0, o1, bias, y);
            else
                rows_group(8, w, x, in, rows, out, o0, o1, bias, y);
        }
        return 0;
    }
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

/* The same product on weights stored as column panels (panels.py): panel b holds columns [b*kb, (b+1)*kb) of
 * every output row, (out, kb) row-major, panels block_stride floats apart. Measured on the machine above
 * (bench/README.md): with row-major weights 4096 wide, two input rows (32 KiB) fill L1 and the weight stream
 * evicts them: 0.5-0.7 of a plain read; banding the columns of row-major weights breaks the stream (0.47).
 * Panels keep both: each thread reads one contiguous run per panel while the inputs of that panel (rows x
 * kb floats, copied to an aligned scratch at a fixed stride) stay in L1. prefetcht1 4096 floats ahead keeps
 * the stream fed when 4-8 rows make the loop compute-bound (0.4 -> 0.6-0.75 of a read for 8 rows). */
#define PANEL_MAX 512
#define PANEL_AHEAD 4096

int troubadour_panel_max(void) { return PANEL_MAX; }

/* One output, 1 or 2 rows: four accumulators per row (one FMA chain per row was latency-bound). */
static inline __attribute__((always_inline)) void panel_row(const int R, const float *w, long kb, const float *xs,
                                                           float *y, long out, long o, int rows)
{
    v16 a[2][4];
    for (int r = 0; r < R; r++)
        for (int u = 0; u < 4; u++)
            a[r][u] = (v16){0};
    for (long i = 0; i < kb; i += 64) {
        __builtin_prefetch(w + i + PANEL_AHEAD, 0, 2);
        for (int u = 0; u < 4; u++) {
            v16 q = load16(w + i + 16 * u);
            for (int r = 0; r < R; r++)
                a[r][u] += q * load16(xs + r * PANEL_MAX + i + 16 * u);
        }
    }
    for (int r = 0; r < R; r++)
        if (r < rows)
            y[r * out + o] += hsum16((a[r][0] + a[r][1]) + (a[r][2] + a[r][3]));
}

/* NO outputs (1 to 4) x 4 rows, or NO (1 or 2) x 8 rows: 16 accumulators, each input load shared by NO
 * outputs. Named variables: GCC spilled an array of them. */
#define ROWS4(M) M(0) M(1) M(2) M(3)
#define ROWS8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
static inline __attribute__((always_inline)) void panel_tile(const int R, const int NO, const float *w, long kb,
                                                            const float *xs, float *y, long out, long o, int rows)
{
#define ACC(r) v16 a##r = {0}, b##r = {0}, c##r = {0}, d##r = {0};
    ROWS8(ACC)
#undef ACC
    for (long i = 0; i < kb; i += 16) {
        v16 q[4];
        for (int n = 0; n < NO; n++) {
            __builtin_prefetch(w + n * kb + i + PANEL_AHEAD, 0, 2);
            q[n] = load16(w + n * kb + i);
        }
#define FMA(r) if (r < R) { v16 xv = load16(xs + r * PANEL_MAX + i); a##r += q[0] * xv; \
        if (NO > 1) { b##r += q[1] * xv; } if (NO > 2) { c##r += q[2] * xv; } if (NO > 3) { d##r += q[3] * xv; } }
        ROWS8(FMA)
#undef FMA
    }
    float s[4][8];
#define SUM(r) if (r < R) { s[0][r] = hsum16(a##r); if (NO > 1) { s[1][r] = hsum16(b##r); } \
        if (NO > 2) { s[2][r] = hsum16(c##r); } if (NO > 3) { s[3][r] = hsum16(d##r); } }
    ROWS8(SUM)
#undef SUM
    for (int n = 0; n < NO; n++)
        for (int r = 0; r < R; r++)
            if (r < rows)
                y[r * out + o + n] += s[n][r];
}

/* One thread's outputs [o0, o1), panel by panel. R: rows rounded up to 1, 2, 4 or 8 (extra rows repeat row 0
 * and are not stored). */
static inline __attribute__((always_inline)) void panel_part(const int R, const float *p, long kb, long bstride,
                                                            const float *x, const float *bias, float *y, long out,
                                                            long in, int rows, long o0, long o1)
{
    float xs[8 * PANEL_MAX] __attribute__((aligned(64)));
    for (long o = o0; o < o1; o++)
        for (int r = 0; r < rows; r++)
            y[r * out + o] = bias ? bias[o] : 0.0f;
    for (long b = 0; b * kb < in; b++) {
        for (int r = 0; r < R; r++)
            memcpy(xs + r * PANEL_MAX, x + (r < rows ? r : 0) * in + b * kb, kb * sizeof(float));
        const float *pb = p + b * bstride;
        long o = o0;
        if (R <= 2) {
            for (; o < o1; o++)
                panel_row(R, pb + o * kb, kb, xs, y, out, o, rows);
        } else if (R == 4) {
            for (; o + 4 <= o1; o += 4)
                panel_tile(4, 4, pb + o * kb, kb, xs, y, out, o, rows);
            for (; o < o1; o++)
                panel_tile(4, 1, pb + o * kb, kb, xs, y, out, o, rows);
        } else {
            for (; o + 2 <= o1; o += 2)
                panel_tile(8, 2, pb + o * kb, kb, xs, y, out, o, rows);
            for (; o < o1; o++)
                panel_tile(8, 1, pb + o * kb, kb, xs, y, out, o, rows);
        }
    }
}

#define PANEL_SPLIT \
    int t = omp_get_thread_num(), nt = omp_get_num_threads(); \
    long o0 = (out * t / nt) & ~3L, o1 = t == nt - 1 ? out : (out * (t + 1) / nt) & ~3L;

/* y = x @ w^T (+ bias), w as panels of kb columns (a multiple of 64, at most PANEL_MAX, dividing in); x: (rows,
 * in); y: (rows, out); rows 1 to 8. Returns 0, or -1 for a shape it does not take. */
int troubadour_panels(const float *p, long kb, long bstride, const float *x, const float *bias, float *y,
                      long out, long in, int rows, int threads)
{
    if (rows < 1 || rows > 8 || kb < 64 || kb > PANEL_MAX || kb % 64 || in % kb || bstride < out * kb)
        return -1;
    if (rows == 1) {
        #pragma omp parallel num_threads(threads)
        { PANEL_SPLIT panel_part(1, p, kb, bstride, x, bias, y, out, in, rows, o0, o1); }
    } else if (rows == 2) {
        #pragma omp parallel num_threads(threads)
        { PANEL_SPLIT panel_part(2, p, kb, bstride, x, bias, y, out, in, rows, o0, o1); }
    } else if (rows <= 4) {
        #pragma omp parallel num_threads(threads)
        { PANEL_SPLIT panel_part(4, p, kb, bstride, x, bias, y, out, in, rows, o0, o1); }
    } else {
        #pragma omp parallel num_threads(threads)
        { PANEL_SPLIT panel_part(8, p, kb, bstride, x, bias, y, out, in, rows, o0, o1); }
    }
    return 0;
}

/* A decode step's attention: one query per (row, head) against its T cached keys,
 *   out[r, h] = softmax(scale * q[r, h] . k[r, h, t] for t < T) @ v[r, h, :T].
 * PyTorch's flash kernel read the cache at ~21 GB/s inside a step (the cache comes back from DRAM after the
 * weight stream); here each (row, head) streams its keys, then its values, front to back. q and out are
 * (rows, heads, d) with the given row/head strides; k and v (rows, heads, >= T, d) share theirs, positions
 * contiguous; scores is scratch for rows * heads * T floats. lengths: NULL, or each row's own T (1 to T: the
 * text cross-attention, whose prompts differ in length). d a multiple of 16 up to 256; returns -1 otherwise. */
int troubadour_attend(const float *q, long q_rs, long q_hs, const float *k, const float *v, long kv_rs,
                      long kv_hs, float *out, long o_rs, long o_hs, int rows, int heads, long T, int d,
                      float scale, float *scores, const long *lengths, int threads)
{
    if (d % 16 || d > 256 || T < 1)
        return -1;
    for (int r = 0; lengths && r < rows; r++)
        if (lengths[r] < 1 || lengths[r] > T)
            return -1;
    int nv = d / 16;
    long span = T;   /* scratch per task */
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long task = 0; task < (long)rows * heads; task++) {
        long r = task / heads, h = task % heads;
        long T = lengths ? lengths[r] : span;
        const float *qp = q + r * q_rs + h * q_hs;
        const float *kp = k + r * kv_rs + h * kv_hs, *vp = v + r * kv_rs + h * kv_hs;
        float *s = scores + task * span;   /* the caller's scratch, rows * heads * T: no stack to outgrow */
        v16 qv[16], acc[16];
        for (int j = 0; j < nv; j++)
            qv[j] = load16(qp + 16 * j);
        float m = -__builtin_inff();
        for (long t = 0; t < T; t++) {
            const float *kt = kp + t * d;
            v16 a = qv[0] * load16(kt);
            for (int j = 1; j < nv; j++)
                a += qv[j] * load16(kt + 16 * j);
            s[t] = hsum16(a) * scale;
            m = s[t] > m ? s[t] : m;
        }
        float sum = 0.0f;
        for (long t = 0; t < T; t++) {
            s[t] = __builtin_expf(s[t] - m);
            sum += s[t];
        }
        for (int j = 0; j < nv; j++)
            acc[j] = (v16){0};
        for (long t = 0; t < T; t++) {
            const float *vt = vp + t * d;
            for (int j = 0; j < nv; j++)
                acc[j] += s[t] * load16(vt + 16 * j);
        }
        float *op = out + r * o_rs + h * o_hs;
        for (int j = 0; j < nv; j++) {
            v16 o = acc[j] / sum;
            memcpy(op + 16 * j, &o, sizeof o);
        }
    }
    return 0;
}
