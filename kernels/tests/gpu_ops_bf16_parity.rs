//! GPU parity of the bf16 op set (`kernels/cuda/ops_bf16.cu`) against the CPU references in `tandem_kernels::ops`
//! run on the same bf16-rounded inputs: fresh random inputs (seed printed; `TANDEM_SEED` replays), odd sizes and
//! LLaMA-3.1-8B ones, outputs poisoned with NaN first, NaN never passes. bf16 outputs within relative error 1e-2
//! (their own rounding is about 2e-3 on the CPU emulator); fp32 outputs (rstd, lse, the loss, dw) within 1e-5. The
//! embedding gather must copy the bits. The RMSNorm backward must give the same bits twice, and its dw the fp32
//! kernel's values on the same inputs within 1e-6 (same chunking, same order; differing bits are counted). `#[ignore]`: needs an NVIDIA GPU
//! (`cargo test -p tandem-kernels -- --include-ignored`, or `kernels/gpu-check.sh`).

use cudarc::driver::CudaSlice;
use half::bf16;
use tandem_kernels::cuda::{Gpu, ops as gpu_f32, ops_bf16 as gpu_ops};
use tandem_kernels::ops::rope::{self, Llama3Scaling};
use tandem_kernels::ops::{cross_entropy, embedding, rmsnorm, swiglu};
use tandem_kernels::testdata::{indices, normal_f32};

mod common;
use common::{assert_close, get, gpu, nan, seed};

/// bf16 values: the bits for the GPU and the same values in f32 for the reference.
struct Bf16 {
    bits: Vec<u16>,
    values: Vec<f32>,
}

fn bf16_normal(seed: u64, n: usize, scale: f32) -> Bf16 {
    let rounded: Vec<bf16> = normal_f32(seed, n)
        .into_iter()
        .map(|v| bf16::from_f32(v * scale))
        .collect();
    Bf16 {
        bits: rounded.iter().map(|x| x.to_bits()).collect(),
        values: rounded.iter().map(|x| x.to_f32()).collect(),
    }
}

/// A device buffer of `n` (at least 1) bf16 NaNs.
fn nan_bf16(g: &Gpu, n: usize) -> CudaSlice<u16> {
    g.upload(&vec![0x7fc0u16; n.max(1)]).unwrap()
}

/// The first `n` bf16 values of a device buffer, as f32.
fn get_bf16(g: &Gpu, s: &CudaSlice<u16>, n: usize) -> Vec<f32> {
    g.download(s).unwrap()[..n]
        .iter()
        .map(|&b| bf16::from_bits(b).to_f32())
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn embedding_rmsnorm_swiglu_bf16() {
    let Some(g) = gpu() else { return };
    let s = seed();
    // (rows, dim, swiglu width): row lengths 1, 33 and 1001 take the scalar path (not multiples of 8), 1000 and
    // 4096 the 16-byte one; SwiGLU widths with a partial last chunk; LLaMA-3.1-8B's hidden size 4096 and
    // intermediate size 14336.
    for (i, &(rows, dim, width)) in [
        (1usize, 1usize, 1usize),
        (7, 33, 33),
        (3, 1001, 1001),
        (5, 1000, 1003),
        (256, 4096, 14_336),
    ]
    .iter()
    .enumerate()
    {
        let s = s + 10 * i as u64;
        println!("rows {rows}, dim {dim}, swiglu {rows} x {width}");
        // Embedding: a bf16 table, gathered exactly.
        let vocab = 50;
        let table = bf16_normal(s, vocab * dim, 1.0);
        let ids = indices(s + 1, rows, vocab as u32);
        let (dt, di) = (g.upload(&table.bits).unwrap(), g.upload(&ids).unwrap());
        let mut out = nan_bf16(&g, rows * dim);
        gpu_ops::embedding_forward(&g, &dt, vocab, &di, rows, dim, &mut out).unwrap();
        let want = embedding::forward(&table.values, vocab, dim, &ids).unwrap();
        let got = get_bf16(&g, &out, rows * dim);
        assert!(
            bits(&got) == bits(&want),
            "embedding fwd: the gathered rows are not the table's bits"
        );
        // RMSNorm forward.
        let x = bf16_normal(s + 3, rows * dim, 1.0);
        let dy = bf16_normal(s + 2, rows * dim, 1.0);
        let w = normal_f32(s + 4, dim);
        let (y, rstd) = rmsnorm::forward(&x.values, rows, dim, &w, 1e-5).unwrap();
        let (gx, gw, gdy) = (
            g.upload(&x.bits).unwrap(),
            g.upload(&w).unwrap(),
            g.upload(&dy.bits).unwrap(),
        );
        let (mut gy, mut gr) = (nan_bf16(&g, rows * dim), nan(&g, rows));
        gpu_ops::rmsnorm_forward(&g, &gx, &gw, rows, dim, 1e-5, &mut gy, &mut gr).unwrap();
        assert_close("rmsnorm y", &get_bf16(&g, &gy, rows * dim), &y, 1e-2);
        assert_close("rmsnorm rstd", &get(&g, &gr, rows), &rstd, 1e-5);
        // RMSNorm backward.
        let (dx_, dw_) = rmsnorm::backward(&x.values, rows, dim, &w, &rstd, &dy.values).unwrap();
        let (mut gdx, mut gdw) = (nan_bf16(&g, rows * dim), nan(&g, dim));
        gpu_ops::rmsnorm_backward(&g, &gx, &gw, &gr, &gdy, rows, dim, &mut gdx, &mut gdw).unwrap();
        // At dim 1 the two terms of dx cancel to about eps / x^2 of their size (see gpu_ops_parity.rs).
        if dim > 1 {
            assert_close("rmsnorm dx", &get_bf16(&g, &gdx, rows * dim), &dx_, 1e-2);
        }
        let dw = get(&g, &gdw, dim);
        assert_close("rmsnorm dw", &dw, &dw_, 1e-5);
        // The same values through the fp32 kernels, with the same rstd: the same sums in the same order. The bits
        // usually agree, but NVRTC may contract the two kernels' expressions differently (an FMA), so the count of
        // differing bits is reported and the values must agree to 1e-6.
        let (fx, fdy) = (g.upload(&x.values).unwrap(), g.upload(&dy.values).unwrap());
        let (mut fdx, mut fdw) = (nan(&g, rows * dim), nan(&g, dim));
        gpu_f32::rmsnorm_backward(&g, &fx, &gw, &gr, &fdy, rows, dim, &mut fdx, &mut fdw).unwrap();
        let fp32_dw = get(&g, &fdw, dim);
        let differ = dw
            .iter()
            .zip(&fp32_dw)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        println!("  rmsnorm dw: {differ} of {dim} values differ from the fp32 kernel's bits");
        assert_close("rmsnorm dw vs the fp32 kernel", &dw, &fp32_dw, 1e-6);
        // SwiGLU.
        let n = rows * width;
        let gate = bf16_normal(s + 5, n, 3.0);
        let up = bf16_normal(s + 6, n, 1.0);
        let sdy = bf16_normal(s + 7, n, 1.0);
        let (gg, gu, gd) = (
            g.upload(&gate.bits).unwrap(),
            g.upload(&up.bits).unwrap(),
            g.upload(&sdy.bits).unwrap(),
        );
        let mut sy = nan_bf16(&g, n);
        gpu_ops::swiglu_forward(&g, &gg, &gu, n, &mut sy).unwrap();
        let want = swiglu::forward(&gate.values, &up.values).unwrap();
        assert_close("swiglu y", &get_bf16(&g, &sy, n), &want, 1e-2);
        let (dg, du) = swiglu::backward(&gate.values, &up.values, &sdy.values).unwrap();
        let (mut gdg, mut gdu) = (nan_bf16(&g, n), nan_bf16(&g, n));
        gpu_ops::swiglu_backward(&g, &gg, &gu, &gd, n, &mut gdg, &mut gdu).unwrap();
        assert_close("swiglu dgate", &get_bf16(&g, &gdg, n), &dg, 1e-2);
        assert_close("swiglu dup", &get_bf16(&g, &gdu, n), &du, 1e-2);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn rope_bf16_with_llama3_scaling() {
    let Some(g) = gpu() else { return };
    let s = seed();
    // head_dim 24 and 2 take the scalar path (half not a multiple of 8); 5 and 3 heads leave a partial group of 4;
    // 64 x 32 x 128 is LLaMA-3.1-8B's query layout.
    for (i, &(tokens, heads, head_dim)) in [
        (1usize, 1usize, 2usize),
        (37, 8, 128),
        (5, 3, 64),
        (4, 5, 24),
        (64, 32, 128),
    ]
    .iter()
    .enumerate()
    {
        let f = rope::inv_freq(head_dim, 500_000.0, Some(Llama3Scaling::LLAMA_3_1)).unwrap();
        let x = bf16_normal(s + 100 + i as u64, tokens * heads * head_dim, 1.0);
        let pos = indices(s + 200 + i as u64, tokens, 131_072);
        let (gx, gp, gf) = (
            g.upload(&x.bits).unwrap(),
            g.upload(&pos).unwrap(),
            g.upload(&f).unwrap(),
        );
        for sign in [1.0f32, -1.0] {
            let n = x.bits.len();
            let mut out = nan_bf16(&g, n);
            gpu_ops::rope(&g, &gx, &gp, &gf, tokens, heads, head_dim, sign, &mut out).unwrap();
            let want = rope::apply(&x.values, tokens, heads, head_dim, &pos, &f, sign).unwrap();
            println!("rope {tokens} x {heads} x {head_dim}, sign {sign}");
            assert_close("rope", &get_bf16(&g, &out, n), &want, 1e-2);
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn cross_entropy_bf16_over_large_vocabularies() {
    let Some(g) = gpu() else { return };
    let s = seed();
    // vocab 1001 and 2 take the scalar path; 128,256 is LLaMA-3.1's vocabulary.
    for (i, &(rows, vocab)) in [(1usize, 2usize), (9, 1001), (5, 1000), (16, 128_256)]
        .iter()
        .enumerate()
    {
        println!("cross-entropy {rows} x {vocab}");
        let logits = bf16_normal(s + i as u64, rows * vocab, 3.0);
        let mut targets: Vec<i32> = indices(s + 50, rows, vocab as u32)
            .iter()
            .map(|&t| t as i32)
            .collect();
        if rows > 1 {
            targets[1] = -100;
        }
        let ce = cross_entropy::forward(&logits.values, rows, vocab, &targets, -100).unwrap();
        let (gl, gt) = (g.upload(&logits.bits).unwrap(), g.upload(&targets).unwrap());
        let (mut lse, mut rl) = (nan(&g, rows), nan(&g, rows));
        gpu_ops::cross_entropy_forward(&g, &gl, &gt, rows, vocab, -100, &mut lse, &mut rl).unwrap();
        assert_close("ce lse", &get(&g, &lse, rows), &ce.lse, 1e-5);
        let row_loss = get(&g, &rl, rows);
        if rows > 1 {
            assert_eq!(row_loss[1], 0.0, "the ignored row's loss");
        }
        let loss: f64 = row_loss.iter().map(|&v| f64::from(v)).sum();
        assert!(
            (loss - ce.loss_sum).abs() <= 1e-5 * ce.loss_sum.abs(),
            "loss {loss} vs {}",
            ce.loss_sum
        );
        let scale = 1.0 / ce.count as f32;
        let want =
            cross_entropy::backward(&logits.values, rows, vocab, &targets, -100, &ce.lse, scale)
                .unwrap();
        let mut d = nan_bf16(&g, rows * vocab);
        gpu_ops::cross_entropy_backward(&g, &gl, &gt, &lse, rows, vocab, -100, scale, &mut d)
            .unwrap();
        let got = get_bf16(&g, &d, rows * vocab);
        assert_close("ce dlogits", &got, &want, 1e-2);
        if rows > 1 {
            assert!(
                got[vocab..2 * vocab].iter().all(|&v| v == 0.0),
                "the ignored row's gradient must be 0"
            );
        }
    }
}

/// The RMSNorm backward at the fp32 test's determinism size (4096 x 4096: 128 chunks of 32 rows) and an odd one:
/// dx and dw give the same bits twice.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn rmsnorm_bf16_backward_gives_the_same_bits_twice() {
    let Some(g) = gpu() else { return };
    let s = seed();
    for &(rows, dim) in &[(4096usize, 4096usize), (1000, 33)] {
        let x = g.upload(&bf16_normal(s, rows * dim, 1.0).bits).unwrap();
        let dy = g.upload(&bf16_normal(s + 1, rows * dim, 1.0).bits).unwrap();
        let w = g.upload(&normal_f32(s + 2, dim)).unwrap();
        let mut runs = Vec::new();
        for _ in 0..2 {
            let (mut y, mut rstd) = (nan_bf16(&g, rows * dim), nan(&g, rows));
            gpu_ops::rmsnorm_forward(&g, &x, &w, rows, dim, 1e-5, &mut y, &mut rstd).unwrap();
            let (mut dx, mut dw) = (nan_bf16(&g, rows * dim), nan(&g, dim));
            gpu_ops::rmsnorm_backward(&g, &x, &w, &rstd, &dy, rows, dim, &mut dx, &mut dw).unwrap();
            runs.push((g.download(&dx).unwrap(), get(&g, &dw, dim)));
        }
        let (a, b) = (&runs[0], &runs[1]);
        assert!(a.1.iter().all(|v| v.is_finite()), "rmsnorm dw: not finite");
        assert!(a.0 == b.0, "{rows}x{dim}: rmsnorm dx (bf16) differs");
        assert!(bits(&a.1) == bits(&b.1), "{rows}x{dim}: rmsnorm dw differs");
        println!("  {rows}x{dim}: dx and dw the same bits twice");
    }
}
