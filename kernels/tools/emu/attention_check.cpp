// Runs the flash attention kernels of kernels/cuda/attention.cu on the CPU emulator (cuda_emu.h) and compares them
// with a float64 reference (the same math as kernels/src/ops/attention.rs): relative error of out, lse, dq, dk, dv
// below 1e-5, outputs poisoned with NaN first, two runs bit-identical. Built and run by tools/emu/check.sh.
#include <cstdio>
#include <random>
#include <string>

struct Dims {
    int B, T, Hq, Hkv, D;
};

struct Grads {
    std::vector<float> out, lse, dq, dk, dv;
};

static Grads reference(Dims d, const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                       const std::vector<float>& dout) {
    Grads r;
    r.out.assign(q.size(), 0);
    r.dq.assign(q.size(), 0);
    std::vector<double> dq(q.size(), 0), dk(k.size(), 0), dv(v.size(), 0);
    double scale = 1.0 / std::sqrt((double)d.D);
    int G = d.Hq / d.Hkv;
    for (int b = 0; b < d.B; ++b)
        for (int t = 0; t < d.T; ++t)
            for (int h = 0; h < d.Hq; ++h) {
                size_t qo = ((size_t)(b * d.T + t) * d.Hq + h) * d.D;
                auto ko = [&](int j) { return ((size_t)(b * d.T + j) * d.Hkv + h / G) * d.D; };
                std::vector<double> s(t + 1), p(t + 1), dp(t + 1);
                double m = -INFINITY;
                for (int j = 0; j <= t; ++j) {
                    double acc = 0;
                    for (int e = 0; e < d.D; ++e) acc += (double)q[qo + e] * k[ko(j) + e];
                    s[j] = acc * scale;
                    m = std::max(m, s[j]);
                }
                double z = 0;
                for (int j = 0; j <= t; ++j) z += std::exp(s[j] - m);
                r.lse.push_back((float)(m + std::log(z)));
                for (int j = 0; j <= t; ++j) p[j] = std::exp(s[j] - m) / z;
                for (int e = 0; e < d.D; ++e) {
                    double o = 0;
                    for (int j = 0; j <= t; ++j) o += p[j] * v[ko(j) + e];
                    r.out[qo + e] = (float)o;
                }
                double dot = 0;
                for (int j = 0; j <= t; ++j) {
                    double a = 0;
                    for (int e = 0; e < d.D; ++e) a += (double)dout[qo + e] * v[ko(j) + e];
                    dp[j] = a;
                    dot += p[j] * a;
                }
                for (int j = 0; j <= t; ++j) {
                    double ds = p[j] * (dp[j] - dot) * scale;
                    for (int e = 0; e < d.D; ++e) {
                        dq[qo + e] += ds * k[ko(j) + e];
                        dk[ko(j) + e] += ds * q[qo + e];
                        dv[ko(j) + e] += p[j] * dout[qo + e];
                    }
                }
            }
    auto f = [](const std::vector<double>& x) { return std::vector<float>(x.begin(), x.end()); };
    r.dq = f(dq);
    r.dk = f(dk);
    r.dv = f(dv);
    return r;
}

static size_t shared_bytes(int kind, int dmax) {  // 0 forward, 1 dkdv, 2 dq: the formulas of attention.cu
    size_t row = dmax + 4;
    size_t floats = kind == 0 ? 128 * row + 64 * 68 : kind == 1 ? 192 * row + 64 * 36 + 64 : 192 * row + 64 * 36;
    return floats * 4;
}

static Grads run_flash(Dims d, const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                       const std::vector<float>& dout) {
    float nan = std::numeric_limits<float>::quiet_NaN();
    size_t rows = (size_t)d.B * d.T * d.Hq;
    Grads g;
    g.out.assign(q.size(), nan);
    g.lse.assign(rows, nan);
    g.dq.assign(q.size(), nan);
    g.dk.assign(k.size(), nan);
    g.dv.assign(v.size(), nan);
    std::vector<float> delta(rows, nan);
    int dmax = d.D <= 64 ? 64 : 128;
    unsigned tiles = (d.T + 63) / 64;
    emu_launch({tiles, (unsigned)d.Hq, (unsigned)d.B}, {256}, shared_bytes(0, dmax), [&] {
        if (dmax == 64)
            flash_attention_forward_d64(q.data(), k.data(), v.data(), d.T, d.Hq, d.Hkv, d.D, g.out.data(), g.lse.data());
        else
            flash_attention_forward_d128(q.data(), k.data(), v.data(), d.T, d.Hq, d.Hkv, d.D, g.out.data(), g.lse.data());
    });
    emu_launch({(unsigned)((rows + 7) / 8)}, {256}, 0,
               [&] { flash_attention_delta(g.out.data(), dout.data(), (i64)rows, d.D, delta.data()); });
    emu_launch({tiles, (unsigned)d.Hkv, (unsigned)d.B}, {256}, shared_bytes(1, dmax), [&] {
        auto f = dmax == 64 ? flash_attention_backward_dkdv_d64 : flash_attention_backward_dkdv_d128;
        f(q.data(), k.data(), v.data(), dout.data(), g.lse.data(), delta.data(), d.T, d.Hq, d.Hkv, d.D, g.dk.data(),
          g.dv.data());
    });
    emu_launch({tiles, (unsigned)d.Hq, (unsigned)d.B}, {256}, shared_bytes(2, dmax), [&] {
        auto f = dmax == 64 ? flash_attention_backward_dq_d64 : flash_attention_backward_dq_d128;
        f(q.data(), k.data(), v.data(), dout.data(), g.lse.data(), delta.data(), d.T, d.Hq, d.Hkv, d.D, g.dq.data());
    });
    return g;
}

static bool close(const char* what, const std::vector<float>& got, const std::vector<float>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) {
            std::printf("  %s: element %zu is %f\n", what, i, got[i]);
            return false;
        }
        num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        den += (double)want[i] * want[i];
    }
    if (den == 0) {  // an exactly zero reference (e.g. dq, dk at T = 1): rounding noise below 1e-5 passes
        double worst = 0;
        for (float g : got) worst = std::max(worst, (double)std::fabs(g));
        std::printf("  %s: reference is zero, largest |value| %.3e\n", what, worst);
        return worst < 1e-5;
    }
    double err = std::sqrt(num / den);
    std::printf("  %s: relative error %.3e\n", what, err);
    return err < 1e-5;
}

int main() {
    bool ok = true;
    std::vector<Dims> cases = {{1, 1, 4, 2, 64}, {2, 37, 4, 4, 80}, {1, 130, 4, 2, 128}, {1, 70, 2, 1, 1}, {2, 65, 6, 3, 40}};
    // TANDEM_EMU_BIG=1 adds the GPU test's LLaMA-like shape (a few minutes on 2 cores).
    if (const char* big = std::getenv("TANDEM_EMU_BIG"); big && std::string(big) == "1") cases.push_back({1, 256, 32, 8, 128});
    uint64_t seed = 1;
    for (Dims d : cases) {
        std::printf("B=%d T=%d Hq=%d Hkv=%d D=%d\n", d.B, d.T, d.Hq, d.Hkv, d.D);
        size_t nq = (size_t)d.B * d.T * d.Hq * d.D, nk = (size_t)d.B * d.T * d.Hkv * d.D;
        auto q = emu_normal(seed++, nq), k = emu_normal(seed++, nk), v = emu_normal(seed++, nk), dout = emu_normal(seed++, nq);
        Grads want = reference(d, q, k, v, dout);
        Grads got = run_flash(d, q, k, v, dout);
        ok &= close("out", got.out, want.out);
        ok &= close("lse", got.lse, want.lse);
        ok &= close("dq", got.dq, want.dq);
        ok &= close("dk", got.dk, want.dk);
        ok &= close("dv", got.dv, want.dv);
        Grads again = run_flash(d, q, k, v, dout);
        bool same = std::memcmp(again.dq.data(), got.dq.data(), nq * 4) == 0 &&
                    std::memcmp(again.dk.data(), got.dk.data(), nk * 4) == 0 &&
                    std::memcmp(again.dv.data(), got.dv.data(), nk * 4) == 0;
        std::printf("  second run bit-identical: %s\n", same ? "yes" : "NO");
        ok &= same;
    }
    std::printf(ok ? "attention: all checks passed\n" : "attention: FAILED\n");
    return ok ? 0 : 1;
}
