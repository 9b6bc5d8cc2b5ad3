// Tensor-core flash attention: causal GQA with bf16 q, k, v and out (raw u16), an fp32 log-sum-exp per query row,
// fp32 accumulation, both products (S = Q K^T and O += P V) on mma.sync m16n8k16 (bf16 in, fp32 accumulate), the
// online softmax in fp32 registers, and key tiles above the diagonal skipped. Deterministic: no atomics, fixed
// summation orders. Layout as the fp32 kernels of attention.cu: q, out are B x T x Hq x D; k, v are B x T x Hkv x D;
// lse holds one value per query row, row = (b * T + t) * Hq + h. Query head h reads kv head h / (Hq / Hkv); scores
// are scaled by 1 / sqrt(D); token t sees keys 0..=t. D is a multiple of 16, at most DMAX (64 or 128; the launcher
// in kernels/src/cuda/attention_tc.rs checks it). Reference: kernels/src/ops/attention.rs.
//
// FlashAttention-2 structure. One block of 4 warps per (query tile of 64 rows, q head, sequence); warp w owns the
// query rows 16 w .. 16 w + 15 of the tile and keeps their Q fragments in registers for the whole block. K and V
// tiles of 64 keys are copied into shared memory with cp.async, double-buffered: the next tile is in flight while
// the current one is used. Shared rows hold DMAX + 8 bf16 (16 bytes of padding), so the 8 row addresses of an
// ldmatrix phase fall into 8 different groups of 4 banks. K fragments come from ldmatrix, V fragments from
// ldmatrix.trans (V is stored key-major, as in global memory). The score accumulators of one warp's m16n8 tiles map
// onto the A fragments of the P V product: keys 16 kk .. 16 kk + 15 of P are the accumulators of score tiles 2 kk
// and 2 kk + 1, rounded to bf16 and packed in registers, never written to shared memory.
//
// Mask and skipping: key tiles start at 0 and stop at the tile holding the block's last valid query, so only that
// (diagonal) tile needs the mask; in it each warp also skips the 8-key score tiles and 16-key P V steps that lie
// entirely above its own last row or past T. Key 0 is visible to every row (also to the padding rows past T,
// which are computed but never stored), so every row maximum is finite after the first tile.
//
// Dynamic shared memory per block (bf16 elements; the launcher computes the same): 2 stages x (K + V) tiles of
// 64 x (DMAX + 8) = 4 * 64 * (DMAX + 8), i.e. 69,632 bytes for DMAX 128 and 36,864 for DMAX 64. The Q tile is
// staged once through stage 1's K buffer before the loop.

#define TC_THREADS 128
#define TC_TILE 64  // query rows per block = keys per tile
#define TC_PAD 8    // bf16 of padding per shared row

#ifndef TANDEM_CUDA_EMU
// The shared-memory address of a generic pointer into shared memory (for cp.async and ldmatrix).
__device__ __forceinline__ u32 tc_smem(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
// 16 bytes global -> shared, asynchronously; with valid == false the 16 bytes are zero-filled and nothing is read.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(tc_smem(dst)), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
// Four 8 x 8 bf16 matrices from shared memory: lanes 8 i .. 8 i + 7 give the row addresses of matrix i (16 bytes
// each); lane l gets in r[i] the elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) of matrix i, or with .trans
// the elements (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4).
__device__ __forceinline__ void ldmatrix_x4(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(tc_smem(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(tc_smem(p)));
}
// Two fp32 -> one register of two bf16 (round to nearest even), lo in the low half.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
#endif

// Rows t0 .. t0 + 63 of head `head` (of `heads`) of sequence b into a 64 x (DMAX + 8) shared tile, 16 bytes per
// cp.async. Rows past T are zero-filled; columns past D are not written (and never read).
template <int DMAX>
__device__ __forceinline__ void tc_load_tile(u16* dst, const u16* __restrict__ src, int b, int t0, int T, int heads,
                                             int head, int D) {
    constexpr int CH = DMAX / 8, SD = DMAX + TC_PAD;
#pragma unroll
    for (int it = 0; it < TC_TILE * CH / TC_THREADS; ++it) {
        const int i = threadIdx.x + it * TC_THREADS;
        const int r = i / CH, c = i - r * CH, t = t0 + r;
        if (c * 8 < D) {
            const bool ok = t < T;
            const u16* s = ok ? src + (((i64)b * T + t) * heads + head) * D + c * 8 : src;
            cp_async16(dst + r * SD + c * 8, s, ok);
        }
    }
}

// ---- forward. Grid: (ceil(T / 64), Hq, B), 128 threads.
template <int DMAX>
__device__ __forceinline__ void flash_tc_forward(const u16* __restrict__ q, const u16* __restrict__ k,
                                                 const u16* __restrict__ v, int T, int Hq, int Hkv, int D,
                                                 u16* __restrict__ out, float* __restrict__ lse) {
    constexpr int SD = DMAX + TC_PAD, TILE = TC_TILE * SD, KS = DMAX / 16, NT = DMAX / 8;
    extern __shared__ float smem[];
    u16* sbuf = (u16*)smem;  // stage s: K tile at sbuf + 2 s TILE, V tile right after it
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    const int qt = gridDim.x - 1 - blockIdx.x;  // the longest rows first
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (Hq / Hkv);
    const int q0 = qt * TC_TILE;
    const int ntiles = qt + 1;  // key tiles 0 .. qt: the last holds the diagonal
    const float scale = 1.0f / sqrtf((float)D);
    const float sl2 = scale * 1.4426950408889634f;  // exp(x scale) = exp2(x sl2)
    const float neg_inf = __int_as_float(0xff800000);

    // Q (through stage 1's K buffer) and the first K/V tile.
    tc_load_tile<DMAX>(sbuf + 2 * TILE, q, b, q0, T, Hq, h, D);
    tc_load_tile<DMAX>(sbuf, k, b, 0, T, Hkv, kh, D);
    tc_load_tile<DMAX>(sbuf + TILE, v, b, 0, T, Hkv, kh, D);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    // A fragments of the warp's 16 rows: matrix i of ldmatrix = rows + 8 (i & 1), columns + 8 (i >> 1).
    u32 qf[KS][4];
    {
        const u16* base = sbuf + 2 * TILE + (16 * w + (lane & 7) + 8 * ((lane >> 3) & 1)) * SD + 8 * (lane >> 4);
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            if (16 * kk < D) {
                ldmatrix_x4(qf[kk], base + 16 * kk);
            } else {
                qf[kk][0] = qf[kk][1] = qf[kk][2] = qf[kk][3] = 0u;
            }
        }
    }
    __syncthreads();  // every warp has its Q fragments: stage 1 may be overwritten

    // Lane (g, t4) holds rows g and g + 8 of the warp: m, l (l is this lane's partial sum until the end).
    float m0 = neg_inf, m1 = neg_inf, l0 = 0.0f, l1 = 0.0f;
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    const int row0 = q0 + 16 * w + g, row1 = row0 + 8;

    for (int it = 0; it < ntiles; ++it) {
        const int k0 = it * TC_TILE;
        if (it + 1 < ntiles) {  // prefetch the next tile into the other stage (freed by the barrier below)
            u16* st = sbuf + 2 * ((it + 1) & 1) * TILE;
            tc_load_tile<DMAX>(st, k, b, k0 + TC_TILE, T, Hkv, kh, D);
            tc_load_tile<DMAX>(st + TILE, v, b, k0 + TC_TILE, T, Hkv, kh, D);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // this tile has landed for every thread
        const u16* sK = sbuf + 2 * (it & 1) * TILE;
        const u16* sV = sK + TILE;
        // The last key any row of this warp may see, relative to k0 (>= 0: k0 <= q0 and k0 < T); score tiles past
        // it (only in the diagonal tile) are skipped and stay fully masked.
        const int jmax = min(7, (min(q0 + 16 * w + 15, T - 1) - k0) >> 3);

        // S = Q K^T for the warp's 16 rows x 64 keys: 8 score tiles of 16 x 8. ldmatrix matrix i holds keys
        // 16 jp + 8 (i >> 1) + r, columns 16 kk + 8 (i & 1): B fragments of score tiles 2 jp and 2 jp + 1.
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        {
            const u16* base = sK + ((lane & 7) + 8 * (lane >> 4)) * SD + 8 * ((lane >> 3) & 1);
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                if (16 * kk < D) {
#pragma unroll
                    for (int jp = 0; jp < 4; ++jp) {
                        if (2 * jp <= jmax) {
                            u32 bk[4];
                            ldmatrix_x4(bk, base + 16 * jp * SD + 16 * kk);
                            mma_bf16_16816(s[2 * jp], qf[kk], bk);
                            if (2 * jp + 1 <= jmax) mma_bf16_16816(s[2 * jp + 1], qf[kk], bk + 2);
                        }
                    }
                }
            }
        }
        if (k0 + TC_TILE > q0) {  // the diagonal tile (also the only one that can reach past T)
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const int key = k0 + 8 * j + 2 * t4 + (c & 1), row = c < 2 ? row0 : row1;
                    if (key > row || key >= T) s[j][c] = neg_inf;
                }
        }

        // Online softmax over the rows g (s[.][0..1]) and g + 8 (s[.][2..3]); the 4 lanes of a row share its max.
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
#pragma unroll
        for (int o = 1; o < 4; o <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o));
        }
        const float corr0 = exp2f((m0 - mx0) * sl2), corr1 = exp2f((m1 - mx1) * sl2);  // 0 on the first tile
        m0 = mx0;
        m1 = mx1;
        const float off0 = mx0 * sl2, off1 = mx1 * sl2;
        // P as bf16 A fragments: pf[kk] covers keys 16 kk .. 16 kk + 15 (score tiles 2 kk and 2 kk + 1).
        u32 pf[4][4];
        float r0 = 0.0f, r1 = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float p0 = exp2f(fmaf(s[j][0], sl2, -off0)), p1 = exp2f(fmaf(s[j][1], sl2, -off0));
            const float p2 = exp2f(fmaf(s[j][2], sl2, -off1)), p3 = exp2f(fmaf(s[j][3], sl2, -off1));
            r0 += p0 + p1;
            r1 += p2 + p3;
            pf[j >> 1][2 * (j & 1)] = pack_bf16x2(p0, p1);
            pf[j >> 1][2 * (j & 1) + 1] = pack_bf16x2(p2, p3);
        }
        l0 = l0 * corr0 + r0;
        l1 = l1 * corr1 + r1;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            acc[n][0] *= corr0;
            acc[n][1] *= corr0;
            acc[n][2] *= corr1;
            acc[n][3] *= corr1;
        }

        // O += P V. ldmatrix.trans matrix i holds keys 16 kk + 8 (i & 1) + r, columns 16 dp + 8 (i >> 1): the B
        // fragments of output tiles 2 dp and 2 dp + 1. Key steps wholly past jmax have P = 0 and are skipped.
        {
            const u16* base = sV + ((lane & 7) + 8 * ((lane >> 3) & 1)) * SD + 8 * (lane >> 4);
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                if (2 * kk <= jmax) {
#pragma unroll
                    for (int dp = 0; dp < NT / 2; ++dp) {
                        if (16 * dp < D) {
                            u32 bv[4];
                            ldmatrix_x4_trans(bv, base + 16 * kk * SD + 16 * dp);
                            mma_bf16_16816(acc[2 * dp], pf[kk], bv);
                            mma_bf16_16816(acc[2 * dp + 1], pf[kk], bv + 2);
                        }
                    }
                }
            }
        }
        __syncthreads();  // everyone is done with this stage before the next prefetch overwrites it
    }

    // Row sums over the 4 lanes of each row (in a fixed order), then out = acc / l in bf16, and lse.
#pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, o);
        l1 += __shfl_xor_sync(0xffffffffu, l1, o);
    }
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    if (row0 < T) {
        const i64 row = ((i64)b * T + row0) * Hq + h;
        u16* o = out + row * D + 2 * t4;
#pragma unroll
        for (int n = 0; n < NT; ++n)
            if (8 * n < D) *(u32*)(o + 8 * n) = pack_bf16x2(acc[n][0] * inv0, acc[n][1] * inv0);
        if (t4 == 0) lse[row] = m0 * scale + logf(l0);
    }
    if (row1 < T) {
        const i64 row = ((i64)b * T + row1) * Hq + h;
        u16* o = out + row * D + 2 * t4;
#pragma unroll
        for (int n = 0; n < NT; ++n)
            if (8 * n < D) *(u32*)(o + 8 * n) = pack_bf16x2(acc[n][2] * inv1, acc[n][3] * inv1);
        if (t4 == 0) lse[row] = m1 * scale + logf(l1);
    }
}

// ---- entry points, one per head-size bound (D <= 64, D <= 128) -------------------------------------------------
#define FLASH_TC_ENTRY_POINTS(DMAX)                                                                               \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 1) flash_attention_tc_forward_d##DMAX(                   \
        const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v, int T, int Hq, int Hkv,  \
        int D, u16* __restrict__ out, float* __restrict__ lse) {                                                  \
        flash_tc_forward<DMAX>(q, k, v, T, Hq, Hkv, D, out, lse);                                                 \
    }

FLASH_TC_ENTRY_POINTS(64)
FLASH_TC_ENTRY_POINTS(128)
