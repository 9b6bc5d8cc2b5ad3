// Runs the deterministic reductions of kernels/cuda/ops.cu on the CPU emulator (cuda_emu.h) and compares them with
// float64 references (the math of kernels/src/ops/{embedding,rmsnorm,optim}.rs): the grouped embedding backward,
// the RMSNorm backward (dx, and dw in two passes) and the two-pass fp64 sum of squares. The host-side grouping and
// chunking mirror kernels/src/cuda/ops.rs (EmbeddingGroups, rmsnorm_dw_chunking, sum_squares_blocks). Then the
// dropout mask and adamw_step bit for bit against the CPU definitions.
#include <cstdio>
#include <numeric>
#include <random>
#include <tuple>

static bool close(const char* what, const std::vector<float>& got, const std::vector<double>& want, double tol) {
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) {
            std::printf("  %s: element %zu is %f\n", what, i, got[i]);
            return false;
        }
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    double err = den == 0 ? std::sqrt(num) : std::sqrt(num / den);
    std::printf("  %s: relative error %.3e\n", what, err);
    return err < tol;
}

// dropout_keep_mask against the CPU generator of kernels/src/dropout.rs (written out again here from its doc:
// SplitMix64 from key = mix64(seed + mix64(stream ^ STREAM_SALT))), plus the pinned first 64 elements of seed 42,
// stream 7, p = 0.5 that kernels/src/dropout.rs's test holds; n = 1000 exercises the partial last chunk.
static bool check_dropout() {
    auto mix = [](uint64_t z) {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    };
    bool ok = true;
    for (auto [seed, stream, n, p] : {std::tuple<uint64_t, uint64_t, long long, double>{42, 7, 64, 0.5},
                                      {3, 1ull << 40, 1000, 0.1}, {9, 0, 333, 0.0}}) {
        const uint32_t t = (uint32_t)std::min(std::round(p * 4294967296.0), 4294967295.0);
        const uint64_t key = mix(seed + mix(stream ^ 0xD1B54A32D192ED03ull));
        std::vector<unsigned char> out((size_t)n + 16, 7);
        emu_launch({2}, {32}, 0, [&] { dropout_keep_mask(seed, stream, n, t, out.data()); });
        size_t wrong = 0;
        for (long long i = 0; i < n; ++i) {
            const unsigned char want = (uint32_t)(mix(key + (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull) >> 32) >= t;
            wrong += out[i] != want;
        }
        for (size_t i = n; i < out.size(); ++i) wrong += out[i] != 7;  // nothing past n
        if (seed == 42) {
            const char* pinned = "1100100101001111000001110001101101100001010001100000111010000010";
            for (int i = 0; i < 64; ++i) wrong += out[i] != (unsigned char)(pinned[i] - '0');
        }
        std::printf("  dropout mask seed %llu stream %llu n %lld p %.2f: %zu wrong\n", (unsigned long long)seed,
                    (unsigned long long)stream, n, p, wrong);
        ok &= wrong == 0;
    }
    return ok;
}

// adamw_step against the CPU step of kernels/src/ops/optim.rs, written out again here in plain fp32 C++ (g++
// -std=c++20 does not contract), bit for bit; and the FNV-1a hash of p, m, v after three steps of the pinned inputs,
// which kernels/src/ops/optim.rs's test `three_pinned_steps_match_the_emulated_cuda_kernel` holds too.
static bool check_adamw() {
    const int n = 100;
    const float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, wd = 0.01f;
    auto powi = [](double a, int b) {  // compiler-rt's __powidf2, what Rust's f64::powi calls
        double r = 1;
        for (;;) {
            if (b & 1) r *= a;
            b /= 2;
            if (b == 0) break;
            a *= a;
        }
        return r;
    };
    std::vector<float> p(n), m(n, 0.0f), v(n, 0.0f);
    for (int i = 0; i < n; ++i) p[i] = (float)(i - 50) * 0.03125f;
    std::vector<float> cp = p, cm = m, cv = v, g(n);
    size_t wrong = 0;
    for (int s = 1; s <= 3; ++s) {
        for (int i = 0; i < n; ++i) g[i] = (float)((int)((i * 7 + s * 3) % 11) - 5) * 0.0078125f;
        const float bc1 = (float)(1.0 - powi((double)beta1, s)), bc2 = (float)(1.0 - powi((double)beta2, s));
        emu_launch({2}, {32}, 0, [&] {
            adamw_step(p.data(), g.data(), m.data(), v.data(), (i64)n, lr, beta1, beta2, eps, wd, bc1, bc2);
        });
        for (int i = 0; i < n; ++i) {
            const float mi = beta1 * cm[i] + (1.0f - beta1) * g[i];
            const float vi = beta2 * cv[i] + (1.0f - beta2) * g[i] * g[i];
            cm[i] = mi;
            cv[i] = vi;
            cp[i] = cp[i] * (1.0f - lr * wd) - lr * (mi / bc1) / (std::sqrt(vi / bc2) + eps);
        }
        auto bits = [](float x) {
            uint32_t u;
            std::memcpy(&u, &x, 4);
            return u;
        };
        for (int i = 0; i < n; ++i)
            wrong += bits(p[i]) != bits(cp[i]) || bits(m[i]) != bits(cm[i]) || bits(v[i]) != bits(cv[i]);
    }
    uint64_t h = 0xcbf29ce484222325ull;
    for (const auto* x : {&p, &m, &v})
        for (float f : *x) {
            uint32_t u;
            std::memcpy(&u, &f, 4);
            for (int k = 0; k < 4; ++k) h = (h ^ ((u >> (8 * k)) & 0xffu)) * 0x100000001b3ull;
        }
    const uint64_t pinned = 0x2801e7e883f576e8ull;
    std::printf("  adamw_step: %zu elements differ from the fp32 CPU step; hash %#018llx (pinned %#018llx)\n", wrong,
                (unsigned long long)h, (unsigned long long)pinned);
    return wrong == 0 && h == pinned;
}

int main() {
    bool ok = true;
    float nan = std::numeric_limits<float>::quiet_NaN();
    // Embedding backward, grouped by id.
    for (auto [tokens, dim, vocab] : {std::array<int, 3>{1, 1, 3}, {300, 37, 7}, {64, 300, 50}}) {
        std::printf("embedding tokens=%d dim=%d vocab=%d\n", tokens, dim, vocab);
        std::mt19937_64 g(tokens);
        std::vector<uint32_t> ids(tokens);
        for (auto& t : ids) t = (uint32_t)(g() % vocab);
        auto dy = emu_normal(2, (size_t)tokens * dim);
        std::vector<double> want((size_t)vocab * dim, 0.0);
        for (int t = 0; t < tokens; ++t)
            for (int j = 0; j < dim; ++j) want[(size_t)ids[t] * dim + j] += dy[(size_t)t * dim + j];
        std::vector<uint32_t> order(tokens), uniq, starts;
        std::iota(order.begin(), order.end(), 0u);
        std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return ids[a] < ids[b]; });
        for (int k = 0; k < tokens; ++k)
            if (uniq.empty() || uniq.back() != ids[order[k]]) {
                uniq.push_back(ids[order[k]]);
                starts.push_back(k);
            }
        starts.push_back(tokens);
        std::vector<float> dtable((size_t)vocab * dim, 0.0f);  // the launcher zeroes it
        emu_launch({(unsigned)uniq.size(), (unsigned)((dim + 255) / 256)}, {256}, 0, [&] {
            embedding_backward_grouped(dy.data(), uniq.data(), starts.data(), order.data(), dim, dtable.data());
        });
        ok &= close("dtable", dtable, want, 1e-6);
    }
    // RMSNorm backward.
    for (auto [rows, dim] : {std::array<int, 2>{1, 5}, {7, 33}, {300, 70}}) {
        std::printf("rmsnorm rows=%d dim=%d\n", rows, dim);
        auto x = emu_normal(3, (size_t)rows * dim), w = emu_normal(4, dim), dy = emu_normal(5, (size_t)rows * dim);
        std::vector<float> rstd(rows);
        std::vector<double> wdx, wdw(dim, 0.0);
        for (int r = 0; r < rows; ++r) {
            double ss = 0;
            for (int j = 0; j < dim; ++j) ss += (double)x[r * dim + j] * x[r * dim + j];
            double rs = 1.0 / std::sqrt(ss / dim + 1e-5);
            rstd[r] = (float)rs;
            double dot = 0;
            for (int j = 0; j < dim; ++j) dot += (double)dy[r * dim + j] * w[j] * x[r * dim + j];
            for (int j = 0; j < dim; ++j) {
                wdx.push_back(rs * dy[r * dim + j] * w[j] - rs * rs * rs / dim * x[r * dim + j] * dot);
                wdw[j] += (double)dy[r * dim + j] * x[r * dim + j] * rs;
            }
        }
        std::vector<float> dx((size_t)rows * dim, nan), dw(dim, nan);
        emu_launch({(unsigned)rows}, {256}, 0,
                   [&] { rmsnorm_backward_dx(x.data(), w.data(), rstd.data(), dy.data(), dim, dx.data()); });
        int per = std::max(1, (rows + 127) / 128), chunks = std::max(1, (rows + per - 1) / per);
        std::vector<float> partial((size_t)chunks * dim, nan);
        emu_launch({(unsigned)((dim + 255) / 256), (unsigned)chunks}, {256}, 0, [&] {
            rmsnorm_dw_partial(x.data(), rstd.data(), dy.data(), rows, dim, per, partial.data());
        });
        emu_launch({(unsigned)((dim + 255) / 256)}, {256}, 0,
                   [&] { rmsnorm_dw_reduce(partial.data(), chunks, dim, dw.data()); });
        ok &= close("dx", dx, wdx, 1e-5);
        ok &= close("dw", dw, wdw, 1e-5);
    }
    // Sum of squares over two tensors, two passes.
    {
        std::vector<std::vector<float>> ts = {emu_normal(6, 12345), emu_normal(7, 77), emu_normal(8, 300000)};
        double want = 0;
        size_t total = 0;
        for (auto& t : ts) {
            for (float v : t) want += (double)v * v;
            total += std::min<size_t>(1024, std::max<size_t>(1, (t.size() + 255) / 256));
        }
        std::vector<double> partial(total, std::nan("")), out(1, std::nan(""));
        size_t off = 0;
        for (auto& t : ts) {
            size_t blocks = std::min<size_t>(1024, std::max<size_t>(1, (t.size() + 255) / 256));
            emu_launch({(unsigned)blocks}, {256}, 0,
                       [&] { sum_squares_partial(t.data(), (i64)t.size(), partial.data(), (i64)off); });
            off += blocks;
        }
        emu_launch({1}, {256}, 0, [&] { sum_f64(partial.data(), (i64)total, out.data()); });
        double err = std::fabs(out[0] - want) / want;
        std::printf("sum of squares: %.12g vs %.12g, relative error %.3e\n", out[0], want, err);
        ok &= err < 1e-12;
    }
    ok &= check_dropout();
    ok &= check_adamw();
    std::printf(ok ? "ops: all checks passed\n" : "ops: FAILED\n");
    return ok ? 0 : 1;
}
