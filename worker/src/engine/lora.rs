//! The LoRA linear layer: a frozen base weight (dense, or quantised and dequantised on use for QLoRA) plus an
//! optional trainable low-rank update `(alpha / r) * B(A(dropout(x)))`, initialised as PEFT does. Dropout masks
//! come from `tandem_kernels::dropout`, the generator the CUDA kernels draw from, so a CPU and a GPU run of the
//! same job drop the same elements.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor, Var};
use tandem_kernels::dropout;

use super::error::{EngineError, Result};
use super::fused;
use super::ops::{self, DenseWeight, Side, WeightSource};
use super::rng::{self, Purpose, Stream};

/// LoRA hyperparameters of one adapter (PEFT semantics: scale `alpha / r`, bias none).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names (or dotted suffixes) that get an adapter, e.g. `q_proj`, `v_proj`.
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// The update's scale `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Checks the values a user could get wrong.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(EngineError::Input("lora.r must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(EngineError::Input(format!(
                "lora.dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(EngineError::Input(
                "lora.target_modules must name at least one module".into(),
            ));
        }
        Ok(())
    }

    /// Whether the module at dotted `path` is targeted: PEFT's rule (the whole path, or its last components,
    /// equal a target).
    pub fn targets(&self, path: &str) -> bool {
        self.target_modules.iter().any(|t| module_matches(path, t))
    }

    /// Refuses a target that matches none of a model's module `paths`, naming it.
    pub fn check_targets<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut matched = vec![false; self.target_modules.len()];
        for path in paths {
            for (m, t) in matched.iter_mut().zip(&self.target_modules) {
                *m |= module_matches(path, t);
            }
        }
        match matched.iter().position(|m| !m) {
            None => Ok(()),
            Some(i) => Err(EngineError::Input(format!(
                "lora.target_modules: `{}` matches no module of this model",
                self.target_modules[i]
            ))),
        }
    }
}

impl From<&tandem_experiments::manifest::LoraSpec> for LoraConfig {
    fn from(spec: &tandem_experiments::manifest::LoraSpec) -> Self {
        Self {
            r: spec.r,
            alpha: spec.alpha,
            dropout: spec.dropout,
            target_modules: spec.target_modules.clone(),
        }
    }
}

/// PEFT's rule: a module at dotted `path` is target `t` when the whole path, or its last components, equal `t`.
fn module_matches(path: &str, t: &str) -> bool {
    path == t || path.strip_suffix(t).is_some_and(|rest| rest.ends_with('.'))
}

/// A fresh LoRA `A` (`r x fan_in`) of the module at `path`, as PEFT initialises it: Kaiming-uniform
/// (a = sqrt(5)) from the seeded stream keyed by `(seed, path)`. Every engine starts from these values.
pub fn initial_a(path: &str, r: usize, fan_in: usize, seed: u64) -> Vec<f32> {
    // kaiming_uniform_(a = sqrt(5)): gain = sqrt(2 / (1 + 5)), bound = gain * sqrt(3 / fan_in) = 1/sqrt(fan_in).
    let bound = 1.0 / (fan_in as f64).sqrt();
    let mut stream = Stream::new(seed, Purpose::LoraInit, &[rng::name_hash(path)]);
    (0..r * fan_in)
        .map(|_| ((stream.uniform_f64() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

/// Per-forward context: whether this is a training forward (dropout active) and the counters that name the
/// dropout streams (`tandem_kernels::dropout::training_stream`), so masks are reproducible and independent of
/// threads and history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardCtx {
    pub training: bool,
    pub seed: u64,
    /// Optimizer update, from 0 (or any counter the caller advances between forwards).
    pub step: u64,
    /// Micro-batch index within the update.
    pub micro: u64,
}

impl ForwardCtx {
    /// An inference forward: no dropout.
    pub fn eval() -> Self {
        Self {
            training: false,
            seed: 0,
            step: 0,
            micro: 0,
        }
    }

    /// A training forward with masks named by (seed, step, micro) and each layer's (layer, site).
    pub fn train(seed: u64, step: u64, micro: u64) -> Self {
        Self {
            training: true,
            seed,
            step,
            micro,
        }
    }
}

/// The trainable part of one layer.
#[derive(Debug)]
pub struct LoraWeights {
    /// `[r, in]`, Kaiming-uniform (a = sqrt(5)) as PEFT.
    pub a: Var,
    /// `[out, r]`, zeros at initialisation.
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
}

/// The frozen base weight of a linear layer.
#[derive(Debug, Clone)]
pub enum FrozenWeight {
    /// Dense f32 `[out, in]`.
    Dense(Tensor),
    /// Held quantised; dequantised whenever the forward or backward needs it.
    Quantized(Arc<dyn QuantizedWeight>),
}

/// A weight stored in a compact form (NF4 for QLoRA).
pub trait QuantizedWeight: WeightSource {
    /// `(out, in)`.
    fn dims(&self) -> (usize, usize);
    /// Bytes the stored form occupies.
    fn storage_bytes(&self) -> usize;
}

/// A linear layer without bias: frozen `W` plus an optional LoRA update.
#[derive(Debug)]
pub struct LoraLinear {
    /// Dotted module path as in the Hugging Face model, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    pub in_features: usize,
    pub out_features: usize,
    source: Arc<dyn WeightSource>,
    base: FrozenWeight,
    lora: Option<LoraWeights>,
    /// Whether a quantised base is also held dequantised (see [`LoraLinear::hold_dequantized`]).
    held: bool,
}

impl LoraLinear {
    /// A frozen linear layer from a dense `[out, in]` weight.
    pub fn dense(path: impl Into<String>, weight: Tensor) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        let path = path.into();
        let source: Arc<dyn WeightSource> = Arc::new(DenseWeight(weight.clone()));
        Ok(Self {
            path,
            in_features,
            out_features,
            source,
            base: FrozenWeight::Dense(weight),
            lora: None,
            held: false,
        })
    }

    /// A frozen linear layer whose weight is held quantised.
    pub fn quantized(path: impl Into<String>, weight: Arc<dyn QuantizedWeight>) -> Self {
        let (out_features, in_features) = weight.dims();
        let path = path.into();
        let source: Arc<dyn WeightSource> = weight.clone();
        Self {
            path,
            in_features,
            out_features,
            source,
            base: FrozenWeight::Quantized(weight),
            lora: None,
            held: false,
        }
    }

    /// The frozen weight.
    pub fn base(&self) -> &FrozenWeight {
        &self.base
    }

    /// Replaces the frozen weight by a quantised one (same shape).
    pub fn set_quantized(&mut self, weight: Arc<dyn QuantizedWeight>) -> Result<()> {
        if weight.dims() != (self.out_features, self.in_features) {
            return Err(EngineError::Input(format!(
                "{}: quantised weight is {:?}, layer is ({}, {})",
                self.path,
                weight.dims(),
                self.out_features,
                self.in_features
            )));
        }
        self.source = weight.clone();
        self.base = FrozenWeight::Quantized(weight);
        self.held = false;
        Ok(())
    }

    /// Keeps the dequantised form of a quantised base weight for the layer's lifetime instead of dequantising
    /// on every use: the same values (dequantisation is deterministic), more memory, no per-use decode cost.
    /// Returns the bytes added (0 for a dense or already held weight).
    pub fn hold_dequantized(&mut self) -> Result<usize> {
        if !matches!(self.base, FrozenWeight::Quantized(_)) || self.held {
            return Ok(0);
        }
        let dense = self.source.matrix()?;
        self.source = Arc::new(DenseWeight(dense));
        self.held = true;
        Ok(self.in_features * self.out_features * 4)
    }

    /// Computes with `source` in place of decoding a quantised base weight on every use (the bf16 packs of an
    /// NF4 weight); the quantised form stays the layer's base.
    pub fn hold_source(&mut self, source: Arc<dyn WeightSource>) -> Result<()> {
        if !matches!(self.base, FrozenWeight::Quantized(_)) {
            return Err(EngineError::Input(format!(
                "{}: only a quantised weight computes through another source",
                self.path
            )));
        }
        self.source = source;
        self.held = true;
        Ok(())
    }

    /// The dense base weight `[out, in]` (dequantised if held quantised).
    pub fn base_matrix(&self) -> Result<Tensor> {
        Ok(self.source.matrix()?)
    }

    /// Bytes the frozen weight occupies in memory.
    pub fn base_bytes(&self) -> usize {
        match &self.base {
            FrozenWeight::Dense(t) => t.elem_count() * 4,
            FrozenWeight::Quantized(q) if self.held => {
                q.storage_bytes() + self.in_features * self.out_features * 4
            }
            FrozenWeight::Quantized(q) => q.storage_bytes(),
        }
    }

    /// Adds a fresh LoRA update, initialised as PEFT does: A Kaiming-uniform(a = sqrt(5)) from the seeded
    /// stream keyed by `(seed, path)`, B zeros.
    pub fn add_lora(&mut self, config: &LoraConfig, seed: u64) -> Result<()> {
        let (r, fan_in) = (config.r, self.in_features);
        let a = initial_a(&self.path, r, fan_in, seed);
        let a = Var::from_tensor(&Tensor::from_vec(a, (r, fan_in), &Device::Cpu)?)?;
        let b = Var::from_tensor(&Tensor::zeros(
            (self.out_features, r),
            candle_core::DType::F32,
            &Device::Cpu,
        )?)?;
        self.lora = Some(LoraWeights {
            a,
            b,
            scale: config.scale(),
            dropout: config.dropout,
        });
        Ok(())
    }

    /// Sets LoRA weights from values (adapter loading); shapes must be `[r, in]` and `[out, r]`.
    pub fn set_lora(&mut self, a: Tensor, b: Tensor, scale: f64, dropout: f64) -> Result<()> {
        let (r, in_f) = a.dims2()?;
        let (out_f, r2) = b.dims2()?;
        if in_f != self.in_features || out_f != self.out_features || r != r2 {
            return Err(EngineError::Input(format!(
                "{}: lora_A {:?} / lora_B {:?} do not fit a layer of {} -> {} features",
                self.path,
                a.dims(),
                b.dims(),
                self.in_features,
                self.out_features
            )));
        }
        self.lora = Some(LoraWeights {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scale,
            dropout,
        });
        Ok(())
    }

    /// The LoRA update, if this layer has one.
    pub fn lora(&self) -> Option<&LoraWeights> {
        self.lora.as_ref()
    }

    /// Removes the LoRA update.
    pub fn clear_lora(&mut self) {
        self.lora = None;
    }

    /// `x W^T + scale * dropout(x) A^T B^T` for `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let Some(lora) = &self.lora else {
            return ops::frozen_matmul(x, &self.source);
        };
        if ctx.training {
            // One autograd node for the whole layer (see `LoraMatmul`).
            let mask = if lora.dropout > 0.0 {
                Some(self.dropout_mask(x, lora.dropout, ctx)?)
            } else {
                None
            };
            let op = LoraMatmul {
                weight: Arc::clone(&self.source),
                scale: lora.scale,
                mask,
            };
            return Ok(x
                .contiguous()?
                .apply_op3(lora.a.as_tensor(), lora.b.as_tensor(), op)?);
        }
        let base = ops::frozen_matmul(x, &self.source)?;
        let dims = x.dims().to_vec();
        let rows = x.elem_count() / self.in_features;
        let flat = x.reshape((rows, self.in_features))?;
        // Outside training the update is a constant: detached, nothing downstream records autograd ops (and
        // the frozen matmuls take their inference path).
        let (a, b) = (lora.a.as_detached_tensor(), lora.b.as_detached_tensor());
        let down = flat.matmul(&a.t()?)?;
        let up = down.matmul(&b.t()?)?;
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.out_features;
        let update = (up * lora.scale)?.reshape(out_dims)?;
        Ok((base + update)?)
    }

    /// Inverted dropout: element `i` of `x` (row-major) is kept when element `i` of the layer's keep mask is 1,
    /// and then scaled by `1 / (1 - p)`. The mask is `tandem_kernels::dropout::keep_mask` of the stream
    /// `training_stream(update, micro, layer, site)`, `(layer, site)` read off the module path.
    #[cfg(test)]
    fn dropout(&self, x: &Tensor, p: f64, ctx: &ForwardCtx) -> Result<Tensor> {
        Ok((x * self.dropout_mask(x, p, ctx)?)?)
    }

    /// The values [`LoraLinear::dropout`] multiplies `x` by: `1 / (1 - p)` where kept, 0 where dropped.
    fn dropout_mask(&self, x: &Tensor, p: f64, ctx: &ForwardCtx) -> Result<Tensor> {
        let p = p as f32;
        let keep = dropout::locate(&self.path)
            .and_then(|(layer, site)| dropout::training_stream(ctx.step, ctx.micro, layer, site))
            .and_then(|stream| dropout::keep_mask(ctx.seed, stream, x.elem_count(), p))
            .map_err(|e| EngineError::Input(format!("LoRA dropout: {e}")))?;
        let scale = dropout::keep_scale(p);
        let mask: Vec<f32> = keep
            .into_iter()
            .map(|k| if k == 1 { scale } else { 0.0 })
            .collect();
        Ok(Tensor::from_vec(mask, x.shape(), x.device())?)
    }
}

/// A training forward of a LoRA layer, `y = x W^T + scale * ((x * mask) A^T) B^T` with the frozen `W` and the
/// dropout mask held by the op, as one autograd node over `(x, A, B)`. As separate candle ops the layer was
/// nine nodes, each keeping its output for the backward and summing its gradient into a fresh zero tensor; here
/// the backward recomputes the rank-`r` product `(x * mask) A^T` (cheap) and returns `dx`, `dA` and `dB`
/// directly. The forward runs the same products in the same order as the separate ops, so its values are
/// those of [`LoraLinear::forward`] outside training.
struct LoraMatmul {
    weight: Arc<dyn WeightSource>,
    scale: f64,
    /// The dropout multipliers (shape of `x`), or `None` without dropout.
    mask: Option<Tensor>,
}

impl LoraMatmul {
    /// `x * mask` (or `x`) as `[rows, in]`.
    fn dropped(&self, x: &Tensor, rows: usize, in_f: usize) -> candle_core::Result<Tensor> {
        let x = match &self.mask {
            Some(m) => (x * m)?,
            None => x.clone(),
        };
        x.reshape((rows, in_f))
    }
}

impl CustomOp3 for LoraMatmul {
    fn name(&self) -> &'static str {
        "lora-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let x = Tensor::from_slice(fused::slice(s1, l1, name)?, l1.shape(), &Device::Cpu)?;
        let a = Tensor::from_slice(fused::slice(s2, l2, name)?, l2.shape(), &Device::Cpu)?;
        let b = Tensor::from_slice(fused::slice(s3, l3, name)?, l3.shape(), &Device::Cpu)?;
        let ((_, in_f), (out_f, _)) = (a.dims2()?, b.dims2()?);
        let rows = l1.shape().elem_count() / in_f.max(1);
        let base = ops::frozen_product(&*self.weight, &x.reshape((rows, in_f))?, Side::Forward)?;
        let up = self
            .dropped(&x, rows, in_f)?
            .matmul(&a.t()?)?
            .matmul(&b.t()?)?;
        let y = (base + (up * self.scale)?)?;
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = out_f;
        Ok((CpuStorage::F32(fused::values_of(&y)?), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let x_tracked = x.track_op();
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let ((_, in_f), (out_f, _)) = (a.dims2()?, b.dims2()?);
        let rows = x.elem_count() / in_f.max(1);
        let dy = dy.detach().contiguous()?.reshape((rows, out_f))?;
        let xd = self.dropped(&x, rows, in_f)?;
        let down = xd.matmul(&a.t()?)?;
        let dys = (&dy * self.scale)?;
        let db = dys.t()?.matmul(&down)?;
        let d_down = dys.matmul(&b)?;
        let da = d_down.t()?.matmul(&xd)?;
        if !x_tracked {
            // The first block's input: nothing upstream needs its gradient.
            return Ok((None, Some(da), Some(db)));
        }
        let dxd = d_down.matmul(&a)?.reshape(x.shape())?;
        let dx_lora = match &self.mask {
            Some(m) => (dxd * m)?,
            None => dxd,
        };
        let dx_base = ops::frozen_product(&*self.weight, &dy, Side::Backward)?;
        let dx = (dx_base.reshape(x.shape())? + dx_lora)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dropout: f64) -> LoraConfig {
        LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout,
            target_modules: vec!["q_proj".into()],
        }
    }

    #[test]
    fn fresh_lora_leaves_the_output_unchanged_and_a_is_bounded() {
        let w = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((4, 6))
            .unwrap();
        let mut layer = LoraLinear::dense("model.layers.0.self_attn.q_proj", w).unwrap();
        let x = Tensor::ones((2, 3, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let before = layer
            .forward(&x, &ForwardCtx::eval())
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        layer.add_lora(&config(0.0), 42).unwrap();
        let after = layer
            .forward(&x, &ForwardCtx::eval())
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(before, after);
        let a = layer
            .lora()
            .unwrap()
            .a
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let bound = 1.0 / 6f32.sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound));
        assert!(a.iter().any(|v| v.abs() > bound / 2.0));
    }

    #[test]
    fn init_and_dropout_are_seeded() {
        let w = Tensor::ones((3, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let make = |seed| {
            let mut l = LoraLinear::dense("m.q_proj", w.clone()).unwrap();
            l.add_lora(&config(0.5), seed).unwrap();
            l.lora()
                .unwrap()
                .a
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(make(1), make(1));
        assert_ne!(make(1), make(2));

        let (l, x) = layer_and_input("model.layers.0.self_attn.q_proj", 8, 5, 0.5);
        let m1 = l
            .dropout(&x, 0.5, &ForwardCtx::train(3, 1, 0))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let m2 = l
            .dropout(&x, 0.5, &ForwardCtx::train(3, 1, 0))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let m3 = l
            .dropout(&x, 0.5, &ForwardCtx::train(3, 2, 0))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m1, m2);
        assert_ne!(m1, m3);
        assert!(m1.iter().flatten().all(|&v| v == 0.0 || v == 2.0));
    }

    /// A layer `path` of ones `[3, in_f]` with a fresh LoRA of dropout `p`, and an input of ones `[rows, in_f]`.
    fn layer_and_input(path: &str, rows: usize, in_f: usize, p: f64) -> (LoraLinear, Tensor) {
        let w = Tensor::ones((3, in_f), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut l = LoraLinear::dense(path, w).unwrap();
        l.add_lora(&config(p), 1).unwrap();
        let x = Tensor::ones((rows, in_f), candle_core::DType::F32, &Device::Cpu).unwrap();
        (l, x)
    }

    /// The layer's dropout on a tensor of ones: `1 / (1 - p)` where kept, 0 where dropped.
    fn dropped_ones(path: &str, shape: (usize, usize), p: f64, ctx: &ForwardCtx) -> Vec<f32> {
        let (l, x) = layer_and_input(path, shape.0, shape.1, p);
        l.dropout(&x, p, ctx)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn dropout_masks_are_the_gpu_kernels_bits() {
        use tandem_kernels::dropout::{Site, keep_mask, keep_scale, training_stream};
        let (rows, cols) = (6, 37);
        for (path, layer, site, p, seed, step, micro) in [
            (
                "model.layers.3.self_attn.v_proj",
                3,
                Site::VProj,
                0.1,
                42,
                7,
                0,
            ),
            (
                "model.layers.0.mlp.down_proj",
                0,
                Site::DownProj,
                0.05,
                1,
                0,
                3,
            ),
            (
                "decoder.block.1.layer.1.EncDecAttention.k",
                1,
                Site::DecoderCrossK,
                0.5,
                9,
                2,
                1,
            ),
            (
                "encoder.block.11.layer.1.DenseReluDense.wi_0",
                11,
                Site::EncoderWi0,
                0.3,
                9,
                2,
                1,
            ),
        ] {
            let got = dropped_ones(path, (rows, cols), p, &ForwardCtx::train(seed, step, micro));
            let stream = training_stream(step, micro, layer, site).unwrap();
            let want: Vec<f32> = keep_mask(seed, stream, rows * cols, p as f32)
                .unwrap()
                .into_iter()
                .map(|k| f32::from(k) * keep_scale(p as f32))
                .collect();
            assert_eq!(got, want, "{path}");
            assert!(got.contains(&0.0), "{path}: something is dropped");
        }
    }

    #[test]
    fn dropout_masks_differ_per_micro_batch_layer_and_site() {
        let at =
            |path: &str, micro| dropped_ones(path, (4, 16), 0.5, &ForwardCtx::train(5, 2, micro));
        let base = at("model.layers.1.self_attn.q_proj", 0);
        assert_ne!(base, at("model.layers.1.self_attn.q_proj", 1));
        assert_ne!(base, at("model.layers.2.self_attn.q_proj", 0));
        assert_ne!(base, at("model.layers.1.self_attn.k_proj", 0));
        assert_eq!(base, at("model.layers.1.self_attn.q_proj", 0));
    }

    #[test]
    fn dropout_on_a_module_without_a_stream_name_is_an_error() {
        let (l, x) = layer_and_input("m.q_proj", 2, 5, 0.5);
        let e = l
            .forward(&x, &ForwardCtx::train(0, 0, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.q_proj"), "{e}");
        // Inference never draws a mask.
        assert!(l.forward(&x, &ForwardCtx::eval()).is_ok());
    }

    #[test]
    fn gradients_reach_a_and_b_only() {
        let (l, x) = layer_and_input("m.q_proj", 2, 5, 0.0);
        let loss = l
            .forward(&x, &ForwardCtx::train(0, 0, 0))
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let lora = l.lora().unwrap();
        // B starts at zero, so A's gradient is zero and B's is not.
        let gb = grads
            .get(lora.b.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert!(gb.to_scalar::<f32>().unwrap() > 0.0);
        assert!(grads.get(lora.a.as_tensor()).is_some());
    }

    #[test]
    fn the_fused_training_forward_matches_the_separate_ops_in_values_and_gradients() {
        let (rows, in_f, out_f, r) = (5, 12, 7, 3);
        let vals = |n: usize, k: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| {
                    ((i.wrapping_mul(2_654_435_761).wrapping_add(k) >> 8) % 1000) as f32 / 500.0
                        - 1.0
                })
                .collect()
        };
        let w = Tensor::from_vec(vals(out_f * in_f, 1), (out_f, in_f), &Device::Cpu).unwrap();
        let mut l = LoraLinear::dense("model.layers.1.self_attn.q_proj", w.clone()).unwrap();
        let a = Tensor::from_vec(vals(r * in_f, 2), (r, in_f), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(vals(out_f * r, 3), (out_f, r), &Device::Cpu).unwrap();
        l.set_lora(a, b, 2.0, 0.3).unwrap();
        let x = Var::from_tensor(
            &Tensor::from_vec(vals(rows * in_f, 4), (1, rows, in_f), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let ctx = ForwardCtx::train(7, 1, 0);
        let lora = l.lora().unwrap();
        let probe =
            Tensor::from_vec(vals(rows * out_f, 5), (1, rows, out_f), &Device::Cpu).unwrap();
        let fused = l.forward(x.as_tensor(), &ctx).unwrap();
        let dropped = l.dropout(x.as_tensor(), 0.3, &ctx).unwrap();
        let slow = (x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap()
            + (dropped
                .broadcast_matmul(&lora.a.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_matmul(&lora.b.as_tensor().t().unwrap())
                .unwrap()
                * 2.0)
                .unwrap())
        .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let close = |p: &[f32], q: &[f32], what: &str| {
            assert_eq!(p.len(), q.len());
            for (u, v) in p.iter().zip(q) {
                assert!(
                    (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                    "{what}: {u} vs {v}"
                );
            }
        };
        close(&flat(&fused), &flat(&slow), "y");
        let gf = (fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = (slow * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (t, what) in [
            (x.as_tensor(), "dx"),
            (lora.a.as_tensor(), "dA"),
            (lora.b.as_tensor(), "dB"),
        ] {
            close(&flat(gf.get(t).unwrap()), &flat(gs.get(t).unwrap()), what);
        }
    }

    #[test]
    fn targets_follow_peft_suffix_rule() {
        let c = LoraConfig {
            r: 1,
            alpha: 1.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v".into()],
        };
        assert!(c.targets("model.layers.3.self_attn.q_proj"));
        assert!(c.targets("encoder.block.0.layer.0.SelfAttention.v"));
        assert!(!c.targets("model.layers.3.self_attn.qq_proj"));
        assert!(!c.targets("model.layers.3.self_attn.o_proj"));
    }
}
