//! Frozen weights held in bf16 for the CPU's bf16 GEMM ([`super::bf16`]), packed once in both orientations the
//! training step needs, and the switch of a loaded model to them (`model.compute_dtype = "bf16"` on the CPU).
//!
//! A frozen `W [out, in]` is multiplied twice per training step: `x W^T` forward and `dy W` for the input
//! gradient. Both products read `W` as the GEMM's right-hand operand, in two layouts; packing each once at load
//! time leaves every call with only its activations to convert. The two packs take 4 bytes per weight, the
//! size of the f32 matrix they replace. Activations, LoRA adapters, norms, attention and the optimizer stay in
//! f32: only the frozen products round their inputs to bf16, and they accumulate in f32.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::bf16::{self, PackedB};
use super::error::{EngineError, Result};
use super::lora::{FrozenWeight, QuantizedWeight};
use super::model::LanguageModel;
use super::ops::WeightSource;

/// A frozen `[out, in]` weight in bf16, packed for `x W^T` and for `dy W`.
#[derive(Debug)]
pub struct Bf16Weight {
    /// `B = W^T` (`k = in`, `n = out`).
    forward: PackedB,
    /// `B = W` (`k = out`, `n = in`).
    backward: PackedB,
    out: usize,
    inp: usize,
}

impl Bf16Weight {
    /// Packs the row-major `[out, in]` values (rounded to bf16, nearest even).
    pub fn pack(values: &[f32], out: usize, inp: usize) -> Result<Self> {
        if values.len() != out * inp {
            return Err(EngineError::Input(format!(
                "bf16 packing: {} values for a [{out}, {inp}] weight",
                values.len()
            )));
        }
        Ok(Self {
            forward: PackedB::transposed(values, out, inp),
            backward: PackedB::plain(values, out, inp),
            out,
            inp,
        })
    }

    /// Packs a dense `[out, in]` f32 tensor.
    pub fn from_tensor(w: &Tensor) -> Result<Self> {
        let (out, inp) = w.dims2()?;
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        Self::pack(&values, out, inp)
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// `x W^T` for `rows` rows of `x` (`[rows, in]`, row-major): `[rows, out]`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.product(x, rows, &self.forward, self.inp, "x W^T")
    }

    /// `dy W` for `rows` rows of `dy` (`[rows, out]`): `[rows, in]`.
    pub fn backward(&self, dy: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.product(dy, rows, &self.backward, self.out, "dy W")
    }

    fn product(
        &self,
        a: &[f32],
        rows: usize,
        b: &PackedB,
        width: usize,
        what: &str,
    ) -> Result<Vec<f32>> {
        if a.len() != rows * width {
            return Err(EngineError::Input(format!(
                "bf16 {what}: {} values for {rows} rows of {width} (weight [{}, {}])",
                a.len(),
                self.out,
                self.inp
            )));
        }
        let mut c = vec![0f32; rows * b.n()];
        bf16::matmul(a, rows, b, &mut c);
        Ok(c)
    }
}

impl WeightSource for Bf16Weight {
    /// The bf16 values as an f32 `[out, in]` matrix (for paths that need the dense form; the products use the
    /// packs).
    fn matrix(&self) -> candle_core::Result<Tensor> {
        // `backward` holds `B = W`, so its dense form is `W` itself.
        Tensor::from_vec(self.backward.to_dense(), (self.out, self.inp), &Device::Cpu)
    }

    fn bf16(&self) -> Option<&Bf16Weight> {
        Some(self)
    }
}

impl QuantizedWeight for Bf16Weight {
    fn dims(&self) -> (usize, usize) {
        Bf16Weight::dims(self)
    }

    fn storage_bytes(&self) -> usize {
        self.forward.bytes() + self.backward.bytes()
    }
}

/// Fails with what to do when this CPU lacks the AVX-512 BF16 instructions the packs are multiplied with.
fn require_simd() -> Result<()> {
    if bf16::simd_available() {
        return Ok(());
    }
    Err(EngineError::Input(
        "model.compute_dtype = \"bf16\" on the CPU needs AVX-512 BF16 (avx512_bf16: AMD Zen 4 or later, Intel \
         Cooper Lake or Sapphire Rapids and later), which this CPU lacks: set model.compute_dtype = \"f32\""
            .into(),
    ))
}

/// Switches every frozen linear map of `model` and its LM head to bf16 packs. A dense weight is replaced (its
/// f32 copy freed); an NF4 weight keeps its NF4 form and gains the packs in place of a per-use decode. Returns
/// the bytes the packs take; fails, changing nothing, on a CPU without AVX-512 BF16.
pub fn pack_model(model: &mut dyn LanguageModel) -> Result<usize> {
    require_simd()?;
    let mut bytes = 0;
    for layer in model.linears_mut() {
        let packed = Arc::new(Bf16Weight::from_tensor(&layer.base_matrix()?)?);
        bytes += packed.storage_bytes();
        match layer.base() {
            FrozenWeight::Dense(_) => layer.set_quantized(packed)?,
            FrozenWeight::Quantized(_) => layer.hold_source(packed)?,
        }
    }
    if let Some(head) = model.frozen_head_mut() {
        let packed = Bf16Weight::from_tensor(&head.matrix()?)?;
        bytes += packed.storage_bytes();
        *head = Arc::new(packed);
    }
    tracing::info!(mib = bytes >> 20, "frozen weights packed in bf16");
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::engine::lora::{ForwardCtx, LoraConfig, LoraLinear};

    /// Deterministic values in [-1, 1), rounded to bf16 (so both paths see the same inputs).
    fn bf16_values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(2_654_435_761);
                let v = (h >> 8) as f32 / (1u32 << 23) as f32 - 1.0;
                bf16::from_bf16(bf16::to_bf16(v))
            })
            .collect()
    }

    /// The largest `|a - b| / (k 2^-23 sum|x_i w_i| + tiny)` over outputs: below 1 when two f32 sums of the same
    /// exact products (bf16 x bf16 is exact in f32) differ only by their order. Each f32 sum of k terms is within
    /// `(k - 1) 2^-24 sum|terms|` of the exact sum, so two of them are within twice that.
    fn order_error(a: &[f32], b: &[f32], bound: &[f64], k: usize) -> f64 {
        a.iter()
            .zip(b)
            .zip(bound)
            .map(|((x, y), s)| {
                (f64::from(*x) - f64::from(*y)).abs() / (k as f64 * 2f64.powi(-23) * s + 1e-30)
            })
            .fold(0.0, f64::max)
    }

    /// `sum_k |a[i, k]| |b[k, j]|` for `a [m, k]` and `b [k, n]` given as `b_at(k, j)`.
    fn abs_products(
        a: &[f32],
        m: usize,
        k: usize,
        n: usize,
        b_at: impl Fn(usize, usize) -> f32,
    ) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| f64::from(a[i * k + p].abs()) * f64::from(b_at(p, j).abs()))
                    .sum();
            }
        }
        out
    }

    #[test]
    fn a_packed_layer_trains_like_the_dense_layer_of_the_same_bf16_values() {
        if !bf16::simd_available() {
            eprintln!("skipped: this CPU lacks AVX-512 BF16");
            return;
        }
        let (rows, inp, out) = (13, 70, 45);
        let w = bf16_values(out * inp, 1);
        let x = bf16_values(rows * inp, 2);
        // Output gradient with bf16 values, so the packed backward's rounding of dy changes nothing.
        let g = bf16_values(rows * out, 3);
        let w_t = Tensor::from_vec(w.clone(), (out, inp), &Device::Cpu).unwrap();
        let mut dense = LoraLinear::dense("model.layers.0.self_attn.q_proj", w_t.clone()).unwrap();
        let mut packed = LoraLinear::dense("model.layers.0.self_attn.q_proj", w_t).unwrap();
        packed
            .set_quantized(Arc::new(Bf16Weight::pack(&w, out, inp).unwrap()))
            .unwrap();
        let config = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into()],
        };
        dense.add_lora(&config, 7).unwrap();
        packed.add_lora(&config, 7).unwrap();
        // A non-zero B, so the update contributes to the output and to dA.
        let b = Tensor::from_vec(bf16_values(out * 4, 4), (out, 4), &Device::Cpu).unwrap();
        for layer in [&dense, &packed] {
            layer.lora().unwrap().b.set(&b).unwrap();
        }
        let grads = |layer: &LoraLinear| {
            let xv =
                Var::from_tensor(&Tensor::from_vec(x.clone(), (rows, inp), &Device::Cpu).unwrap())
                    .unwrap();
            let y = layer
                .forward(xv.as_tensor(), &ForwardCtx::train(42, 0, 0))
                .unwrap();
            let gt = Tensor::from_vec(g.clone(), (rows, out), &Device::Cpu).unwrap();
            let store = (&y * &gt).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let lora = layer.lora().unwrap();
            (
                flat(&y),
                flat(store.get(xv.as_tensor()).unwrap()),
                flat(store.get(lora.a.as_tensor()).unwrap()),
                flat(store.get(lora.b.as_tensor()).unwrap()),
            )
        };
        let (y0, dx0, da0, db0) = grads(&dense);
        let (y1, dx1, da1, db1) = grads(&packed);
        // The frozen products differ only in summation order; the LoRA terms are the same f32 code on the same
        // inputs, so their share of the error is the base product's rounding reaching them through dy.
        let fwd_bound = abs_products(&x, rows, inp, out, |p, j| w[j * inp + p]);
        assert!(order_error(&y0, &y1, &fwd_bound, inp) < 1.0, "forward");
        let bwd_bound = abs_products(&g, rows, out, inp, |p, j| w[p * inp + j]);
        assert!(order_error(&dx0, &dx1, &bwd_bound, out) < 1.0, "dx");
        // dA and dB do not go through the frozen weight: the same bits.
        assert_eq!(da0, da1, "dA");
        assert_eq!(db0, db1, "dB");
        // And outside training (the decoding path).
        let xt = Tensor::from_vec(x.clone(), (rows, inp), &Device::Cpu).unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let e0 = flat(dense.forward(&xt, &ForwardCtx::eval()).unwrap());
        let e1 = flat(packed.forward(&xt, &ForwardCtx::eval()).unwrap());
        assert!(order_error(&e0, &e1, &fwd_bound, inp) < 1.0, "eval forward");
    }

    #[test]
    fn the_packs_hold_the_rounded_weight_and_reject_a_wrong_length() {
        let w: Vec<f32> = (0..6 * 5).map(|i| i as f32 * 0.37 - 4.0).collect();
        let packed = Bf16Weight::pack(&w, 6, 5).unwrap();
        let dense = packed.matrix().unwrap().flatten_all().unwrap();
        let want: Vec<f32> = w
            .iter()
            .map(|&v| bf16::from_bf16(bf16::to_bf16(v)))
            .collect();
        assert_eq!(dense.to_vec1::<f32>().unwrap(), want);
        assert_eq!(packed.dims(), (6, 5));
        let err = Bf16Weight::pack(&w, 5, 5).unwrap_err().to_string();
        assert!(err.contains("30 values for a [5, 5] weight"), "{err}");
        let err = packed.forward(&[0.0; 7], 2).unwrap_err().to_string();
        assert!(err.contains("7 values for 2 rows of 5"), "{err}");
    }
}
