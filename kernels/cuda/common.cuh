// Shared helpers for Tandem's kernels, prepended to every .cu file before NVRTC compiles it (no CUDA headers are
// needed: NVRTC from the pip wheel ships none, so bf16/f16 are raw 16-bit integers converted with PTX `cvt`).
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

// The helpers written in PTX are left out when the CPU emulator (kernels/tools/emu/cuda_emu.h) compiles the
// kernels: it defines TANDEM_CUDA_EMU and its own versions of them.
#ifndef TANDEM_CUDA_EMU
// fp32 -> bf16 / f16, round to nearest even (sm_80+), the same as the CPU reference (`half` crate).
__device__ __forceinline__ u16 f32_to_bf16(float x) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ u16 f32_to_f16(float x) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
// D = A B + D on the tensor cores: one warp, A 16 x 16 bf16 (row), B 16 x 8 bf16 (col), fp32 accumulators.
// Lane l holds, with g = l / 4 and t = l % 4 (two bf16 per register, the lower index in the low half):
//   a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1], a[2] = A[g][2t+8..2t+9], a[3] = A[g+8][2t+8..2t+9];
//   b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g];  d[0..1] = D[g][2t..2t+1], d[2..3] = D[g+8][2t..2t+1].
__device__ __forceinline__ void mma_bf16_16816(float* d, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// Alignment assertion: nothing on the GPU; the emulator aborts on a misaligned vector access.
#define TANDEM_CHECK_ALIGNED(p, n)
#endif

__device__ __forceinline__ float bf16_to_f32(u16 x) { return __uint_as_float(((u32)x) << 16); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a thread block of at most 1024 threads (blockDim.x a multiple of 32); every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float* scratch /* 32 floats */) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(t);
}
__device__ __forceinline__ float block_max(float v, float* scratch /* 32 floats */) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : __int_as_float(0xff800000);
    return warp_max(t);
}
