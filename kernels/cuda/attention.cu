// Flash-style causal GQA attention, forward and backward, fp32 in and out with fp32 accumulation, and
// deterministic: no atomics, every sum runs in a fixed order, so the same inputs give the same bits.
// Layout as the naive kernels in ops.cu: q, out, dout, dq are B x T x Hq x D; k, v, dk, dv are B x T x Hkv x D;
// lse and delta hold one value per query row, row = (b * T + t) * Hq + h. Query head h reads kv head
// h / (Hq / Hkv); scores are scaled by 1 / sqrt(D); token t sees keys 0..=t. Reference: kernels/src/ops/attention.rs.
//
// Every kernel runs 256 threads, seen as a 16 x 16 grid (ty = threadIdx.x >> 4, tx = threadIdx.x & 15). In a
// score tile (queries x keys) a thread owns rows ty + 16 i and columns tx + 16 j; in an output tile (rows x head
// dimensions) it owns rows ty + 16 i and the dimensions 4 tx + 64 q + c (c < 4). The 16 threads of one row form a
// half-warp, so row reductions are shuffles inside it. Shared memory is read 16 bytes at a time (float4): tiles
// keep DMAX + 4 floats per row (and score tiles their width + 4), so rows stay 16-byte aligned and the 8 threads
// of a quarter-warp reading 8 consecutive rows hit 8 different groups of 4 banks. D is a run-time value up to
// DMAX (64 or 128): rows past T and columns past D are zero in shared memory, so loops may run to D rounded up
// to 4, and score loops to a multiple of 4 (masked scores are exactly 0).
//
// Dynamic shared memory per block (floats; the launcher in kernels/src/cuda/attention.rs computes the same):
//   forward  (BQ 64, BK 64): (64 + 64) * (DMAX + 4) + 64 * 68
//   dK/dV    (BK 64, BQ 32): (64 + 64 + 32 + 32) * (DMAX + 4) + 64 * 36 + 2 * 32
//   dQ       (BQ 64, BK 32): (64 + 64 + 32 + 32) * (DMAX + 4) + 64 * 36

#define FA_THREADS 256

// A 16-byte shared-memory read (p must be 16-byte aligned; the CPU emulator checks it).
__device__ __forceinline__ float4 lds4(const float* p) {
    TANDEM_CHECK_ALIGNED(p, 16);
    return *(const float4*)p;
}
__device__ __forceinline__ float comp(const float4& v, int c) {
    return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
}
// s[i][j] += dot(a[i], b[j]) over the four components (i < RI, j < CJ).
template <int RI, int CJ>
__device__ __forceinline__ void fma4_tile(float (&s)[RI][CJ], const float4 (&a)[RI], const float4 (&b)[CJ]) {
#pragma unroll
    for (int i = 0; i < RI; ++i)
#pragma unroll
        for (int j = 0; j < CJ; ++j) {
            s[i][j] = fmaf(a[i].x, b[j].x, s[i][j]);
            s[i][j] = fmaf(a[i].y, b[j].y, s[i][j]);
            s[i][j] = fmaf(a[i].z, b[j].z, s[i][j]);
            s[i][j] = fmaf(a[i].w, b[j].w, s[i][j]);
        }
}
// acc[i][4 q + c] += p[i] * row[4 tx + 64 q + c]: one row of a value tile into the thread's output columns.
template <int RI, int DJ, int SD>
__device__ __forceinline__ void axpy_row(float (&acc)[RI][DJ], const float (&p)[RI], const float* row, int tx) {
#pragma unroll
    for (int q = 0; q < DJ / 4; ++q) {
        const float4 v = lds4(row + 4 * tx + 64 * q);
#pragma unroll
        for (int i = 0; i < RI; ++i) {
            acc[i][4 * q + 0] = fmaf(p[i], v.x, acc[i][4 * q + 0]);
            acc[i][4 * q + 1] = fmaf(p[i], v.y, acc[i][4 * q + 1]);
            acc[i][4 * q + 2] = fmaf(p[i], v.z, acc[i][4 * q + 2]);
            acc[i][4 * q + 3] = fmaf(p[i], v.w, acc[i][4 * q + 3]);
        }
    }
}
// acc += P (rows ty + 16 i, columns c0 .. c0 + n of the score tile sP, row stride SP) times the value tile sV
// (rows c0 .. c0 + n, stride SD); n rounded up to 4 (the extra scores are 0 and the extra value rows finite).
template <int RI, int DJ, int SD, int SP>
__device__ __forceinline__ void scores_times_values(float (&acc)[RI][DJ], const float* sP, const float* sV, int n,
                                                    int tx, int ty) {
    for (int c = 0; c < n; c += 4) {
        float4 p4[RI];
#pragma unroll
        for (int i = 0; i < RI; ++i) p4[i] = lds4(sP + (ty + 16 * i) * SP + c);
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) {
            float p[RI];
#pragma unroll
            for (int i = 0; i < RI; ++i) p[i] = comp(p4[i], cc);
            axpy_row<RI, DJ, SD>(acc, p, sV + (c + cc) * SD, tx);
        }
    }
}
// s[i][j] = sum over e < D of A[ty + 16 i][e] * B[tx + 16 j][e] (A, B shared tiles with row stride SD).
template <int RI, int CJ, int SD>
__device__ __forceinline__ void tile_dot(float (&s)[RI][CJ], const float* sA, const float* sB, int D, int tx,
                                         int ty) {
#pragma unroll
    for (int i = 0; i < RI; ++i)
#pragma unroll
        for (int j = 0; j < CJ; ++j) s[i][j] = 0.0f;
#pragma unroll 1
    for (int e = 0; e < D; e += 4) {
        float4 a[RI], b[CJ];
#pragma unroll
        for (int i = 0; i < RI; ++i) a[i] = lds4(sA + (ty + 16 * i) * SD + e);
#pragma unroll
        for (int j = 0; j < CJ; ++j) b[j] = lds4(sB + (tx + 16 * j) * SD + e);
        fma4_tile<RI, CJ>(s, a, b);
    }
}

__device__ __forceinline__ float half_warp_max(float v) {
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float half_warp_sum(float v) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Rows t0 .. t0 + ROWS - 1 of head `head` (of `heads`) of sequence b into a ROWS x (DMAX + 4) shared tile (the 4
// padding floats of each row are never read).
template <int ROWS, int DMAX>
__device__ __forceinline__ void fa_load_tile(float* __restrict__ dst, const float* __restrict__ src, int b, int t0,
                                             int T, int heads, int head, int D) {
    for (int i = threadIdx.x; i < ROWS * DMAX; i += FA_THREADS) {
        int r = i / DMAX, e = i - r * DMAX;
        int t = t0 + r;
        dst[r * (DMAX + 4) + e] = (t < T && e < D) ? src[(((i64)b * T + t) * heads + head) * D + e] : 0.0f;
    }
}

// ---- forward: one block per (query tile of 64, q head, sequence); key/value tiles of 64 staged in shared memory,
// online softmax, tiles above the diagonal skipped. Grid: (ceil(T / 64), Hq, B).
template <int DMAX>
__device__ __forceinline__ void flash_forward(const float* __restrict__ q, const float* __restrict__ k,
                                              const float* __restrict__ v, int T, int Hq, int Hkv, int D,
                                              float* __restrict__ out, float* __restrict__ lse) {
    constexpr int BQ = 64, BK = 64, SD = DMAX + 4, SP = BK + 4, RI = BQ / 16, CJ = BK / 16, DJ = DMAX / 16;
    extern __shared__ float smem[];
    float* sQ = smem;             // BQ x SD
    float* sKV = sQ + BQ * SD;    // BK x SD: K of the tile, then V of the tile
    float* sP = sKV + BK * SD;    // BQ x SP: probabilities
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int qt = gridDim.x - 1 - blockIdx.x;  // the longest rows first
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (Hq / Hkv);
    const int q0 = qt * BQ;
    const int last = min(q0 + BQ, T) - 1;  // the last valid query of the tile
    const float scale = 1.0f / sqrtf((float)D);
    const float neg_inf = __int_as_float(0xff800000);
    fa_load_tile<BQ, DMAX>(sQ, q, b, q0, T, Hq, h, D);
    float m[RI], l[RI], acc[RI][DJ];
#pragma unroll
    for (int i = 0; i < RI; ++i) {
        m[i] = neg_inf;
        l[i] = 0.0f;
#pragma unroll
        for (int d = 0; d < DJ; ++d) acc[i][d] = 0.0f;
    }
    for (int k0 = 0; k0 <= last; k0 += BK) {
        __syncthreads();  // sQ is loaded; nobody reads sKV or sP of the previous tile any more
        fa_load_tile<BK, DMAX>(sKV, k, b, k0, T, Hkv, kh, D);
        __syncthreads();
        float s[RI][CJ];
        tile_dot<RI, CJ, SD>(s, sQ, sKV, D, tx, ty);
        // Online softmax. Key k0 is visible to every row of the tile (k0 <= q0 and k0 < T), so each row has a
        // finite maximum here and exp never sees inf - inf.
#pragma unroll
        for (int i = 0; i < RI; ++i) {
            const int qi = q0 + ty + 16 * i;
            float mx = neg_inf;
#pragma unroll
            for (int j = 0; j < CJ; ++j) {
                const int kj = k0 + tx + 16 * j;
                s[i][j] = (kj <= qi && kj < T) ? s[i][j] * scale : neg_inf;
                mx = fmaxf(mx, s[i][j]);
            }
            mx = half_warp_max(mx);
            const float mn = fmaxf(m[i], mx);
            const float corr = expf(m[i] - mn);
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < CJ; ++j) {
                const float p = expf(s[i][j] - mn);  // 0 where masked
                sP[(ty + 16 * i) * SP + tx + 16 * j] = p;
                sum += p;
            }
            sum = half_warp_sum(sum);
            l[i] = l[i] * corr + sum;
            m[i] = mn;
#pragma unroll
            for (int d = 0; d < DJ; ++d) acc[i][d] *= corr;
        }
        __syncthreads();  // P is written and nobody reads K any more
        fa_load_tile<BK, DMAX>(sKV, v, b, k0, T, Hkv, kh, D);
        __syncthreads();
        scores_times_values<RI, DJ, SD, SP>(acc, sP, sKV, min(BK, last + 1 - k0), tx, ty);
    }
#pragma unroll
    for (int i = 0; i < RI; ++i) {
        const int qi = q0 + ty + 16 * i;
        if (qi < T) {
            const i64 row = ((i64)b * T + qi) * Hq + h;
#pragma unroll
            for (int d = 0; d < DJ; ++d) {
                const int e = 4 * tx + 64 * (d >> 2) + (d & 3);
                if (e < D) out[row * D + e] = acc[i][d] / l[i];
            }
            if (tx == 0) lse[row] = m[i] + logf(l[i]);
        }
    }
}

// ---- backward, step 1: delta[row] = dout[row] . out[row] (= sum_j P_j dP_j), one warp per row.
extern "C" __global__ void __launch_bounds__(FA_THREADS)
    flash_attention_delta(const float* __restrict__ out, const float* __restrict__ dout, i64 rows, int D,
                          float* __restrict__ delta) {
    const i64 row = (i64)blockIdx.x * (FA_THREADS / 32) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;  // the whole warp leaves together
    float s = 0.0f;
    for (int e = lane; e < D; e += 32) s = fmaf(dout[row * D + e], out[row * D + e], s);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

// ---- backward, step 2: dK and dV of one key tile of 64 (one kv head, one sequence), looping in a fixed order over
// the q heads of the kv head's group and, for each, over the query tiles of 32 at or after the key tile. Each
// block owns its dK/dV rows: no atomics. Grid: (ceil(T / 64), Hkv, B).
template <int DMAX>
__device__ __forceinline__ void flash_backward_dkdv(const float* __restrict__ q, const float* __restrict__ k,
                                                    const float* __restrict__ v, const float* __restrict__ dout,
                                                    const float* __restrict__ lse, const float* __restrict__ delta,
                                                    int T, int Hq, int Hkv, int D, float* __restrict__ dk,
                                                    float* __restrict__ dv) {
    constexpr int BK = 64, BQ = 32, SD = DMAX + 4, SP = BQ + 4, RI = BK / 16, CJ = BQ / 16, DJ = DMAX / 16;
    extern __shared__ float smem[];
    float* sK = smem;           // BK x SD
    float* sV = sK + BK * SD;   // BK x SD
    float* sQ = sV + BK * SD;   // BQ x SD
    float* sO = sQ + BQ * SD;   // BQ x SD: dout
    float* sP = sO + BQ * SD;   // BK x SP: P^T, then dS^T
    float* sL = sP + BK * SP;   // BQ: lse of the query tile
    float* sDl = sL + BQ;       // BQ: delta of the query tile
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int kh = blockIdx.y, b = blockIdx.z, group = Hq / Hkv;
    const int k0 = blockIdx.x * BK;
    const float scale = 1.0f / sqrtf((float)D);
    fa_load_tile<BK, DMAX>(sK, k, b, k0, T, Hkv, kh, D);
    fa_load_tile<BK, DMAX>(sV, v, b, k0, T, Hkv, kh, D);
    float dK[RI][DJ], dV[RI][DJ];
#pragma unroll
    for (int i = 0; i < RI; ++i)
#pragma unroll
        for (int d = 0; d < DJ; ++d) dK[i][d] = dV[i][d] = 0.0f;
    for (int hh = 0; hh < group; ++hh) {
        const int h = kh * group + hh;
        for (int q0 = k0; q0 < T; q0 += BQ) {  // k0 is a multiple of BQ: queries before k0 see none of these keys
            __syncthreads();  // sK/sV are loaded; nobody reads sQ, sO or sP of the previous tile any more
            fa_load_tile<BQ, DMAX>(sQ, q, b, q0, T, Hq, h, D);
            fa_load_tile<BQ, DMAX>(sO, dout, b, q0, T, Hq, h, D);
            if (threadIdx.x < BQ) {
                const int t = q0 + threadIdx.x;
                const i64 row = ((i64)b * T + t) * Hq + h;
                sL[threadIdx.x] = t < T ? lse[row] : 0.0f;
                sDl[threadIdx.x] = t < T ? delta[row] : 0.0f;
            }
            __syncthreads();
            // P^T = exp(S^T * scale - lse) where key <= query < T (else 0), S^T = K Q^T (BK x BQ).
            {
                float s[RI][CJ];
                tile_dot<RI, CJ, SD>(s, sK, sQ, D, tx, ty);
#pragma unroll
                for (int i = 0; i < RI; ++i)
#pragma unroll
                    for (int j = 0; j < CJ; ++j) {
                        const int key = k0 + ty + 16 * i, qq = q0 + tx + 16 * j;
                        sP[(ty + 16 * i) * SP + tx + 16 * j] =
                            (key <= qq && qq < T) ? expf(s[i][j] * scale - sL[tx + 16 * j]) : 0.0f;
                    }
            }
            __syncthreads();
            const int qn = min(BQ, T - q0);
            scores_times_values<RI, DJ, SD, SP>(dV, sP, sO, qn, tx, ty);  // dV += P^T dO
            // dS^T = P^T (dP^T - delta) * scale with dP^T = V dO^T; each thread rereads only the P it wrote. (S^T and
            // dP^T are not live at the same time: the D = 128 kernel stays within 128 registers.)
            float ds[RI][CJ];
            tile_dot<RI, CJ, SD>(ds, sV, sO, D, tx, ty);
#pragma unroll
            for (int i = 0; i < RI; ++i)
#pragma unroll
                for (int j = 0; j < CJ; ++j)
                    ds[i][j] = sP[(ty + 16 * i) * SP + tx + 16 * j] * (ds[i][j] - sDl[tx + 16 * j]) * scale;
            __syncthreads();  // everyone is done with P^T
#pragma unroll
            for (int i = 0; i < RI; ++i)
#pragma unroll
                for (int j = 0; j < CJ; ++j) sP[(ty + 16 * i) * SP + tx + 16 * j] = ds[i][j];
            __syncthreads();
            scores_times_values<RI, DJ, SD, SP>(dK, sP, sQ, qn, tx, ty);  // dK += dS^T Q
        }
    }
#pragma unroll
    for (int i = 0; i < RI; ++i) {
        const int key = k0 + ty + 16 * i;
        if (key < T) {
            const i64 base = (((i64)b * T + key) * Hkv + kh) * D;
#pragma unroll
            for (int d = 0; d < DJ; ++d) {
                const int e = 4 * tx + 64 * (d >> 2) + (d & 3);
                if (e < D) {
                    dk[base + e] = dK[i][d];
                    dv[base + e] = dV[i][d];
                }
            }
        }
    }
}

// ---- backward, step 3: dQ of one query tile of 64 (one q head, one sequence), looping over the key tiles of 32
// up to the diagonal. Grid: (ceil(T / 64), Hq, B).
template <int DMAX>
__device__ __forceinline__ void flash_backward_dq(const float* __restrict__ q, const float* __restrict__ k,
                                                  const float* __restrict__ v, const float* __restrict__ dout,
                                                  const float* __restrict__ lse, const float* __restrict__ delta,
                                                  int T, int Hq, int Hkv, int D, float* __restrict__ dq) {
    constexpr int BQ = 64, BK = 32, SD = DMAX + 4, SS = BK + 4, RI = BQ / 16, CJ = BK / 16, DJ = DMAX / 16;
    extern __shared__ float smem[];
    float* sQ = smem;           // BQ x SD
    float* sO = sQ + BQ * SD;   // BQ x SD: dout
    float* sK = sO + BQ * SD;   // BK x SD
    float* sV = sK + BK * SD;   // BK x SD
    float* sS = sV + BK * SD;   // BQ x SS: dS
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int qt = gridDim.x - 1 - blockIdx.x;  // the longest rows first
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (Hq / Hkv);
    const int q0 = qt * BQ;
    const int last = min(q0 + BQ, T) - 1;
    const float scale = 1.0f / sqrtf((float)D);
    fa_load_tile<BQ, DMAX>(sQ, q, b, q0, T, Hq, h, D);
    fa_load_tile<BQ, DMAX>(sO, dout, b, q0, T, Hq, h, D);
    float L[RI], Dl[RI], acc[RI][DJ];
#pragma unroll
    for (int i = 0; i < RI; ++i) {
        const int qi = q0 + ty + 16 * i;
        const i64 row = ((i64)b * T + qi) * Hq + h;
        L[i] = qi < T ? lse[row] : 0.0f;
        Dl[i] = qi < T ? delta[row] : 0.0f;
#pragma unroll
        for (int d = 0; d < DJ; ++d) acc[i][d] = 0.0f;
    }
    for (int k0 = 0; k0 <= last; k0 += BK) {
        __syncthreads();  // sQ/sO are loaded; nobody reads sK or sS of the previous tile any more
        fa_load_tile<BK, DMAX>(sK, k, b, k0, T, Hkv, kh, D);
        fa_load_tile<BK, DMAX>(sV, v, b, k0, T, Hkv, kh, D);
        __syncthreads();
        // S = Q K^T and dP = dO V^T, both BQ x BK.
        float s[RI][CJ], dp[RI][CJ];
        tile_dot<RI, CJ, SD>(s, sQ, sK, D, tx, ty);
        tile_dot<RI, CJ, SD>(dp, sO, sV, D, tx, ty);
#pragma unroll
        for (int i = 0; i < RI; ++i)
#pragma unroll
            for (int j = 0; j < CJ; ++j) {
                const int qi = q0 + ty + 16 * i, kj = k0 + tx + 16 * j;
                const float p = (kj <= qi && qi < T) ? expf(s[i][j] * scale - L[i]) : 0.0f;
                sS[(ty + 16 * i) * SS + tx + 16 * j] = p * (dp[i][j] - Dl[i]) * scale;
            }
        __syncthreads();
        scores_times_values<RI, DJ, SD, SS>(acc, sS, sK, min(BK, last + 1 - k0), tx, ty);  // dQ += dS K
    }
#pragma unroll
    for (int i = 0; i < RI; ++i) {
        const int qi = q0 + ty + 16 * i;
        if (qi < T) {
            const i64 row = ((i64)b * T + qi) * Hq + h;
#pragma unroll
            for (int d = 0; d < DJ; ++d) {
                const int e = 4 * tx + 64 * (d >> 2) + (d & 3);
                if (e < D) dq[row * D + e] = acc[i][d];
            }
        }
    }
}

// ---- entry points, one per head-size bound (D <= 64, D <= 128) -------------------------------------------------
#define FLASH_ENTRY_POINTS(DMAX)                                                                                   \
    extern "C" __global__ void __launch_bounds__(FA_THREADS, 2) flash_attention_forward_d##DMAX(                      \
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, int T, int Hq,       \
        int Hkv, int D, float* __restrict__ out, float* __restrict__ lse) {                                        \
        flash_forward<DMAX>(q, k, v, T, Hq, Hkv, D, out, lse);                                                     \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS, 2) flash_attention_backward_dkdv_d##DMAX(                \
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,                     \
        const float* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta, int T,     \
        int Hq, int Hkv, int D, float* __restrict__ dk, float* __restrict__ dv) {                                  \
        flash_backward_dkdv<DMAX>(q, k, v, dout, lse, delta, T, Hq, Hkv, D, dk, dv);                               \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS, 2) flash_attention_backward_dq_d##DMAX(                  \
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,                     \
        const float* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta, int T,     \
        int Hq, int Hkv, int D, float* __restrict__ dq) {                                                          \
        flash_backward_dq<DMAX>(q, k, v, dout, lse, delta, T, Hq, Hkv, D, dq);                                     \
    }

FLASH_ENTRY_POINTS(64)
FLASH_ENTRY_POINTS(128)
