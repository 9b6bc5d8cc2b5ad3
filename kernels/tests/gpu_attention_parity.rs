//! GPU parity of the flash-style attention kernels (`kernels/cuda/attention.cu`) against the CPU reference
//! `tandem_kernels::ops::attention`: fresh random inputs (seed printed; `TANDEM_SEED` replays), odd and even
//! sizes, outputs poisoned with NaN first, relative error below 1e-5, NaN never passes; and the backward run
//! twice must give the same bits. `#[ignore]`: needs an NVIDIA GPU (`kernels/gpu-check.sh`).

use tandem_kernels::cuda::{Gpu, attention as flash};
use tandem_kernels::ops::attention::{self, AttentionDims};
use tandem_kernels::testdata::normal_f32;

mod common;
use common::{assert_close, dims, get, gpu, nan, reference_lse, seed};

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
}

fn inputs(d: AttentionDims, s: u64) -> Inputs {
    let nq = d.batch * d.tokens * d.q_heads * d.head_dim;
    let nk = d.batch * d.tokens * d.kv_heads * d.head_dim;
    Inputs {
        q: normal_f32(s, nq),
        k: normal_f32(s + 1, nk),
        v: normal_f32(s + 2, nk),
        dout: normal_f32(s + 3, nq),
    }
}

/// Device results of one forward + backward: out, lse, dq, dk, dv.
type Results = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn run_gpu(g: &Gpu, d: AttentionDims, x: &Inputs) -> Results {
    let (nq, nk, rows) = (x.q.len(), x.k.len(), d.batch * d.tokens * d.q_heads);
    let (gq, gk, gv, gdo) = (
        g.upload(&x.q).unwrap(),
        g.upload(&x.k).unwrap(),
        g.upload(&x.v).unwrap(),
        g.upload(&x.dout).unwrap(),
    );
    let (mut out, mut lse) = (nan(g, nq), nan(g, rows));
    flash::forward(g, d, &gq, &gk, &gv, &mut out, &mut lse).unwrap();
    let (mut dq, mut dk, mut dv) = (nan(g, nq), nan(g, nk), nan(g, nk));
    flash::backward(
        g, d, &gq, &gk, &gv, &out, &lse, &gdo, &mut dq, &mut dk, &mut dv,
    )
    .unwrap();
    (
        get(g, &out, nq),
        get(g, &lse, rows),
        get(g, &dq, nq),
        get(g, &dk, nk),
        get(g, &dv, nk),
    )
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn flash_attention_matches_the_reference() {
    let Some(g) = gpu() else { return };
    let s = seed();
    for (i, d) in [
        dims(1, 1, 32, 8, 64),
        dims(2, 37, 4, 4, 80),
        dims(1, 130, 32, 8, 128),
        dims(1, 256, 32, 8, 128),
        dims(2, 256, 4, 4, 64),
        dims(1, 130, 4, 4, 80),
        dims(3, 65, 6, 2, 1),
        dims(1, 129, 8, 2, 100),
    ]
    .into_iter()
    .enumerate()
    {
        println!("{d:?}");
        let x = inputs(d, s + 10 * i as u64);
        let want = attention::forward(d, &x.q, &x.k, &x.v).unwrap();
        let (wdq, wdk, wdv) = attention::backward(d, &x.q, &x.k, &x.v, &x.dout).unwrap();
        let wlse = reference_lse(d, &x.q, &x.k);
        let (out, lse, dq, dk, dv) = run_gpu(&g, d, &x);
        assert_close("out", &out, &want, 1e-5);
        assert_close("lse", &lse, &wlse, 1e-5);
        assert_close("dq", &dq, &wdq, 1e-5);
        assert_close("dk", &dk, &wdk, 1e-5);
        assert_close("dv", &dv, &wdv, 1e-5);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn flash_attention_gives_the_same_bits_twice() {
    let Some(g) = gpu() else { return };
    let s = seed();
    for d in [dims(1, 256, 32, 8, 128), dims(2, 130, 4, 2, 80)] {
        let x = inputs(d, s);
        let first = run_gpu(&g, d, &x);
        let second = run_gpu(&g, d, &x);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (what, a, b) in [
            ("out", &first.0, &second.0),
            ("lse", &first.1, &second.1),
            ("dq", &first.2, &second.2),
            ("dk", &first.3, &second.3),
            ("dv", &first.4, &second.4),
        ] {
            assert!(a.iter().all(|v| v.is_finite()), "{d:?} {what}: not finite");
            assert!(bits(a) == bits(b), "{d:?} {what}: differs between two runs");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn flash_attention_refuses_head_sizes_over_128() {
    let Some(g) = gpu() else { return };
    let d = dims(1, 4, 2, 1, 129);
    let (q, k) = (
        g.upload(&vec![0.0f32; 4 * 2 * 129]).unwrap(),
        g.upload(&vec![0.0f32; 4 * 129]).unwrap(),
    );
    let (mut out, mut lse) = (nan(&g, 4 * 2 * 129), nan(&g, 8));
    let err = flash::forward(&g, d, &q, &k, &k, &mut out, &mut lse)
        .unwrap_err()
        .to_string();
    assert!(err.contains("head_dim"), "{err}");
}
