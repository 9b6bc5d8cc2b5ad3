// The LLaMA training op set, forward and backward, fp32: embedding gather/scatter-add (the default backward is
// deterministic: token positions grouped by id on the host; the atomic one is kept), RMSNorm (its weight gradient
// deterministic: per-chunk partial sums, then a fixed-order second pass), RoPE (angles in fp64, inverse
// frequencies from the host, Llama-3.1 scaling included), SwiGLU, cross-entropy with an ignore index, AdamW,
// global-norm clipping (a deterministic two-pass fp64 sum of squares), and causal GQA attention (naive: one block
// per query, atomics in the backward; the tiled deterministic one is attention.cu). References: kernels/src/ops/*.rs.

// ---- embedding -------------------------------------------------------------------------------------------
extern "C" __global__ void embedding_forward(const float* __restrict__ table, const u32* __restrict__ ids,
                                             i64 tokens, int dim, float* __restrict__ out) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < tokens * dim; i += (i64)gridDim.x * blockDim.x) {
        i64 t = i / dim;
        out[i] = table[(i64)ids[t] * dim + (i - t * dim)];
    }
}

// Deterministic scatter-add: block (g, c) sums dimensions c * blockDim.x + threadIdx.x of the dy rows of group g
// in the order the host listed them. `order` holds token positions grouped by id (ascending inside a group),
// group g is order[starts[g] .. starts[g + 1]] and has the id uniq[g]. Rows of ids that occur in no group are not
// written (the host zeroes dtable first).
extern "C" __global__ void embedding_backward_grouped(const float* __restrict__ dy, const u32* __restrict__ uniq,
                                                      const u32* __restrict__ starts, const u32* __restrict__ order,
                                                      int dim, float* __restrict__ dtable) {
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    const u32 g = blockIdx.x, end = starts[g + 1];
    float acc = 0.0f;
    for (u32 p = starts[g]; p < end; ++p) acc += dy[(i64)order[p] * dim + j];
    dtable[(i64)uniq[g] * dim + j] = acc;
}

// dtable must be zeroed first; rows shared by several tokens are summed with atomics (the order, and so the last
// bits, can change from run to run: embedding_backward_grouped is the deterministic one).
extern "C" __global__ void embedding_backward_atomic(const float* __restrict__ dy, const u32* __restrict__ ids,
                                                     i64 tokens, int dim, float* __restrict__ dtable) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < tokens * dim; i += (i64)gridDim.x * blockDim.x) {
        i64 t = i / dim;
        atomicAdd(&dtable[(i64)ids[t] * dim + (i - t * dim)], dy[i]);
    }
}

// ---- RMSNorm: one block per row ----------------------------------------------------------------------------
extern "C" __global__ void rmsnorm_forward(const float* __restrict__ x, const float* __restrict__ w, int dim,
                                           float eps, float* __restrict__ y, float* __restrict__ rstd) {
    __shared__ float scratch[32];
    const float* xr = x + (i64)blockIdx.x * dim;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) ss = fmaf(xr[j], xr[j], ss);
    ss = block_sum(ss, scratch);
    float rs = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) y[(i64)blockIdx.x * dim + j] = xr[j] * rs * w[j];
    if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
}

// dx of one row per block; the weight gradient is left to rmsnorm_dw_partial + rmsnorm_dw_reduce.
extern "C" __global__ void rmsnorm_backward_dx(const float* __restrict__ x, const float* __restrict__ w,
                                               const float* __restrict__ rstd, const float* __restrict__ dy, int dim,
                                               float* __restrict__ dx) {
    __shared__ float scratch[32];
    i64 base = (i64)blockIdx.x * dim;
    float rs = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) dot = fmaf(dy[base + j] * w[j], x[base + j], dot);
    dot = block_sum(dot, scratch);
    float c = rs * rs * rs / (float)dim * dot;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float g = dy[base + j] * w[j];
        dx[base + j] = rs * g - c * x[base + j];
    }
}

// Weight gradient, pass 1: partial[c * dim + j] = sum over rows r of chunk c (rows c * rows_per_chunk .. , in
// order) of dy[r][j] * x[r][j] * rstd[r]. Grid: (ceil(dim / blockDim.x), chunks).
extern "C" __global__ void rmsnorm_dw_partial(const float* __restrict__ x, const float* __restrict__ rstd,
                                              const float* __restrict__ dy, i64 rows, int dim, i64 rows_per_chunk,
                                              float* __restrict__ partial) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    const i64 r0 = (i64)blockIdx.y * rows_per_chunk;
    const i64 r1 = min(rows, r0 + rows_per_chunk);
    float acc = 0.0f;
    for (i64 r = r0; r < r1; ++r) acc += dy[r * dim + j] * x[r * dim + j] * rstd[r];
    partial[(i64)blockIdx.y * dim + j] = acc;
}

// Weight gradient, pass 2: dw[j] = sum over chunks c, in order, of partial[c * dim + j].
extern "C" __global__ void rmsnorm_dw_reduce(const float* __restrict__ partial, int chunks, int dim,
                                             float* __restrict__ dw) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    float acc = 0.0f;
    for (int c = 0; c < chunks; ++c) acc += partial[(i64)c * dim + j];
    dw[j] = acc;
}

// ---- RoPE (rotate-half pairs i, i + d/2), sign +1 forward, -1 backward ----------------------------------------
extern "C" __global__ void rope(const float* __restrict__ x, const u32* __restrict__ positions,
                                const float* __restrict__ inv_freq, i64 tokens, int heads, int head_dim, float sign,
                                float* __restrict__ out) {
    int half = head_dim / 2;
    i64 total = tokens * heads * half;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        int f = (int)(i % half);
        i64 th = i / half;  // token * heads + head
        i64 t = th / heads;
        double angle = (double)sign * ((double)positions[t] * (double)inv_freq[f]);
        double s, c;
        sincos(angle, &s, &c);
        i64 base = th * head_dim;
        double a = x[base + f], b = x[base + f + half];
        out[base + f] = (float)(a * c - b * s);
        out[base + f + half] = (float)(b * c + a * s);
    }
}

// ---- SwiGLU -------------------------------------------------------------------------------------------------
__device__ __forceinline__ float sigmoidf_(float g) { return 1.0f / (1.0f + expf(-g)); }

extern "C" __global__ void swiglu_forward(const float* __restrict__ gate, const float* __restrict__ up, i64 n,
                                          float* __restrict__ y) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float g = gate[i];
        y[i] = g * sigmoidf_(g) * up[i];
    }
}

extern "C" __global__ void swiglu_backward(const float* __restrict__ gate, const float* __restrict__ up,
                                           const float* __restrict__ dy, i64 n, float* __restrict__ dgate,
                                           float* __restrict__ dup) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float g = gate[i], s = sigmoidf_(g), d = dy[i];
        dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s));
        dup[i] = d * g * s;
    }
}

// ---- cross-entropy: one block per row (vocabularies of any size) -----------------------------------------------
extern "C" __global__ void cross_entropy_forward(const float* __restrict__ logits, const int* __restrict__ targets,
                                                 int vocab, int ignore_index, float* __restrict__ lse,
                                                 float* __restrict__ row_loss) {
    __shared__ float scratch[32];
    const float* l = logits + (i64)blockIdx.x * vocab;
    float m = __int_as_float(0xff800000);
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, l[j]);
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(l[j] - m);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) {
        float r = m + logf(s);
        int t = targets[blockIdx.x];
        lse[blockIdx.x] = r;
        row_loss[blockIdx.x] = t == ignore_index ? 0.0f : r - l[t];
    }
}

extern "C" __global__ void cross_entropy_backward(const float* __restrict__ logits, const int* __restrict__ targets,
                                                  const float* __restrict__ lse, int vocab, int ignore_index,
                                                  float scale, float* __restrict__ dlogits) {
    i64 base = (i64)blockIdx.x * vocab;
    int t = targets[blockIdx.x];
    float r = lse[blockIdx.x];
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        float d = 0.0f;
        if (t != ignore_index) d = (expf(logits[base + j] - r) - (j == t ? 1.0f : 0.0f)) * scale;
        dlogits[base + j] = d;
    }
}

// ---- AdamW and clipping ----------------------------------------------------------------------------------------
// bc1 = 1 - beta1^step, bc2 = 1 - beta2^step (from the host). The same fp32 operations in the same order as the CPU
// step (kernels/src/ops/optim.rs, which the CPU engine runs), each rounded on its own: the _rn intrinsics are never
// contracted into FMAs, so a GPU step is bit-identical to the CPU one.
extern "C" __global__ void adamw_step(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                      float* __restrict__ v, i64 n, float lr, float beta1, float beta2, float eps,
                                      float weight_decay, float bc1, float bc2) {
    const float decay = __fsub_rn(1.0f, __fmul_rn(lr, weight_decay));
    const float c1 = __fsub_rn(1.0f, beta1), c2 = __fsub_rn(1.0f, beta2);
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float gi = g[i];
        // m = beta1 m + (1 - beta1) g; v = beta2 v + ((1 - beta2) g) g
        const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(c1, gi));
        const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(c2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        // p = p (1 - lr wd) - (lr (m / bc1)) / (sqrt(v / bc2) + eps)
        const float upd = __fdiv_rn(__fmul_rn(lr, __fdiv_rn(mi, bc1)), __fadd_rn(__fsqrt_rn(__fdiv_rn(vi, bc2)), eps));
        p[i] = __fsub_rn(__fmul_rn(p[i], decay), upd);
    }
}

// Sum of squares in fp64, deterministic in two passes. Pass 1: block b of a grid of G blocks (G fixed by n alone)
// sums x[i]^2 over i = b * blockDim.x + threadIdx.x + k * G * blockDim.x, reduces the block in a fixed tree and
// writes partial[offset + b]. blockDim.x = 256.
__device__ __forceinline__ double block_sum_f64(double s, double* part /* 32 doubles */) {
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = s;
    __syncthreads();
    double t = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += part[w];
    return t;  // valid in thread 0
}

extern "C" __global__ void sum_squares_partial(const float* __restrict__ x, i64 n, double* __restrict__ partial,
                                               i64 offset) {
    __shared__ double part[32];
    double s = 0.0;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        s += (double)x[i] * (double)x[i];
    const double t = block_sum_f64(s, part);
    if (threadIdx.x == 0) partial[offset + blockIdx.x] = t;
}

// Pass 2, one block of 256: out[0] = the sum of partial[0 .. count), thread k taking k, k + 256, ... in order.
extern "C" __global__ void sum_f64(const double* __restrict__ partial, i64 count, double* __restrict__ out) {
    __shared__ double part[32];
    double s = 0.0;
    for (i64 i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    const double t = block_sum_f64(s, part);
    if (threadIdx.x == 0) out[0] = t;
}

extern "C" __global__ void scale_inplace(float* __restrict__ x, i64 n, float factor) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) x[i] *= factor;
}

// ---- causal GQA attention, naive: one block per (batch, token, q head); thread e owns element e of the head ----
// q: B x T x Hq x D, k/v: B x T x Hkv x D. Saves the log-sum-exp of each query's scores for the backward.
extern "C" __global__ void attention_forward_naive(const float* __restrict__ q, const float* __restrict__ k,
                                                   const float* __restrict__ v, int T, int Hq, int Hkv, int D,
                                                   float* __restrict__ out, float* __restrict__ lse) {
    __shared__ float scratch[32];
    int h = blockIdx.x % Hq;
    int t = (blockIdx.x / Hq) % T;
    int b = blockIdx.x / (Hq * T);
    int kh = h / (Hq / Hkv);
    int e = threadIdx.x;
    float scale = 1.0f / sqrtf((float)D);
    float qe = e < D ? q[(i64)blockIdx.x * D + e] : 0.0f;
    float m = __int_as_float(0xff800000), l = 0.0f, acc = 0.0f;
    for (int j = 0; j <= t; ++j) {
        i64 ko = (((i64)b * T + j) * Hkv + kh) * D;
        float s = block_sum(e < D ? qe * k[ko + e] : 0.0f, scratch) * scale;
        float mn = fmaxf(m, s);
        float corr = expf(m - mn), p = expf(s - mn);
        l = l * corr + p;
        acc = acc * corr + (e < D ? p * v[ko + e] : 0.0f);
        m = mn;
    }
    if (e < D) out[(i64)blockIdx.x * D + e] = acc / l;
    if (e == 0) lse[blockIdx.x] = m + logf(l);
}

// dk and dv must be zeroed first (kv heads are shared by several query heads and tokens: atomics).
extern "C" __global__ void attention_backward_naive(const float* __restrict__ q, const float* __restrict__ k,
                                                    const float* __restrict__ v, const float* __restrict__ out,
                                                    const float* __restrict__ lse, const float* __restrict__ dout,
                                                    int T, int Hq, int Hkv, int D, float* __restrict__ dq,
                                                    float* __restrict__ dk, float* __restrict__ dv) {
    __shared__ float scratch[32];
    int h = blockIdx.x % Hq;
    int t = (blockIdx.x / Hq) % T;
    int b = blockIdx.x / (Hq * T);
    int kh = h / (Hq / Hkv);
    int e = threadIdx.x;
    float scale = 1.0f / sqrtf((float)D);
    i64 qo = (i64)blockIdx.x * D;
    float qe = e < D ? q[qo + e] : 0.0f;
    float de = e < D ? dout[qo + e] : 0.0f;
    float dot = block_sum(e < D ? de * out[qo + e] : 0.0f, scratch);  // sum_j P_j dP_j = dout . out
    float r = lse[blockIdx.x];
    float dqe = 0.0f;
    for (int j = 0; j <= t; ++j) {
        i64 ko = (((i64)b * T + j) * Hkv + kh) * D;
        float s = block_sum(e < D ? qe * k[ko + e] : 0.0f, scratch) * scale;
        float p = expf(s - r);
        float dp = block_sum(e < D ? de * v[ko + e] : 0.0f, scratch);
        float ds = p * (dp - dot) * scale;
        if (e < D) {
            dqe = fmaf(ds, k[ko + e], dqe);
            atomicAdd(&dk[ko + e], ds * qe);
            atomicAdd(&dv[ko + e], p * de);
        }
    }
    if (e < D) dq[qo + e] = dqe;
}

// ---- dropout keep masks (counter-based; kernels/src/dropout.rs computes the same bits on the CPU) -------------------
// out[i] = 1 when the top 32 bits of SplitMix64's output i + 1 from the state key are >= threshold, else 0, where
// key = mix64(seed + mix64(stream ^ STREAM_SALT)). Each thread writes 16 consecutive bytes (one 16-byte store when
// they are all inside n).
__device__ __forceinline__ unsigned long long dropout_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

extern "C" __global__ void dropout_keep_mask(unsigned long long seed, unsigned long long stream, i64 n, u32 threshold,
                                             u8* __restrict__ out) {
    const unsigned long long golden = 0x9E3779B97F4A7C15ull;
    const unsigned long long key = dropout_mix64(seed + dropout_mix64(stream ^ 0xD1B54A32D192ED03ull));
    const i64 chunks = (n + 15) / 16;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (i64)gridDim.x * blockDim.x) {
        const i64 i0 = c * 16;
        u32 word[4] = {0u, 0u, 0u, 0u};
        for (int j = 0; j < 16; ++j) {
            const unsigned long long bits = dropout_mix64(key + (unsigned long long)(i0 + j + 1) * golden);
            if ((u32)(bits >> 32) >= threshold) word[j >> 2] |= 1u << (8 * (j & 3));
        }
        if (i0 + 16 <= n) {
            *(uint4*)(out + i0) = make_uint4(word[0], word[1], word[2], word[3]);
        } else {
            for (int j = 0; i0 + j < n; ++j) out[i0 + j] = (u8)((word[j >> 2] >> (8 * (j & 3))) & 1u);
        }
    }
}
