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

// Rows t0 .. t0 + ROWS - 1 of head `head` (of `heads`) of sequence b into a ROWS x (DMAX + 8) shared tile, 16 bytes
// per cp.async. Rows past T are zero-filled; columns past D are not written (and never read).
template <int ROWS, int DMAX>
__device__ __forceinline__ void tc_load_tile(u16* dst, const u16* __restrict__ src, int b, int t0, int T, int heads,
                                             int head, int D) {
    constexpr int CH = DMAX / 8, SD = DMAX + TC_PAD;
    static_assert(ROWS * CH % TC_THREADS == 0, "whole rounds of 16-byte copies");
#pragma unroll
    for (int it = 0; it < ROWS * CH / TC_THREADS; ++it) {
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
    tc_load_tile<TC_TILE, DMAX>(sbuf + 2 * TILE, q, b, q0, T, Hq, h, D);
    tc_load_tile<TC_TILE, DMAX>(sbuf, k, b, 0, T, Hkv, kh, D);
    tc_load_tile<TC_TILE, DMAX>(sbuf + TILE, v, b, 0, T, Hkv, kh, D);
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
            tc_load_tile<TC_TILE, DMAX>(st, k, b, k0 + TC_TILE, T, Hkv, kh, D);
            tc_load_tile<TC_TILE, DMAX>(st + TILE, v, b, k0 + TC_TILE, T, Hkv, kh, D);
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

// ---- backward, step 1: delta[row] = dout[row] . out[row] in fp32 from the bf16 values (= sum_j P_j dP_j), one
// warp per row, in a fixed order. Grid: ceil(rows / 8) blocks of 256 threads.
extern "C" __global__ void __launch_bounds__(256)
    flash_attention_tc_delta(const u16* __restrict__ out, const u16* __restrict__ dout, i64 rows, int D,
                             float* __restrict__ delta) {
    const i64 row = (i64)blockIdx.x * 8 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;  // the whole warp leaves together
    float s = 0.0f;
    for (int e = 2 * lane; e < D; e += 64) {  // D is even: pairs of bf16
        const u32 o = *(const u32*)(out + row * D + e), g = *(const u32*)(dout + row * D + e);
        s = fmaf(bf16_to_f32((u16)(g & 0xffffu)), bf16_to_f32((u16)(o & 0xffffu)), s);
        s = fmaf(bf16_to_f32((u16)(g >> 16)), bf16_to_f32((u16)(o >> 16)), s);
    }
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

// ---- backward, step 2: dK and dV (fp32) of one key tile of 64 (one kv head, one sequence); warp w owns keys
// 16 w .. 16 w + 15 of it. The block loops, in a fixed order, over the iterations it0 .. it1 - 1 of the key tile's
// iteration space: iteration it is query tile it % nq (of 32, from the key tile on) of q head it / nq of the kv
// head's group; Q, dO, lse and delta of the next query tile are in flight (cp.async, two stages) while the current
// one is used. Per query tile, on the tensor cores (all 16 x 8 tiles):
//   S^T = K Q^T and dP^T = V dO^T (A fragments of K and V by ldmatrix, B of Q and dO by ldmatrix),
//   P^T = exp(S^T scale - lse) (0 where query < key or query >= T), dS^T = P^T (dP^T - delta) scale,
//   dV += P^T dO and dK += dS^T Q (P^T and dS^T as bf16 A fragments from the accumulators, dO and Q by
//   ldmatrix.trans). Key row r (< 64) of the tile, if k0 + r < T, is written to dk_out / dv_out + r * stride.
// The unsplit kernel runs the whole space (0 .. group * nq) and writes dk, dv directly; the chunked one runs one
// chunk of at most TC_CHUNK iterations and writes an fp32 partial. No atomics.
// Dynamic shared memory (bytes): (2 * 64 + 2 * 2 * 32) * (DMAX + 8) * 2 + 2 * 64 * 4.
#define TC_CHUNK 32  // iterations (query tiles of 32 of one q head) per work item of the chunked dK/dV kernel

// The iteration count of key tile kt (query tiles of 32 from its first key, times the group) and its chunk count.
__device__ __forceinline__ int tc_dkdv_iters(int kt, int T, int group) {
    return group * ((T - kt * TC_TILE + 31) / 32);
}
__device__ __forceinline__ int tc_dkdv_chunks(int kt, int T, int group) {
    return (tc_dkdv_iters(kt, T, group) + TC_CHUNK - 1) / TC_CHUNK;
}

template <int DMAX>
__device__ __forceinline__ void flash_tc_backward_dkdv(const u16* __restrict__ q, const u16* __restrict__ k,
                                                       const u16* __restrict__ v, const u16* __restrict__ dout,
                                                       const float* __restrict__ lse, const float* __restrict__ delta,
                                                       int T, int Hq, int Hkv, int D, int kt, int kh, int b, int it0,
                                                       int it1, float* __restrict__ dk_out,
                                                       float* __restrict__ dv_out, i64 stride) {
    constexpr int SD = DMAX + TC_PAD, KT = TC_TILE * SD, QT = 32 * SD, KS = DMAX / 16, NT = DMAX / 8;
    extern __shared__ float smem[];
    u16* sK = (u16*)smem;                // 64 x SD
    u16* sV = sK + KT;                   // 64 x SD
    u16* sQ = sV + KT;                   // stage s: Q tile at sQ + 2 s QT, dO tile right after it (32 x SD each)
    float* sLD = (float*)(sQ + 4 * QT);  // stage s: 32 lse (times log2 e), then 32 delta, at sLD + 64 s
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    const int group = Hq / Hkv;
    const int k0 = kt * TC_TILE;
    const int nq = (T - k0 + 31) / 32;  // query tiles of 32 from k0: queries before k0 see none of these keys
    const float scale = 1.0f / sqrtf((float)D);
    const float log2e = 1.4426950408889634f, sl2 = scale * log2e;

    // Query tile `it` (head kh * group + it / nq, first query k0 + 32 (it % nq)) into stage st.
    auto load_queries = [&](int it, int st) {
        const int hh = it / nq, q0 = k0 + 32 * (it - hh * nq), h = kh * group + hh;
        tc_load_tile<32, DMAX>(sQ + 2 * st * QT, q, b, q0, T, Hq, h, D);
        tc_load_tile<32, DMAX>(sQ + (2 * st + 1) * QT, dout, b, q0, T, Hq, h, D);
        if (threadIdx.x < 64) {
            const int i = threadIdx.x & 31, t = q0 + i;
            const i64 row = ((i64)b * T + t) * Hq + h;
            sLD[64 * st + threadIdx.x] = t >= T ? 0.0f : threadIdx.x < 32 ? lse[row] * log2e : delta[row];
        }
    };
    tc_load_tile<TC_TILE, DMAX>(sK, k, b, k0, T, Hkv, kh, D);
    tc_load_tile<TC_TILE, DMAX>(sV, v, b, k0, T, Hkv, kh, D);
    load_queries(it0, it0 & 1);
    cp_async_commit();

    float dK[NT][4], dV[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) dK[n][c] = dV[n][c] = 0.0f;
    const int key0 = k0 + 16 * w + g, key1 = key0 + 8;
    // ldmatrix row addresses: A fragments (16 rows: + 8 (i & 1), columns + 8 (i >> 1)); B fragments of two 8-row
    // tiles (rows + 8 (i >> 1), columns + 8 (i & 1)); ldmatrix.trans B fragments (rows + 8 (i & 1), columns
    // + 8 (i >> 1)).
    const int a_off = (16 * w + (lane & 7) + 8 * ((lane >> 3) & 1)) * SD + 8 * (lane >> 4);
    const int b_off = ((lane & 7) + 8 * (lane >> 4)) * SD + 8 * ((lane >> 3) & 1);
    const int bt_off = ((lane & 7) + 8 * ((lane >> 3) & 1)) * SD + 8 * (lane >> 4);

    for (int it = it0; it < it1; ++it) {
        const int hh = it / nq, q0 = k0 + 32 * (it - hh * nq);
        if (it + 1 < it1) {  // prefetch the next query tile into the other stage (freed by the barrier below)
            load_queries(it + 1, (it + 1) & 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // this query tile (and on the first pass K and V) has landed for every thread
        const u16* cQ = sQ + 2 * (it & 1) * QT;
        const u16* cO = cQ + QT;
        const float* cL = sLD + 64 * (it & 1);
        const float* cDl = cL + 32;

        // S^T = K Q^T and dP^T = V dO^T: the warp's 16 keys x 32 queries, 4 tiles of 16 x 8 each.
        float s[4][4], dp[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) s[j][c] = dp[j][c] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            if (16 * kk < D) {
                u32 ak[4], av[4];
                ldmatrix_x4(ak, sK + a_off + 16 * kk);
                ldmatrix_x4(av, sV + a_off + 16 * kk);
#pragma unroll
                for (int jp = 0; jp < 2; ++jp) {
                    u32 bq[4], bo[4];
                    ldmatrix_x4(bq, cQ + b_off + 16 * jp * SD + 16 * kk);
                    ldmatrix_x4(bo, cO + b_off + 16 * jp * SD + 16 * kk);
                    mma_bf16_16816(s[2 * jp], ak, bq);
                    mma_bf16_16816(s[2 * jp + 1], ak, bq + 2);
                    mma_bf16_16816(dp[2 * jp], av, bo);
                    mma_bf16_16816(dp[2 * jp + 1], av, bo + 2);
                }
            }
        }
        // P^T and dS^T, as bf16 A fragments over the 32 queries (pf[kq], df[kq]: queries 16 kq .. 16 kq + 15).
        const bool edge = q0 < k0 + TC_TILE || q0 + 32 > T;  // the diagonal tiles, and the one reaching past T
        u32 pf[2][4], df[2][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int qi = 8 * j + 2 * t4 + (c & 1), key = c < 2 ? key0 : key1;
                float p = exp2f(fmaf(s[j][c], sl2, -cL[qi]));
                if (edge && (q0 + qi < key || q0 + qi >= T)) p = 0.0f;
                dp[j][c] = p * (dp[j][c] - cDl[qi]) * scale;
                s[j][c] = p;
            }
            pf[j >> 1][2 * (j & 1)] = pack_bf16x2(s[j][0], s[j][1]);
            pf[j >> 1][2 * (j & 1) + 1] = pack_bf16x2(s[j][2], s[j][3]);
            df[j >> 1][2 * (j & 1)] = pack_bf16x2(dp[j][0], dp[j][1]);
            df[j >> 1][2 * (j & 1) + 1] = pack_bf16x2(dp[j][2], dp[j][3]);
        }
        // dV += P^T dO, dK += dS^T Q (k = the 32 queries, in two steps of 16).
#pragma unroll
        for (int kq = 0; kq < 2; ++kq) {
#pragma unroll
            for (int dpi = 0; dpi < NT / 2; ++dpi) {
                if (16 * dpi < D) {
                    u32 bo[4], bq[4];
                    ldmatrix_x4_trans(bo, cO + bt_off + 16 * kq * SD + 16 * dpi);
                    ldmatrix_x4_trans(bq, cQ + bt_off + 16 * kq * SD + 16 * dpi);
                    mma_bf16_16816(dV[2 * dpi], pf[kq], bo);
                    mma_bf16_16816(dV[2 * dpi + 1], pf[kq], bo + 2);
                    mma_bf16_16816(dK[2 * dpi], df[kq], bq);
                    mma_bf16_16816(dK[2 * dpi + 1], df[kq], bq + 2);
                }
            }
        }
        __syncthreads();  // everyone is done with this stage before the next prefetch overwrites it
    }
    if (key0 < T) {
        const i64 o = (key0 - k0) * stride + 2 * t4;
#pragma unroll
        for (int n = 0; n < NT; ++n)
            if (8 * n < D) {
                *(float2*)(dk_out + o + 8 * n) = make_float2(dK[n][0], dK[n][1]);
                *(float2*)(dv_out + o + 8 * n) = make_float2(dV[n][0], dV[n][1]);
            }
    }
    if (key1 < T) {
        const i64 o = (key1 - k0) * stride + 2 * t4;
#pragma unroll
        for (int n = 0; n < NT; ++n)
            if (8 * n < D) {
                *(float2*)(dk_out + o + 8 * n) = make_float2(dK[n][2], dK[n][3]);
                *(float2*)(dv_out + o + 8 * n) = make_float2(dV[n][2], dV[n][3]);
            }
    }
}

// The unsplit dK/dV: one block per (key tile, kv head, sequence) runs the tile's whole iteration space and writes
// dk and dv. Grid: (ceil(T / 64), Hkv, B), 128 threads.
template <int DMAX>
__device__ __forceinline__ void flash_tc_backward_dkdv_whole(const u16* __restrict__ q, const u16* __restrict__ k,
                                                             const u16* __restrict__ v, const u16* __restrict__ dout,
                                                             const float* __restrict__ lse,
                                                             const float* __restrict__ delta, int T, int Hq, int Hkv,
                                                             int D, float* __restrict__ dk, float* __restrict__ dv) {
    const int kt = blockIdx.x, kh = blockIdx.y, b = blockIdx.z;
    const i64 o = (((i64)b * T + (i64)kt * TC_TILE) * Hkv + kh) * D;
    flash_tc_backward_dkdv<DMAX>(q, k, v, dout, lse, delta, T, Hq, Hkv, D, kt, kh, b, 0,
                                 tc_dkdv_iters(kt, T, Hq / Hkv), dk + o, dv + o, (i64)Hkv * D);
}

// The balanced (chunked) dK/dV. Each key tile's iteration space is cut into chunks of TC_CHUNK iterations (the
// last one shorter); the work items (key tile kt, chunk c) of one (kv head, sequence) are numbered key tile by key
// tile, chunk by chunk: item = tc_dkdv_first_item(kt) + c. Block (item, kv head, sequence) runs its chunk and
// writes the fp32 partials of the tile's 64 key rows (rows past T are not written) to
//   partials[((b * Hkv + kh) * items + item) * 64 * D + r * D + e]       (dK),
// and the same index plus B * Hkv * items * 64 * D (dV). Every block runs at most TC_CHUNK iterations, so the grid
// is balanced to within one chunk (list scheduling: the slowest slot ends at most one item after the average).
// Grid: (items, Hkv, B), 128 threads; items = tc_dkdv_first_item(ceil(T / 64)).
__device__ __forceinline__ int tc_dkdv_first_item(int kt, int T, int group) {
    int n = 0;
    for (int j = 0; j < kt; ++j) n += tc_dkdv_chunks(j, T, group);
    return n;
}
template <int DMAX>
__device__ __forceinline__ void flash_tc_backward_dkdv_chunk(const u16* __restrict__ q, const u16* __restrict__ k,
                                                             const u16* __restrict__ v, const u16* __restrict__ dout,
                                                             const float* __restrict__ lse,
                                                             const float* __restrict__ delta, int T, int Hq, int Hkv,
                                                             int D, float* __restrict__ partials) {
    const int item = blockIdx.x, kh = blockIdx.y, b = blockIdx.z, group = Hq / Hkv, tiles = (T + TC_TILE - 1) / TC_TILE;
    // The key tile of this item: the first whose items reach past it (a short integer loop, the same in every thread).
    int kt = 0, first = 0;
    while (kt + 1 < tiles && first + tc_dkdv_chunks(kt, T, group) <= item) {
        first += tc_dkdv_chunks(kt, T, group);
        ++kt;
    }
    const int c = item - first, iters = tc_dkdv_iters(kt, T, group);
    const int it0 = c * TC_CHUNK, it1 = min(iters, it0 + TC_CHUNK);
    const int items = gridDim.x;
    const i64 tile_elems = (i64)TC_TILE * D;
    const i64 o = ((i64)b * Hkv + kh) * items * tile_elems + (i64)item * tile_elems;
    const i64 dv_off = (i64)gridDim.z * Hkv * items * tile_elems;
    flash_tc_backward_dkdv<DMAX>(q, k, v, dout, lse, delta, T, Hq, Hkv, D, kt, kh, b, it0, it1, partials + o,
                                 partials + dv_off + o, (i64)D);
}

// The reduce of the balanced dK/dV: one block of 256 threads per (key tile, kv head, sequence) sums, for each
// element of the tile's rows below T, the partials of the tile's chunks in chunk order (starting from chunk 0's
// value, so a tile of one chunk gets the chunk's bits), and writes dk and dv. Reads only the chunks the tile has.
// Grid: (ceil(T / 64), Hkv, B).
extern "C" __global__ void __launch_bounds__(256)
    flash_attention_tc_backward_dkdv_reduce(const float* __restrict__ partials, int T, int Hq, int Hkv, int D,
                                            int items, float* __restrict__ dk, float* __restrict__ dv) {
    const int kt = blockIdx.x, kh = blockIdx.y, b = blockIdx.z, group = Hq / Hkv;
    const int first = tc_dkdv_first_item(kt, T, group), n = tc_dkdv_chunks(kt, T, group);
    const int rows = min(TC_TILE, T - kt * TC_TILE);
    const i64 tile_elems = (i64)TC_TILE * D;
    const float* pk = partials + (((i64)b * Hkv + kh) * items + first) * tile_elems;
    const float* pv = pk + (i64)gridDim.z * Hkv * items * tile_elems;
    for (int i = threadIdx.x; i < rows * D; i += 256) {
        float sk = pk[i], sv = pv[i];
        for (int c = 1; c < n; ++c) {
            sk += pk[c * tile_elems + i];
            sv += pv[c * tile_elems + i];
        }
        const int r = i / D, e = i - r * D;
        const i64 o = (((i64)b * T + kt * TC_TILE + r) * Hkv + kh) * D + e;
        dk[o] = sk;
        dv[o] = sv;
    }
}

// ---- backward, step 3: dQ (fp32) of one query tile of 64 (one q head, one sequence); warp w owns rows
// 16 w .. 16 w + 15 and keeps their Q and dO fragments in registers. Loops over the key tiles of 32 up to the
// diagonal, K and V double-buffered with cp.async: S = Q K^T, dP = dO V^T (K and V by ldmatrix), P and dS as in
// step 2, dQ += dS K (dS as bf16 A fragments, K by ldmatrix.trans). Grid: (ceil(T / 64), Hq, B), 128 threads.
// Dynamic shared memory (bytes): 2 * 64 * (DMAX + 8) * 2 (two stages of a K and a V tile of 32 rows; Q and dO
// are staged through the same space before the loop).
template <int DMAX>
__device__ __forceinline__ void flash_tc_backward_dq(const u16* __restrict__ q, const u16* __restrict__ k,
                                                     const u16* __restrict__ v, const u16* __restrict__ dout,
                                                     const float* __restrict__ lse, const float* __restrict__ delta,
                                                     int T, int Hq, int Hkv, int D, float* __restrict__ dq) {
    constexpr int SD = DMAX + TC_PAD, KT = 32 * SD, KS = DMAX / 16, NT = DMAX / 8;
    extern __shared__ float smem[];
    u16* sbuf = (u16*)smem;  // stage s: K tile at sbuf + 2 s KT, V tile right after it (32 x SD each)
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    const int qt = gridDim.x - 1 - blockIdx.x;  // the longest rows first
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (Hq / Hkv);
    const int q0 = qt * TC_TILE;
    const int nk = (min(q0 + TC_TILE, T) + 31) / 32;  // key tiles of 32 up to the last valid query
    const float scale = 1.0f / sqrtf((float)D);
    const float log2e = 1.4426950408889634f, sl2 = scale * log2e;
    const int a_off = (16 * w + (lane & 7) + 8 * ((lane >> 3) & 1)) * SD + 8 * (lane >> 4);
    const int b_off = ((lane & 7) + 8 * (lane >> 4)) * SD + 8 * ((lane >> 3) & 1);
    const int bt_off = ((lane & 7) + 8 * ((lane >> 3) & 1)) * SD + 8 * (lane >> 4);

    // Q and dO (64 x SD each: the whole buffer) into registers first.
    tc_load_tile<TC_TILE, DMAX>(sbuf, q, b, q0, T, Hq, h, D);
    tc_load_tile<TC_TILE, DMAX>(sbuf + 2 * KT, dout, b, q0, T, Hq, h, D);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    u32 qf[KS][4], of[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
        if (16 * kk < D) {
            ldmatrix_x4(qf[kk], sbuf + a_off + 16 * kk);
            ldmatrix_x4(of[kk], sbuf + 2 * KT + a_off + 16 * kk);
        } else {
#pragma unroll
            for (int c = 0; c < 4; ++c) qf[kk][c] = of[kk][c] = 0u;
        }
    }
    __syncthreads();  // every warp has its fragments: the buffer may be overwritten
    const int row0 = q0 + 16 * w + g, row1 = row0 + 8;
    const i64 r0 = ((i64)b * T + row0) * Hq + h, r1 = ((i64)b * T + row1) * Hq + h;
    const float L0 = row0 < T ? lse[r0] * log2e : 0.0f, L1 = row1 < T ? lse[r1] * log2e : 0.0f;
    const float D0 = row0 < T ? delta[r0] : 0.0f, D1 = row1 < T ? delta[r1] : 0.0f;
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    tc_load_tile<32, DMAX>(sbuf, k, b, 0, T, Hkv, kh, D);
    tc_load_tile<32, DMAX>(sbuf + KT, v, b, 0, T, Hkv, kh, D);
    cp_async_commit();
    for (int it = 0; it < nk; ++it) {
        const int k0 = 32 * it;
        if (it + 1 < nk) {  // prefetch the next key tile into the other stage (freed by the barrier below)
            u16* st = sbuf + 2 * ((it + 1) & 1) * KT;
            tc_load_tile<32, DMAX>(st, k, b, k0 + 32, T, Hkv, kh, D);
            tc_load_tile<32, DMAX>(st + KT, v, b, k0 + 32, T, Hkv, kh, D);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const u16* sK = sbuf + 2 * (it & 1) * KT;
        const u16* sV = sK + KT;
        // S = Q K^T and dP = dO V^T: the warp's 16 rows x 32 keys, 4 tiles of 16 x 8.
        float s[4][4], dp[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) s[j][c] = dp[j][c] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            if (16 * kk < D) {
#pragma unroll
                for (int jp = 0; jp < 2; ++jp) {
                    u32 bk[4], bv[4];
                    ldmatrix_x4(bk, sK + b_off + 16 * jp * SD + 16 * kk);
                    ldmatrix_x4(bv, sV + b_off + 16 * jp * SD + 16 * kk);
                    mma_bf16_16816(s[2 * jp], qf[kk], bk);
                    mma_bf16_16816(s[2 * jp + 1], qf[kk], bk + 2);
                    mma_bf16_16816(dp[2 * jp], of[kk], bv);
                    mma_bf16_16816(dp[2 * jp + 1], of[kk], bv + 2);
                }
            }
        }
        const bool edge = k0 + 32 > q0;  // the diagonal tiles (the only ones that can reach past T)
        u32 df[2][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int key = k0 + 8 * j + 2 * t4 + (c & 1), row = c < 2 ? row0 : row1;
                float p = exp2f(fmaf(s[j][c], sl2, -(c < 2 ? L0 : L1)));
                if (edge && (key > row || key >= T)) p = 0.0f;
                dp[j][c] = p * (dp[j][c] - (c < 2 ? D0 : D1)) * scale;
            }
            df[j >> 1][2 * (j & 1)] = pack_bf16x2(dp[j][0], dp[j][1]);
            df[j >> 1][2 * (j & 1) + 1] = pack_bf16x2(dp[j][2], dp[j][3]);
        }
        // dQ += dS K (k = the 32 keys, in two steps of 16).
#pragma unroll
        for (int kq = 0; kq < 2; ++kq) {
#pragma unroll
            for (int dpi = 0; dpi < NT / 2; ++dpi) {
                if (16 * dpi < D) {
                    u32 bk[4];
                    ldmatrix_x4_trans(bk, sK + bt_off + 16 * kq * SD + 16 * dpi);
                    mma_bf16_16816(acc[2 * dpi], df[kq], bk);
                    mma_bf16_16816(acc[2 * dpi + 1], df[kq], bk + 2);
                }
            }
        }
        __syncthreads();  // everyone is done with this stage before the next prefetch overwrites it
    }
    if (row0 < T) {
        float* o = dq + r0 * D + 2 * t4;
#pragma unroll
        for (int n = 0; n < NT; ++n)
            if (8 * n < D) *(float2*)(o + 8 * n) = make_float2(acc[n][0], acc[n][1]);
    }
    if (row1 < T) {
        float* o = dq + r1 * D + 2 * t4;
#pragma unroll
        for (int n = 0; n < NT; ++n)
            if (8 * n < D) *(float2*)(o + 8 * n) = make_float2(acc[n][2], acc[n][3]);
    }
}

// ---- entry points, one per head-size bound (D <= 64, D <= 128) -------------------------------------------------
#define FLASH_TC_ENTRY_POINTS(DMAX)                                                                               \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 1) flash_attention_tc_forward_d##DMAX(                \
        const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v, int T, int Hq, int Hkv,  \
        int D, u16* __restrict__ out, float* __restrict__ lse) {                                                  \
        flash_tc_forward<DMAX>(q, k, v, T, Hq, Hkv, D, out, lse);                                                 \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 1) flash_attention_tc_backward_dkdv_d##DMAX(          \
        const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,                          \
        const u16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta, int T,      \
        int Hq, int Hkv, int D, float* __restrict__ dk, float* __restrict__ dv) {                                 \
        flash_tc_backward_dkdv_whole<DMAX>(q, k, v, dout, lse, delta, T, Hq, Hkv, D, dk, dv);                     \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 1) flash_attention_tc_backward_dkdv_chunk_d##DMAX(    \
        const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,                          \
        const u16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta, int T,      \
        int Hq, int Hkv, int D, float* __restrict__ partials) {                                                   \
        flash_tc_backward_dkdv_chunk<DMAX>(q, k, v, dout, lse, delta, T, Hq, Hkv, D, partials);                   \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 1) flash_attention_tc_backward_dq_d##DMAX(            \
        const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,                          \
        const u16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta, int T,      \
        int Hq, int Hkv, int D, float* __restrict__ dq) {                                                         \
        flash_tc_backward_dq<DMAX>(q, k, v, dout, lse, delta, T, Hq, Hkv, D, dq);                                 \
    }

FLASH_TC_ENTRY_POINTS(64)
FLASH_TC_ENTRY_POINTS(128)
