// The small kernels the kernel engine's CUDA device (worker/src/engine/kernel/cuda.rs) needs beside the op set:
// an element-wise add, row gathers (which also scatter: a source index below 0 writes a row of zeros), appending
// along the sequence for the key/value cache, and attention of new queries against that cache with left padding.
// Deterministic: no atomics, every sum in a fixed order. References: the reference device
// (worker/src/engine/kernel/reference.rs) and kernels/src/ops/attention.rs (forward_cached). Launchers:
// kernels/src/cuda/engine_ops.rs. Checked on the CPU emulator (kernels/tools/emu/engine_check.cpp); NOT RUN ON A
// GPU YET.

// ---- element-wise -------------------------------------------------------------------------------------------
extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b, i64 n,
                                   float* __restrict__ out) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

// ---- rows ----------------------------------------------------------------------------------------------------
// out row r (width values) = x row src[r], or zeros where src[r] < 0 (the host checked every src[r] < rows of x).
extern "C" __global__ void gather_rows_f32(const float* __restrict__ x, const i64* __restrict__ src, i64 out_rows,
                                           i64 width, float* __restrict__ out) {
    const i64 n = out_rows * width;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const i64 r = i / width, s = src[r];
        out[i] = s < 0 ? 0.0f : x[s * width + (i - r * width)];
    }
}

// out (rows x (old_len + new_len) x width) = each row's old_len positions of `old`, then its new_len of `fresh`.
// With old_len == 0, `old` is never read.
extern "C" __global__ void append_seq_f32(const float* __restrict__ old, const float* __restrict__ fresh, i64 rows,
                                          i64 old_len, i64 new_len, i64 width, float* __restrict__ out) {
    const i64 row = (old_len + new_len) * width, n = rows * row;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const i64 r = i / row, rest = i - r * row, p = rest / width, e = rest - p * width;
        out[i] = p < old_len ? old[(r * old_len + p) * width + e] : fresh[(r * new_len + p - old_len) * width + e];
    }
}

// ---- decoding attention against a key/value cache ---------------------------------------------------------
// q: rows x fresh x Hq x D; k, v: rows x (past + fresh) x Hkv x D. One block per query, blockIdx.x =
// (b * fresh + i) * Hq + h; thread e owns element e of the head (blockDim.x = D rounded up to 32, at most 1024).
// The query at column c = past + i of row b sees keys pad[b] ..= c (its first pad[b] columns are left padding); a
// query that sees none (a padding column) writes zeros. Online softmax over the keys in order, each score a
// fixed-order block sum: the same bits on every run.
extern "C" __global__ void attention_cached_f32(const float* __restrict__ q, const float* __restrict__ k,
                                                const float* __restrict__ v, const i64* __restrict__ pad, int fresh,
                                                int past, int Hq, int Hkv, int D, float* __restrict__ out) {
    __shared__ float scratch[32];
    const int h = blockIdx.x % Hq;
    const i64 bi = blockIdx.x / Hq;
    const i64 b = bi / fresh, col = past + bi % fresh, first = pad[b], s = (i64)past + fresh;
    const int kh = h / (Hq / Hkv), e = threadIdx.x;
    const i64 qo = (i64)blockIdx.x * D;
    if (col < first) {  // the same for the whole block, so no thread is left waiting at a barrier
        if (e < D) out[qo + e] = 0.0f;
        return;
    }
    const float scale = 1.0f / sqrtf((float)D);
    const float qe = e < D ? q[qo + e] : 0.0f;
    float m = __int_as_float(0xff800000), l = 0.0f, acc = 0.0f;
    for (i64 j = first; j <= col; ++j) {
        const i64 ko = ((b * s + j) * Hkv + kh) * D;
        const float sc = block_sum(e < D ? qe * k[ko + e] : 0.0f, scratch) * scale;
        const float mn = fmaxf(m, sc);
        const float corr = expf(m - mn), p = expf(sc - mn);
        l = l * corr + p;
        acc = acc * corr + (e < D ? p * v[ko + e] : 0.0f);
        m = mn;
    }
    if (e < D) out[qo + e] = acc / l;
}
