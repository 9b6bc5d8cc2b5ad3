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
            lora_bf16_mma(c.m, c.r, c.k, x.data(), c.k, mask.data(), has_mask, a.data(), c.k, kchunk, 0, 1.0f,
                          partial.data(), dummy16.data(), c.r);
        });
        emu_launch({4}, {256}, 0, [&] {
            lora_splitk_reduce(partial.data(), splits, (i64)c.m * c.r, factor, h.data(), h16.data());
        });
        emu_launch({(unsigned)((c.n + 31) / 32), (unsigned)((c.m + 63) / 64), 1}, {128}, 0, [&] {
            lora_bf16_mma(c.m, c.n, c.r, h16.data(), c.r, mask.data(), 0, b.data(), c.r, ((c.r + 31) / 32) * 32, 1,
                          scale, dummy.data(), y.data(), c.n);
        });
        std::vector<double> hg(h.begin(), h.end()), yg;
        for (auto v : y) yg.push_back(emu_bf16(v));
        double eh = rel(hg, h_want), ey = rel(yg, y_want);
        std::printf("  h: relative error %.3e; y: relative error %.3e\n", eh, ey);
        ok &= eh < 1e-5 && ey < 1e-2;
    }
    std::printf(ok ? "lora: all checks passed\n" : "lora: FAILED\n");
    return ok ? 0 : 1;
}
