//! What the training loop needs of an engine, as one trait: the adapter's parameters as flat f32 vectors, the
//! loss and gradients of a micro-batch, the validation loss, and PEFT adapter input and output. The candle CPU
//! engine ([`CpuModel`]) and the kernel engine implement it, so both run the same loop: the same AdamW,
//! clipping, schedule, checkpoints, early stopping and metrics.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use tandem_experiments::manifest::LossMask;

use crate::engine::error::Result;
use crate::engine::lora::{ForwardCtx, LoraConfig};
use crate::engine::model::{self, LanguageModel, TrainExample};
use crate::engine::peft;

/// An engine the training loop can drive.
pub trait Trainable {
    /// Whether the model has adapter layers.
    fn has_adapter(&self) -> bool;
    /// Adds fresh adapters to every module `config` targets (PEFT's initialisation).
    fn add_adapter(&mut self, config: &LoraConfig, seed: u64) -> Result<()>;
    /// The adapter's parameters, `[A, B]` per adapter layer in model order.
    fn params(&self) -> Result<Vec<Vec<f32>>>;
    /// Replaces the adapter's parameters (same order and sizes as [`Trainable::params`]).
    fn set_params(&mut self, params: &[Vec<f32>]) -> Result<()>;
    /// Forward and backward of one micro-batch of an update of `n_micro`: adds the gradients of
    /// `loss_sum / (tokens * n_micro)` into `grads` and returns that loss; `None` (and no change) when the batch
    /// counts no token.
    fn accumulate(
        &mut self,
        batch: &[TrainExample],
        mask: LossMask,
        ctx: &ForwardCtx,
        n_micro: usize,
        grads: &mut [Vec<f32>],
    ) -> Result<Option<f64>>;
    /// The summed loss of a batch's counted tokens and their count, without dropout or gradients.
    fn loss_sum(&self, batch: &[TrainExample], mask: LossMask) -> Result<(f64, usize)>;
    /// Writes the adapter in PEFT's format.
    fn save_adapter(&self, config: &LoraConfig, dir: &Path) -> Result<()>;
    /// Replaces the adapter by the PEFT adapter in `dir`.
    fn load_adapter(&mut self, dir: &Path, expected_r: Option<usize>) -> Result<()>;
    /// Removes every adapter (the base model again).
    fn clear_adapter(&mut self);
}

impl<T: Trainable + ?Sized> Trainable for &mut T {
    fn has_adapter(&self) -> bool {
        (**self).has_adapter()
    }

    fn add_adapter(&mut self, config: &LoraConfig, seed: u64) -> Result<()> {
        (**self).add_adapter(config, seed)
    }

    fn params(&self) -> Result<Vec<Vec<f32>>> {
        (**self).params()
    }

    fn set_params(&mut self, params: &[Vec<f32>]) -> Result<()> {
        (**self).set_params(params)
    }

    fn accumulate(
        &mut self,
        batch: &[TrainExample],
        mask: LossMask,
        ctx: &ForwardCtx,
        n_micro: usize,
        grads: &mut [Vec<f32>],
    ) -> Result<Option<f64>> {
        (**self).accumulate(batch, mask, ctx, n_micro, grads)
    }

    fn loss_sum(&self, batch: &[TrainExample], mask: LossMask) -> Result<(f64, usize)> {
        (**self).loss_sum(batch, mask)
    }

    fn save_adapter(&self, config: &LoraConfig, dir: &Path) -> Result<()> {
        (**self).save_adapter(config, dir)
    }

    fn load_adapter(&mut self, dir: &Path, expected_r: Option<usize>) -> Result<()> {
        (**self).load_adapter(dir, expected_r)
    }

    fn clear_adapter(&mut self) {
        (**self).clear_adapter()
    }
}

/// The candle CPU engine, trained through autograd.
pub struct CpuModel<'a>(pub &'a mut dyn LanguageModel);

impl CpuModel<'_> {
    fn vars(&self) -> Vec<Var> {
        model::lora_layers(&*self.0)
            .iter()
            .flat_map(|l| {
                let lora = l.lora().expect("lora layer");
                [lora.a.clone(), lora.b.clone()]
            })
            .collect()
    }
}

impl Trainable for CpuModel<'_> {
    fn has_adapter(&self) -> bool {
        !model::lora_layers(&*self.0).is_empty()
    }

    fn add_adapter(&mut self, config: &LoraConfig, seed: u64) -> Result<()> {
        model::add_lora(&mut *self.0, config, seed).map(|_| ())
    }

    fn params(&self) -> Result<Vec<Vec<f32>>> {
        self.vars()
            .iter()
            .map(|v| Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
            .collect()
    }

    fn set_params(&mut self, params: &[Vec<f32>]) -> Result<()> {
        for (v, p) in self.vars().iter().zip(params) {
            v.set(&Tensor::from_slice(p, v.as_tensor().shape(), &Device::Cpu)?)?;
        }
        Ok(())
    }

    fn accumulate(
        &mut self,
        batch: &[TrainExample],
        mask: LossMask,
        ctx: &ForwardCtx,
        n_micro: usize,
        grads: &mut [Vec<f32>],
    ) -> Result<Option<f64>> {
        let out = self.0.loss(batch, mask, ctx)?;
        if out.tokens == 0 {
            return Ok(None);
        }
        let loss = (out.loss_sum / (out.tokens * n_micro) as f64)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        let g = loss.backward()?;
        for (acc, var) in grads.iter_mut().zip(&self.vars()) {
            if let Some(gt) = g.get(var.as_tensor()) {
                add_into(acc, &gt.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(Some(value))
    }

    fn loss_sum(&self, batch: &[TrainExample], mask: LossMask) -> Result<(f64, usize)> {
        let out = self.0.loss(batch, mask, &ForwardCtx::eval())?;
        Ok((f64::from(out.loss_sum.to_scalar::<f32>()?), out.tokens))
    }

    fn save_adapter(&self, config: &LoraConfig, dir: &Path) -> Result<()> {
        peft::save(&*self.0, config, dir)
    }

    fn load_adapter(&mut self, dir: &Path, expected_r: Option<usize>) -> Result<()> {
        peft::load(&mut *self.0, dir, expected_r).map(|_| ())
    }

    fn clear_adapter(&mut self) {
        for layer in self.0.linears_mut() {
            layer.clear_lora();
        }
    }
}

/// `acc += g`, element by element in f32: how every engine accumulates micro-batch gradients.
pub fn add_into(acc: &mut [f32], g: &[f32]) {
    for (a, v) in acc.iter_mut().zip(g) {
        *a += v;
    }
}
