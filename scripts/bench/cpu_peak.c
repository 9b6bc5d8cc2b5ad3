// The arithmetic peak of one core: 24 independent chains of AVX-512 FMA (fp32) and of AVX-512 BF16 dot products
// (vdpbf16ps: 32 bf16 products summed into 16 fp32 lanes), each chain one instruction per step, so the figure is
// the issue rate of the units, not a latency. Run one copy per core at once to see whether the cores share units.
//
//   gcc -O2 -mavx512f -mavx512bf16 scripts/bench/cpu_peak.c -o /tmp/cpu_peak && /tmp/cpu_peak
//   (/tmp/cpu_peak & /tmp/cpu_peak & wait)      # both cores of a 2-core machine
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    __m512 acc[24];
    for (int i = 0; i < 24; i++) acc[i] = _mm512_setzero_ps();
    __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = a;
    const long steps = 200000000 / 24;
    double t0 = now();
    for (long i = 0; i < steps; i++) {
#pragma GCC unroll 24
        for (int j = 0; j < 24; j++) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
        __asm__ volatile("" : "+v"(a));  // keeps the loop from being folded
    }
    double t1 = now();
    __m512 x = _mm512_set1_ps(1.0f), y = x;
    for (long i = 0; i < steps; i++) {
#pragma GCC unroll 24
        for (int j = 0; j < 24; j++) acc[j] = _mm512_fmadd_ps(x, y, acc[j]);
        __asm__ volatile("" : "+v"(x));
    }
    double t2 = now();
    float sum = 0;
    for (int i = 0; i < 24; i++) sum += _mm512_reduce_add_ps(acc[i]);
    double n = (double)steps * 24;
    printf("bf16 dot (vdpbf16ps zmm): %.2f G instr/s = %.1f GFLOP/s\n", n / (t1 - t0) / 1e9, n * 64 / (t1 - t0) / 1e9);
    printf("fp32 FMA (vfmadd zmm):    %.2f G instr/s = %.1f GFLOP/s  (checksum %g)\n", n / (t2 - t1) / 1e9,
           n * 32 / (t2 - t1) / 1e9, sum);
    return 0;
}
