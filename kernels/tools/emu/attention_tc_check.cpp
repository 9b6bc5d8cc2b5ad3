// Runs the bf16 tensor-core flash attention forward of kernels/cuda/attention_tc.cu on the CPU emulator (cuda_emu.h:
// mma.sync, ldmatrix and cp.async follow the PTX ISA) and compares it with float64 math on the same bf16-rounded
// inputs (the math of kernels/src/ops/attention.rs): relative error of out (bf16) below 5e-3 (the bf16 rounding of P
// and of out gives about 2e-3; the GPU test allows 1e-2), of lse (fp32) below 1e-4; outputs poisoned with NaN first
// (dynamic shared memory starts as NaN too), and two runs bit-identical. The backward's dK/dV runs twice: the unsplit
// kernel and the balanced one (chunks of TC_CHUNK iterations writing fp32 partials, then the reduce), both at the
// same limits; the balanced one must give the unsplit kernel's bits on every key tile of one chunk, must not write
// past its partials (a NaN guard) and must not read a partial it did not write (they start as NaN). Built and run by
// tools/emu/check.sh.
#include <cstdio>
#include <random>
#include <string>

struct Case {
    int B, T, Hq, Hkv, D;
    float q_scale;  // > 1 makes the softmax peaky (large score spreads, big online-softmax corrections)
};

static std::vector<unsigned short> bf16_normal(uint64_t seed, size_t n, float scale) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<unsigned short> v(n);
    for (auto& x : v) x = f32_to_bf16(d(g) * scale);
    return v;
}

struct Result {
    std::vector<double> out, lse, dq, dk, dv;
};

// float64 causal GQA attention on the bf16 values.
static Result reference(Case d, const std::vector<unsigned short>& q, const std::vector<unsigned short>& k,
                        const std::vector<unsigned short>& v, const std::vector<unsigned short>& dout) {
    Result r;
    r.out.assign(q.size(), 0.0);
    r.dq.assign(q.size(), 0.0);
    r.dk.assign(k.size(), 0.0);
    r.dv.assign(v.size(), 0.0);
    double scale = 1.0 / std::sqrt((double)d.D);
    int G = d.Hq / d.Hkv;
    for (int b = 0; b < d.B; ++b)
        for (int t = 0; t < d.T; ++t)
            for (int h = 0; h < d.Hq; ++h) {
                size_t qo = ((size_t)(b * d.T + t) * d.Hq + h) * d.D;
                auto ko = [&](int j) { return ((size_t)(b * d.T + j) * d.Hkv + h / G) * d.D; };
                std::vector<double> s(t + 1);
                double m = -INFINITY;
                for (int j = 0; j <= t; ++j) {
                    double acc = 0;
                    for (int e = 0; e < d.D; ++e) acc += (double)emu_bf16(q[qo + e]) * emu_bf16(k[ko(j) + e]);
                    s[j] = acc * scale;
                    m = std::max(m, s[j]);
                }
                double z = 0;
                for (int j = 0; j <= t; ++j) z += std::exp(s[j] - m);
                r.lse.push_back(m + std::log(z));
                std::vector<double> p(t + 1), dp(t + 1);
                for (int j = 0; j <= t; ++j) p[j] = std::exp(s[j] - m) / z;
                for (int e = 0; e < d.D; ++e) {
                    double o = 0;
                    for (int j = 0; j <= t; ++j) o += p[j] * emu_bf16(v[ko(j) + e]);
                    r.out[qo + e] = o;
                }
                double dot = 0;
                for (int j = 0; j <= t; ++j) {
                    double a = 0;
                    for (int e = 0; e < d.D; ++e) a += (double)emu_bf16(dout[qo + e]) * emu_bf16(v[ko(j) + e]);
                    dp[j] = a;
                    dot += p[j] * a;
                }
                for (int j = 0; j <= t; ++j) {
                    double ds = p[j] * (dp[j] - dot) * scale;
                    for (int e = 0; e < d.D; ++e) {
                        r.dq[qo + e] += ds * emu_bf16(k[ko(j) + e]);
                        r.dk[ko(j) + e] += ds * emu_bf16(q[qo + e]);
                        r.dv[ko(j) + e] += p[j] * emu_bf16(dout[qo + e]);
                    }
                }
            }
    return r;
}

// The dynamic shared memory formulas of attention_tc.cu (bytes).
static size_t fwd_bytes(int dmax) { return 4 * 64 * (size_t)(dmax + 8) * 2; }
static size_t dkdv_bytes(int dmax) { return (2 * 64 + 4 * 32) * (size_t)(dmax + 8) * 2 + 2 * 64 * 4; }
static size_t dq_bytes(int dmax) { return 2 * 64 * (size_t)(dmax + 8) * 2; }

// The balanced dK/dV's work items, as attention_tc.cu and src/cuda/attention_tc.rs count them.
static int chunks_of_tile(int kt, int T, int group) {
    return (group * ((T - 64 * kt + 31) / 32) + TC_CHUNK - 1) / TC_CHUNK;
}
static int work_items(int T, int group) {
    int n = 0;
    for (int kt = 0; kt < (T + 63) / 64; ++kt) n += chunks_of_tile(kt, T, group);
    return n;
}

struct Raw {
    std::vector<unsigned short> out;
    std::vector<float> lse, dq, dk, dv;
    std::vector<float> dk_split, dv_split;  // the balanced dK/dV
    bool guard_intact = true;               // nothing written past the partials
};

// Forward, then the backward from the forward's own bf16 out and lse (delta, dK/dV, dQ), every output NaN first.
static Raw run_tc(Case d, const std::vector<unsigned short>& q, const std::vector<unsigned short>& k,
                  const std::vector<unsigned short>& v, const std::vector<unsigned short>& dout) {
    float nan = std::numeric_limits<float>::quiet_NaN();
    size_t rows = (size_t)d.B * d.T * d.Hq;
    Raw r;
    r.out.assign(q.size(), 0x7fc0);  // bf16 NaN
    r.lse.assign(rows, nan);
    r.dq.assign(q.size(), nan);
    r.dk.assign(k.size(), nan);
    r.dv.assign(v.size(), nan);
    std::vector<float> delta(rows, nan);
    int dmax = d.D <= 64 ? 64 : 128;
    unsigned tiles = (d.T + 63) / 64;
    emu_launch({tiles, (unsigned)d.Hq, (unsigned)d.B}, {128}, fwd_bytes(dmax), [&] {
        auto f = dmax == 64 ? flash_attention_tc_forward_d64 : flash_attention_tc_forward_d128;
        f(q.data(), k.data(), v.data(), d.T, d.Hq, d.Hkv, d.D, r.out.data(), r.lse.data());
    });
    emu_launch({(unsigned)((rows + 7) / 8)}, {256}, 0,
               [&] { flash_attention_tc_delta(r.out.data(), dout.data(), (i64)rows, d.D, delta.data()); });
    emu_launch({tiles, (unsigned)d.Hkv, (unsigned)d.B}, {128}, dkdv_bytes(dmax), [&] {
        auto f = dmax == 64 ? flash_attention_tc_backward_dkdv_d64 : flash_attention_tc_backward_dkdv_d128;
        f(q.data(), k.data(), v.data(), dout.data(), r.lse.data(), delta.data(), d.T, d.Hq, d.Hkv, d.D, r.dk.data(),
          r.dv.data());
    });
    // The balanced dK/dV: chunks into NaN-poisoned partials (with a NaN guard after them), then the reduce.
    unsigned items = (unsigned)work_items(d.T, d.Hq / d.Hkv);
    size_t plen = 2 * (size_t)d.B * d.Hkv * items * 64 * d.D, guard = 4096;
    std::vector<float> partials(plen + guard, nan);
    r.dk_split.assign(k.size(), nan);
    r.dv_split.assign(v.size(), nan);
    emu_launch({items, (unsigned)d.Hkv, (unsigned)d.B}, {128}, dkdv_bytes(dmax), [&] {
        auto f = dmax == 64 ? flash_attention_tc_backward_dkdv_chunk_d64 : flash_attention_tc_backward_dkdv_chunk_d128;
        f(q.data(), k.data(), v.data(), dout.data(), r.lse.data(), delta.data(), d.T, d.Hq, d.Hkv, d.D,
          partials.data());
    });
    for (size_t i = plen; i < plen + guard; ++i) r.guard_intact &= std::isnan(partials[i]);
    emu_launch({tiles, (unsigned)d.Hkv, (unsigned)d.B}, {256}, 0, [&] {
        flash_attention_tc_backward_dkdv_reduce(partials.data(), d.T, d.Hq, d.Hkv, d.D, (int)items,
                                                r.dk_split.data(), r.dv_split.data());
    });
    emu_launch({tiles, (unsigned)d.Hq, (unsigned)d.B}, {128}, dq_bytes(dmax), [&] {
        auto f = dmax == 64 ? flash_attention_tc_backward_dq_d64 : flash_attention_tc_backward_dq_d128;
        f(q.data(), k.data(), v.data(), dout.data(), r.lse.data(), delta.data(), d.T, d.Hq, d.Hkv, d.D, r.dq.data());
    });
    return r;
}

static bool close(const char* what, const std::vector<double>& got, const std::vector<double>& want, double tol) {
    double num = 0, den = 0, worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) {
            std::printf("  %s: element %zu is %f\n", what, i, got[i]);
            return false;
        }
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
        worst = std::max(worst, std::fabs(got[i]));
    }
    if (den == 0) {  // an exactly zero reference (dq, dk at T = 1): rounding noise below 1e-5 passes
        std::printf("  %s: reference is zero, largest |value| %.3e\n", what, worst);
        return worst < 1e-5;
    }
    double err = std::sqrt(num / den);
    std::printf("  %s: relative error %.3e (limit %.0e)\n", what, err, tol);
    return err < tol;
}

static std::vector<double> widen(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

int main() {
    bool ok = true;
    std::vector<Case> cases = {
        {1, 1, 4, 4, 64, 1.0f},   {2, 37, 4, 4, 128, 1.0f}, {1, 65, 6, 2, 64, 1.0f},  {1, 130, 6, 2, 128, 1.0f},
        {1, 33, 32, 8, 64, 1.0f}, {1, 70, 2, 1, 80, 1.0f},  {1, 20, 2, 2, 16, 1.0f},  {1, 130, 2, 1, 64, 4.0f},
        {1, 129, 4, 2, 96, 1.0f},
        // The balanced dK/dV's own shapes: key tile 0 of T = 300 at 4/1 heads has 40 iterations (2 chunks);
        // T = 200 at 8/1 heads, 2 sequences: tiles 0 and 1 have 2 chunks, tiles 2 and 3 one; T = 520 at 4/1:
        // tile 0 has 68 iterations (3 chunks, the last of 4).
        {1, 300, 4, 1, 64, 1.0f},
        {2, 200, 8, 1, 32, 1.0f},
        {1, 520, 4, 1, 16, 1.0f},
    };
    // TANDEM_EMU_BIG=1 adds the LLaMA-like shape at T = 256 (a few minutes on 2 cores).
    if (const char* big = std::getenv("TANDEM_EMU_BIG"); big && std::string(big) == "1")
        cases.push_back({1, 256, 32, 8, 128, 1.0f});
    uint64_t seed = 101;
    for (Case d : cases) {
        std::printf("B=%d T=%d Hq=%d Hkv=%d D=%d q_scale=%g\n", d.B, d.T, d.Hq, d.Hkv, d.D, d.q_scale);
        size_t nq = (size_t)d.B * d.T * d.Hq * d.D, nk = (size_t)d.B * d.T * d.Hkv * d.D;
        auto q = bf16_normal(seed++, nq, d.q_scale), k = bf16_normal(seed++, nk, 1.0f),
             v = bf16_normal(seed++, nk, 1.0f), dout = bf16_normal(seed++, nq, 1.0f);
        Result want = reference(d, q, k, v, dout);
        Raw got = run_tc(d, q, k, v, dout);
        std::vector<double> out;
        for (auto x : got.out) out.push_back(emu_bf16(x));
        ok &= close("out", out, want.out, 5e-3);
        ok &= close("lse", widen(got.lse), want.lse, 1e-4);
        ok &= close("dq", widen(got.dq), want.dq, 1e-2);
        ok &= close("dk", widen(got.dk), want.dk, 1e-2);
        ok &= close("dv", widen(got.dv), want.dv, 1e-2);
        int group = d.Hq / d.Hkv, tiles = (d.T + 63) / 64, split_tiles = 0;
        for (int kt = 0; kt < tiles; ++kt) split_tiles += chunks_of_tile(kt, d.T, group) > 1;
        std::printf("  balanced dK/dV: %d work items, %d of %d key tiles split (chunks of %d)\n",
                    work_items(d.T, group), split_tiles, tiles, TC_CHUNK);
        ok &= close("dk (balanced)", widen(got.dk_split), want.dk, 1e-2);
        ok &= close("dv (balanced)", widen(got.dv_split), want.dv, 1e-2);
        // Key tiles of one chunk: the unsplit kernel's bits (same iterations, same order, no additions).
        size_t differ = 0, compared = 0;
        for (int b = 0; b < d.B; ++b)
            for (int t = 0; t < d.T; ++t)
                if (chunks_of_tile(t / 64, d.T, group) == 1)
                    for (int h = 0; h < d.Hkv; ++h)
                        for (int e = 0; e < d.D; ++e) {
                            size_t i = ((size_t)(b * d.T + t) * d.Hkv + h) * d.D + e;
                            compared += 2;
                            differ += std::memcmp(&got.dk[i], &got.dk_split[i], 4) != 0;
                            differ += std::memcmp(&got.dv[i], &got.dv_split[i], 4) != 0;
                        }
        std::printf("  balanced dK/dV on one-chunk tiles: %zu of %zu values differ from the unsplit bits\n", differ,
                    compared);
        std::printf("  balanced dK/dV wrote nothing past its partials: %s\n", got.guard_intact ? "yes" : "NO");
        ok &= differ == 0 && got.guard_intact;
        Raw again = run_tc(d, q, k, v, dout);
        auto same_bits = [](const std::vector<float>& a, const std::vector<float>& b) {
            return std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
        };
        bool same = again.out == got.out && same_bits(again.lse, got.lse) && same_bits(again.dq, got.dq) &&
                    same_bits(again.dk, got.dk) && same_bits(again.dv, got.dv) &&
                    same_bits(again.dk_split, got.dk_split) && same_bits(again.dv_split, got.dv_split);
        std::printf("  second run bit-identical: %s\n", same ? "yes" : "NO");
        ok &= same;
    }
    std::printf(ok ? "attention_tc: all checks passed\n" : "attention_tc: FAILED\n");
    return ok ? 0 : 1;
}
