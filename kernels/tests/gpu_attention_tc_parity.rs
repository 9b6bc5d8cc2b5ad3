//! GPU parity of the bf16 tensor-core flash attention (`kernels/cuda/attention_tc.cu`), forward and backward,
//! against the CPU reference `tandem_kernels::ops::attention` (f64 math) on the same bf16-rounded inputs: fresh
//! random inputs (seed printed; `TANDEM_SEED` replays), odd and even sizes, outputs poisoned with NaN first, NaN
//! never passes. out (bf16) and the fp32 dq, dk, dv within relative error 1e-2 (the bf16 rounding of P, dS and out
//! gives 1.5e-3 to 3.5e-3 on the CPU emulator); lse (fp32, from fp32 probabilities) within 1e-3 (the emulator gives
//! about 5e-8). The backward runs with both dK/dV kernels (unsplit, and balanced: chunks of
//! `attention_tc::DKDV_CHUNK` iterations and a fixed-order reduce) on every shape, at the same limits; the default
//! `backward` must give the bits of the kernel `DkDvKernel::choose` names, and on shapes of one chunk per key tile
//! the balanced kernel must give the unsplit kernel's bits. Two runs must give the same bits. `#[ignore]`: needs
//! an NVIDIA GPU of sm_80 or newer (`kernels/gpu-check.sh`).

use cudarc::driver::CudaSlice;
use half::bf16;
use tandem_kernels::cuda::attention_tc::DkDvKernel;
use tandem_kernels::cuda::{Gpu, attention_tc};
use tandem_kernels::ops::attention::{self, AttentionDims};
use tandem_kernels::testdata::normal_f32;

mod common;
use common::{assert_close, dims, get, gpu, nan, reference_lse, seed};

/// bf16 inputs: the bits for the GPU and the same values in f32 for the reference.
struct Bf16Input {
    bits: Vec<u16>,
    values: Vec<f32>,
}

fn bf16_normal(seed: u64, n: usize) -> Bf16Input {
    let rounded: Vec<bf16> = normal_f32(seed, n)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    Bf16Input {
        bits: rounded.iter().map(|x| x.to_bits()).collect(),
        values: rounded.iter().map(|x| x.to_f32()).collect(),
    }
}

struct Inputs {
    q: Bf16Input,
    k: Bf16Input,
    v: Bf16Input,
    dout: Bf16Input,
}

fn inputs(d: AttentionDims, s: u64) -> Inputs {
    let nq = d.batch * d.tokens * d.q_heads * d.head_dim;
    let nk = d.batch * d.tokens * d.kv_heads * d.head_dim;
    Inputs {
        q: bf16_normal(s, nq),
        k: bf16_normal(s + 1, nk),
        v: bf16_normal(s + 2, nk),
        dout: bf16_normal(s + 3, nq),
    }
}

/// A device buffer of `n` bf16 NaNs (bits 0x7fc0).
fn nan_bf16(g: &Gpu, n: usize) -> CudaSlice<u16> {
    g.upload(&vec![0x7fc0u16; n.max(1)]).unwrap()
}

/// Device results of one forward + backward: out (bf16 bits), lse, dq, dk, dv.
struct Results {
    out: Vec<u16>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// The backward's dK/dV kernel: the one `backward` chooses, or one named.
#[derive(Clone, Copy, Debug)]
enum Bwd {
    Default,
    Named(DkDvKernel),
}

fn run_gpu(g: &Gpu, d: AttentionDims, x: &Inputs, bwd: Bwd) -> Results {
    let (nq, nk, rows) = (
        x.q.bits.len(),
        x.k.bits.len(),
        d.batch * d.tokens * d.q_heads,
    );
    let (gq, gk, gv, gdo) = (
        g.upload(&x.q.bits).unwrap(),
        g.upload(&x.k.bits).unwrap(),
        g.upload(&x.v.bits).unwrap(),
        g.upload(&x.dout.bits).unwrap(),
    );
    let (mut out, mut lse) = (nan_bf16(g, nq), nan(g, rows));
    attention_tc::forward(g, d, &gq, &gk, &gv, &mut out, &mut lse).unwrap();
    let (mut dq, mut dk, mut dv) = (nan(g, nq), nan(g, nk), nan(g, nk));
    match bwd {
        Bwd::Default => attention_tc::backward(
            g, d, &gq, &gk, &gv, &out, &lse, &gdo, &mut dq, &mut dk, &mut dv,
        )
        .unwrap(),
        Bwd::Named(kernel) => {
            let mut delta = nan(g, rows);
            // Poisoned partials: a chunk the reduce reads but the kernel did not write shows as NaN.
            let mut partials = nan(g, attention_tc::balanced_partials_len(&d));
            attention_tc::backward_with_kernel(
                g,
                d,
                kernel,
                &gq,
                &gk,
                &gv,
                &out,
                &lse,
                &gdo,
                &mut delta,
                Some(&mut partials),
                &mut dq,
                &mut dk,
                &mut dv,
            )
            .unwrap()
        }
    }
    Results {
        out: g.download(&out).unwrap()[..nq].to_vec(),
        lse: get(g, &lse, rows),
        dq: get(g, &dq, nq),
        dk: get(g, &dk, nk),
        dv: get(g, &dv, nk),
    }
}

fn to_f32(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn tensor_core_attention_matches_the_reference() {
    let Some(g) = gpu() else { return };
    let s = seed();
    for (i, d) in [
        dims(1, 1, 32, 8, 64),
        dims(2, 37, 4, 4, 128),
        dims(1, 65, 6, 2, 64),
        dims(1, 130, 32, 8, 128),
        dims(1, 256, 32, 8, 128),
        dims(2, 256, 4, 4, 64),
        dims(1, 129, 8, 2, 96),
        dims(3, 65, 6, 2, 16),
        dims(1, 130, 4, 4, 80),
        // Shapes where the balanced dK/dV splits key tiles: tile 0 of T = 300 at 4/1 heads has 2 chunks, of
        // T = 600 at 8/2 heads 3 (the first tiles), of T = 200 at 8/1 heads 2 (2 sequences).
        dims(1, 300, 4, 1, 64),
        dims(1, 600, 8, 2, 128),
        dims(2, 200, 8, 1, 32),
    ]
    .into_iter()
    .enumerate()
    {
        println!(
            "{d:?}: {:?} dK/dV by default, {} balanced work items per kv head",
            DkDvKernel::choose(&d),
            attention_tc::dkdv_work_items(&d)
        );
        let x = inputs(d, s + 10 * i as u64);
        let want = attention::forward(d, &x.q.values, &x.k.values, &x.v.values).unwrap();
        let wlse = reference_lse(d, &x.q.values, &x.k.values);
        let (wdq, wdk, wdv) =
            attention::backward(d, &x.q.values, &x.k.values, &x.v.values, &x.dout.values).unwrap();
        let r = run_gpu(&g, d, &x, Bwd::Named(DkDvKernel::Unsplit));
        assert_close("out", &to_f32(&r.out), &want, 1e-2);
        assert_close("lse", &r.lse, &wlse, 1e-3);
        assert_close("dq", &r.dq, &wdq, 1e-2);
        assert_close("dk", &r.dk, &wdk, 1e-2);
        assert_close("dv", &r.dv, &wdv, 1e-2);
        let rb = run_gpu(&g, d, &x, Bwd::Named(DkDvKernel::Balanced));
        assert_close("dk (balanced)", &rb.dk, &wdk, 1e-2);
        assert_close("dv (balanced)", &rb.dv, &wdv, 1e-2);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // dq does not depend on the dK/dV kernel.
        assert!(
            bits(&rb.dq) == bits(&r.dq),
            "{d:?} dq: differs with the balanced dK/dV"
        );
        if attention_tc::dkdv_chunks(&d, 0) == 1 {
            // One chunk per key tile: the same iterations in the same order, no additions in the reduce.
            assert!(
                bits(&rb.dk) == bits(&r.dk),
                "{d:?} dk: balanced != unsplit bits"
            );
            assert!(
                bits(&rb.dv) == bits(&r.dv),
                "{d:?} dv: balanced != unsplit bits"
            );
        }
        let rd = run_gpu(&g, d, &x, Bwd::Default);
        let chosen = match DkDvKernel::choose(&d) {
            DkDvKernel::Unsplit => &r,
            DkDvKernel::Balanced => &rb,
        };
        assert!(
            bits(&rd.dk) == bits(&chosen.dk),
            "{d:?} dk: backward != the chosen kernel"
        );
        assert!(
            bits(&rd.dv) == bits(&chosen.dv),
            "{d:?} dv: backward != the chosen kernel"
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn tensor_core_attention_gives_the_same_bits_twice() {
    let Some(g) = gpu() else { return };
    let s = seed();
    for (d, bwd) in [
        (dims(1, 256, 32, 8, 128), Bwd::Default),
        (dims(2, 130, 4, 2, 80), Bwd::Default),
        (dims(1, 600, 8, 2, 128), Bwd::Named(DkDvKernel::Balanced)),
        (dims(2, 300, 4, 1, 64), Bwd::Named(DkDvKernel::Balanced)),
        (dims(1, 256, 32, 8, 128), Bwd::Named(DkDvKernel::Balanced)),
    ] {
        println!("{d:?}, {bwd:?}");
        let x = inputs(d, s);
        let first = run_gpu(&g, d, &x, bwd);
        let second = run_gpu(&g, d, &x, bwd);
        assert!(
            to_f32(&first.out).iter().all(|v| v.is_finite()),
            "{d:?} out: not finite"
        );
        assert!(
            first.out == second.out,
            "{d:?} out: differs between two runs"
        );
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (what, a, b) in [
            ("lse", &first.lse, &second.lse),
            ("dq", &first.dq, &second.dq),
            ("dk", &first.dk, &second.dk),
            ("dv", &first.dv, &second.dv),
        ] {
            assert!(a.iter().all(|v| v.is_finite()), "{d:?} {what}: not finite");
            assert!(bits(a) == bits(b), "{d:?} {what}: differs between two runs");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn tensor_core_attention_refuses_head_sizes_it_cannot_take() {
    let Some(g) = gpu() else { return };
    for hd in [72, 144] {
        let d = dims(1, 4, 2, 1, hd);
        let (q, k) = (
            g.upload(&vec![0u16; 4 * 2 * hd]).unwrap(),
            g.upload(&vec![0u16; 4 * hd]).unwrap(),
        );
        let (mut out, mut lse) = (nan_bf16(&g, 4 * 2 * hd), nan(&g, 8));
        let err = attention_tc::forward(&g, d, &q, &k, &k, &mut out, &mut lse)
            .unwrap_err()
            .to_string();
        assert!(err.contains("head_dim"), "{err}");
    }
}
