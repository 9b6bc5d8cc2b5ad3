//! The kernel engine: LLaMA-family training and generation written as an explicit forward and backward over
//! the operations of `tandem-kernels` (no autograd graph), run on a [`Device`]. On a GPU the device is CUDA; in
//! CI it is [`Reference`], the kernels' CPU references, so the same engine code is checked against the candle
//! CPU engine on every commit.

pub mod cuda;
pub mod decode;
pub mod device;
pub mod loaded;
pub mod model;
pub mod reference;
pub mod step;

use std::path::Path;

use tandem_experiments::manifest::LossMask;

pub use device::Device;
pub use model::KernelLlama;
pub use reference::Reference;

use crate::engine::error::Result;
use crate::engine::lora::{ForwardCtx, LoraConfig};
use crate::engine::model::TrainExample;
use crate::engine::peft::{self, tensor_name};
use crate::engine::train::trainable::{Trainable, add_into};

/// PEFT's task type of every model this engine runs.
const TASK_TYPE: &str = "CAUSAL_LM";

impl<D: Device> Trainable for KernelLlama<D> {
    fn has_adapter(&self) -> bool {
        self.linears().any(|l| l.adapter.is_some())
    }

    fn add_adapter(&mut self, config: &LoraConfig, seed: u64) -> Result<()> {
        self.add_lora(config, seed).map(|_| ())
    }

    fn params(&self) -> Result<Vec<Vec<f32>>> {
        self.adapter_values()
    }

    fn set_params(&mut self, params: &[Vec<f32>]) -> Result<()> {
        self.set_adapter_values(params)
    }

    fn accumulate(
        &mut self,
        batch: &[TrainExample],
        mask: LossMask,
        ctx: &ForwardCtx,
        n_micro: usize,
        grads: &mut [Vec<f32>],
    ) -> Result<Option<f64>> {
        let Some(out) = self.loss_and_grads(batch, mask, ctx, n_micro)? else {
            return Ok(None);
        };
        for (acc, g) in grads.iter_mut().zip(&out.grads) {
            add_into(acc, g);
        }
        Ok(Some(out.loss))
    }

    fn loss_sum(&self, batch: &[TrainExample], mask: LossMask) -> Result<(f64, usize)> {
        KernelLlama::loss_sum(self, batch, mask)
    }

    fn save_adapter(&self, config: &LoraConfig, dir: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        for l in self.linears() {
            let Some(ad) = &l.adapter else { continue };
            tensors.push((
                tensor_name(&l.path, "A"),
                vec![ad.rank, l.in_features],
                self.device.download(&ad.a)?,
            ));
            tensors.push((
                tensor_name(&l.path, "B"),
                vec![l.out_features, ad.rank],
                self.device.download(&ad.b)?,
            ));
        }
        peft::save_tensors(TASK_TYPE, self.base_name(), config, &tensors, dir)
    }

    fn load_adapter(&mut self, dir: &Path, expected_r: Option<usize>) -> Result<()> {
        let (lora, adapters) = peft::read_adapter(
            dir,
            expected_r,
            TASK_TYPE,
            self.base_name(),
            &self.module_shapes(),
        )?;
        self.set_adapters(&adapters, &lora)
    }

    fn clear_adapter(&mut self) {
        self.clear_adapters();
    }
}
