// Fused LoRA building blocks. First, one fp32 tiled matrix product with the LoRA epilogues folded in, from which
// kernels/src/cuda/lora.rs composes the forward (y = x W^T + s (dropout(x) A^T) B^T) and the backward (dA, dB, dx
// through the frozen, dequantised W), fp32 throughout. Second (below), the bf16 adapter forward on the tensor cores.
// The reference is kernels/src/lora.rs.
//
// C[i][j] = alpha * (sum_k opA[i][k] * opB[k][j]) * cf(i, j) + beta * C[i][j]
//   opA[i][k] = (transA ? A[k * lda + i] : A[i * lda + k]) * (a_mask ? a_mask[same index] * a_factor : 1)
//   opB[k][j] = (transB ? B[j * ldb + k] : B[k * ldb + j]) * (b_mask ? b_mask[same index] * b_factor : 1)
//   cf(i, j)  = c_mask ? c_mask[i * ldc + j] * c_factor : 1
// (beta == 0 never reads C, so a poisoned C is overwritten.) 16x16 output tile per 256-thread block.

#define TILE 16

extern "C" __global__ void lora_gemm_f32(int M, int N, int K,
                                         const float* __restrict__ A, int lda, int transA,
                                         const u8* __restrict__ a_mask, int has_a_mask, float a_factor,
                                         const float* __restrict__ B, int ldb, int transB,
                                         const u8* __restrict__ b_mask, int has_b_mask, float b_factor,
                                         float alpha, float beta, float* __restrict__ C, int ldc,
                                         const u8* __restrict__ c_mask, int has_c_mask, float c_factor) {
    __shared__ float As[TILE][TILE + 1];
    __shared__ float Bs[TILE][TILE + 1];
    int tx = threadIdx.x % TILE, ty = threadIdx.x / TILE;
    int row = blockIdx.y * TILE + ty, col = blockIdx.x * TILE + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        // As[ty][tx] = opA[row][k0 + tx]; Bs[ty][tx] = opB[k0 + ty][col].
        int ka = k0 + tx;
        float av = 0.0f;
        if (row < M && ka < K) {
            i64 idx = transA ? (i64)ka * lda + row : (i64)row * lda + ka;
            av = A[idx];
            if (has_a_mask) av = av * ((float)a_mask[idx] * a_factor);
        }
        int kb = k0 + ty;
        float bv = 0.0f;
        if (col < N && kb < K) {
            i64 idx = transB ? (i64)col * ldb + kb : (i64)kb * ldb + col;
            bv = B[idx];
            if (has_b_mask) bv = bv * ((float)b_mask[idx] * b_factor);
        }
        As[ty][tx] = av;
        Bs[ty][tx] = bv;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < TILE; ++k) acc = fmaf(As[ty][k], Bs[k][tx], acc);
        __syncthreads();
    }
    if (row < M && col < N) {
        i64 o = (i64)row * ldc + col;
        float v = alpha * acc;
        if (has_c_mask) v = v * ((float)c_mask[o] * c_factor);
        C[o] = beta == 0.0f ? v : fmaf(beta, C[o], v);
    }
}

// ---- bf16 LoRA adapter on the tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulation) -------------------------
// C = alpha * opA B^T. opA (M x K) is bf16, row-major with leading dimension lda, optionally masked by a 0/1 byte mask
// (M x K, leading dimension ldm; dropout, the 1 / (1 - p) goes into alpha). B (N x K) is bf16, row-major, leading
// dimension ldb. K, lda, ldm and ldb are multiples of 8 (16-byte loads). Each 128-thread block computes a 64 x 32 tile of C; warp w owns
// rows 16 w .. 16 w + 15 (four 16 x 8 mma tiles). Grid: (ceil(N / 32), ceil(M / 64), splits); split z covers
// k in [z * kchunk, min(K, (z + 1) * kchunk)), kchunk a multiple of 32.
//   mode 0: partial[(z * M + row) * N + col] = the split's sum (alpha not applied; lora_splitk_reduce applies it);
//   mode 1: Y[row * ldc + col] = bf16(float(Y[row * ldc + col]) + alpha * sum) (one split).
// The forward composes: h = dropout(x) A^T (mode 0 + reduce: h in fp32 for the backward and in bf16), then
// y += s h B^T (mode 1) on top of the base product y = x W^T. Launchers: kernels/src/cuda/lora_bf16.rs. The
// K-extended layer (kernels/src/cuda/lora_fused.rs) uses mode 0 alone and folds the up-projection into the base GEMM.
#define LBM 64
#define LBN 32
#define LBK 32
#define LPAD 40

// Keeps the two bf16 values of v whose mask bytes (the low two bytes of m) are non-zero, zeroes the others.
__device__ __forceinline__ u32 keep_pair(u32 v, u32 m) {
    return v & (((m & 0xffu) ? 0x0000ffffu : 0u) | ((m & 0xff00u) ? 0xffff0000u : 0u));
}

extern "C" __global__ void __launch_bounds__(128)
    lora_bf16_mma(int M, int N, int K, const u16* __restrict__ A, int lda, const u8* __restrict__ mask, int ldm,
                  int has_mask, const u16* __restrict__ B, int ldb, int kchunk, int mode, float alpha, float* __restrict__ partial,
                  u16* __restrict__ Y, int ldc) {
    __shared__ __align__(16) u16 As[LBM][LPAD];
    __shared__ __align__(16) u16 Bs[LBN][LPAD];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.y * LBM, n0 = blockIdx.x * LBN;
    const int kbeg = blockIdx.z * kchunk, kend = min(K, kbeg + kchunk);
    float acc[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[j][c] = 0.0f;
    for (int k0 = kbeg; k0 < kend; k0 += LBK) {
        __syncthreads();  // nobody reads the previous tiles any more
        // A tile: 64 rows x 32 values = 256 pieces of 8 values, two per thread.
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int idx = tid + 128 * i, row = idx >> 2, piece = idx & 3, k = k0 + piece * 8;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (m0 + row < M && k < kend) {
                v = *(const uint4*)(A + (i64)(m0 + row) * lda + k);
                if (has_mask) {
                    const uint2 mk = *(const uint2*)(mask + (i64)(m0 + row) * ldm + k);
                    v.x = keep_pair(v.x, mk.x);
                    v.y = keep_pair(v.y, mk.x >> 16);
                    v.z = keep_pair(v.z, mk.y);
                    v.w = keep_pair(v.w, mk.y >> 16);
                }
            }
            *(uint4*)&As[row][piece * 8] = v;
        }
        // B tile: 32 rows x 32 values = 128 pieces, one per thread.
        {
            const int row = tid >> 2, piece = tid & 3, k = k0 + piece * 8;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (n0 + row < N && k < kend) v = *(const uint4*)(B + (i64)(n0 + row) * ldb + k);
            *(uint4*)&Bs[row][piece * 8] = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < LBK; kk += 16) {
            const int r = warp * 16 + g;
            u32 a[4];
            a[0] = *(const u32*)&As[r][kk + 2 * t];
            a[1] = *(const u32*)&As[r + 8][kk + 2 * t];
            a[2] = *(const u32*)&As[r][kk + 8 + 2 * t];
            a[3] = *(const u32*)&As[r + 8][kk + 8 + 2 * t];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int c = j * 8 + g;
                u32 b[2];
                b[0] = *(const u32*)&Bs[c][kk + 2 * t];
                b[1] = *(const u32*)&Bs[c][kk + 8 + 2 * t];
                mma_bf16_16816(acc[j], a, b);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int row = m0 + warp * 16 + g + (c >= 2 ? 8 : 0);
            const int col = n0 + j * 8 + 2 * t + (c & 1);
            if (row < M && col < N) {
                if (mode == 0) {
                    partial[((i64)blockIdx.z * M + row) * N + col] = acc[j][c];
                } else {
                    const i64 o = (i64)row * ldc + col;
                    Y[o] = f32_to_bf16(bf16_to_f32(Y[o]) + alpha * acc[j][c]);
                }
            }
        }
}

// out32[i] = alpha * (sum over splits z, in order, of partial[z * n + i]); out16 gets scale16 times the same in
// bf16, element i at (i / cols) * ld16 + i % cols: rows of `cols` values `ld16` apart (cols = ld16: contiguous; the
// K-extended LoRA layout writes s h into the right-hand columns of the activations this way).
extern "C" __global__ void lora_splitk_reduce(const float* __restrict__ partial, int splits, i64 n, float alpha,
                                              float* __restrict__ out32, u16* __restrict__ out16, int cols, i64 ld16,
                                              float scale16) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int z = 0; z < splits; ++z) s += partial[(i64)z * n + i];
        const float v = alpha * s;
        out32[i] = v;
        out16[(i / cols) * ld16 + i % cols] = f32_to_bf16(scale16 * v);
    }
}

// The small element-wise steps of the K-extended LoRA layer (kernels/src/cuda/lora_fused.rs), grid-stride over
// rows x cols; `ld*` are row strides in elements.
// dst[i][j] = src[i][j]: copies B (out x r) into the right-hand columns of the extended weight.
extern "C" __global__ void lora_copy_rows_u16(const u16* __restrict__ src, int lds, int rows, int cols,
                                              u16* __restrict__ dst, int ldd) {
    const i64 n = (i64)rows * cols;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const i64 r = i / cols, c = i % cols;
        dst[r * ldd + c] = src[r * lds + c];
    }
}

// out[i][j] = mask[i][j] ? x[i][j] : 0 (out and mask dense, rows x cols): the dropped-out activations for dA.
extern "C" __global__ void lora_mask_rows_bf16(const u16* __restrict__ x, int ldx, const u8* __restrict__ mask,
                                               int rows, int cols, u16* __restrict__ out) {
    const i64 n = (i64)rows * cols;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const i64 r = i / cols, c = i % cols;
        out[i] = mask[i] ? x[r * ldx + c] : (u16)0;
    }
}

// dx[i][j] = bf16(dx[i][j] + alpha * t[i][j]) where mask[i][j] is set (t and mask dense, rows x cols): the
// adapter's share of dx under dropout.
extern "C" __global__ void lora_masked_add_bf16(const float* __restrict__ t, const u8* __restrict__ mask, int rows,
                                                int cols, float alpha, u16* __restrict__ dx, int ldx) {
    const i64 n = (i64)rows * cols;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        if (!mask[i]) continue;
        const i64 o = (i / cols) * ldx + i % cols;
        dx[o] = f32_to_bf16(bf16_to_f32(dx[o]) + alpha * t[i]);
    }
}

// hx[b][j] = scale * sum_k A[j][k] x[b][k]: the adapter's down-projection for decoding (B <= 8 fp32 vectors, A an
// R x K bf16 matrix, dense). One warp per (b, j), lanes striding over k, then a fixed shuffle tree.
extern "C" __global__ void lora_gemv_down(const u16* __restrict__ A, int R, int K, const float* __restrict__ x, int B,
                                          float scale, float* __restrict__ hx) {
    const int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (warp >= B * R) return;  // whole warps
    const int b = warp / R, j = warp - b * R;
    float s = 0.0f;
    for (int k = lane; k < K; k += 32) s = fmaf(bf16_to_f32(A[(i64)j * K + k]), x[(i64)b * K + k], s);
    s = warp_sum(s);
    if (lane == 0) hx[b * R + j] = scale * s;
}
