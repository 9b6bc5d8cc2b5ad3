//! GPU parity of the LLaMA op set (`kernels/cuda/ops.cu`) against the CPU references in `tandem_kernels::ops`:
//! fresh random inputs (seed printed; `TANDEM_SEED` replays), several sizes including odd ones, outputs poisoned
//! with NaN first, relative error below 1e-5 (fp32), NaN never passes; and the default backward launchers give the
//! same bits when run twice. `#[ignore]`: needs an NVIDIA GPU
//! (`cargo test -p tandem-kernels -- --include-ignored`, or `kernels/gpu-check.sh`).

use tandem_kernels::cuda::ops as gpu_ops;
use tandem_kernels::ops::attention::{self, AttentionDims};
use tandem_kernels::ops::optim::{self, AdamW};
use tandem_kernels::ops::rope::{self, Llama3Scaling};
use tandem_kernels::ops::{cross_entropy, embedding, rmsnorm, swiglu};
use tandem_kernels::testdata::{indices, normal_f32};

mod common;
use common::{assert_close, get, gpu, nan, seed};

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn embedding_rmsnorm_swiglu_rope() {
    let Some(g) = gpu() else { return };
    let s = seed();
    for (i, &(rows, dim)) in [(1usize, 1usize), (7, 33), (64, 4096), (3, 1000)]
        .iter()
        .enumerate()
    {
        let s = s + 10 * i as u64;
        // Embedding.
        let vocab = 50;
        let table = normal_f32(s, vocab * dim);
        let ids = indices(s + 1, rows, vocab as u32);
        let dt = g.upload(&table).unwrap();
        let di = g.upload(&ids).unwrap();
        let mut out = nan(&g, rows * dim);
        gpu_ops::embedding_forward(&g, &dt, &di, rows, dim, &mut out).unwrap();
        assert_close(
            "embedding fwd",
            &get(&g, &out, rows * dim),
            &embedding::forward(&table, vocab, dim, &ids).unwrap(),
            1e-7,
        );
        let dy = normal_f32(s + 2, rows * dim);
        let ddy = g.upload(&dy).unwrap();
        let want = embedding::backward(&dy, &ids, vocab, dim).unwrap();
        let mut dtab = nan(&g, vocab * dim);
        gpu_ops::embedding_backward(&g, &ddy, &ids, vocab, dim, &mut dtab).unwrap();
        assert_close("embedding bwd", &get(&g, &dtab, vocab * dim), &want, 1e-5);
        let mut dtab = nan(&g, vocab * dim);
        gpu_ops::embedding_backward_atomic(&g, &ddy, &di, rows, dim, &mut dtab).unwrap();
        assert_close(
            "embedding bwd (atomic)",
            &get(&g, &dtab, vocab * dim),
            &want,
            1e-5,
        );
        // RMSNorm.
        let x = normal_f32(s + 3, rows * dim);
        let w = normal_f32(s + 4, dim);
        let (y, rstd) = rmsnorm::forward(&x, rows, dim, &w, 1e-5).unwrap();
        let (dx_, dw_) = rmsnorm::backward(&x, rows, dim, &w, &rstd, &dy).unwrap();
        let (gx, gw) = (g.upload(&x).unwrap(), g.upload(&w).unwrap());
        let (mut gy, mut gr) = (nan(&g, rows * dim), nan(&g, rows));
        gpu_ops::rmsnorm_forward(&g, &gx, &gw, rows, dim, 1e-5, &mut gy, &mut gr).unwrap();
        assert_close("rmsnorm y", &get(&g, &gy, rows * dim), &y, 1e-5);
        assert_close("rmsnorm rstd", &get(&g, &gr, rows), &rstd, 1e-5);
        let (mut gdx, mut gdw) = (nan(&g, rows * dim), nan(&g, dim));
        gpu_ops::rmsnorm_backward(&g, &gx, &gw, &gr, &ddy, rows, dim, &mut gdx, &mut gdw).unwrap();
        // At dim 1, dx = rstd * dy * w * eps / (x^2 + eps): its two terms cancel to about eps / x^2 of their
        // size, so fp32 rounding of the terms dominates; dx is compared from dim 2 up.
        if dim > 1 {
            assert_close("rmsnorm dx", &get(&g, &gdx, rows * dim), &dx_, 1e-5);
        }
        assert_close("rmsnorm dw", &get(&g, &gdw, dim), &dw_, 1e-5);
        // SwiGLU.
        let n = rows * dim;
        let up = normal_f32(s + 5, n);
        let (gg, gu) = (g.upload(&x).unwrap(), g.upload(&up).unwrap());
        let mut sy = nan(&g, n);
        gpu_ops::swiglu_forward(&g, &gg, &gu, n, &mut sy).unwrap();
        assert_close(
            "swiglu y",
            &get(&g, &sy, n),
            &swiglu::forward(&x, &up).unwrap(),
            1e-5,
        );
        let (dg, du) = swiglu::backward(&x, &up, &dy).unwrap();
        let (mut gdg, mut gdu) = (nan(&g, n), nan(&g, n));
        gpu_ops::swiglu_backward(&g, &gg, &gu, &ddy, n, &mut gdg, &mut gdu).unwrap();
        assert_close("swiglu dgate", &get(&g, &gdg, n), &dg, 1e-5);
        assert_close("swiglu dup", &get(&g, &gdu, n), &du, 1e-5);
    }
    // RoPE with Llama-3.1 scaling at large positions, forward and backward.
    for (i, &(tokens, heads, head_dim)) in [(1usize, 1usize, 2usize), (37, 8, 128), (5, 3, 64)]
        .iter()
        .enumerate()
    {
        let f = rope::inv_freq(head_dim, 500_000.0, Some(Llama3Scaling::LLAMA_3_1)).unwrap();
        let x = normal_f32(s + 100 + i as u64, tokens * heads * head_dim);
        let pos = indices(s + 200 + i as u64, tokens, 131_072);
        let (gx, gp, gf) = (
            g.upload(&x).unwrap(),
            g.upload(&pos).unwrap(),
            g.upload(&f).unwrap(),
        );
        for sign in [1.0f32, -1.0] {
            let mut out = nan(&g, x.len());
            gpu_ops::rope(&g, &gx, &gp, &gf, tokens, heads, head_dim, sign, &mut out).unwrap();
            let want = rope::apply(&x, tokens, heads, head_dim, &pos, &f, sign).unwrap();
            assert_close("rope", &get(&g, &out, x.len()), &want, 1e-5);
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn cross_entropy_over_large_vocabularies() {
    let Some(g) = gpu() else { return };
    let s = seed();
    for (i, &(rows, vocab)) in [(1usize, 2usize), (9, 1001), (16, 128_256)]
        .iter()
        .enumerate()
    {
        let logits: Vec<f32> = normal_f32(s + i as u64, rows * vocab)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let mut targets: Vec<i32> = indices(s + 50, rows, vocab as u32)
            .iter()
            .map(|&t| t as i32)
            .collect();
        if rows > 1 {
            targets[1] = -100;
        }
        let ce = cross_entropy::forward(&logits, rows, vocab, &targets, -100).unwrap();
        let (gl, gt) = (g.upload(&logits).unwrap(), g.upload(&targets).unwrap());
        let (mut lse, mut rl) = (nan(&g, rows), nan(&g, rows));
        gpu_ops::cross_entropy_forward(&g, &gl, &gt, rows, vocab, -100, &mut lse, &mut rl).unwrap();
        assert_close("ce lse", &get(&g, &lse, rows), &ce.lse, 1e-6);
        let loss: f64 = get(&g, &rl, rows).iter().map(|&v| f64::from(v)).sum();
        assert!(
            (loss - ce.loss_sum).abs() <= 1e-5 * ce.loss_sum.abs(),
            "loss {loss} vs {}",
            ce.loss_sum
        );
        let scale = 1.0 / ce.count as f32;
        let want =
            cross_entropy::backward(&logits, rows, vocab, &targets, -100, &ce.lse, scale).unwrap();
        let mut d = nan(&g, rows * vocab);
        gpu_ops::cross_entropy_backward(&g, &gl, &gt, &lse, rows, vocab, -100, scale, &mut d)
            .unwrap();
        assert_close("ce dlogits", &get(&g, &d, rows * vocab), &want, 1e-5);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn adamw_and_global_norm_clipping() {
    let Some(g) = gpu() else { return };
    let s = seed();
    let opt = AdamW::torch(2e-4, 0.01);
    for &n in &[1usize, 1000, 1 << 20] {
        let (mut p, grads) = (normal_f32(s, n), normal_f32(s + 1, n));
        let (mut m, mut v) = (
            normal_f32(s + 2, n),
            normal_f32(s + 3, n)
                .iter()
                .map(|x| x.abs())
                .collect::<Vec<_>>(),
        );
        let (mut gp, gg, mut gm, mut gv) = (
            g.upload(&p).unwrap(),
            g.upload(&grads).unwrap(),
            g.upload(&m).unwrap(),
            g.upload(&v).unwrap(),
        );
        opt.step(3, &mut p, &grads, &mut m, &mut v).unwrap();
        gpu_ops::adamw_step(&g, &opt, 3, &mut gp, &gg, &mut gm, &mut gv, n).unwrap();
        // The kernel takes the CPU step's fp32 operations in the same order, none fused: bit for bit.
        for (what, got, want) in [
            ("p", get(&g, &gp, n), &p),
            ("m", get(&g, &gm, n), &m),
            ("v", get(&g, &gv, n), &v),
        ] {
            if let Some(i) = (0..n).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                panic!("adamw {what}[{i}] of {n}: GPU {} CPU {}", got[i], want[i]);
            }
        }
    }
    let (mut a, mut b) = (normal_f32(s + 4, 12_345), normal_f32(s + 5, 77));
    let (mut ga, mut gb) = (g.upload(&a).unwrap(), g.upload(&b).unwrap());
    let cpu_norm = optim::clip_global_norm(&mut [&mut a, &mut b], 1.0);
    let gpu_norm = gpu_ops::clip_global_norm(&g, &mut [&mut ga, &mut gb], 1.0).unwrap();
    assert!(
        (gpu_norm - cpu_norm).abs() <= 1e-9 * cpu_norm,
        "{gpu_norm} vs {cpu_norm}"
    );
    assert_close("clipped a", &get(&g, &ga, a.len()), &a, 1e-6);
    assert_close("clipped b", &get(&g, &gb, b.len()), &b, 1e-6);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn causal_gqa_attention_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let s = seed();
    for (i, d) in [
        AttentionDims {
            batch: 1,
            tokens: 1,
            q_heads: 1,
            kv_heads: 1,
            head_dim: 1,
        },
        AttentionDims {
            batch: 2,
            tokens: 37,
            q_heads: 8,
            kv_heads: 2,
            head_dim: 64,
        },
        AttentionDims {
            batch: 1,
            tokens: 130,
            q_heads: 32,
            kv_heads: 8,
            head_dim: 128,
        },
        AttentionDims {
            batch: 3,
            tokens: 5,
            q_heads: 6,
            kv_heads: 3,
            head_dim: 40,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let nq = d.batch * d.tokens * d.q_heads * d.head_dim;
        let nk = d.batch * d.tokens * d.kv_heads * d.head_dim;
        let s = s + 10 * i as u64;
        let (q, k, v, dout) = (
            normal_f32(s, nq),
            normal_f32(s + 1, nk),
            normal_f32(s + 2, nk),
            normal_f32(s + 3, nq),
        );
        let want = attention::forward(d, &q, &k, &v).unwrap();
        let (wdq, wdk, wdv) = attention::backward(d, &q, &k, &v, &dout).unwrap();
        let (gq, gk, gv, gdo) = (
            g.upload(&q).unwrap(),
            g.upload(&k).unwrap(),
            g.upload(&v).unwrap(),
            g.upload(&dout).unwrap(),
        );
        let (mut out, mut lse) = (nan(&g, nq), nan(&g, d.batch * d.tokens * d.q_heads));
        gpu_ops::attention_forward_naive(&g, d, &gq, &gk, &gv, &mut out, &mut lse).unwrap();
        assert_close("attention out", &get(&g, &out, nq), &want, 1e-5);
        let (mut dq, mut dk, mut dv) = (nan(&g, nq), nan(&g, nk), nan(&g, nk));
        gpu_ops::attention_backward_naive(
            &g, d, &gq, &gk, &gv, &out, &lse, &gdo, &mut dq, &mut dk, &mut dv,
        )
        .unwrap();
        assert_close("attention dq", &get(&g, &dq, nq), &wdq, 1e-5);
        assert_close("attention dk", &get(&g, &dk, nk), &wdk, 1e-5);
        assert_close("attention dv", &get(&g, &dv, nk), &wdv, 1e-5);
    }
}

/// The default launchers that reduce across rows (embedding backward, RMSNorm backward, global norm) give the
/// same bits twice, at sizes where summation order matters (many tokens per id, many rows per weight).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn reductions_give_the_same_bits_twice() {
    let Some(g) = gpu() else { return };
    let s = seed();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for &(rows, dim, vocab) in &[(4096usize, 4096usize, 7usize), (1000, 33, 3)] {
        let ids = indices(s, rows, vocab as u32);
        let dy = g.upload(&normal_f32(s + 1, rows * dim)).unwrap();
        let x = g.upload(&normal_f32(s + 2, rows * dim)).unwrap();
        let w = g.upload(&normal_f32(s + 3, dim)).unwrap();
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mut dtab = nan(&g, vocab * dim);
            gpu_ops::embedding_backward(&g, &dy, &ids, vocab, dim, &mut dtab).unwrap();
            let (mut y, mut rstd) = (nan(&g, rows * dim), nan(&g, rows));
            gpu_ops::rmsnorm_forward(&g, &x, &w, rows, dim, 1e-5, &mut y, &mut rstd).unwrap();
            let (mut dx, mut dw) = (nan(&g, rows * dim), nan(&g, dim));
            gpu_ops::rmsnorm_backward(&g, &x, &w, &rstd, &dy, rows, dim, &mut dx, &mut dw).unwrap();
            let norm = gpu_ops::global_norm(&g, &[&dy, &x, &w]).unwrap();
            runs.push((
                get(&g, &dtab, vocab * dim),
                get(&g, &dx, rows * dim),
                get(&g, &dw, dim),
                norm,
            ));
        }
        let (a, b) = (&runs[0], &runs[1]);
        assert!(a.0.iter().all(|v| v.is_finite()), "embedding: not finite");
        assert!(a.2.iter().all(|v| v.is_finite()), "rmsnorm dw: not finite");
        assert!(
            bits(&a.0) == bits(&b.0),
            "{rows}x{dim}: embedding backward differs"
        );
        assert!(bits(&a.1) == bits(&b.1), "{rows}x{dim}: rmsnorm dx differs");
        assert!(bits(&a.2) == bits(&b.2), "{rows}x{dim}: rmsnorm dw differs");
        assert!(
            a.3.to_bits() == b.3.to_bits(),
            "{rows}x{dim}: global norm differs"
        );
    }
}

/// The dropout keep mask on the GPU is the CPU generator's, bit for bit, at sizes around the 16-byte chunks and
/// at a LLaMA q-projection input (2048 x 4096, plus 3), with several probabilities; nothing past n is written.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn dropout_keep_mask_is_the_cpu_generator_bit_for_bit() {
    let Some(g) = gpu() else { return };
    let s = seed();
    for (i, &(n, p)) in [
        (1usize, 0.5f32),
        (15, 0.1),
        (16, 0.1),
        (17, 0.9),
        (1000, 0.05),
        (2048 * 4096 + 3, 0.1),
        (4096, 0.0),
    ]
    .iter()
    .enumerate()
    {
        let stream = tandem_kernels::dropout::stream(s % (1 << 40), i as u32, 1).unwrap();
        let want = tandem_kernels::dropout::keep_mask(s, stream, n, p).unwrap();
        let mut out = g.upload(&vec![7u8; n + 32]).unwrap();
        gpu_ops::dropout_keep_mask(&g, s, stream, p, n, &mut out).unwrap();
        let got = g.download(&out).unwrap();
        let differ = got[..n].iter().zip(&want).filter(|(a, b)| a != b).count();
        println!("  dropout n={n} p={p}: {differ} differ");
        assert_eq!(
            differ, 0,
            "n={n} p={p}: {differ} mask bytes differ from the CPU"
        );
        assert!(
            got[n..].iter().all(|&b| b == 7),
            "n={n}: wrote past the mask"
        );
    }
}
