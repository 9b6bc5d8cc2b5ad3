//! GPU parity: every CUDA kernel against its CPU reference on fresh random inputs at several sizes (odd ones
//! too), with outputs poisoned (NaN-filled) before each run. Needs an NVIDIA GPU (sm_80+), so every test is
//! `#[ignore]`: run `cargo test -p tandem-kernels -- --include-ignored` on a GPU machine (or
//! `kernels/gpu-check.sh`, which sets `TANDEM_REQUIRE_GPU=1` so that a missing GPU fails instead of skipping).
//! Seeds are drawn from the clock and printed; `TANDEM_SEED=<n>` replays one.
//! Tolerances: relative error (||got - ref|| / ||ref||) below 1e-5 for fp32 paths, 1e-2 for bf16; NaN never
//! passes. NF4 quantisation and dequantisation are bit-exact.

use cudarc::driver::CudaSlice;
use tandem_kernels::cuda::Gpu;
use tandem_kernels::cuda::gemm::Blas;
use tandem_kernels::cuda::gemm_choice::{GemmShape, Nf4Gemm, Nf4GemmChooser, Nf4GemmPath};
use tandem_kernels::cuda::lora::GpuLora;
use tandem_kernels::cuda::lora_bf16::{AdapterBuffers, GpuLoraBf16};
use tandem_kernels::cuda::lora_fused::{DropoutScratch, ExtForwardBuffers, ExtGrads};
use tandem_kernels::cuda::nf4::{GemvVariant, GpuNf4};
use tandem_kernels::lora::{self, LoraDims, LoraParams};
use tandem_kernels::nf4::{Nf4Absmax, Nf4Tensor};
use tandem_kernels::testdata::{keep_mask, normal_f32};

mod common;
use common::{gpu, seed};

/// ||got - want|| / ||want||, infinite when anything is NaN or infinite.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    if got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).powi(2))
        .sum();
    let den: f64 = want
        .iter()
        .map(|w| w * w)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    (num / den).sqrt()
}

fn poisoned_f32(gpu: &Gpu, n: usize) -> CudaSlice<f32> {
    gpu.upload(&vec![f32::NAN; n]).unwrap()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

const NF4_SHAPES: [(usize, usize); 6] = [
    (1, 1),
    (3, 37),
    (64, 64),
    (17, 1000),
    (300, 257),
    (1024, 4096),
];

/// An NF4 weight (`n x k`) and bf16 activations (`m x k`) from two seeds, on the GPU, with the float64 product
/// of the activations and the bf16-dequantised weight as the reference.
fn bf16_gemm_case(
    gpu: &Gpu,
    w_seed: u64,
    x_seed: u64,
    m: usize,
    n: usize,
    k: usize,
) -> (GpuNf4, CudaSlice<u16>, Vec<f64>) {
    let w = Nf4Tensor::quantize(&normal_f32(w_seed, n * k), n, k, true).unwrap();
    let wd: Vec<f64> = w
        .dequantize_bf16()
        .iter()
        .map(|v| f64::from(v.to_f32()))
        .collect();
    let x: Vec<half::bf16> = normal_f32(x_seed, m * k)
        .into_iter()
        .map(half::bf16::from_f32)
        .collect();
    let mut want = vec![0.0f64; m * n];
    for r in 0..m {
        for c in 0..n {
            want[r * n + c] = (0..k)
                .map(|q| f64::from(x[r * k + q].to_f32()) * wd[c * k + q])
                .sum();
        }
    }
    let gw = GpuNf4::upload(gpu, &w).unwrap();
    let gx = gpu
        .upload(&x.iter().map(|v| v.to_bits()).collect::<Vec<u16>>())
        .unwrap();
    (gw, gx, want)
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn nf4_quantize_is_bit_exact() {
    let Some(gpu) = gpu() else { return };
    let s = seed();
    for (i, &(rows, cols)) in NF4_SHAPES.iter().enumerate() {
        let w: Vec<f32> = normal_f32(s + i as u64, rows * cols)
            .iter()
            .map(|v| v * 0.02)
            .collect();
        for dq in [false, true] {
            let cpu = Nf4Tensor::quantize(&w, rows, cols, dq).unwrap();
            let dw = gpu.upload(&w).unwrap();
            let g = GpuNf4::quantize(&gpu, &dw, rows, cols, dq)
                .unwrap()
                .download(&gpu)
                .unwrap();
            assert_eq!(g.codes(), cpu.codes(), "{rows}x{cols} dq={dq}: codes");
            match (g.absmax(), cpu.absmax()) {
                (Nf4Absmax::Plain(a), Nf4Absmax::Plain(b)) => {
                    let (a, b): (Vec<u32>, Vec<u32>) = (
                        a.iter().map(|v| v.to_bits()).collect(),
                        b.iter().map(|v| v.to_bits()).collect(),
                    );
                    assert_eq!(a, b, "{rows}x{cols}: absmax");
                }
                (Nf4Absmax::Double(a), Nf4Absmax::Double(b)) => {
                    assert_eq!(a.codes(), b.codes(), "{rows}x{cols}: absmax codes");
                    assert_eq!(a.scales(), b.scales(), "{rows}x{cols}: absmax scales");
                    assert_eq!(
                        a.offset().to_bits(),
                        b.offset().to_bits(),
                        "{rows}x{cols}: offset"
                    );
                }
                _ => panic!("absmax kinds differ"),
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn nf4_dequantize_is_bit_exact_in_every_format() {
    let Some(gpu) = gpu() else { return };
    let s = seed();
    for (i, &(rows, cols)) in NF4_SHAPES.iter().enumerate() {
        let w = normal_f32(s + 100 + i as u64, rows * cols);
        for dq in [false, true] {
            let cpu = Nf4Tensor::quantize(&w, rows, cols, dq).unwrap();
            let t = GpuNf4::upload(&gpu, &cpu).unwrap();
            let n = rows * cols;
            let mut out = poisoned_f32(&gpu, n);
            t.dequantize_f32(&gpu, &mut out).unwrap();
            let got = gpu.download(&out).unwrap();
            let want = cpu.dequantize();
            assert!(
                got.iter().all(|v| !v.is_nan()),
                "{rows}x{cols}: unwritten fp32 output"
            );
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{rows}x{cols} dq={dq}: fp32"
            );
            let mut out16 = gpu.upload(&vec![0x7fc0u16; n]).unwrap();
            t.dequantize_bf16(&gpu, &mut out16).unwrap();
            let want16: Vec<u16> = cpu.dequantize_bf16().iter().map(|v| v.to_bits()).collect();
            assert_eq!(
                gpu.download(&out16).unwrap(),
                want16,
                "{rows}x{cols} dq={dq}: bf16"
            );
            let mut outh = gpu.upload(&vec![0x7e00u16; n]).unwrap();
            t.dequantize_f16(&gpu, &mut outh).unwrap();
            let wanth: Vec<u16> = cpu.dequantize_f16().iter().map(|v| v.to_bits()).collect();
            assert_eq!(
                gpu.download(&outh).unwrap(),
                wanth,
                "{rows}x{cols} dq={dq}: f16"
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn nf4_gemv_matches_float64() {
    let Some(gpu) = gpu() else { return };
    let s = seed();
    for (i, &(rows, cols)) in [
        (1usize, 32usize),
        (37, 96),
        (333, 4096),
        (4096, 4096),
        (1001, 14336),
        (6, 64),
    ]
    .iter()
    .enumerate()
    {
        let w = normal_f32(s + 200 + i as u64, rows * cols);
        let cpu = Nf4Tensor::quantize(&w, rows, cols, true).unwrap();
        let wd = widen(&cpu.dequantize());
        let t = GpuNf4::upload(&gpu, &cpu).unwrap();
        for batch in 1..=8 {
            let x = normal_f32(s + 300 + batch as u64, batch * cols);
            let mut want = vec![0.0f64; batch * rows];
            for b in 0..batch {
                for r in 0..rows {
                    want[b * rows + r] = (0..cols)
                        .map(|c| wd[r * cols + c] * f64::from(x[b * cols + c]))
                        .sum();
                }
            }
            let dx = gpu.upload(&x).unwrap();
            for variant in [GemvVariant::RowPerWarp, GemvVariant::FourRowsPerWarp] {
                let mut y = poisoned_f32(&gpu, batch * rows);
                t.gemv_with(&gpu, &dx, batch, &mut y, variant).unwrap();
                let err = rel_err(&gpu.download(&y).unwrap(), &want);
                assert!(
                    err < 1e-5,
                    "{rows}x{cols} batch {batch} {variant:?}: relative error {err}"
                );
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn lora_forward_and_backward_match_the_cpu_reference() {
    let Some(gpu) = gpu() else { return };
    let s = seed();
    for (i, &(m, k, n, r)) in [
        (1usize, 64usize, 32usize, 8usize),
        (37, 96, 65, 16),
        (128, 256, 200, 64),
        (5, 33, 7, 3),
    ]
    .iter()
    .enumerate()
    {
        let s = s + 1000 * i as u64;
        let dims = LoraDims {
            tokens: m,
            in_features: k,
            out_features: n,
            rank: r,
        };
        let x = normal_f32(s, m * k);
        let w = Nf4Tensor::quantize(&normal_f32(s + 1, n * k), n, k, true).unwrap();
        let a = normal_f32(s + 2, r * k);
        let b = normal_f32(s + 3, n * r);
        let mask = keep_mask(s + 4, m * k, 0.9);
        let dy = normal_f32(s + 5, m * n);
        let scale = 32.0 / r as f32;
        let params = LoraParams {
            scale,
            dropout: 0.1,
            keep_mask: Some(&mask),
        };
        let fwd = lora::forward_nf4(dims, &x, &w, &a, &b, params).unwrap();
        let grads = lora::backward_nf4(dims, &x, &w, &a, &b, params, &fwd.h, &dy).unwrap();

        let (dx_, da_, db_, dmask, ddy) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&a).unwrap(),
            gpu.upload(&b).unwrap(),
            gpu.upload(&mask).unwrap(),
            gpu.upload(&dy).unwrap(),
        );
        let gw = GpuNf4::upload(&gpu, &w).unwrap();
        let layer = GpuLora {
            dims,
            a: &da_,
            b: &db_,
            scale,
            dropout: Some((0.1, &dmask)),
        };
        let mut w_scratch = poisoned_f32(&gpu, n * k);
        let mut h = poisoned_f32(&gpu, m * r);
        let mut y = poisoned_f32(&gpu, m * n);
        layer
            .forward(&gpu, &dx_, &gw, &mut w_scratch, &mut h, &mut y)
            .unwrap();
        let (mut dh, mut ga, mut gb, mut gx) = (
            poisoned_f32(&gpu, m * r),
            poisoned_f32(&gpu, r * k),
            poisoned_f32(&gpu, n * r),
            poisoned_f32(&gpu, m * k),
        );
        layer
            .backward(
                &gpu, &dx_, &w_scratch, &h, &ddy, &mut dh, &mut ga, &mut gb, &mut gx,
            )
            .unwrap();
        for (name, got, want) in [
            ("y", gpu.download(&y).unwrap(), &fwd.y),
            ("h", gpu.download(&h).unwrap(), &fwd.h),
            ("dA", gpu.download(&ga).unwrap(), &grads.da),
            ("dB", gpu.download(&gb).unwrap(), &grads.db),
            ("dx", gpu.download(&gx).unwrap(), &grads.dx),
        ] {
            let err = rel_err(&got, &widen(want));
            assert!(err < 1e-5, "{m}x{k}x{n} r={r}: {name} relative error {err}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn nf4_gemm_cublas_and_tensor_core_match_float64_in_bf16() {
    let Some(gpu) = gpu() else { return };
    let s = seed();
    let blas = Blas::new(&gpu).unwrap();
    for (i, &(m, n, k)) in [
        (1usize, 64usize, 64usize),
        (37, 33, 70),
        (130, 200, 128),
        (256, 1024, 4096),
    ]
    .iter()
    .enumerate()
    {
        let (gw, gx, want) = bf16_gemm_case(&gpu, s + 500 + i as u64, s + 600 + i as u64, m, n, k);
        let mut scratch = gpu.upload(&vec![0x7fc0u16; n * k]).unwrap();
        let mut y = gpu.upload(&vec![0x7fc0u16; m * n]).unwrap();
        blas.nf4_xwt(&gpu, m, &gx, &gw, &mut scratch, &mut y)
            .unwrap();
        let got: Vec<f32> = gpu
            .download(&y)
            .unwrap()
            .into_iter()
            .map(|b| half::bf16::from_bits(b).to_f32())
            .collect();
        let err = rel_err(&got, &want);
        assert!(err < 1e-2, "M={m} N={n} K={k}: bf16 relative error {err}");
        if k % 64 == 0 {
            let mut y2 = gpu.upload(&vec![0x7fc0u16; m * n]).unwrap();
            gw.matmul_bf16_mma(&gpu, m, &gx, &mut y2).unwrap();
            let got: Vec<f32> = gpu
                .download(&y2)
                .unwrap()
                .into_iter()
                .map(|b| half::bf16::from_bits(b).to_f32())
                .collect();
            let err = rel_err(&got, &want);
            assert!(
                err < 1e-2,
                "mma M={m} N={n} K={k}: bf16 relative error {err}"
            );
        }
    }
}

/// The per-shape NF4 GEMM chooser on a real GPU: times both paths (one where K is not a multiple of 64), keeps
/// the faster, writes the JSON file, reads it back in a new chooser, and the product through the chosen path
/// matches float64 within the bf16 tolerance.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn nf4_gemm_chooser_picks_a_path_per_shape_and_caches_it() {
    let Some(gpu) = gpu() else { return };
    let s = seed();
    let dir = std::env::temp_dir().join(format!("tandem-nf4-choice-{s}"));
    let file = dir.join("nf4-gemm-choices.json");
    let gemm = Nf4Gemm::new(&gpu, Nf4GemmChooser::with_file(&file).unwrap()).unwrap();
    for (i, &(m, n, k)) in [(256usize, 512usize, 1024usize), (33, 70, 100)]
        .iter()
        .enumerate()
    {
        let (gw, gx, want) = bf16_gemm_case(&gpu, s + 700 + i as u64, s + 800 + i as u64, m, n, k);
        let mut scratch = gpu.upload(&vec![0x7fc0u16; n * k]).unwrap();
        let mut y = gpu.upload(&vec![0x7fc0u16; m * n]).unwrap();
        let path = gemm.xwt(&gpu, m, &gx, &gw, &mut scratch, &mut y).unwrap();
        let choice = gemm
            .choice(&gpu, m, &gx, &gw, &mut scratch, &mut y)
            .unwrap();
        println!(
            "M={m} N={n} K={k}: {} ({:?})",
            path.label(),
            choice.timings_ms
        );
        assert_eq!(choice.path, path);
        assert!(
            choice
                .ms(Nf4GemmPath::DequantCublas)
                .is_some_and(|t| t > 0.0)
        );
        assert_eq!(choice.ms(Nf4GemmPath::MmaTiles).is_some(), k % 64 == 0);
        // Run once more through the remembered choice, on a poisoned output.
        let mut y = gpu.upload(&vec![0x7fc0u16; m * n]).unwrap();
        assert_eq!(
            gemm.xwt(&gpu, m, &gx, &gw, &mut scratch, &mut y).unwrap(),
            path
        );
        let got: Vec<f32> = gpu
            .download(&y)
            .unwrap()
            .into_iter()
            .map(|b| half::bf16::from_bits(b).to_f32())
            .collect();
        let err = rel_err(&got, &want);
        assert!(
            err < 1e-2,
            "M={m} N={n} K={k} via {}: bf16 relative error {err}",
            path.label()
        );
        let reread = Nf4GemmChooser::with_file(&file).unwrap();
        let shape = GemmShape {
            device: gpu.name().to_string(),
            m,
            n,
            k,
        };
        assert_eq!(
            reread.get(&shape),
            Some(&choice),
            "the JSON file holds the choice"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The bf16 tensor-core LoRA forward (base through the per-shape NF4 GEMM choice, adapter on mma.sync) against
/// the fp32 CPU reference on the same bf16-rounded x, A, B: y within 1e-2 (bf16 output, bf16-dequantised W),
/// h within 1e-4 (fp32 sums of exact bf16 products; the tensor cores' fp32 accumulation is not IEEE
/// round-to-nearest everywhere, so not 1e-5). With and without dropout, odd token counts.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn lora_bf16_tensor_core_forward_matches_fp32_reference() {
    let Some(gpu) = gpu() else { return };
    let s = seed();
    let gemm = Nf4Gemm::new(&gpu, Nf4GemmChooser::in_memory()).unwrap();
    let round = |v: Vec<f32>| -> Vec<f32> {
        v.into_iter()
            .map(|x| half::bf16::from_f32(x).to_f32())
            .collect()
    };
    let bits = |v: &[f32]| -> Vec<u16> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect()
    };
    for (i, &(m, k, n, r, p)) in [
        (1usize, 64usize, 64usize, 8usize, 0.0f32),
        (37, 72, 70, 16, 0.1),
        (130, 256, 200, 32, 0.0),
        (256, 4096, 1024, 32, 0.05),
    ]
    .iter()
    .enumerate()
    {
        let dims = LoraDims {
            tokens: m,
            in_features: k,
            out_features: n,
            rank: r,
        };
        let s = s + 1000 + 10 * i as u64;
        let x = round(normal_f32(s, m * k));
        let a = round(normal_f32(s + 1, r * k).iter().map(|v| v * 0.05).collect());
        let b = round(normal_f32(s + 2, n * r).iter().map(|v| v * 0.05).collect());
        let w = Nf4Tensor::quantize(&normal_f32(s + 3, n * k), n, k, true).unwrap();
        let mask = keep_mask(s + 4, m * k, 1.0 - f64::from(p));
        let params = LoraParams {
            scale: 2.0,
            dropout: p,
            keep_mask: (p > 0.0).then_some(&mask[..]),
        };
        let want = lora::forward_nf4(dims, &x, &w, &a, &b, params).unwrap();
        let (gx, ga, gb) = (
            gpu.upload(&bits(&x)).unwrap(),
            gpu.upload(&bits(&a)).unwrap(),
            gpu.upload(&bits(&b)).unwrap(),
        );
        let gmask = gpu.upload(&mask).unwrap();
        let gw = GpuNf4::upload(&gpu, &w).unwrap();
        let layer = GpuLoraBf16 {
            dims,
            a: &ga,
            b: &gb,
            scale: 2.0,
            dropout: (p > 0.0).then_some((p, &gmask)),
        };
        let mut scratch = gpu.upload(&vec![0x7fc0u16; n * k]).unwrap();
        let mut h = poisoned_f32(&gpu, m * r);
        let mut h16 = gpu.upload(&vec![0x7fc0u16; m * r]).unwrap();
        let mut partial = poisoned_f32(&gpu, layer.partial_len());
        let mut y = gpu.upload(&vec![0x7fc0u16; m * n]).unwrap();
        let path = layer
            .forward(
                &gpu,
                &gemm,
                &gx,
                &gw,
                &mut scratch,
                AdapterBuffers {
                    h: &mut h,
                    h_bf16: &mut h16,
                    partial: &mut partial,
                },
                &mut y,
            )
            .unwrap();
        let got_y: Vec<f32> = gpu
            .download(&y)
            .unwrap()
            .into_iter()
            .map(|v| half::bf16::from_bits(v).to_f32())
            .collect();
        let (ey, eh) = (
            rel_err(&got_y, &widen(&want.y)),
            rel_err(&gpu.download(&h).unwrap(), &widen(&want.h)),
        );
        println!(
            "m={m} k={k} n={n} r={r} p={p} base via {}: y {ey:.3e}, h {eh:.3e}",
            path.label()
        );
        assert!(ey < 1e-2, "m={m} k={k} n={n} r={r}: y relative error {ey}");
        assert!(eh < 1e-4, "m={m} k={k} n={n} r={r}: h relative error {eh}");
    }
}

/// The K-extended bf16 LoRA layer (`cuda::lora_fused`): `W_ext = [W | B]` from the NF4 weight, the forward
/// (`h` in fp32 within 1e-4, `y` within 1e-2) and the backward (dx, dA, dB within 1e-2) against the fp32
/// reference on the same bf16-rounded inputs; with and without dropout, overwriting and accumulating the
/// gradients, odd token counts, r up to 64. The x columns of `x_ext` keep their bits.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn lora_k_extended_forward_and_backward_match_the_fp32_reference() {
    let Some(gpu) = gpu() else { return };
    let s = seed();
    let blas = Blas::new(&gpu).unwrap();
    let to_bits = |v: &[f32]| -> Vec<u16> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect()
    };
    let from_bits = |v: &[u16]| -> Vec<f32> {
        v.iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect()
    };
    let round = |v: Vec<f32>| from_bits(&to_bits(&v));
    for (i, &(m, k, n, r, p, accumulate)) in [
        (1usize, 64usize, 64usize, 8usize, 0.0f32, false),
        (37, 96, 70, 16, 0.1, false),
        (130, 256, 200, 32, 0.0, true),
        (257, 4096, 1024, 64, 0.05, true),
    ]
    .iter()
    .enumerate()
    {
        let dims = LoraDims {
            tokens: m,
            in_features: k,
            out_features: n,
            rank: r,
        };
        let s = s + 2000 + 10 * i as u64;
        let scale = 2.0f32;
        let x = round(normal_f32(s, m * k));
        let a = round(normal_f32(s + 1, r * k).iter().map(|v| v * 0.05).collect());
        let b = round(normal_f32(s + 2, n * r).iter().map(|v| v * 0.05).collect());
        let w = Nf4Tensor::quantize(&normal_f32(s + 3, n * k), n, k, true).unwrap();
        let dy = round(normal_f32(s + 4, m * n));
        let mask = keep_mask(s + 5, m * k, 1.0 - f64::from(p));
        let params = LoraParams {
            scale,
            dropout: p,
            keep_mask: (p > 0.0).then_some(&mask[..]),
        };
        let want = lora::forward_nf4(dims, &x, &w, &a, &b, params).unwrap();
        let grads = lora::backward_nf4(dims, &x, &w, &a, &b, params, &want.h, &dy).unwrap();

        let (ga, gb, gmask) = (
            gpu.upload(&to_bits(&a)).unwrap(),
            gpu.upload(&to_bits(&b)).unwrap(),
            gpu.upload(&mask).unwrap(),
        );
        let layer = GpuLoraBf16 {
            dims,
            a: &ga,
            b: &gb,
            scale,
            dropout: (p > 0.0).then_some((p, &gmask)),
        };
        let kx = layer.ext_ld();
        let gw = GpuNf4::upload(&gpu, &w).unwrap();
        let mut w_ext = gpu.upload(&vec![0x7fc0u16; n * kx]).unwrap();
        layer.prepare_ext_weight(&gpu, &gw, &mut w_ext).unwrap();
        // x in the left columns, NaN in the right ones (the forward must write s h there).
        let mut x_host = vec![0x7fc0u16; m * kx];
        let xb = to_bits(&x);
        for t in 0..m {
            x_host[t * kx..t * kx + k].copy_from_slice(&xb[t * k..(t + 1) * k]);
        }
        let mut x_ext = gpu.upload(&x_host).unwrap();
        let mut h = poisoned_f32(&gpu, m * r);
        let mut partial = poisoned_f32(&gpu, layer.partial_len());
        let mut y = gpu.upload(&vec![0x7fc0u16; m * n]).unwrap();
        layer
            .forward_ext(
                &gpu,
                &blas,
                &mut x_ext,
                &w_ext,
                ExtForwardBuffers {
                    h: &mut h,
                    partial: &mut partial,
                },
                &mut y,
            )
            .unwrap();
        let x_after = gpu.download(&x_ext).unwrap();
        for t in 0..m {
            assert_eq!(
                x_after[t * kx..t * kx + k],
                x_host[t * kx..t * kx + k],
                "the forward changed x in row {t}"
            );
        }
        let ey = rel_err(&from_bits(&gpu.download(&y).unwrap()), &widen(&want.y));
        let eh = rel_err(&gpu.download(&h).unwrap(), &widen(&want.h));
        // The same forward through the mma.sync tile kernel (no W_ext), where `in` allows it.
        let ey_tiles = if k.is_multiple_of(64) {
            let mut x_tiles = gpu.upload(&x_host).unwrap();
            let mut y_tiles = gpu.upload(&vec![0x7fc0u16; m * n]).unwrap();
            let mut h_tiles = poisoned_f32(&gpu, m * r);
            layer
                .forward_ext_tiles(
                    &gpu,
                    &mut x_tiles,
                    &gw,
                    ExtForwardBuffers {
                        h: &mut h_tiles,
                        partial: &mut partial,
                    },
                    &mut y_tiles,
                )
                .unwrap();
            rel_err(
                &from_bits(&gpu.download(&y_tiles).unwrap()),
                &widen(&want.y),
            )
        } else {
            0.0
        };

        let gdy = gpu.upload(&to_bits(&dy)).unwrap();
        let mut dx_ext = gpu.upload(&vec![0x7fc0u16; m * kx]).unwrap();
        let (da0, db0) = if accumulate {
            (normal_f32(s + 6, r * k), normal_f32(s + 7, n * r))
        } else {
            (vec![f32::NAN; r * k], vec![f32::NAN; n * r])
        };
        let mut da = gpu.upload(&da0).unwrap();
        let mut db = gpu.upload(&db0).unwrap();
        let mut t = poisoned_f32(&gpu, m * k);
        let mut x_masked = gpu.upload(&vec![0x7fc0u16; m * k]).unwrap();
        layer
            .backward_ext(
                &gpu,
                &blas,
                &x_ext,
                &w_ext,
                &gdy,
                &mut dx_ext,
                ExtGrads {
                    da: &mut da,
                    db: &mut db,
                    accumulate,
                },
                (p > 0.0).then_some(DropoutScratch {
                    t: &mut t,
                    x_masked: &mut x_masked,
                }),
            )
            .unwrap();
        let dx_all = from_bits(&gpu.download(&dx_ext).unwrap());
        let dx: Vec<f32> = (0..m)
            .flat_map(|t| dx_all[t * kx..t * kx + k].to_vec())
            .collect();
        let minus = |got: Vec<f32>, base: &[f32]| -> Vec<f32> {
            if accumulate {
                got.iter().zip(base).map(|(g, b0)| g - b0).collect()
            } else {
                got
            }
        };
        let edx = rel_err(&dx, &widen(&grads.dx));
        let eda = rel_err(&minus(gpu.download(&da).unwrap(), &da0), &widen(&grads.da));
        let edb = rel_err(&minus(gpu.download(&db).unwrap(), &db0), &widen(&grads.db));
        println!(
            "m={m} k={k} n={n} r={r} p={p} accumulate={accumulate}: y {ey:.3e} (tiles {ey_tiles:.3e}), \
             h {eh:.3e}, dx {edx:.3e}, dA {eda:.3e}, dB {edb:.3e}"
        );
        let case = format!("m={m} k={k} n={n} r={r} p={p}");
        assert!(ey < 1e-2, "{case}: y relative error {ey}");
        assert!(
            ey_tiles < 1e-2,
            "{case}: y (tile kernel) relative error {ey_tiles}"
        );
        assert!(eh < 1e-4, "{case}: h relative error {eh}");
        assert!(edx < 1e-2, "{case}: dx relative error {edx}");
        assert!(eda < 1e-2, "{case}: dA relative error {eda}");
        assert!(edb < 1e-2, "{case}: dB relative error {edb}");
    }
}

/// Decoding through the adapter (`GpuLoraBf16::decode`: `hx = s A x`, then one pass over the NF4 weight adding
/// `B hx`) against the fp32 reference at every batch 1..8, odd row counts too, within 1e-5 (fp32 paths, bf16 A
/// and B exactly representable).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn lora_decode_matches_the_fp32_reference() {
    let Some(gpu) = gpu() else { return };
    let s = seed();
    let bits = |v: &[f32]| -> Vec<u16> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect()
    };
    let round = |v: Vec<f32>| -> Vec<f32> {
        v.into_iter()
            .map(|x| half::bf16::from_f32(x).to_f32())
            .collect()
    };
    for (i, &(n, k, r)) in [
        (37usize, 96usize, 8usize),
        (1000, 4096, 32),
        (4096, 1024, 64),
    ]
    .iter()
    .enumerate()
    {
        for batch in 1..=8usize {
            let s = s + 3000 + 100 * i as u64 + batch as u64;
            let dims = LoraDims {
                tokens: batch,
                in_features: k,
                out_features: n,
                rank: r,
            };
            let x = normal_f32(s, batch * k);
            let a = round(normal_f32(s + 1, r * k).iter().map(|v| v * 0.05).collect());
            let b = round(normal_f32(s + 2, n * r).iter().map(|v| v * 0.05).collect());
            let w = Nf4Tensor::quantize(&normal_f32(s + 3, n * k), n, k, true).unwrap();
            let params = LoraParams {
                scale: 2.0,
                dropout: 0.0,
                keep_mask: None,
            };
            let want = lora::forward_nf4(dims, &x, &w, &a, &b, params).unwrap();
            let (ga, gb) = (
                gpu.upload(&bits(&a)).unwrap(),
                gpu.upload(&bits(&b)).unwrap(),
            );
            let layer = GpuLoraBf16 {
                dims,
                a: &ga,
                b: &gb,
                scale: 2.0,
                dropout: None,
            };
            let gw = GpuNf4::upload(&gpu, &w).unwrap();
            let gx = gpu.upload(&x).unwrap();
            let mut hx = poisoned_f32(&gpu, batch * r);
            let mut y = poisoned_f32(&gpu, batch * n);
            layer.decode(&gpu, &gw, &gx, &mut hx, &mut y).unwrap();
            let e = rel_err(&gpu.download(&y).unwrap(), &widen(&want.y));
            let eh = rel_err(
                &gpu.download(&hx).unwrap(),
                &want
                    .h
                    .iter()
                    .map(|&v| 2.0 * f64::from(v))
                    .collect::<Vec<_>>(),
            );
            println!("decode n={n} k={k} r={r} batch={batch}: y {e:.3e}, s h {eh:.3e}");
            assert!(
                e < 1e-5,
                "n={n} k={k} r={r} batch={batch}: y relative error {e}"
            );
            assert!(
                eh < 1e-5,
                "n={n} k={k} r={r} batch={batch}: s h relative error {eh}"
            );
        }
    }
}
