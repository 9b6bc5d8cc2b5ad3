// The LLaMA op set with bf16 activations (raw u16 bits, rounded to nearest even by f32_to_bf16): embedding gather
// from a bf16 table, RMSNorm forward/backward (fp32 weight, rstd and weight gradient), RoPE, SwiGLU forward/backward
// and cross-entropy over bf16 logits (fp32 lse and loss, bf16 dlogits). The math inside each kernel is fp32 (RoPE's
// angles fp64, as in ops.cu), every sum runs in a fixed order and nothing uses atomics, so the same inputs give the
// same bits. The fp32 versions are ops.cu; the references are kernels/src/ops/*.rs.
//
// Memory access: each thread owns chunks of 8 consecutive bf16 values (16 bytes). When every pointer involved is
// 16-byte aligned (and, for row-wise ops, the row length is a multiple of 8 so that every row stays aligned) a chunk
// is one 16-byte load or store; otherwise, and for the partial last chunk, the same thread reads and writes the
// chunk's values one by one. The summation order inside a thread is the chunk order either way.

__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15ull) == 0ull; }

// 8 bf16 at p (16-byte aligned) -> fp32, element k of the chunk in f[k].
__device__ __forceinline__ void load8_bf16(const u16* p, float* f) {
    TANDEM_CHECK_ALIGNED(p, 16);
    const uint4 v = *(const uint4*)p;
    const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        f[2 * k] = bf16_to_f32((u16)(w[k] & 0xffffu));
        f[2 * k + 1] = bf16_to_f32((u16)(w[k] >> 16));
    }
}

// fp32 f[0..8) -> 8 bf16 at p (16-byte aligned), rounded to nearest even.
__device__ __forceinline__ void store8_bf16(u16* p, const float* f) {
    TANDEM_CHECK_ALIGNED(p, 16);
    u32 w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) w[k] = (u32)f32_to_bf16(f[2 * k]) | ((u32)f32_to_bf16(f[2 * k + 1]) << 16);
    *(uint4*)p = make_uint4(w[0], w[1], w[2], w[3]);
}

// 8 fp32 at p (16-byte aligned).
__device__ __forceinline__ void load8_f32(const float* p, float* f) {
    TANDEM_CHECK_ALIGNED(p, 16);
    const float4 a = *(const float4*)p, b = *(const float4*)(p + 4);
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
    f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}

// ---- embedding: out[t] = table[ids[t]], both bf16 (an exact copy; ids checked by the caller) -----------------------
// Thread per (token, chunk of 8 dimensions), grid-stride.
extern "C" __global__ void __launch_bounds__(256) embedding_forward_bf16(const u16* __restrict__ table,
                                                                         const u32* __restrict__ ids, i64 tokens,
                                                                         int dim, u16* __restrict__ out) {
    const int chunks = (dim + 7) / 8;
    const bool vec = (dim & 7) == 0 && aligned16(table) && aligned16(out);
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < tokens * chunks; i += (i64)gridDim.x * blockDim.x) {
        const i64 t = i / chunks;
        const int j0 = (int)(i - t * chunks) * 8;
        const u16* src = table + (i64)ids[t] * dim + j0;
        u16* dst = out + t * dim + j0;
        if (vec) {
            TANDEM_CHECK_ALIGNED(src, 16);
            TANDEM_CHECK_ALIGNED(dst, 16);
            *(uint4*)dst = *(const uint4*)src;
        } else {
            const int nk = min(8, dim - j0);
            for (int k = 0; k < nk; ++k) dst[k] = src[k];
        }
    }
}

// ---- RMSNorm: one block per row (blockDim.x a multiple of 32) ------------------------------------------------------
// y = x * rstd * w in fp32, rounded to bf16; rstd = 1 / sqrt(mean(x^2) + eps) in fp32.
extern "C" __global__ void __launch_bounds__(256) rmsnorm_forward_bf16(const u16* __restrict__ x,
                                                                       const float* __restrict__ w, int dim,
                                                                       float eps, u16* __restrict__ y,
                                                                       float* __restrict__ rstd) {
    __shared__ float scratch[32];
    const i64 base = (i64)blockIdx.x * dim;
    const u16* xr = x + base;
    u16* yr = y + base;
    const bool vec = (dim & 7) == 0 && aligned16(x) && aligned16(y) && aligned16(w);
    const int chunks = (dim + 7) / 8;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const int j0 = c * 8;
        if (vec) {
            float f[8];
            load8_bf16(xr + j0, f);
#pragma unroll
            for (int k = 0; k < 8; ++k) ss = fmaf(f[k], f[k], ss);
        } else {
            const int nk = min(8, dim - j0);
            for (int k = 0; k < nk; ++k) {
                const float v = bf16_to_f32(xr[j0 + k]);
                ss = fmaf(v, v, ss);
            }
        }
    }
    ss = block_sum(ss, scratch);
    const float rs = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const int j0 = c * 8;
        if (vec) {
            float f[8], g[8];
            load8_bf16(xr + j0, f);
            load8_f32(w + j0, g);
#pragma unroll
            for (int k = 0; k < 8; ++k) f[k] = f[k] * rs * g[k];
            store8_bf16(yr + j0, f);
        } else {
            const int nk = min(8, dim - j0);
            for (int k = 0; k < nk; ++k) yr[j0 + k] = f32_to_bf16(bf16_to_f32(xr[j0 + k]) * rs * w[j0 + k]);
        }
    }
    if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
}

// dx = rstd * (dy * w) - rstd^3 / dim * x * sum(dy * w * x), one row per block, fp32 inside, dx rounded to bf16.
extern "C" __global__ void __launch_bounds__(256) rmsnorm_backward_dx_bf16(const u16* __restrict__ x,
                                                                           const float* __restrict__ w,
                                                                           const float* __restrict__ rstd,
                                                                           const u16* __restrict__ dy, int dim,
                                                                           u16* __restrict__ dx) {
    __shared__ float scratch[32];
    const i64 base = (i64)blockIdx.x * dim;
    const u16 *xr = x + base, *dr = dy + base;
    u16* out = dx + base;
    const bool vec = (dim & 7) == 0 && aligned16(x) && aligned16(dy) && aligned16(dx) && aligned16(w);
    const int chunks = (dim + 7) / 8;
    const float rs = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const int j0 = c * 8;
        if (vec) {
            float a[8], d[8], g[8];
            load8_bf16(xr + j0, a);
            load8_bf16(dr + j0, d);
            load8_f32(w + j0, g);
#pragma unroll
            for (int k = 0; k < 8; ++k) dot = fmaf(d[k] * g[k], a[k], dot);
        } else {
            const int nk = min(8, dim - j0);
            for (int k = 0; k < nk; ++k)
                dot = fmaf(bf16_to_f32(dr[j0 + k]) * w[j0 + k], bf16_to_f32(xr[j0 + k]), dot);
        }
    }
    dot = block_sum(dot, scratch);
    const float cc = rs * rs * rs / (float)dim * dot;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const int j0 = c * 8;
        if (vec) {
            float a[8], d[8], g[8];
            load8_bf16(xr + j0, a);
            load8_bf16(dr + j0, d);
            load8_f32(w + j0, g);
#pragma unroll
            for (int k = 0; k < 8; ++k) a[k] = rs * (d[k] * g[k]) - cc * a[k];
            store8_bf16(out + j0, a);
        } else {
            const int nk = min(8, dim - j0);
            for (int k = 0; k < nk; ++k) {
                const float gk = bf16_to_f32(dr[j0 + k]) * w[j0 + k];
                out[j0 + k] = f32_to_bf16(rs * gk - cc * bf16_to_f32(xr[j0 + k]));
            }
        }
    }
}

// Weight gradient, pass 1, the chunking of ops.cu's rmsnorm_dw_partial: partial[c * dim + j] = sum over the rows r
// of chunk c (rows c * rows_per_chunk .., in order) of dy[r][j] * x[r][j] * rstd[r], written as the fp32 kernel
// writes it. Thread per 8 columns; grid (ceil(ceil(dim / 8) / blockDim.x), chunks).
extern "C" __global__ void __launch_bounds__(256) rmsnorm_dw_partial_bf16(const u16* __restrict__ x,
                                                                          const float* __restrict__ rstd,
                                                                          const u16* __restrict__ dy, i64 rows,
                                                                          int dim, i64 rows_per_chunk,
                                                                          float* __restrict__ partial) {
    const int j0 = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (j0 >= dim) return;
    const i64 r0 = (i64)blockIdx.y * rows_per_chunk;
    const i64 r1 = min(rows, r0 + rows_per_chunk);
    float* out = partial + (i64)blockIdx.y * dim + j0;
    if ((dim & 7) == 0 && aligned16(x) && aligned16(dy) && aligned16(partial)) {
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (i64 r = r0; r < r1; ++r) {
            float a[8], d[8];
            load8_bf16(x + r * dim + j0, a);
            load8_bf16(dy + r * dim + j0, d);
            const float rs = rstd[r];
#pragma unroll
            for (int k = 0; k < 8; ++k) acc[k] += d[k] * a[k] * rs;
        }
        TANDEM_CHECK_ALIGNED(out, 16);
        *(float4*)out = make_float4(acc[0], acc[1], acc[2], acc[3]);
        *(float4*)(out + 4) = make_float4(acc[4], acc[5], acc[6], acc[7]);
    } else {
        const int nk = min(8, dim - j0);
        for (int k = 0; k < nk; ++k) {
            float acc = 0.0f;
            for (i64 r = r0; r < r1; ++r)
                acc += bf16_to_f32(dy[r * dim + j0 + k]) * bf16_to_f32(x[r * dim + j0 + k]) * rstd[r];
            out[k] = acc;
        }
    }
}

// Weight gradient, pass 2 (as ops.cu's rmsnorm_dw_reduce): dw[j] = sum over chunks c, in order, of partial[c][j].
extern "C" __global__ void __launch_bounds__(256) rmsnorm_dw_reduce_bf16(const float* __restrict__ partial,
                                                                         int chunks, int dim,
                                                                         float* __restrict__ dw) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    float acc = 0.0f;
    for (int c = 0; c < chunks; ++c) acc += partial[(i64)c * dim + j];
    dw[j] = acc;
}

// ---- RoPE (rotate-half pairs i, i + d/2), sign +1 forward, -1 backward ---------------------------------------------
// Thread per (token, group of ROPE_HEADS heads, chunk of 8 frequencies): the 8 angles and their sin/cos are computed
// once, in fp64 as ops.cu's rope does, and turn the pairs of every head in the group (fp64 products, rounded to fp32,
// then to bf16).
#define ROPE_HEADS 4
extern "C" __global__ void __launch_bounds__(256) rope_bf16(const u16* __restrict__ x, const u32* __restrict__ positions,
                                                            const float* __restrict__ inv_freq, i64 tokens, int heads,
                                                            int head_dim, float sign, u16* __restrict__ out) {
    const int half = head_dim / 2;
    const int chunks = (half + 7) / 8;
    const int groups = (heads + ROPE_HEADS - 1) / ROPE_HEADS;
    const bool vec = (half & 7) == 0 && aligned16(x) && aligned16(out);
    const i64 total = tokens * groups * chunks;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const int c = (int)(i % chunks);
        const i64 rest = i / chunks;
        const int hg = (int)(rest % groups);
        const i64 t = rest / groups;
        const int f0 = c * 8, nf = min(8, half - f0);
        const double pos = (double)positions[t];
        double sn[8], cs[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            sn[k] = 0.0;
            cs[k] = 1.0;
            if (k < nf) sincos((double)sign * (pos * (double)inv_freq[f0 + k]), &sn[k], &cs[k]);
        }
        const int h1 = min(heads, (hg + 1) * ROPE_HEADS);
        for (int h = hg * ROPE_HEADS; h < h1; ++h) {
            const i64 base = (t * heads + h) * head_dim + f0;
            if (vec) {
                float a[8], b[8], oa[8], ob[8];
                load8_bf16(x + base, a);
                load8_bf16(x + base + half, b);
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    oa[k] = (float)((double)a[k] * cs[k] - (double)b[k] * sn[k]);
                    ob[k] = (float)((double)b[k] * cs[k] + (double)a[k] * sn[k]);
                }
                store8_bf16(out + base, oa);
                store8_bf16(out + base + half, ob);
            } else {
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    if (k < nf) {
                        const double a = bf16_to_f32(x[base + k]), b = bf16_to_f32(x[base + half + k]);
                        out[base + k] = f32_to_bf16((float)(a * cs[k] - b * sn[k]));
                        out[base + half + k] = f32_to_bf16((float)(b * cs[k] + a * sn[k]));
                    }
                }
            }
        }
    }
}

// ---- SwiGLU: y = silu(gate) * up, element-wise over n, thread per chunk of 8, grid-stride -------------------------
__device__ __forceinline__ float sigmoid_bf16op(float g) { return 1.0f / (1.0f + expf(-g)); }

extern "C" __global__ void __launch_bounds__(256) swiglu_forward_bf16(const u16* __restrict__ gate,
                                                                      const u16* __restrict__ up, i64 n,
                                                                      u16* __restrict__ y) {
    const bool vec = aligned16(gate) && aligned16(up) && aligned16(y);
    const i64 chunks = (n + 7) / 8;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (i64)gridDim.x * blockDim.x) {
        const i64 i0 = c * 8;
        if (vec && i0 + 8 <= n) {
            float g[8], u[8];
            load8_bf16(gate + i0, g);
            load8_bf16(up + i0, u);
#pragma unroll
            for (int k = 0; k < 8; ++k) g[k] = g[k] * sigmoid_bf16op(g[k]) * u[k];
            store8_bf16(y + i0, g);
        } else {
            for (i64 i = i0; i < min(n, i0 + 8); ++i) {
                const float g = bf16_to_f32(gate[i]);
                y[i] = f32_to_bf16(g * sigmoid_bf16op(g) * bf16_to_f32(up[i]));
            }
        }
    }
}

// dgate = dy * up * s * (1 + g (1 - s)), dup = dy * g * s with s = sigmoid(g); fp32 inside, both rounded to bf16.
extern "C" __global__ void __launch_bounds__(256) swiglu_backward_bf16(const u16* __restrict__ gate,
                                                                       const u16* __restrict__ up,
                                                                       const u16* __restrict__ dy, i64 n,
                                                                       u16* __restrict__ dgate,
                                                                       u16* __restrict__ dup) {
    const bool vec = aligned16(gate) && aligned16(up) && aligned16(dy) && aligned16(dgate) && aligned16(dup);
    const i64 chunks = (n + 7) / 8;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (i64)gridDim.x * blockDim.x) {
        const i64 i0 = c * 8;
        if (vec && i0 + 8 <= n) {
            float g[8], u[8], d[8];
            load8_bf16(gate + i0, g);
            load8_bf16(up + i0, u);
            load8_bf16(dy + i0, d);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float s = sigmoid_bf16op(g[k]);
                const float dg = d[k] * u[k] * s * (1.0f + g[k] * (1.0f - s));
                u[k] = d[k] * g[k] * s;
                g[k] = dg;
            }
            store8_bf16(dgate + i0, g);
            store8_bf16(dup + i0, u);
        } else {
            for (i64 i = i0; i < min(n, i0 + 8); ++i) {
                const float g = bf16_to_f32(gate[i]), u = bf16_to_f32(up[i]), d = bf16_to_f32(dy[i]);
                const float s = sigmoid_bf16op(g);
                dgate[i] = f32_to_bf16(d * u * s * (1.0f + g * (1.0f - s)));
                dup[i] = f32_to_bf16(d * g * s);
            }
        }
    }
}

// ---- cross-entropy over bf16 logits: one block per row (blockDim.x a multiple of 32, at most 1024) ---------------
// One pass: each thread keeps a running (max m, sum s of exp(l - m)) over its chunks, in order; the block merges the
// pairs in a fixed tree (lane butterflies, then the warps in order).
#define NEG_INF_F __int_as_float(0xff800000)

__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    if (mn == NEG_INF_F) return;  // both empty
    s = (m == NEG_INF_F ? 0.0f : s * expf(m - mn)) + (m2 == NEG_INF_F ? 0.0f : s2 * expf(m2 - mn));
    m = mn;
}

// Adds the values f[0..nk) to the running (m, s).
__device__ __forceinline__ void lse_add(float& m, float& s, const float* f, int nk) {
    float mx = NEG_INF_F;
    for (int k = 0; k < nk; ++k) mx = fmaxf(mx, f[k]);
    const float mn = fmaxf(m, mx);
    if (mn == NEG_INF_F) return;
    float acc = m == NEG_INF_F ? 0.0f : s * expf(m - mn);
    for (int k = 0; k < nk; ++k) acc += expf(f[k] - mn);
    s = acc;
    m = mn;
}

extern "C" __global__ void __launch_bounds__(1024) cross_entropy_forward_bf16(const u16* __restrict__ logits,
                                                                              const int* __restrict__ targets,
                                                                              int vocab, int ignore_index,
                                                                              float* __restrict__ lse,
                                                                              float* __restrict__ row_loss) {
    __shared__ float sm[32], ss[32];
    const u16* l = logits + (i64)blockIdx.x * vocab;
    const bool vec = (vocab & 7) == 0 && aligned16(logits);
    const int chunks = (vocab + 7) / 8;
    float m = NEG_INF_F, s = 0.0f;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const int j0 = c * 8;
        float f[8];
        int nk = 8;
        if (vec) {
            load8_bf16(l + j0, f);
        } else {
            nk = min(8, vocab - j0);
            for (int k = 0; k < nk; ++k) f[k] = bf16_to_f32(l[j0 + k]);
        }
        lse_add(m, s, f, nk);
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float mt = NEG_INF_F, st = 0.0f;
        for (int w = 0; w < warps; ++w) lse_merge(mt, st, sm[w], ss[w]);
        const float r = mt + logf(st);
        const int t = targets[blockIdx.x];
        lse[blockIdx.x] = r;
        row_loss[blockIdx.x] = t == ignore_index ? 0.0f : r - bf16_to_f32(l[t]);
    }
}

// dlogits = (exp(logit - lse) - [j == target]) * scale, rounded to bf16; 0 on ignored rows.
extern "C" __global__ void __launch_bounds__(1024) cross_entropy_backward_bf16(const u16* __restrict__ logits,
                                                                               const int* __restrict__ targets,
                                                                               const float* __restrict__ lse,
                                                                               int vocab, int ignore_index,
                                                                               float scale,
                                                                               u16* __restrict__ dlogits) {
    const i64 base = (i64)blockIdx.x * vocab;
    const int t = targets[blockIdx.x];
    const bool ignored = t == ignore_index;
    const float r = lse[blockIdx.x];
    const bool vec = (vocab & 7) == 0 && aligned16(logits) && aligned16(dlogits);
    const int chunks = (vocab + 7) / 8;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const int j0 = c * 8;
        if (vec) {
            float f[8];
            if (ignored) {
#pragma unroll
                for (int k = 0; k < 8; ++k) f[k] = 0.0f;
            } else {
                load8_bf16(logits + base + j0, f);
#pragma unroll
                for (int k = 0; k < 8; ++k) f[k] = (expf(f[k] - r) - (j0 + k == t ? 1.0f : 0.0f)) * scale;
            }
            store8_bf16(dlogits + base + j0, f);
        } else {
            const int nk = min(8, vocab - j0);
            for (int k = 0; k < nk; ++k) {
                const int j = j0 + k;
                float d = 0.0f;
                if (!ignored) d = (expf(bf16_to_f32(logits[base + j]) - r) - (j == t ? 1.0f : 0.0f)) * scale;
                dlogits[base + j] = f32_to_bf16(d);
            }
        }
    }
}
