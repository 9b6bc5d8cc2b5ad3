// Runs the kernels of kernels/cuda/engine.cu on the CPU emulator (cuda_emu.h) against plain C++ references: add,
// the row gather (and the scatter, which is a gather with -1 sources), appending along the sequence, and decoding
// attention against a key/value cache with left padding (float64 reference: the math of
// kernels/src/ops/attention.rs::forward_cached). The host-side index maps mirror kernels/src/cuda/engine_ops.rs
// (gather_sources, scatter_sources); grids are small so the grid-stride loops wrap. Every output buffer has a
// guard zone after it that must stay untouched, and starts as NaN where the kernel must write it.
#include <cstdio>
#include <random>

static const float kGuard = 12345.0f;

// `n` NaNs followed by 64 guard values.
static std::vector<float> poisoned(size_t n) {
    std::vector<float> v(n + 64, kGuard);
    std::fill(v.begin(), v.begin() + n, std::numeric_limits<float>::quiet_NaN());
    return v;
}

static size_t guard_hits(const std::vector<float>& v, size_t n) {
    size_t hits = 0;
    for (size_t i = n; i < v.size(); ++i) hits += v[i] != kGuard;
    return hits;
}

static uint32_t bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
}

// Exact comparison (the kernels copy or add once, as the reference does): values whose bits differ, and writes past n.
static bool exact(const char* what, const std::vector<float>& got, const std::vector<float>& want) {
    size_t wrong = 0;
    for (size_t i = 0; i < want.size(); ++i) wrong += bits(got[i]) != bits(want[i]);
    size_t past = guard_hits(got, want.size());
    std::printf("  %s: %zu of %zu values differ, %zu written past the end\n", what, wrong, want.size(), past);
    return wrong == 0 && past == 0;
}

static bool check_add() {
    bool ok = true;
    for (long long n : {1LL, 1000LL, 4099LL}) {
        auto a = emu_normal(1, n), b = emu_normal(2, n);
        auto out = poisoned(n);
        std::vector<float> want(n);
        for (long long i = 0; i < n; ++i) want[i] = a[i] + b[i];
        emu_launch({2}, {32}, 0, [&] { add_f32(a.data(), b.data(), n, out.data()); });
        std::printf("add n=%lld\n", n);
        ok &= exact("out", out, want);
    }
    return ok;
}

// engine_ops::gather_sources / scatter_sources.
static std::vector<i64> scatter_sources(const std::vector<int>& rows, int total) {
    std::vector<i64> src(total, -1);
    for (size_t i = 0; i < rows.size(); ++i) src[rows[i]] = (i64)i;
    return src;
}

static bool gather(const char* what, const std::vector<float>& x, int width, const std::vector<i64>& src) {
    auto out = poisoned(src.size() * width);
    std::vector<float> want;
    for (i64 s : src)
        for (int e = 0; e < width; ++e) want.push_back(s < 0 ? 0.0f : x[s * width + e]);
    emu_launch({3}, {32}, 0, [&] { gather_rows_f32(x.data(), src.data(), (i64)src.size(), width, out.data()); });
    return exact(what, out, want);
}

static bool check_rows() {
    bool ok = true;
    for (int width : {1, 5, 67}) {
        std::printf("rows width=%d\n", width);
        auto x = emu_normal(3, 7 * (size_t)width);
        ok &= gather("gather [3, 6, 0, 3, 1]", x, width, {3, 6, 0, 3, 1});
        // Scatter rows 0..3 of x to [4, 0, 2] of 6: rows 1, 3, 5 stay zero.
        ok &= gather("scatter [4, 0, 2] into 6", x, width, scatter_sources({4, 0, 2}, 6));
        // A repeated row keeps the last input row.
        auto src = scatter_sources({1, 1}, 2);
        ok &= src[0] == -1 && src[1] == 1;
    }
    return ok;
}

static bool check_append() {
    bool ok = true;
    for (auto [rows, old_len, new_len, width] :
         {std::array<int, 4>{3, 4, 2, 6}, {2, 0, 5, 3}, {1, 17, 1, 33}, {4, 9, 1, 96}}) {
        std::printf("append rows=%d old=%d new=%d width=%d\n", rows, old_len, new_len, width);
        auto old = emu_normal(4, (size_t)rows * old_len * width), fresh = emu_normal(5, (size_t)rows * new_len * width);
        size_t n = (size_t)rows * (old_len + new_len) * width;
        auto out = poisoned(n);
        std::vector<float> want;
        for (int r = 0; r < rows; ++r) {
            want.insert(want.end(), old.begin() + (size_t)r * old_len * width, old.begin() + (size_t)(r + 1) * old_len * width);
            want.insert(want.end(), fresh.begin() + (size_t)r * new_len * width,
                        fresh.begin() + (size_t)(r + 1) * new_len * width);
        }
        // With old_len == 0 the launcher passes `fresh` as `old` (never read).
        const float* old_ptr = old_len == 0 ? fresh.data() : old.data();
        emu_launch({2}, {64}, 0,
                   [&] { append_seq_f32(old_ptr, fresh.data(), rows, old_len, new_len, width, out.data()); });
        ok &= exact("out", out, want);
    }
    return ok;
}

// forward_cached of kernels/src/ops/attention.rs, in float64.
static std::vector<double> cached_reference(int rows, int fresh, int past, int hq, int hkv, int d,
                                            const std::vector<i64>& pad, const std::vector<float>& q,
                                            const std::vector<float>& k, const std::vector<float>& v) {
    const int s = past + fresh, group = hq / hkv;
    const double scale = 1.0 / std::sqrt((double)d);
    std::vector<double> out(q.size(), 0.0);
    for (int b = 0; b < rows; ++b)
        for (int i = 0; i < fresh; ++i) {
            const int col = past + i;
            if (col < pad[b]) continue;
            for (int h = 0; h < hq; ++h) {
                const size_t qo = ((size_t)(b * fresh + i) * hq + h) * d;
                auto ko = [&](int j) { return ((size_t)(b * s + j) * hkv + h / group) * d; };
                std::vector<double> sc;
                for (int j = (int)pad[b]; j <= col; ++j) {
                    double dot = 0;
                    for (int e = 0; e < d; ++e) dot += (double)q[qo + e] * k[ko(j) + e];
                    sc.push_back(dot * scale);
                }
                double mx = *std::max_element(sc.begin(), sc.end()), z = 0;
                for (double& x : sc) z += (x = std::exp(x - mx));
                for (int e = 0; e < d; ++e) {
                    double acc = 0;
                    for (int j = (int)pad[b]; j <= col; ++j) acc += sc[j - pad[b]] / z * v[ko(j) + e];
                    out[qo + e] = acc;
                }
            }
        }
    return out;
}

static bool check_cached() {
    bool ok = true;
    struct Case {
        int rows, fresh, past, hq, hkv, d;
        std::vector<i64> pad;
    };
    for (const Case& c : {Case{2, 1, 5, 4, 2, 16, {0, 3}}, Case{3, 4, 0, 6, 2, 33, {0, 2, 3}},
                          Case{1, 2, 7, 2, 1, 70, {4}}, Case{2, 1, 9, 4, 1, 128, {2, 0}},
                          Case{2, 3, 2, 3, 3, 64, {5, 1}}}) {
        std::printf("cached attention rows=%d new=%d past=%d heads=%d/%d d=%d pad=[", c.rows, c.fresh, c.past, c.hq,
                    c.hkv, c.d);
        for (size_t b = 0; b < c.pad.size(); ++b) std::printf(b ? ", %lld" : "%lld", (long long)c.pad[b]);
        std::printf("]\n");
        const int s = c.past + c.fresh;
        auto q = emu_normal(6, (size_t)c.rows * c.fresh * c.hq * c.d);
        auto k = emu_normal(7, (size_t)c.rows * s * c.hkv * c.d), v = emu_normal(8, (size_t)c.rows * s * c.hkv * c.d);
        auto out = poisoned(q.size());
        const unsigned blocks = c.rows * c.fresh * c.hq, threads = (c.d + 31) / 32 * 32;
        emu_launch({blocks}, {threads}, 0, [&] {
            attention_cached_f32(q.data(), k.data(), v.data(), c.pad.data(), c.fresh, c.past, c.hq, c.hkv, c.d,
                                 out.data());
        });
        auto want = cached_reference(c.rows, c.fresh, c.past, c.hq, c.hkv, c.d, c.pad, q, k, v);
        double num = 0, den = 0;
        size_t bad = 0, padded = 0;
        for (size_t i = 0; i < want.size(); ++i) {
            if (!std::isfinite(out[i])) ++bad;
            num += (out[i] - want[i]) * (out[i] - want[i]);
            den += want[i] * want[i];
        }
        // Padding columns must be exactly zero.
        for (int b = 0; b < c.rows; ++b)
            for (int i = 0; i < c.fresh; ++i)
                if (c.past + i < c.pad[b])
                    for (int e = 0; e < c.hq * c.d; ++e) {
                        ++padded;
                        bad += out[((size_t)(b * c.fresh + i) * c.hq) * c.d + e] != 0.0f;
                    }
        const double err = std::sqrt(num / den);
        const size_t past_end = guard_hits(out, q.size());
        std::printf("  out: relative error %.3e; %zu padding values (all must be 0), %zu bad, %zu written past the end\n",
                    err, padded, bad, past_end);
        ok &= err < 1e-5 && bad == 0 && past_end == 0;
    }
    return ok;
}

int main() {
    bool ok = true;
    ok &= check_add();
    ok &= check_rows();
    ok &= check_append();
    ok &= check_cached();
    std::printf(ok ? "engine: all checks passed\n" : "engine: FAILED\n");
    return ok ? 0 : 1;
}
