// Fused LoRA building block: one fp32 tiled matrix product with the LoRA epilogues folded in, from which
// kernels/src/cuda/lora.rs composes the forward (y = x W^T + s (dropout(x) A^T) B^T) and the backward (dA, dB, dx
// through the frozen, dequantised W). fp32 throughout; the reference is kernels/src/lora.rs.
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
