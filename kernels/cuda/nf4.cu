// NF4 kernels: quantise (block 64) with double quantisation of the absmax, dequantise to fp32/bf16/f16, and the
// matrix-vector product for decoding (batch 1..8). Bit-compatible with kernels/src/nf4.rs: the tables (levels,
// thresholds, dynamic map) come from the Rust constants as kernel arguments, and the rounding of every fp32
// operation is spelled out (__fmul_rn/__fadd_rn/__fdiv_rn: no contraction into fused multiply-adds).

// Number of thresholds strictly below s (the NF4 code of a value scaled into [-1, 1]).
__device__ __forceinline__ u32 nf4_code(float s, const float* t /* 15, sorted */) {
    u32 c = 0;
#pragma unroll
    for (int i = 0; i < 15; ++i) c += s > t[i] ? 1u : 0u;
    return c;
}

// One warp per block of 64 elements: lane l holds elements 2l and 2l+1 (one output byte, the first element in the
// high nibble). A partial last block uses only its own elements, divides instead of multiplying by the reciprocal,
// and pads a missing low nibble with code 7 (0.0).
extern "C" __global__ void nf4_quantize(const float* __restrict__ x, i64 n, const float* __restrict__ thresholds,
                                        u8* __restrict__ codes, float* __restrict__ absmax) {
    __shared__ float t[15];
    if (threadIdx.x < 15) t[threadIdx.x] = thresholds[threadIdx.x];
    __syncthreads();
    i64 block = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    i64 blocks = (n + 63) / 64;
    if (block >= blocks) return;
    i64 i0 = block * 64 + 2 * lane, i1 = i0 + 1;
    float v0 = i0 < n ? x[i0] : 0.0f;
    float v1 = i1 < n ? x[i1] : 0.0f;
    float m = warp_max(fmaxf(fabsf(v0), fabsf(v1)));
    float divisor = fmaxf(m, 1e-38f);
    bool tail = block * 64 + 64 > n;
    float recip = __fdiv_rn(1.0f, divisor);
    float s0 = tail ? __fdiv_rn(v0, divisor) : __fmul_rn(v0, recip);
    float s1 = tail ? __fdiv_rn(v1, divisor) : __fmul_rn(v1, recip);
    s0 = fminf(fmaxf(s0, -1.0f), 1.0f);
    s1 = fminf(fmaxf(s1, -1.0f), 1.0f);
    u32 c0 = nf4_code(s0, t);
    u32 c1 = i1 < n ? nf4_code(s1, t) : 7u;
    if (i0 < n) codes[i0 >> 1] = (u8)((c0 << 4) | c1);
    if (lane == 0) absmax[block] = m;
}

// Double quantisation: one thread block of 256 threads per 256 absmax values. `offset` (their mean) is computed
// on the host exactly as the CPU reference does. The code is the number of dynamic-map thresholds below the
// scaled value (binary search over 255 sorted thresholds).
extern "C" __global__ void nf4_double_quant(const float* __restrict__ absmax, i64 blocks, float offset,
                                            const float* __restrict__ map_thresholds, u8* __restrict__ qcodes,
                                            float* __restrict__ scales) {
    __shared__ float th[255];
    __shared__ float scratch[32];
    for (int i = threadIdx.x; i < 255; i += blockDim.x) th[i] = map_thresholds[i];
    i64 i = (i64)blockIdx.x * 256 + threadIdx.x;
    float c = i < blocks ? __fsub_rn(absmax[i], offset) : 0.0f;
    float m = block_max(fabsf(c), scratch);
    float divisor = fmaxf(m, 1e-38f);
    bool tail = ((i64)blockIdx.x + 1) * 256 > blocks;
    float s = tail ? __fdiv_rn(c, divisor) : __fmul_rn(c, __fdiv_rn(1.0f, divisor));
    s = fminf(fmaxf(s, -1.0f), 1.0f);
    int lo = 0, hi = 255;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (th[mid] < s) lo = mid + 1; else hi = mid;
    }
    if (i < blocks) qcodes[i] = (u8)lo;
    if (threadIdx.x == 0) scales[blockIdx.x] = m;
}

// The absmax of NF4 block `b`: plain fp32, or dynamic_map[q] * scale + offset (multiply, then add).
struct Absmax {
    const float* plain;   // used when dq == 0
    const u8* qcodes;     // used when dq != 0
    const float* scales;
    const float* map;     // 256 entries
    float offset;
    int dq;
    __device__ __forceinline__ float get(i64 b) const {
        if (!dq) return plain[b];
        return __fadd_rn(__fmul_rn(map[qcodes[b]], scales[b >> 8]), offset);
    }
};

template <int OUT>  // 0: fp32, 1: bf16, 2: f16
__device__ __forceinline__ void store(void* out, i64 i, float v) {
    if (OUT == 0) ((float*)out)[i] = v;
    else if (OUT == 1) ((u16*)out)[i] = f32_to_bf16(v);
    else ((u16*)out)[i] = f32_to_f16(v);
}

// Each thread expands 16 code bytes (32 elements, all in one 64-block) with one 16-byte load and 16-byte stores;
// the last, partial chunk goes element by element. With STRIDED, the weight is seen as rows of `cols` elements
// and element e lands at (e / cols) * ld + e % cols, so it can fill the left columns of a wider matrix (the
// K-extended LoRA layout); `cols` must then be a multiple of 32 (a chunk never crosses a row) and `ld` of 8.
template <int OUT, bool STRIDED>
__device__ __forceinline__ void dequantize_impl(const u8* __restrict__ codes, Absmax am, i64 n,
                                                const float* __restrict__ levels, void* __restrict__ out,
                                                i64 cols, i64 ld) {
    __shared__ float lv[16];
    if (threadIdx.x < 16) lv[threadIdx.x] = levels[threadIdx.x];
    __syncthreads();
    i64 chunks = (n + 31) / 32;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (i64)gridDim.x * blockDim.x) {
        i64 e0 = c * 32;
        float a = am.get(e0 >> 6);
        if (e0 + 32 <= n) {
            uint4 raw = *(const uint4*)(codes + c * 16);
            u32 w[4] = {raw.x, raw.y, raw.z, raw.w};
            float v[32];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
#pragma unroll
                for (int b = 0; b < 4; ++b) {
                    u32 byte = (w[q] >> (8 * b)) & 0xffu;
                    v[q * 8 + b * 2] = __fmul_rn(lv[byte >> 4], a);
                    v[q * 8 + b * 2 + 1] = __fmul_rn(lv[byte & 15u], a);
                }
            }
            if (OUT == 0) {
                float4* o = (float4*)((float*)out + (STRIDED ? (e0 / cols) * ld + e0 % cols : e0));
#pragma unroll
                for (int k = 0; k < 8; ++k) o[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
            } else {
                uint4* o = (uint4*)((u16*)out + (STRIDED ? (e0 / cols) * ld + e0 % cols : e0));
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    u32 p[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        float lo = v[8 * k + 2 * j], hi = v[8 * k + 2 * j + 1];
                        u32 l = OUT == 1 ? f32_to_bf16(lo) : f32_to_f16(lo);
                        u32 h = OUT == 1 ? f32_to_bf16(hi) : f32_to_f16(hi);
                        p[j] = l | (h << 16);
                    }
                    o[k] = make_uint4(p[0], p[1], p[2], p[3]);
                }
            }
        } else {
            for (i64 e = e0; e < n; ++e) {
                u32 byte = codes[e >> 1];
                u32 code = (e & 1) ? (byte & 15u) : (byte >> 4);
                store<OUT>(out, STRIDED ? (e / cols) * ld + e % cols : e, __fmul_rn(lv[code], a));
            }
        }
    }
}

#define NF4_DEQUANT(NAME, OUT)                                                                                  \
    extern "C" __global__ void NAME(const u8* __restrict__ codes, const float* __restrict__ absmax,            \
                                    const u8* __restrict__ qcodes, const float* __restrict__ scales,           \
                                    const float* __restrict__ map, float offset, int dq, i64 n,                \
                                    const float* __restrict__ levels, void* __restrict__ out) {                 \
        Absmax am = {absmax, qcodes, scales, map, offset, dq};                                                  \
        dequantize_impl<OUT, false>(codes, am, n, levels, out, n, n);                                           \
    }
NF4_DEQUANT(nf4_dequantize_f32, 0)
NF4_DEQUANT(nf4_dequantize_bf16, 1)
NF4_DEQUANT(nf4_dequantize_f16, 2)

// The bf16 dequantisation into the left `cols` columns of a matrix whose rows are `ld` elements apart.
extern "C" __global__ void nf4_dequantize_bf16_ld(const u8* __restrict__ codes, const float* __restrict__ absmax,
                                                  const u8* __restrict__ qcodes, const float* __restrict__ scales,
                                                  const float* __restrict__ map, float offset, int dq, i64 n,
                                                  const float* __restrict__ levels, void* __restrict__ out, i64 cols,
                                                  i64 ld) {
    Absmax am = {absmax, qcodes, scales, map, offset, dq};
    dequantize_impl<1, true>(codes, am, n, levels, out, cols, ld);
}

// y[b][row] = sum_k W[row][k] * x[b][k] for b < B, W an N x K NF4 matrix (K a multiple of 32), x fp32 B x K.
// One warp per row; each lane takes 16 code bytes (32 weights, one absmax) per step, so a warp reads 512
// contiguous bytes per step; the weights are dequantised in registers and never written out.
template <int B>
__device__ __forceinline__ void gemv_impl(const u8* __restrict__ codes, Absmax am, const float* __restrict__ x,
                                          float* __restrict__ y, int N, int K, const float* __restrict__ levels) {
    __shared__ float lv[16];
    if (threadIdx.x < 16) lv[threadIdx.x] = levels[threadIdx.x];
    __syncthreads();
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= N) return;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] = 0.0f;
    const u8* rc = codes + (i64)row * (K >> 1);
    i64 row_e = (i64)row * K;
    for (int k0 = lane * 32; k0 < K; k0 += 32 * 32) {
        uint4 raw = *(const uint4*)(rc + (k0 >> 1));
        float a = am.get((row_e + k0) >> 6);
        u32 w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            float wv[8];
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                u32 byte = (w[q] >> (8 * b)) & 0xffu;
                wv[2 * b] = __fmul_rn(lv[byte >> 4], a);
                wv[2 * b + 1] = __fmul_rn(lv[byte & 15u], a);
            }
#pragma unroll
            for (int b = 0; b < B; ++b) {
                const float4* xp = (const float4*)(x + (i64)b * K + k0 + q * 8);
                float4 x0 = xp[0], x1 = xp[1];
                acc[b] = fmaf(wv[0], x0.x, acc[b]);
                acc[b] = fmaf(wv[1], x0.y, acc[b]);
                acc[b] = fmaf(wv[2], x0.z, acc[b]);
                acc[b] = fmaf(wv[3], x0.w, acc[b]);
                acc[b] = fmaf(wv[4], x1.x, acc[b]);
                acc[b] = fmaf(wv[5], x1.y, acc[b]);
                acc[b] = fmaf(wv[6], x1.z, acc[b]);
                acc[b] = fmaf(wv[7], x1.w, acc[b]);
            }
        }
    }
#pragma unroll
    for (int b = 0; b < B; ++b) {
        float s = warp_sum(acc[b]);
        if (lane == 0) y[(i64)b * N + row] = s;
    }
}

#define NF4_GEMV(B)                                                                                             \
    extern "C" __global__ void nf4_gemv_b##B(const u8* __restrict__ codes, const float* __restrict__ absmax,   \
                                             const u8* __restrict__ qcodes, const float* __restrict__ scales,  \
                                             const float* __restrict__ map, float offset, int dq,              \
                                             const float* __restrict__ x, float* __restrict__ y, int N, int K, \
                                             const float* __restrict__ levels) {                                \
        Absmax am = {absmax, qcodes, scales, map, offset, dq};                                                  \
        gemv_impl<B>(codes, am, x, y, N, K, levels);                                                            \
    }
NF4_GEMV(1)
NF4_GEMV(2)
NF4_GEMV(3)
NF4_GEMV(4)
NF4_GEMV(5)
NF4_GEMV(6)
NF4_GEMV(7)
NF4_GEMV(8)

// The same product with R = 4 rows per warp: each x value a lane loads feeds four rows, cutting the re-reads of
// x (from L1/L2) fourfold; the four rows' code loads are issued together. Rows past N are clamped for loading
// and never written. With EXT (decoding through a LoRA adapter, kernels/src/cuda/lora_fused.rs), each row also
// adds its R_ext extra terms Bx[row][j] * hx[b][j] (Bx: N x R_ext bf16, hx: B x R_ext fp32 = s A x): the K-extended
// product [W | B] [x ; s h] in one pass over W.
template <int B, bool EXT>
__device__ __forceinline__ void gemv4_impl(const u8* __restrict__ codes, Absmax am, const float* __restrict__ x,
                                           float* __restrict__ y, int N, int K, const float* __restrict__ levels,
                                           const u16* __restrict__ Bx, int R_ext, const float* __restrict__ hx) {
    __shared__ float lv[16];
    if (threadIdx.x < 16) lv[threadIdx.x] = levels[threadIdx.x];
    __syncthreads();
    int row0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * 4;
    int lane = threadIdx.x & 31;
    if (row0 >= N) return;
    float acc[4][B];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int b = 0; b < B; ++b) acc[r][b] = 0.0f;
    for (int k0 = lane * 32; k0 < K; k0 += 32 * 32) {
        u32 w[4][4];
        float a[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            int row = min(row0 + r, N - 1);
            uint4 raw = *(const uint4*)(codes + (i64)row * (K >> 1) + (k0 >> 1));
            w[r][0] = raw.x; w[r][1] = raw.y; w[r][2] = raw.z; w[r][3] = raw.w;
            a[r] = am.get(((i64)row * K + k0) >> 6);
        }
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            float xv[B][8];
#pragma unroll
            for (int b = 0; b < B; ++b) {
                const float4* xp = (const float4*)(x + (i64)b * K + k0 + q * 8);
                float4 x0 = xp[0], x1 = xp[1];
                xv[b][0] = x0.x; xv[b][1] = x0.y; xv[b][2] = x0.z; xv[b][3] = x0.w;
                xv[b][4] = x1.x; xv[b][5] = x1.y; xv[b][6] = x1.z; xv[b][7] = x1.w;
            }
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                float wv[8];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    u32 byte = (w[r][q] >> (8 * j)) & 0xffu;
                    wv[2 * j] = __fmul_rn(lv[byte >> 4], a[r]);
                    wv[2 * j + 1] = __fmul_rn(lv[byte & 15u], a[r]);
                }
#pragma unroll
                for (int b = 0; b < B; ++b)
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[r][b] = fmaf(wv[e], xv[b][e], acc[r][b]);
            }
        }
    }
    if (EXT) {
        for (int j = lane; j < R_ext; j += 32) {
            float hv[B];
#pragma unroll
            for (int b = 0; b < B; ++b) hv[b] = hx[b * R_ext + j];
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const float bw = bf16_to_f32(Bx[(i64)min(row0 + r, N - 1) * R_ext + j]);
#pragma unroll
                for (int b = 0; b < B; ++b) acc[r][b] = fmaf(bw, hv[b], acc[r][b]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int b = 0; b < B; ++b) {
            float s = warp_sum(acc[r][b]);
            if (lane == 0 && row0 + r < N) y[(i64)b * N + row0 + r] = s;
        }
}

#define NF4_GEMV4(B)                                                                                            \
    extern "C" __global__ void nf4_gemv4_b##B(const u8* __restrict__ codes, const float* __restrict__ absmax,  \
                                              const u8* __restrict__ qcodes, const float* __restrict__ scales, \
                                              const float* __restrict__ map, float offset, int dq,             \
                                              const float* __restrict__ x, float* __restrict__ y, int N,       \
                                              int K, const float* __restrict__ levels) {                        \
        Absmax am = {absmax, qcodes, scales, map, offset, dq};                                                  \
        gemv4_impl<B, false>(codes, am, x, y, N, K, levels, nullptr, 0, nullptr);                               \
    }
NF4_GEMV4(1)
NF4_GEMV4(2)
NF4_GEMV4(3)
NF4_GEMV4(4)
NF4_GEMV4(5)
NF4_GEMV4(6)
NF4_GEMV4(7)
NF4_GEMV4(8)

#define NF4_GEMV4_LORA(B)                                                                                       \
    extern "C" __global__ void nf4_gemv4_lora_b##B(                                                            \
        const u8* __restrict__ codes, const float* __restrict__ absmax, const u8* __restrict__ qcodes,         \
        const float* __restrict__ scales, const float* __restrict__ map, float offset, int dq,                 \
        const float* __restrict__ x, float* __restrict__ y, int N, int K, const float* __restrict__ levels,    \
        const u16* __restrict__ Bx, int R_ext, const float* __restrict__ hx) {                                 \
        Absmax am = {absmax, qcodes, scales, map, offset, dq};                                                  \
        gemv4_impl<B, true>(codes, am, x, y, N, K, levels, Bx, R_ext, hx);                                      \
    }
NF4_GEMV4_LORA(1)
NF4_GEMV4_LORA(2)
NF4_GEMV4_LORA(3)
NF4_GEMV4_LORA(4)
NF4_GEMV4_LORA(5)
NF4_GEMV4_LORA(6)
NF4_GEMV4_LORA(7)
NF4_GEMV4_LORA(8)

// ---- NF4 x activation product on the tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate) -----------------
// Y (M x N, bf16) = X (M x K, bf16) W^T with W an N x K NF4 matrix, K a multiple of 64. Each 256-thread block
// computes a 128 x 128 tile of Y; per 32-wide step of K it stages X's tile and W's tile, dequantised to bf16
// exactly as nf4_dequantize_bf16 does, in shared memory (rows padded to 40 values: conflict-free fragment loads);
// each of the 8 warps owns a 64 x 32 sub-tile (4 x 4 mma tiles). A first, unpipelined version (no cp.async,
// no ldmatrix): kept beside dequantise + cuBLAS so the benchmark can say which is faster per shape.
// K-extended (R > 0, the LoRA layer of kernels/src/cuda/lora_fused.rs): X's rows are ldx = K + R values apart and
// hold [x | s h]; the K steps past K read Bx (N x R bf16, dense) instead of the NF4 weight, so
// Y = x W^T + s h B^T in one pass. R = 0 and ldx = K is the plain product. R is a multiple of 8.
#define GBM 128
#define GBN 128
#define GBK 32
#define GPAD 40

extern "C" __global__ void __launch_bounds__(256) nf4_gemm_mma_bf16(
    const u16* __restrict__ X, const u8* __restrict__ codes, const float* __restrict__ absmax,
    const u8* __restrict__ qcodes, const float* __restrict__ scales, const float* __restrict__ map, float offset,
    int dq, const float* __restrict__ levels, u16* __restrict__ Y, int M, int N, int K, int ldx,
    const u16* __restrict__ Bx, int R) {
    __shared__ __align__(16) u16 As[GBM][GPAD];
    __shared__ __align__(16) u16 Bs[GBN][GPAD];
    __shared__ float lv[16];
    if (threadIdx.x < 16) lv[threadIdx.x] = levels[threadIdx.x];
    Absmax am = {absmax, qcodes, scales, map, offset, dq};
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int g = lane >> 2, tig = lane & 3;
    int wm = warp >> 2, wn = warp & 3;  // 2 x 4 warps
    int m0 = blockIdx.y * GBM, n0 = blockIdx.x * GBN;
    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.0f;

    for (int k0 = 0; k0 < K + R; k0 += GBK) {
        __syncthreads();
        // X tile: 128 rows x 32 values = 512 16-byte pieces, two per thread (zeros past K + R).
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            int idx = tid + 256 * i, row = idx >> 2, piece = idx & 3;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (m0 + row < M && k0 + piece * 8 < K + R)
                v = *(const uint4*)(X + (i64)(m0 + row) * ldx + k0 + piece * 8);
            *(uint4*)&As[row][piece * 8] = v;
        }
        if (k0 >= K) {
            // The adapter's steps: B's tile, 128 rows x 32 values, from bf16 (zeros past R).
            int row = tid >> 1, half = tid & 1;
#pragma unroll
            for (int p = 0; p < 2; ++p) {
                int kk = k0 - K + half * 16 + p * 8;
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (n0 + row < N && kk < R) v = *(const uint4*)(Bx + (i64)(n0 + row) * R + kk);
                *(uint4*)&Bs[row][half * 16 + p * 8] = v;
            }
        } else {
            // W tile: 128 rows x 32 values; thread = (row, half): 8 code bytes -> 16 bf16 values.
            int row = tid >> 1, half = tid & 1;
            u32 out[8];
            if (n0 + row < N) {
                i64 e0 = (i64)(n0 + row) * K + k0 + half * 16;
                uint2 raw = *(const uint2*)(codes + (e0 >> 1));
                float a = am.get(e0 >> 6);
                u32 w[2] = {raw.x, raw.y};
#pragma unroll
                for (int q = 0; q < 2; ++q)
#pragma unroll
                    for (int b = 0; b < 4; ++b) {
                        u32 byte = (w[q] >> (8 * b)) & 0xffu;
                        u32 lo = f32_to_bf16(__fmul_rn(lv[byte >> 4], a));
                        u32 hi = f32_to_bf16(__fmul_rn(lv[byte & 15u], a));
                        out[q * 4 + b] = lo | (hi << 16);
                    }
            } else {
#pragma unroll
                for (int j = 0; j < 8; ++j) out[j] = 0u;
            }
            *(uint4*)&Bs[row][half * 16] = make_uint4(out[0], out[1], out[2], out[3]);
            *(uint4*)&Bs[row][half * 16 + 8] = make_uint4(out[4], out[5], out[6], out[7]);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GBK; kk += 16) {
            u32 af[4][4], bfr[4][2];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int r = wm * 64 + i * 16 + g;
                af[i][0] = *(const u32*)&As[r][kk + 2 * tig];
                af[i][1] = *(const u32*)&As[r + 8][kk + 2 * tig];
                af[i][2] = *(const u32*)&As[r][kk + 8 + 2 * tig];
                af[i][3] = *(const u32*)&As[r + 8][kk + 8 + 2 * tig];
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                int c = wn * 32 + j * 8 + g;
                bfr[j][0] = *(const u32*)&Bs[c][kk + 2 * tig];
                bfr[j][1] = *(const u32*)&Bs[c][kk + 8 + 2 * tig];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_bf16_16816(acc[i][j], af[i], bfr[j]);
        }
    }
    // Accumulator (i, j): rows g and g + 8, columns 2*tig and 2*tig + 1 of the 16 x 8 tile.
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                int row = m0 + wm * 64 + i * 16 + g + (c >= 2 ? 8 : 0);
                int col = n0 + wn * 32 + j * 8 + 2 * tig + (c & 1);
                if (row < M && col < N) Y[(i64)row * N + col] = f32_to_bf16(acc[i][j][c]);
            }
}
