// Runs the NF4 bf16 dequantise kernels of kernels/cuda/nf4.cu on the CPU emulator: the flat one and the strided one
// (nf4_dequantize_bf16_ld, which fills the left columns of the K-extended LoRA weight). Each output must be
// bf16(LEVELS[code] * absmax) exactly, with the absmax double-quantised as the kernel reads it; the strided kernel
// must leave the other columns' bits alone.
#include <cstdio>
#include <random>

int main() {
    // The 16 NF4 levels (kernels/src/nf4.rs LEVELS).
    const float levels[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                              -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                              0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                              0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
    bool ok = true;
    const int rows = 6, cols = 320, extra = 24, ld = cols + extra;  // 30 absmax blocks, rows not 64-aligned
    const i64 n = (i64)rows * cols, blocks = (n + 63) / 64;
    std::mt19937_64 g(7);
    std::vector<u8> codes(n / 2);
    for (auto& c : codes) c = (u8)(g() & 0xff);
    std::vector<float> map(256), scales((blocks + 255) / 256), plain(blocks);
    std::vector<u8> qcodes(blocks);
    for (int i = 0; i < 256; ++i) map[i] = -1.0f + 2.0f * i / 255.0f;
    for (auto& s : scales) s = 0.03f;
    for (auto& q : qcodes) q = (u8)(g() & 0xff);
    for (auto& a : plain) a = 0.01f + (float)(g() % 1000) / 1000.0f;
    const float offset = 0.05f;
    for (int dq = 0; dq < 2; ++dq) {
        auto absmax = [&](i64 b) {
            return dq ? (map[qcodes[b]] * scales[b >> 8]) + offset : plain[b];
        };
        auto want = [&](i64 e) {
            const unsigned byte = codes[e >> 1], code = (e & 1) ? (byte & 15u) : (byte >> 4);
            return f32_to_bf16(levels[code] * absmax(e >> 6));
        };
        std::vector<unsigned short> flat(n, 0x7fc0);
        emu_launch({2}, {32}, 0, [&] {
            nf4_dequantize_bf16(codes.data(), plain.data(), qcodes.data(), scales.data(), map.data(), offset, dq, n,
                                levels, flat.data());
        });
        std::vector<unsigned short> wide((size_t)rows * ld);
        for (size_t i = 0; i < wide.size(); ++i) wide[i] = (unsigned short)(0x1234 + i);
        const auto before = wide;
        emu_launch({2}, {32}, 0, [&] {
            nf4_dequantize_bf16_ld(codes.data(), plain.data(), qcodes.data(), scales.data(), map.data(), offset, dq, n,
                                   levels, wide.data(), cols, ld);
        });
        size_t bad_flat = 0, bad_wide = 0;
        for (i64 e = 0; e < n; ++e) bad_flat += flat[e] != want(e);
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < ld; ++c) {
                const size_t o = (size_t)r * ld + c;
                bad_wide += wide[o] != (c < cols ? want((i64)r * cols + c) : before[o]);
            }
        std::printf("nf4 dequantise bf16 (%s absmax) %dx%d: flat %zu wrong; strided ld %d: %zu wrong\n",
                    dq ? "double-quantised" : "fp32", rows, cols, bad_flat, ld, bad_wide);
        ok &= bad_flat == 0 && bad_wide == 0;
    }
    // The tensor-core tile GEMM (nf4_gemm_mma_bf16): Y = X W^T with W dequantised to bf16 tile by tile, against
    // float64 over the same bf16 values; partial tiles in M and N, double-quantised absmax. Then its K-extended
    // form: X rows K + R apart hold [x | s h] and the last R steps read B, so Y = x W^T + s h B^T (R = 16: a
    // partial 32-wide step).
    for (int R : {0, 16, 32}) {
        const int M = 70, N = 136, K = 128, ldx = K + R;
        const i64 wn = (i64)N * K, wb = (wn + 63) / 64;
        std::vector<u8> wcodes(wn / 2), wq(wb);
        for (auto& c : wcodes) c = (u8)(g() & 0xff);
        for (auto& q : wq) q = (u8)(g() & 0xff);
        std::vector<float> wscales((wb + 255) / 256, 0.03f);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<unsigned short> X((size_t)M * ldx), Bx((size_t)N * std::max(R, 1)), Y((size_t)M * N, 0x7fc0);
        for (auto& v : X) v = f32_to_bf16(nd(g));
        for (auto& v : Bx) v = f32_to_bf16(0.1f * nd(g));
        emu_launch({(unsigned)((N + 127) / 128), (unsigned)((M + 127) / 128), 1}, {256}, 0, [&] {
            nf4_gemm_mma_bf16(X.data(), wcodes.data(), plain.data(), wq.data(), wscales.data(), map.data(), offset, 1,
                              levels, Y.data(), M, N, K, ldx, Bx.data(), R);
        });
        double num = 0, den = 0;
        bool finite = true;
        for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j) {
                double acc = 0;
                for (int q = 0; q < K; ++q) {
                    const i64 e = (i64)j * K + q;
                    const unsigned byte = wcodes[e >> 1], code = (e & 1) ? (byte & 15u) : (byte >> 4);
                    const float a = (map[wq[e >> 6]] * wscales[e >> 14]) + offset;
                    acc += (double)emu_bf16(X[(size_t)i * ldx + q]) * emu_bf16(f32_to_bf16(levels[code] * a));
                }
                for (int q = 0; q < R; ++q)
                    acc += (double)emu_bf16(X[(size_t)i * ldx + K + q]) * emu_bf16(Bx[(size_t)j * R + q]);
                const double got = emu_bf16(Y[(size_t)i * N + j]);
                finite &= std::isfinite(got);
                num += (got - acc) * (got - acc);
                den += acc * acc;
            }
        const double err = finite ? std::sqrt(num / den) : INFINITY;
        std::printf("nf4_gemm_mma_bf16 M=%d N=%d K=%d R=%d: relative error %.3e (bf16 output)\n", M, N, K, R, err);
        ok &= err < 1e-2;
    }
    // The GEMV kernels (fp32 x and y, batch 1..8): one row per warp, four rows per warp, and four rows per warp
    // with a LoRA adapter's extra terms (y = W x + B hx); N = 37 leaves a partial warp of rows.
    {
        const int N = 37, K = 96, R = 8;
        const i64 wn = (i64)N * K, wb = (wn + 63) / 64;
        std::vector<u8> wcodes(wn / 2);
        for (auto& c : wcodes) c = (u8)(g() & 0xff);
        std::vector<float> wabs(wb);
        for (auto& a : wabs) a = 0.01f + (float)(g() % 1000) / 1000.0f;
        std::normal_distribution<float> nd(0.0f, 1.0f);
        for (int B : {1, 3, 8}) {
            std::vector<float> x((size_t)B * K), hx((size_t)B * R);
            std::vector<unsigned short> Bx((size_t)N * R);
            for (auto& v : x) v = nd(g);
            for (auto& v : hx) v = nd(g);
            for (auto& v : Bx) v = f32_to_bf16(0.1f * nd(g));
            std::vector<double> base((size_t)B * N), ext((size_t)B * N);
            for (int b = 0; b < B; ++b)
                for (int r = 0; r < N; ++r) {
                    double acc = 0;
                    for (int q = 0; q < K; ++q) {
                        const i64 e = (i64)r * K + q;
                        const unsigned byte = wcodes[e >> 1], code = (e & 1) ? (byte & 15u) : (byte >> 4);
                        acc += (double)(levels[code] * wabs[e >> 6]) * x[(size_t)b * K + q];
                    }
                    base[(size_t)b * N + r] = acc;
                    for (int j = 0; j < R; ++j) acc += (double)emu_bf16(Bx[(size_t)r * R + j]) * hx[(size_t)b * R + j];
                    ext[(size_t)b * N + r] = acc;
                }
            auto err = [&](const std::vector<float>& got, const std::vector<double>& want) {
                double num = 0, den = 0;
                for (size_t i = 0; i < want.size(); ++i) {
                    if (!std::isfinite(got[i])) return (double)INFINITY;
                    num += (got[i] - want[i]) * (got[i] - want[i]);
                    den += want[i] * want[i];
                }
                return std::sqrt(num / den);
            };
            const float nanf = std::numeric_limits<float>::quiet_NaN();
            std::vector<float> y1((size_t)B * N, nanf), y4((size_t)B * N, nanf), yl((size_t)B * N, nanf);
            auto run = [&](auto kernel, std::vector<float>& y, unsigned rows_per_block) {
                emu_launch({(unsigned)((N + rows_per_block - 1) / rows_per_block)}, {256}, 0, [&] { kernel(y.data()); });
            };
#define GEMV_CASE(BB)                                                                                              \
    case BB:                                                                                                       \
        run([&](float* y) { nf4_gemv_b##BB(wcodes.data(), wabs.data(), nullptr, nullptr, nullptr, 0.0f, 0, x.data(), y, N, K, levels); }, y1, 8); \
        run([&](float* y) { nf4_gemv4_b##BB(wcodes.data(), wabs.data(), nullptr, nullptr, nullptr, 0.0f, 0, x.data(), y, N, K, levels); }, y4, 32); \
        run([&](float* y) { nf4_gemv4_lora_b##BB(wcodes.data(), wabs.data(), nullptr, nullptr, nullptr, 0.0f, 0, x.data(), y, N, K, levels, Bx.data(), R, hx.data()); }, yl, 32); \
        break;
            switch (B) {
                GEMV_CASE(1)
                GEMV_CASE(3)
                GEMV_CASE(8)
            }
#undef GEMV_CASE
            const double e1 = err(y1, base), e4 = err(y4, base), el = err(yl, ext);
            std::printf("nf4 GEMV batch %d, %dx%d: row per warp %.3e, four rows %.3e, four rows + LoRA r=%d %.3e\n", B, N,
                        K, e1, e4, R, el);
            ok &= e1 < 1e-5 && e4 < 1e-5 && el < 1e-5;
        }
    }
    std::printf(ok ? "nf4: all checks passed\n" : "nf4: FAILED\n");
    return ok ? 0 : 1;
}
