// Runs the bf16 tensor-core LoRA adapter of kernels/cuda/lora.cu (lora_bf16_mma + lora_splitk_reduce) on the CPU
// emulator (cuda_emu.h, whose mma.sync follows the PTX fragment tables) and compares it with float64 math:
// h = dropout(x) A^T (split over K exactly as kernels/src/cuda/lora_bf16.rs::split_k), then y += s h B^T on a bf16 y.
// Inputs are bf16; h within 1e-5 (fp32 sums of exact bf16 products), y within 1e-2 (bf16 output).
#include <cstdio>
#include <random>

static std::vector<unsigned short> bf16_normal(uint64_t seed, size_t n, float scale) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<unsigned short> v(n);
    for (auto& x : v) x = f32_to_bf16(d(g) * scale);
    return v;
}

static std::pair<int, int> split_k(int m, int n, int k) {  // kernels/src/cuda/lora_bf16.rs::split_k
    int tiles = ((m + 63) / 64) * ((n + 31) / 32);
    int steps = std::max(1, (k + 31) / 32);
    int want = std::clamp((256 + tiles - 1) / tiles, 1, steps);
    int kchunk = ((steps + want - 1) / want) * 32;
    return {std::max(1, (k + kchunk - 1) / kchunk), kchunk};
}

static double rel(const std::vector<double>& got, const std::vector<double>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    return std::sqrt(num / std::max(den, 1e-300));
}

// The K-extended layer's kernels (kernels/src/cuda/lora_fused.rs): the down-projection reading x from rows K' = k + r
// apart with a dense mask, the reduce writing s h into the right-hand columns of the same rows, B copied into the
// right-hand columns of W_ext, the masked copy of x and the masked add into dx. Every value outside the columns a
// kernel owns must keep its bits.
static bool check_k_extended() {
    bool ok = true;
    const int m = 70, k = 96, r = 16, n = 40, kx = k + r;
    const float p = 0.2f, s = 1.5f, factor = 1.0f / (1.0f - p);
    auto x = bf16_normal(11, (size_t)m * kx, 1.0f), a = bf16_normal(12, (size_t)r * k, 0.05f);
    const auto x_before = x;
    std::vector<unsigned char> mask((size_t)m * k);
    std::mt19937_64 g(13);
    for (auto& v : mask) v = (g() % 1000) >= (unsigned)(p * 1000);
    auto [splits, kchunk] = split_k(m, r, k);
    float nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> partial((size_t)splits * m * r, nan), h((size_t)m * r, nan);
    std::vector<unsigned short> dummy16(1);
    emu_launch({(unsigned)((r + 31) / 32), (unsigned)((m + 63) / 64), (unsigned)splits}, {128}, 0, [&] {
        lora_bf16_mma(m, r, k, x.data(), kx, mask.data(), k, 1, a.data(), k, kchunk, 0, 1.0f, partial.data(),
                      dummy16.data(), r);
    });
    emu_launch({3}, {256}, 0, [&] {
        lora_splitk_reduce(partial.data(), splits, (i64)m * r, factor, h.data(), x.data() + k, r, kx, s);
    });
    std::vector<double> h_want((size_t)m * r), h_got(h.begin(), h.end()), sh_want, sh_got;
    for (int i = 0; i < m; ++i)
        for (int j = 0; j < r; ++j) {
            double acc = 0;
            for (int q = 0; q < k; ++q)
                acc += mask[(size_t)i * k + q] * (double)emu_bf16(x_before[(size_t)i * kx + q]) *
                       emu_bf16(a[(size_t)j * k + q]);
            h_want[(size_t)i * r + j] = acc * factor;
            sh_want.push_back(s * acc * factor);
            sh_got.push_back(emu_bf16(x[(size_t)i * kx + k + j]));
        }
    size_t touched = 0;
    for (int i = 0; i < m; ++i)
        for (int q = 0; q < k; ++q) touched += x[(size_t)i * kx + q] != x_before[(size_t)i * kx + q];
    double eh = rel(h_got, h_want), esh = rel(sh_got, sh_want);
    std::printf("k-extended m=%d k=%d r=%d p=%.1f: h %.3e, s h in x_ext %.3e, x columns changed: %zu\n", m, k, r, p, eh,
                esh, touched);
    ok &= eh < 1e-5 && esh < 1e-2 && touched == 0;

    // B (n x r) into the right-hand columns of W_ext (n x kx), the left columns untouched.
    auto b = bf16_normal(14, (size_t)n * r, 0.05f), w_ext = bf16_normal(15, (size_t)n * kx, 1.0f);
    const auto w_before = w_ext;
    emu_launch({2}, {256}, 0, [&] { lora_copy_rows_u16(b.data(), r, n, r, w_ext.data() + k, kx); });
    size_t wrong = 0;
    for (int i = 0; i < n; ++i)
        for (int q = 0; q < kx; ++q) {
            unsigned short want = q < k ? w_before[(size_t)i * kx + q] : b[(size_t)i * r + q - k];
            wrong += w_ext[(size_t)i * kx + q] != want;
        }
    // x_masked = mask * x (dense m x k) from the strided x.
    std::vector<unsigned short> xm((size_t)m * k, 0x7fc0);
    emu_launch({2}, {256}, 0, [&] { lora_mask_rows_bf16(x.data(), kx, mask.data(), m, k, xm.data()); });
    for (int i = 0; i < m; ++i)
        for (int q = 0; q < k; ++q) {
            unsigned short want = mask[(size_t)i * k + q] ? x[(size_t)i * kx + q] : 0;
            wrong += xm[(size_t)i * k + q] != want;
        }
    // dx (rows kx apart) += alpha * t where the mask keeps; the right-hand columns (g) untouched.
    auto dx = bf16_normal(16, (size_t)m * kx, 1.0f);
    const auto dx_before = dx;
    std::vector<float> t((size_t)m * k);
    std::mt19937_64 gt(17);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& v : t) v = nd(gt);
    emu_launch({2}, {256}, 0, [&] { lora_masked_add_bf16(t.data(), mask.data(), m, k, 0.5f, dx.data(), kx); });
    for (int i = 0; i < m; ++i)
        for (int q = 0; q < kx; ++q) {
            const size_t o = (size_t)i * kx + q;
            unsigned short want = dx_before[o];
            if (q < k && mask[(size_t)i * k + q]) want = f32_to_bf16(emu_bf16(dx_before[o]) + 0.5f * t[(size_t)i * k + q]);
            wrong += dx[o] != want;
        }
    std::printf("k-extended copy of B, masked x, masked add into dx: %zu values differ from the exact answer\n", wrong);
    return ok && wrong == 0;
}

int main() {
    bool ok = true;
    struct Case {
        int m, k, r, n;
        float p;
    };
    for (Case c : {Case{37, 72, 16, 70, 0.0f}, Case{130, 256, 32, 100, 0.1f}, Case{64, 1024, 8, 33, 0.05f}}) {
        auto [splits, kchunk] = split_k(c.m, c.r, c.k);
        std::printf("m=%d k=%d r=%d n=%d p=%.2f: %d splits of %d\n", c.m, c.k, c.r, c.n, c.p, splits, kchunk);
        auto x = bf16_normal(1, (size_t)c.m * c.k, 1.0f), a = bf16_normal(2, (size_t)c.r * c.k, 0.05f),
             b = bf16_normal(3, (size_t)c.n * c.r, 0.05f), y = bf16_normal(4, (size_t)c.m * c.n, 1.0f);
        std::vector<unsigned char> mask((size_t)c.m * c.k);
        std::mt19937_64 g(5);
        for (auto& v : mask) v = (g() % 1000) >= (unsigned)(c.p * 1000);
        int has_mask = c.p > 0;
        float factor = 1.0f / (1.0f - c.p), scale = 2.0f;
        std::vector<double> h_want((size_t)c.m * c.r), y_want((size_t)c.m * c.n);
        for (int i = 0; i < c.m; ++i)
            for (int j = 0; j < c.r; ++j) {
                double s = 0;
                for (int q = 0; q < c.k; ++q)
                    s += (has_mask ? mask[(size_t)i * c.k + q] : 1) * (double)emu_bf16(x[(size_t)i * c.k + q]) *
                         emu_bf16(a[(size_t)j * c.k + q]);
                h_want[(size_t)i * c.r + j] = s * factor;
            }
        for (int i = 0; i < c.m; ++i)
            for (int j = 0; j < c.n; ++j) {
                double s = 0;
                for (int q = 0; q < c.r; ++q) s += h_want[(size_t)i * c.r + q] * emu_bf16(b[(size_t)j * c.r + q]);
                y_want[(size_t)i * c.n + j] = emu_bf16(y[(size_t)i * c.n + j]) + scale * s;
            }
        float nan = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> partial((size_t)splits * c.m * c.r, nan), h((size_t)c.m * c.r, nan);
        std::vector<unsigned short> h16((size_t)c.m * c.r, 0x7fc0), dummy16(1);
        std::vector<float> dummy(1);
        emu_launch({(unsigned)((c.r + 31) / 32), (unsigned)((c.m + 63) / 64), (unsigned)splits}, {128}, 0, [&] {
            lora_bf16_mma(c.m, c.r, c.k, x.data(), c.k, mask.data(), c.k, has_mask, a.data(), c.k, kchunk, 0, 1.0f,
                          partial.data(), dummy16.data(), c.r);
        });
        emu_launch({4}, {256}, 0, [&] {
            lora_splitk_reduce(partial.data(), splits, (i64)c.m * c.r, factor, h.data(), h16.data(), c.r, c.r, 1.0f);
        });
        emu_launch({(unsigned)((c.n + 31) / 32), (unsigned)((c.m + 63) / 64), 1}, {128}, 0, [&] {
            lora_bf16_mma(c.m, c.n, c.r, h16.data(), c.r, mask.data(), c.r, 0, b.data(), c.r, ((c.r + 31) / 32) * 32,
                          1, scale, dummy.data(), y.data(), c.n);
        });
        std::vector<double> hg(h.begin(), h.end()), yg;
        for (auto v : y) yg.push_back(emu_bf16(v));
        double eh = rel(hg, h_want), ey = rel(yg, y_want);
        std::printf("  h: relative error %.3e; y: relative error %.3e\n", eh, ey);
        ok &= eh < 1e-5 && ey < 1e-2;
    }
    ok &= check_k_extended();
    {
        // lora_gemv_down: hx = s A x for decoding, batch 3, r = 16, K = 200 (lanes past K idle).
        const int B = 3, R = 16, K = 200;
        auto a = bf16_normal(21, (size_t)R * K, 0.05f);
        std::mt19937_64 gx(22);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> x((size_t)B * K), hx((size_t)B * R, std::numeric_limits<float>::quiet_NaN());
        for (auto& v : x) v = nd(gx);
        emu_launch({(unsigned)((B * R * 32 + 255) / 256)}, {256}, 0,
                   [&] { lora_gemv_down(a.data(), R, K, x.data(), B, 1.5f, hx.data()); });
        std::vector<double> want, got(hx.begin(), hx.end());
        for (int b = 0; b < B; ++b)
            for (int j = 0; j < R; ++j) {
                double s = 0;
                for (int q = 0; q < K; ++q) s += (double)emu_bf16(a[(size_t)j * K + q]) * x[(size_t)b * K + q];
                want.push_back(1.5 * s);
            }
        const double e = rel(got, want);
        std::printf("lora_gemv_down batch %d r %d K %d: relative error %.3e\n", B, R, K, e);
        ok &= e < 1e-5;
    }
    std::printf(ok ? "lora: all checks passed\n" : "lora: FAILED\n");
    return ok ? 0 : 1;
}
