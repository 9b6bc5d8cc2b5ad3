//! Tensor operations the models share: the frozen linear map (a custom op whose backward computes only the input
//! gradient, never the frozen weight's), RMS norm, SiLU, softmax, and the token cross-entropy.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Shape, Tensor};

use super::error::Result;
use super::packed::Bf16Weight;

/// Where a frozen weight matrix `[out, in]` comes from when an op needs it.
pub trait WeightSource: Send + Sync + std::fmt::Debug {
    /// The dense f32 matrix `[out, in]` (dequantised if stored quantised).
    fn matrix(&self) -> candle_core::Result<Tensor>;

    /// The weight packed for the bf16 GEMM, when the model computes its frozen products in bf16; the products
    /// then use it instead of [`WeightSource::matrix`].
    fn bf16(&self) -> Option<&Bf16Weight> {
        None
    }
}

/// A dense f32 weight held in memory.
#[derive(Debug, Clone)]
pub struct DenseWeight(pub Tensor);

impl WeightSource for DenseWeight {
    fn matrix(&self) -> candle_core::Result<Tensor> {
        Ok(self.0.clone())
    }
}

/// `y = x W^T` with a frozen `W`: autograd flows to `x` only.
struct FrozenMatmul {
    weight: Arc<dyn WeightSource>,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::fused::slice(storage, layout, "frozen-matmul")?;
        if let Some(packed) = self.weight.bf16() {
            let (y, dims) = bf16_product(x, layout.dims(), packed, Side::Forward)?;
            return Ok((CpuStorage::F32(y), Shape::from(dims)));
        }
        let w = self.weight.matrix()?;
        let (out_f, in_f) = w.dims2()?;
        let dims = layout.dims();
        let last = *dims.last().unwrap_or(&0);
        if last != in_f {
            candle_core::bail!("frozen-matmul: input has {last} features, weight expects {in_f}")
        }
        let rows = x.len() / in_f.max(1);
        let xt = Tensor::from_slice(x, (rows, in_f), &Device::Cpu)?;
        let y = xt.matmul(&w.t()?)?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = out_f;
        let values = y.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(values), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if self.weight.bf16().is_some() {
            return Ok(Some(frozen_product(
                &*self.weight,
                grad_res,
                Side::Backward,
            )?));
        }
        let w = self.weight.matrix()?;
        let (out_f, in_f) = w.dims2()?;
        let g = grad_res.contiguous()?;
        let rows = g.elem_count() / out_f.max(1);
        let gx = g.reshape((rows, out_f))?.matmul(&w)?;
        let _ = in_f;
        Ok(Some(gx.reshape(arg.shape())?))
    }
}

/// Which product of a frozen weight: `x W^T` or the input gradient `dy W`.
#[derive(Clone, Copy)]
pub(crate) enum Side {
    Forward,
    Backward,
}

/// `x W^T` (forward) or `x W` (backward) through the bf16 packs, for `x` of shape `dims` (`[..., in]` or
/// `[..., out]`): the values and dims of the output, which keeps the leading dims.
fn bf16_product(
    x: &[f32],
    dims: &[usize],
    packed: &Bf16Weight,
    side: Side,
) -> candle_core::Result<(Vec<f32>, Vec<usize>)> {
    let (out_f, in_f) = packed.dims();
    let (width, out_width) = match side {
        Side::Forward => (in_f, out_f),
        Side::Backward => (out_f, in_f),
    };
    let last = *dims.last().unwrap_or(&0);
    if last != width {
        candle_core::bail!("frozen-matmul: input has {last} features, weight expects {width}")
    }
    let rows = x.len() / width.max(1);
    let y = match side {
        Side::Forward => packed.forward(x, rows),
        Side::Backward => packed.backward(x, rows),
    }
    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = out_width;
    Ok((y, out_dims))
}

/// `a W^T` (forward) or `a W` (backward) of a 2-D `a`, through the bf16 packs when the weight has them (which
/// also take `a` of any rank, `[..., in]` or `[..., out]`).
pub(crate) fn frozen_product(
    weight: &dyn WeightSource,
    a: &Tensor,
    side: Side,
) -> candle_core::Result<Tensor> {
    if let Some(packed) = weight.bf16() {
        let a = a.contiguous()?;
        let values = super::fused::values_of(&a)?;
        let (y, dims) = bf16_product(&values, a.dims(), packed, side)?;
        return Tensor::from_vec(y, dims, &Device::Cpu);
    }
    let w = weight.matrix()?;
    match side {
        Side::Forward => a.matmul(&w.t()?),
        Side::Backward => a.matmul(&w),
    }
}

/// `x W^T` for a frozen weight; `x` is `[..., in]`.
pub fn frozen_matmul(x: &Tensor, weight: &Arc<dyn WeightSource>) -> Result<Tensor> {
    let x = x.contiguous()?;
    if !x.track_op() {
        // No gradient needed: a plain matmul, no custom-op bookkeeping.
        if weight.bf16().is_some() {
            return Ok(frozen_product(&**weight, &x, Side::Forward)?);
        }
        let w = weight.matrix()?;
        let (out_f, in_f) = w.dims2()?;
        let mut dims = x.dims().to_vec();
        let rows = x.elem_count() / in_f.max(1);
        *dims.last_mut().expect("rank >= 1") = out_f;
        if rows <= super::rowdot::MAX_ROWS && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
            // Decoding: a few rows; dot products straight off the weight rows beat packing it for a GEMM.
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let w = w.contiguous()?;
            let y = {
                let (storage, layout) = w.storage_and_layout();
                let (candle_core::Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) =
                    (&*storage, layout.contiguous_offsets())
                else {
                    return Err(candle_core::Error::Msg(
                        "frozen-matmul: expected a contiguous f32 CPU weight".into(),
                    )
                    .into());
                };
                super::rowdot::matmul_wt(&xs, rows, &values[start..end], out_f)
            };
            return Ok(Tensor::from_vec(y, dims, &Device::Cpu)?);
        }
        let y = x.reshape((rows, in_f))?.matmul(&w.t()?)?;
        return Ok(y.reshape(dims)?);
    }
    Ok(x.apply_op1(FrozenMatmul {
        weight: Arc::clone(weight),
    })?)
}

/// RMS norm over the last dimension: `x / sqrt(mean(x^2) + eps) * weight` (LLaMA and T5 layer norms).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let hidden = x.dim(D::Minus1)?;
    let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / hidden as f64)?;
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(weight)?)
}

/// SiLU: `x * sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok((x / (x.neg()?.exp()? + 1.0)?)?)
}

/// Softmax over the last dimension as one op: the backward `dx = y * (dy - sum(dy * y))` needs only the output,
/// so attention keeps one tensor per layer for autograd instead of five.
struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "softmax-last"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::fused::slice(storage, layout, "softmax-last")?;
        let dim = *layout.dims().last().unwrap_or(&1);
        let mut out = x.to_vec();
        out.chunks_exact_mut(dim.max(1))
            .for_each(super::fused::softmax_in_place);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some(grad_res.broadcast_sub(&dot)?.mul(res)?))
    }
}

/// Softmax over the last dimension, stable against large values.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    if !x.track_op() {
        return Ok(x.apply_op1_no_bwd(&SoftmaxLast)?);
    }
    Ok(x.apply_op1(SoftmaxLast)?)
}

/// The same softmax from plain tensor operations (the reference the fused op is tested against).
pub fn softmax_last_slow(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

/// Sum over positions of `-log softmax(logits)[label]` for labels >= 0; `logits` is `[n, vocab]`, labels
/// `< 0` (the -100 convention) are ignored. Returns the scalar sum and the number of counted tokens.
pub fn cross_entropy_sum(logits: &Tensor, labels: &[i64]) -> Result<(Tensor, usize)> {
    let (n, vocab) = logits.dims2()?;
    debug_assert_eq!(n, labels.len());
    let keep: Vec<u32> = (0..n as u32).filter(|&i| labels[i as usize] >= 0).collect();
    if keep.is_empty() {
        return Ok((Tensor::zeros((), DType::F32, logits.device())?, 0));
    }
    let targets: Vec<u32> = keep.iter().map(|&i| labels[i as usize] as u32).collect();
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(super::error::EngineError::Input(format!(
            "label token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let rows = if keep.len() == n {
        logits.clone()
    } else {
        logits.index_select(&Tensor::new(keep.as_slice(), logits.device())?, 0)?
    };
    let lse = rows.log_sum_exp(D::Minus1)?;
    let idx = Tensor::new(targets.as_slice(), logits.device())?.unsqueeze(1)?;
    let picked = rows.gather(&idx, 1)?.squeeze(1)?;
    Ok(((lse - picked)?.sum_all()?, keep.len()))
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;

    #[test]
    fn frozen_matmul_matches_plain_matmul_and_backprops_to_input_only() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
        let src: Arc<dyn WeightSource> = Arc::new(DenseWeight(w.clone()));
        let x = Var::new(&[[1f32, 0., -1.], [0.5, 0.5, 0.5]], &dev).unwrap();
        let y = frozen_matmul(x.as_tensor(), &src).unwrap();
        let expect = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            expect.to_vec2::<f32>().unwrap()
        );
        let grads = y.sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(gx, vec![vec![5., 7., 9.], vec![5., 7., 9.]]);
    }

    #[test]
    fn fused_softmax_matches_slow_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::new(&[[1f32, 2., -3., 0.5], [10., 10., -1e30, 0.]], &dev).unwrap();
        let w = Tensor::new(&[[0.3f32, -1., 2., 0.1], [1., 0.5, -0.2, 3.]], &dev).unwrap();
        let fast = softmax_last(x.as_tensor()).unwrap();
        let slow = softmax_last_slow(x.as_tensor()).unwrap();
        let (a, b) = (
            fast.to_vec2::<f32>().unwrap(),
            slow.to_vec2::<f32>().unwrap(),
        );
        for (ra, rb) in a.iter().zip(&b) {
            for (va, vb) in ra.iter().zip(rb) {
                assert!((va - vb).abs() < 1e-6);
            }
        }
        let ga = (fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let ga = ga.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let gb = gb.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        for (ra, rb) in ga.iter().zip(&gb) {
            for (va, vb) in ra.iter().zip(rb) {
                assert!((va - vb).abs() < 1e-5, "{va} vs {vb}");
            }
        }
    }

    #[test]
    fn cross_entropy_ignores_masked_labels() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[0f32, 0.], [10., 0.], [0., 10.]], &dev).unwrap();
        let (sum, n) = cross_entropy_sum(&logits, &[0, -100, 1]).unwrap();
        assert_eq!(n, 2);
        let v = sum.to_scalar::<f32>().unwrap();
        let expect = std::f32::consts::LN_2 + (1.0 + (-10f32).exp()).ln();
        assert!((v - expect).abs() < 1e-5, "{v} vs {expect}");
    }
}
