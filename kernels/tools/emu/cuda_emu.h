// A tiny CPU emulator for Tandem's CUDA C kernels, for checking them on machines without a GPU: every thread of a
// block is a std::thread, __syncthreads is a block-wide std::barrier, warp shuffles go through a per-warp buffer
// with a warp-wide barrier, blocks run one after another (so `static` locals stand in for __shared__ arrays), and
// dynamic shared memory is filled with NaN before each block so reading it before writing shows up.
// It checks indexing, masking, synchronisation order and arithmetic, not speed, and not the GPU's memory model.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 gridDim, blockDim;
inline float* emu_dynamic_smem = nullptr;
inline std::barrier<>* emu_block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> emu_warp_barriers;
inline std::vector<double> emu_warp_slots;  // 32 per warp
inline std::mutex emu_atomic_mutex;

#define TANDEM_CUDA_EMU 1
#define __global__
#define __align__(n) __attribute__((aligned(n)))
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __shared__ static
#define asm(...)

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int offset) {
    unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double* slots = &emu_warp_slots[warp * 32];
    slots[lane] = (double)v;
    emu_warp_barriers[warp]->arrive_and_wait();
    T r = (T)slots[lane ^ (unsigned)offset];
    emu_warp_barriers[warp]->arrive_and_wait();
    return r;
}
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float v) { int i; std::memcpy(&i, &v, 4); return i; }
inline float atomicAdd(float* p, float v) { std::lock_guard<std::mutex> g(emu_atomic_mutex); float o = *p; *p = o + v; return o; }
inline double atomicAdd(double* p, double v) { std::lock_guard<std::mutex> g(emu_atomic_mutex); double o = *p; *p = o + v; return o; }
using std::max;
using std::min;

struct alignas(16) float4 {
    float x, y, z, w;
};
#define TANDEM_CHECK_ALIGNED(p, n)                                                                  \
    do {                                                                                            \
        if ((reinterpret_cast<std::uintptr_t>(p) % (n)) != 0) {                                     \
            std::fprintf(stderr, "emu: misaligned %d-byte access at %p (%s:%d)\n", (int)(n), (const void*)(p), \
                         __FILE__, __LINE__);                                                       \
            std::abort();                                                                           \
        }                                                                                           \
    } while (0)
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(8) float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
// IEEE single-precision operations rounded to nearest, never contracted (g++ -std=c++20 does not contract).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }

// The PTX helpers of common.cuh (left out there under TANDEM_CUDA_EMU).
inline unsigned short f32_to_bf16(float x) {  // round to nearest even; NaN stays NaN
    unsigned u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
inline unsigned short f32_to_f16(float x) {
    _Float16 h = (_Float16)x;
    unsigned short r;
    std::memcpy(&r, &h, 2);
    return r;
}
inline float emu_bf16(unsigned bits) {
    unsigned u = bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// mma.sync m16n8k16 bf16 for one warp: every lane posts its fragments, then each computes its four outputs from
// the whole A (16 x 16) and B (16 x 8), laid out as the PTX ISA's fragment tables say (see common.cuh).
inline std::vector<unsigned> emu_mma_slots;  // 6 u32 per lane
inline void mma_bf16_16816(float* d, const unsigned* a, const unsigned* b) {
    unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned* mine = &emu_mma_slots[(warp * 32 + lane) * 6];
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    mine[4] = b[0];
    mine[5] = b[1];
    emu_warp_barriers[warp]->arrive_and_wait();
    float A[16][16], B[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        const unsigned* f = &emu_mma_slots[(warp * 32 + l) * 6];
        unsigned g = l >> 2, t = l & 3;
        for (unsigned h = 0; h < 2; ++h) {
            A[g][2 * t + h] = emu_bf16((f[0] >> (16 * h)) & 0xffffu);
            A[g + 8][2 * t + h] = emu_bf16((f[1] >> (16 * h)) & 0xffffu);
            A[g][2 * t + 8 + h] = emu_bf16((f[2] >> (16 * h)) & 0xffffu);
            A[g + 8][2 * t + 8 + h] = emu_bf16((f[3] >> (16 * h)) & 0xffffu);
            B[2 * t + h][g] = emu_bf16((f[4] >> (16 * h)) & 0xffffu);
            B[2 * t + 8 + h][g] = emu_bf16((f[5] >> (16 * h)) & 0xffffu);
        }
    }
    emu_warp_barriers[warp]->arrive_and_wait();
    unsigned g = lane >> 2, t = lane & 3;
    for (int c = 0; c < 4; ++c) {
        unsigned row = g + (c >= 2 ? 8 : 0), col = 2 * t + (c & 1);
        float s = d[c];
        for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
        d[c] = s;
    }
}

// Two fp32 -> one register of two bf16 (round to nearest even), lo in the low half (PTX cvt.rn.bf16x2.f32).
inline unsigned pack_bf16x2(float lo, float hi) { return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16); }
// cp.async of 16 bytes: done at once (a copy that completes early is one the GPU may also produce), zero-filled
// when !valid; commit and wait are then no-ops.
inline void cp_async16(void* dst, const void* src, bool valid) {
    TANDEM_CHECK_ALIGNED(dst, 16);
    if (valid) {
        TANDEM_CHECK_ALIGNED(src, 16);
        std::memcpy(dst, src, 16);
    } else {
        std::memset(dst, 0, 16);
    }
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}
// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 for one warp: lanes 8 i .. 8 i + 7 post the addresses of the 8
// rows (16 bytes each) of matrix i; lane l then gets in r[i] the elements (l / 4, 2 (l % 4) + 0/1) of matrix i, or
// with trans the elements (2 (l % 4) + 0/1, l / 4), the lower index in the low half (PTX ISA, ldmatrix).
inline std::vector<const unsigned short*> emu_ldmatrix_slots;  // 32 per warp
inline void emu_ldmatrix_x4(unsigned* r, const unsigned short* p, bool trans) {
    TANDEM_CHECK_ALIGNED(p, 16);
    unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned short** slots = &emu_ldmatrix_slots[warp * 32];
    slots[lane] = p;
    emu_warp_barriers[warp]->arrive_and_wait();
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned short* const* rows = &slots[8 * i];
        unsigned lo, hi;
        if (trans) {
            lo = rows[2 * (lane & 3)][lane >> 2];
            hi = rows[2 * (lane & 3) + 1][lane >> 2];
        } else {
            lo = rows[lane >> 2][2 * (lane & 3)];
            hi = rows[lane >> 2][2 * (lane & 3) + 1];
        }
        r[i] = lo | (hi << 16);
    }
    emu_warp_barriers[warp]->arrive_and_wait();
}
inline void ldmatrix_x4(unsigned* r, const unsigned short* p) { emu_ldmatrix_x4(r, p, false); }
inline void ldmatrix_x4_trans(unsigned* r, const unsigned short* p) { emu_ldmatrix_x4(r, p, true); }

// For the checkers: `n` draws of N(0, 1) in fp32 from a seeded std::mt19937_64 (the same values on every run).
inline std::vector<float> emu_normal(uint64_t seed, size_t n) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
}

// Runs `kernel` (a callable taking no arguments that calls the kernel) over the grid, block after block.
template <class F>
void emu_launch(dim3 grid, dim3 block, size_t shared_bytes, F kernel) {
    gridDim = grid;
    blockDim = block;
    unsigned n = block.x * block.y * block.z;
    // Dynamic shared memory plus a guard zone after it: both start as NaN; a write into the guard zone aborts.
    const size_t guard = 4096;
    std::vector<float> dynamic(shared_bytes / 4 + guard);
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                std::fill(dynamic.begin(), dynamic.end(), std::numeric_limits<float>::quiet_NaN());
                emu_dynamic_smem = dynamic.data();
                std::barrier<> block_barrier((std::ptrdiff_t)n);
                emu_block_barrier = &block_barrier;
                emu_warp_barriers.clear();
                for (unsigned w = 0; w < (n + 31) / 32; ++w)
                    emu_warp_barriers.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)std::min(32u, n - 32 * w)));
                emu_warp_slots.assign(32 * ((n + 31) / 32), 0.0);
                emu_mma_slots.assign(6 * 32 * ((n + 31) / 32), 0u);
                emu_ldmatrix_slots.assign(32 * ((n + 31) / 32), nullptr);
                std::vector<std::thread> threads;
                threads.reserve(n);
                for (unsigned t = 0; t < n; ++t)
                    threads.emplace_back([=] {
                        threadIdx = dim3{t, 0, 0};
                        blockIdx = dim3{x, y, z};
                        kernel();
                    });
                for (auto& th : threads) th.join();
                for (size_t i = shared_bytes / 4; i < dynamic.size(); ++i)
                    if (!std::isnan(dynamic[i])) {
                        std::fprintf(stderr, "emu: block (%u,%u,%u) wrote dynamic shared memory float %zu, past the %zu bytes launched\n", x, y, z, i, shared_bytes);
                        std::abort();
                    }
            }
}
