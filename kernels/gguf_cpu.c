// Packed GGUF weights on the CPU: Q4_0 / Q4_1 / Q8_0 rows times int8-quantized activations (llama.cpp's scheme:
// activations quantized once per input to blocks of 32 int8 with one fp32 scale), and a fused decode step for a
// Llama-family model (RMSNorm, qkv, RoPE, KV write, paged attention, o_proj, MLP) in one call, so a decode step
// pays no per-op Python dispatch. Built once by sgl_jupyter/engine/quantization/gguf_cpu.py with gcc -O3
// -march=native -fopenmp and loaded with ctypes (which releases the GIL during calls).
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define QK 32
enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q8_0 = 8 };  // GGML type ids

static inline float fp16_to_fp32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) { bits = sign; }
        else { exp = 127 - 15 + 1; while (!(mant & 0x400)) { mant <<= 1; exp--; } mant &= 0x3ff; bits = sign | (exp << 23) | (mant << 13); }
    } else if (exp == 31) { bits = sign | 0x7f800000u | (mant << 13); }
    else { bits = sign | ((exp + 127 - 15) << 23) | (mant << 13); }
    float f; memcpy(&f, &bits, 4); return f;
#endif
}

int gguf_block_bytes(int type) {
    return type == T_Q4_0 ? 18 : type == T_Q4_1 ? 20 : type == T_Q8_0 ? 34 : 0;
}

// ---- activations: x [K] fp32 -> int8 blocks qx [K], scale d[K/32], s[K/32] = d * sum(q) ---------------------------
static void quantize_row(const float *x, int K, int8_t *q, float *d, float *s) {
    for (int b = 0; b < K / QK; b++) {
        const float *xb = x + b * QK;
        float amax = 0.f;
        for (int i = 0; i < QK; i++) { float a = fabsf(xb[i]); amax = a > amax ? a : amax; }
        float db = amax / 127.f, id = db ? 1.f / db : 0.f;
        int sum = 0;
        for (int i = 0; i < QK; i++) { int v = (int)roundf(xb[i] * id); q[b * QK + i] = (int8_t)v; sum += v; }
        d[b] = db; s[b] = db * (float)sum;
    }
}

// ---- one weight row . one quantized activation row -------------------------------------------------------------
#if defined(__AVX2__)
static inline float hsum8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
// sum over 32 lanes of u8 w * s8 x as 8 int32
static inline __m256i dot_us(__m256i w, __m256i x) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
#endif
}
#endif

static float dot_row(int type, const uint8_t *w, const int8_t *qx, const float *dx, const float *sx, int nb) {
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    float extra = 0.f;
    if (type == T_Q8_0) {
        for (int b = 0; b < nb; b++, w += 34) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)(w + 2));
            __m256i xv = _mm256_loadu_si256((const __m256i *)(qx + b * QK));
            __m256i p = dot_us(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(*(const uint16_t *)w) * dx[b]), _mm256_cvtepi32_ps(p), acc);
        }
    } else {
        const int bytes = type == T_Q4_1 ? 20 : 18, off = type == T_Q4_1 ? 4 : 2;
        const __m256i lo = _mm256_set1_epi8(0x0F);
        for (int b = 0; b < nb; b++, w += bytes) {
            __m128i raw = _mm_loadu_si128((const __m128i *)(w + off));
            __m256i wv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), lo);
            __m256i xv = _mm256_loadu_si256((const __m256i *)(qx + b * QK));
            float dw = fp16_to_fp32(*(const uint16_t *)w);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx[b]), _mm256_cvtepi32_ps(dot_us(wv, xv)), acc);
            // Q4_1: + m * sum(x); Q4_0: values are (q - 8) * d, so - 8 d sum(x)
            extra += (type == T_Q4_1 ? fp16_to_fp32(*(const uint16_t *)(w + 2)) : -8.f * dw) * sx[b];
        }
    }
    return hsum8(acc) + extra;
#else
    float total = 0.f;
    for (int b = 0; b < nb; b++) {
        const int8_t *xb = qx + b * QK;
        int isum = 0;
        if (type == T_Q8_0) {
            const int8_t *q = (const int8_t *)(w + 2);
            for (int i = 0; i < QK; i++) isum += q[i] * xb[i];
            total += fp16_to_fp32(*(const uint16_t *)w) * dx[b] * isum;
            w += 34;
        } else {
            const int off = type == T_Q4_1 ? 4 : 2;
            for (int i = 0; i < QK / 2; i++) isum += (w[off + i] & 15) * xb[i] + (w[off + i] >> 4) * xb[i + 16];
            float dw = fp16_to_fp32(*(const uint16_t *)w);
            total += dw * dx[b] * isum + (type == T_Q4_1 ? fp16_to_fp32(*(const uint16_t *)(w + 2)) : -8.f * dw) * sx[b];
            w += off + 16;
        }
    }
    return total;
#endif
}

// y[m, n0:n1] = W[n0:n1] . x[m] for M quantized activation rows (weight row outer: its blocks stay in L1)
static void matmul_part(int type, const uint8_t *W, int K, int n0, int n1, int M, const int8_t *qx, const float *dx,
                        const float *sx, float *y, int N) {
    const int nb = K / QK;
    const size_t row_bytes = (size_t)nb * gguf_block_bytes(type);
    for (int n = n0; n < n1; n++) {
        const uint8_t *w = W + row_bytes * n;
        for (int m = 0; m < M; m++)
            y[(size_t)m * N + n] = dot_row(type, w, qx + (size_t)m * K, dx + (size_t)m * nb, sx + (size_t)m * nb, nb);
    }
}


static inline void split(int n, int ith, int nth, int *a, int *b) {
    int per = (n + nth - 1) / nth;
    *a = per * ith < n ? per * ith : n;
    *b = *a + per < n ? *a + per : n;
}

// ---- interleaved layout: 8 rows side by side per block, so one pass yields 8 outputs with vector scales -------------
// per (group of 8 rows, block): fp16 d[8], then Q4: fp16 m[8] (Q4_1 mins; Q4_0: unused) + qs[8][16]; Q8_0: qs[8][32]
static int group_block_bytes(int type) { return type == T_Q8_0 ? 16 + 8 * 32 : 32 + 8 * 16; }

size_t gguf_interleaved_bytes(int type, int N, int K) { return (size_t)(N / 8) * (K / QK) * group_block_bytes(type); }

void gguf_interleave8(int type, const uint8_t *src, int N, int K, uint8_t *dst) {
    const int nb = K / QK, bytes = gguf_block_bytes(type), gb = group_block_bytes(type);
    for (int g = 0; g < N / 8; g++)
        for (int b = 0; b < nb; b++) {
            uint8_t *o = dst + ((size_t)g * nb + b) * gb;
            for (int r = 0; r < 8; r++) {
                const uint8_t *blk = src + ((size_t)(g * 8 + r) * nb + b) * bytes;
                memcpy(o + 2 * r, blk, 2);  // d
                if (type == T_Q8_0) {
                    memcpy(o + 16 + 32 * r, blk + 2, 32);
                } else {
                    int off = type == T_Q4_1 ? 4 : 2;
                    if (type == T_Q4_1) memcpy(o + 16 + 2 * r, blk + 2, 2);  // m
                    else memset(o + 16 + 2 * r, 0, 2);
                    memcpy(o + 32 + 16 * r, blk + off, 16);
                }
            }
        }
}

#if defined(__AVX2__) && defined(__F16C__)
static inline __m256i sum8x8(__m256i p0, __m256i p1, __m256i p2, __m256i p3, __m256i p4, __m256i p5, __m256i p6,
                             __m256i p7) {
    __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
    __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p4, p5), _mm256_hadd_epi32(p6, p7));
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

static inline __m256i q4_row(const uint8_t *qs, __m256i xv) {
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i wv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
    return dot_us(wv, xv);
}

static inline __m256i q8_row(const uint8_t *qs, __m256i xv) {
    __m256i wv = _mm256_loadu_si256((const __m256i *)qs);
    return dot_us(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
}

// 8 outputs of one row group for one activation row
static inline __m256 dot8(int type, const uint8_t *grp, int nb, const int8_t *qx, const float *dx, const float *sx) {
    const int gb = group_block_bytes(type);
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, grp += gb) {
        __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)grp));
        __m256i xv = _mm256_loadu_si256((const __m256i *)(qx + b * QK)), s;
        if (type == T_Q8_0) {
            const uint8_t *q = grp + 16;
            s = sum8x8(q8_row(q, xv), q8_row(q + 32, xv), q8_row(q + 64, xv), q8_row(q + 96, xv),
                       q8_row(q + 128, xv), q8_row(q + 160, xv), q8_row(q + 192, xv), q8_row(q + 224, xv));
        } else {
            const uint8_t *q = grp + 32;
            s = sum8x8(q4_row(q, xv), q4_row(q + 16, xv), q4_row(q + 32, xv), q4_row(q + 48, xv),
                       q4_row(q + 64, xv), q4_row(q + 80, xv), q4_row(q + 96, xv), q4_row(q + 112, xv));
            if (type == T_Q4_1)
                accm = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(grp + 16))),
                                       _mm256_set1_ps(sx[b]), accm);
            else
                accm = _mm256_fmadd_ps(d, _mm256_set1_ps(-8.f * sx[b]), accm);
        }
        acc = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(dx[b])), _mm256_cvtepi32_ps(s), acc);
    }
    return _mm256_add_ps(acc, accm);
}
#endif

// rows [8 g0, 8 g1) of an interleaved weight for M activation rows
static void matmul8_part(int type, const uint8_t *W, int K, int g0, int g1, int M, const int8_t *qx, const float *dx,
                         const float *sx, float *y, int N) {
    const int nb = K / QK;
    const size_t gbytes = (size_t)nb * group_block_bytes(type);
    for (int g = g0; g < g1; g++) {
        const uint8_t *grp = W + gbytes * g;
        for (int m = 0; m < M; m++) {
            const int8_t *q = qx + (size_t)m * K;
            const float *d = dx + (size_t)m * nb, *s = sx + (size_t)m * nb;
#if defined(__AVX2__) && defined(__F16C__)
            _mm256_storeu_ps(y + (size_t)m * N + 8 * g, dot8(type, grp, nb, q, d, s));
#else
            for (int r = 0; r < 8; r++) {
                float total = 0.f;
                for (int b = 0; b < nb; b++) {
                    const uint8_t *blk = grp + (size_t)b * group_block_bytes(type);
                    float dw = fp16_to_fp32(((const uint16_t *)blk)[r]);
                    int isum = 0;
                    if (type == T_Q8_0) {
                        const int8_t *w = (const int8_t *)(blk + 16 + 32 * r);
                        for (int i = 0; i < QK; i++) isum += w[i] * q[b * QK + i];
                        total += dw * d[b] * isum;
                    } else {
                        const uint8_t *w = blk + 32 + 16 * r;
                        for (int i = 0; i < 16; i++) isum += (w[i] & 15) * q[b * QK + i] + (w[i] >> 4) * q[b * QK + i + 16];
                        float mw = type == T_Q4_1 ? fp16_to_fp32(((const uint16_t *)(blk + 16))[r]) : -8.f * dw;
                        total += dw * d[b] * isum + mw * s[b];
                    }
                }
                y[(size_t)m * N + 8 * g + r] = total;
            }
#endif
        }
    }
}

// a weight's share for thread ith of nth: interleaved (N % 8 == 0) by row groups, else by rows
static void matmul_split(int type, int inter, const uint8_t *W, int K, int N, int M, const int8_t *qx, const float *dx,
                         const float *sx, float *y, int ith, int nth) {
    int a, b;
    if (inter) {
        split(N / 8, ith, nth, &a, &b);
        matmul8_part(type, W, K, a, b, M, qx, dx, sx, y, N);
    } else {
        split(N, ith, nth, &a, &b);
        matmul_part(type, W, K, a, b, M, qx, dx, sx, y, N);
    }
}

// y [M, N] = x [M, K] @ W.T for packed W [N, K/32 blocks]; type | INTERLEAVED: the 8-row layout above;
// nthreads 0: OpenMP's default
#define INTERLEAVED 256
void gguf_linear(int type, const uint8_t *W, int N, int K, const float *x, int M, float *y, int nthreads) {
    const int nb = K / QK;
    int8_t *qx = malloc((size_t)M * K);
    float *dx = malloc(sizeof(float) * M * nb), *sx = malloc(sizeof(float) * M * nb);
    for (int m = 0; m < M; m++) quantize_row(x + (size_t)m * K, K, qx + (size_t)m * K, dx + m * nb, sx + m * nb);
    if (nthreads <= 0) nthreads = omp_get_max_threads();
#pragma omp parallel num_threads(nthreads)
    matmul_split(type & 255, type & INTERLEAVED, W, K, N, M, qx, dx, sx, y, omp_get_thread_num(), omp_get_num_threads());
    free(qx); free(dx); free(sx);
}

// fp32 rows of a packed tensor (exact dequantization, for checks)
void gguf_dequantize(int type, const uint8_t *W, int N, int K, float *out) {
    const int nb = K / QK, bytes = gguf_block_bytes(type);
    for (int n = 0; n < N; n++)
        for (int b = 0; b < nb; b++) {
            const uint8_t *w = W + ((size_t)n * nb + b) * bytes;
            float *o = out + (size_t)n * K + b * QK, d = fp16_to_fp32(*(const uint16_t *)w);
            if (type == T_Q8_0) {
                for (int i = 0; i < QK; i++) o[i] = d * ((const int8_t *)(w + 2))[i];
            } else if (type == T_Q4_1) {
                float m = fp16_to_fp32(*(const uint16_t *)(w + 2));
                for (int i = 0; i < 16; i++) { o[i] = d * (w[4 + i] & 15) + m; o[i + 16] = d * (w[4 + i] >> 4) + m; }
            } else {
                for (int i = 0; i < 16; i++) { o[i] = ((w[2 + i] & 15) - 8) * d; o[i + 16] = ((w[2 + i] >> 4) - 8) * d; }
            }
        }
}

// ---- fused decode step ---------------------------------------------------------------------------------------------
typedef struct {
    int type_qkv, type_o, type_gu, type_down;
    const uint8_t *qkv, *o, *gate_up, *down;  // packed rows: qkv [q|k|v], gate_up [gate|up] (HF row order)
    const float *in_norm, *post_norm;         // [H]
    float *k_cache, *v_cache;                 // [slots, KVH, D]
} Layer;

typedef struct {
    int n_layers, hidden, n_heads, n_kv_heads, head_dim, inter;
    float eps, scale;
    const Layer *layers;
    const float *final_norm;  // [H]
} Model;

static void rmsnorm_row(const float *x, const float *w, float eps, int H, float *out) {
    double ss = 0.0;  // HF: mean of squares in fp32; a double sum is the closer of the two to it
    for (int i = 0; i < H; i++) ss += (double)x[i] * x[i];
    float r = 1.f / sqrtf((float)(ss / H) + eps);
    for (int i = 0; i < H; i++) out[i] = w[i] * (x[i] * r);
}

// one (row, q head): softmax(q . K) V over the row's slots
static void attend(const float *q, const float *kc, const float *vc, const int32_t *slots, int L, int KVH, int D,
                   int g, float scale, float *scores, float *out) {
    float mx = -INFINITY;
    for (int t = 0; t < L; t++) {
        const float *k = kc + ((size_t)slots[t] * KVH + g) * D;
        float s = 0.f;
        for (int i = 0; i < D; i++) s += q[i] * k[i];
        s *= scale;
        scores[t] = s;
        mx = s > mx ? s : mx;
    }
    float sum = 0.f;
    for (int t = 0; t < L; t++) { scores[t] = expf(scores[t] - mx); sum += scores[t]; }
    float inv = 1.f / sum;
    for (int i = 0; i < D; i++) out[i] = 0.f;
    for (int t = 0; t < L; t++) {
        const float *v = vc + ((size_t)slots[t] * KVH + g) * D;
        float p = scores[t] * inv;
        for (int i = 0; i < D; i++) out[i] += p * v[i];
    }
}

static void quantize_rows_part(const float *x, int M, int K, int8_t *qx, float *dx, float *sx, int ith, int nth) {
    int a, b;
    split(M, ith, nth, &a, &b);
    const int nb = K / QK;
    for (int m = a; m < b; m++) quantize_row(x + (size_t)m * K, K, qx + (size_t)m * K, dx + m * nb, sx + m * nb);
}

// x [M, H]: the embedded tokens (overwritten: the residual stream); out [M, H]: final-normed hidden states.
// pos [M]: positions; loc [M]: KV slot of each new token; table: req_to_token [*, ctx_stride], rows [M] its row
// of each request; seq_lens [M] keys per row (the new token included); cos/sin: [max_pos, D] neox caches.
void gguf_decode(const Model *md, float *x, int M, const int64_t *pos, const int64_t *loc, const int32_t *table,
                 int ctx_stride, const int64_t *rows, const int64_t *seq_lens, const float *cos_cache, const float *sin_cache, float *out,
                 int nthreads) {
    const int H = md->hidden, NH = md->n_heads, KVH = md->n_kv_heads, D = md->head_dim, I = md->inter;
    const int QS = NH * D, KS = KVH * D, QKV = QS + 2 * KS, KMAX = I > QS ? (I > H ? I : H) : (QS > H ? QS : H);
    int max_len = 1;
    for (int m = 0; m < M; m++) max_len = seq_lens[m] > max_len ? (int)seq_lens[m] : max_len;
    if (nthreads <= 0) nthreads = omp_get_max_threads();
    float *xn = malloc(sizeof(float) * M * H), *qkv = malloc(sizeof(float) * M * QKV);
    float *att = malloc(sizeof(float) * M * QS), *proj = malloc(sizeof(float) * M * H);
    float *gu = malloc(sizeof(float) * M * 2 * I), *act = malloc(sizeof(float) * M * I);
    float *scores = malloc(sizeof(float) * nthreads * max_len);
    int8_t *qx = malloc((size_t)M * KMAX);
    float *dx = malloc(sizeof(float) * M * (KMAX / QK)), *sx = malloc(sizeof(float) * M * (KMAX / QK));
#pragma omp parallel num_threads(nthreads)
    {
        const int ith = omp_get_thread_num(), nth = omp_get_num_threads();
        int a, b;
        for (int l = 0; l < md->n_layers; l++) {
            const Layer *L = &md->layers[l];
            split(M, ith, nth, &a, &b);
            for (int m = a; m < b; m++) rmsnorm_row(x + (size_t)m * H, L->in_norm, md->eps, H, xn + (size_t)m * H);
            quantize_rows_part(xn, M, H, qx, dx, sx, ith, nth);
#pragma omp barrier
            matmul_split(L->type_qkv & 255, L->type_qkv & INTERLEAVED, L->qkv, H, QKV, M, qx, dx, sx, qkv, ith, nth);
#pragma omp barrier
            // RoPE on q and k heads, then the new token's K/V into its slot
            split(M * (NH + KVH), ith, nth, &a, &b);
            for (int t = a; t < b; t++) {
                int m = t / (NH + KVH), h = t % (NH + KVH);
                float *v = qkv + (size_t)m * QKV + (size_t)h * D;
                const float *c = cos_cache + (size_t)pos[m] * D, *s = sin_cache + (size_t)pos[m] * D;
                for (int i = 0; i < D / 2; i++) {
                    float x1 = v[i], x2 = v[i + D / 2];
                    v[i] = x1 * c[i] - x2 * s[i];
                    v[i + D / 2] = x2 * c[i + D / 2] + x1 * s[i + D / 2];
                }
                if (h >= NH) {
                    int g = h - NH;
                    memcpy(L->k_cache + ((size_t)loc[m] * KVH + g) * D, v, sizeof(float) * D);
                    memcpy(L->v_cache + ((size_t)loc[m] * KVH + g) * D, qkv + (size_t)m * QKV + QS + KS + (size_t)g * D,
                           sizeof(float) * D);
                }
            }
#pragma omp barrier
            split(M * NH, ith, nth, &a, &b);
            for (int t = a; t < b; t++) {
                int m = t / NH, h = t % NH;
                attend(qkv + (size_t)m * QKV + (size_t)h * D, L->k_cache, L->v_cache, table + (size_t)rows[m] * ctx_stride,
                       (int)seq_lens[m], KVH, D, h / (NH / KVH), md->scale, scores + (size_t)ith * max_len,
                       att + (size_t)m * QS + (size_t)h * D);
                size_t o = (size_t)m * QS + (size_t)h * D;  // this head's blocks (D % 32 == 0): quantized here
                quantize_row(att + o, D, qx + o, dx + o / QK, sx + o / QK);
            }
#pragma omp barrier
            matmul_split(L->type_o & 255, L->type_o & INTERLEAVED, L->o, QS, H, M, qx, dx, sx, proj, ith, nth);
#pragma omp barrier
            split(M, ith, nth, &a, &b);
            for (int m = a; m < b; m++) {
                float *xr = x + (size_t)m * H;
                for (int i = 0; i < H; i++) xr[i] += proj[(size_t)m * H + i];
                rmsnorm_row(xr, L->post_norm, md->eps, H, xn + (size_t)m * H);
            }
            quantize_rows_part(xn, M, H, qx, dx, sx, ith, nth);
#pragma omp barrier
            matmul_split(L->type_gu & 255, L->type_gu & INTERLEAVED, L->gate_up, H, 2 * I, M, qx, dx, sx, gu, ith, nth);
#pragma omp barrier
            split(M * (I / QK), ith, nth, &a, &b);  // by blocks of 32, each quantized where it is made
            for (int t = a; t < b; t++) {
                int m = t / (I / QK), i0 = t % (I / QK) * QK;
                for (int i = i0; i < i0 + QK; i++) {
                    float g = gu[(size_t)m * 2 * I + i];
                    act[(size_t)m * I + i] = g / (1.f + expf(-g)) * gu[(size_t)m * 2 * I + I + i];
                }
                size_t o = (size_t)m * I + i0;
                quantize_row(act + o, QK, qx + o, dx + o / QK, sx + o / QK);
            }
#pragma omp barrier
            matmul_split(L->type_down & 255, L->type_down & INTERLEAVED, L->down, I, H, M, qx, dx, sx, proj, ith, nth);
#pragma omp barrier
            split(M, ith, nth, &a, &b);
            for (int m = a; m < b; m++)
                for (int i = 0; i < H; i++) x[(size_t)m * H + i] += proj[(size_t)m * H + i];
#pragma omp barrier
        }
        split(M, ith, nth, &a, &b);
        for (int m = a; m < b; m++) rmsnorm_row(x + (size_t)m * H, md->final_norm, md->eps, H, out + (size_t)m * H);
    }
    free(xn); free(qkv); free(att); free(proj); free(gu); free(act); free(scores); free(qx); free(dx); free(sx);
}
