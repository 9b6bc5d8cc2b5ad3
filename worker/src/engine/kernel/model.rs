//! A LLaMA-family model held on a [`Device`]: frozen weights (NF4 when QLoRA) read from the checkpoint one
//! tensor at a time, and the LoRA adapters, in the order every engine lists them.

use std::sync::Arc;

use tandem_kernels::dropout::{self, Site};
use tandem_kernels::lora::LoraDims;

use super::device::{Adapter, Device};
use crate::engine::error::{EngineError, Result};
use crate::engine::llama::Checkpoint;
use crate::engine::llama::config::LlamaConfig;
use crate::engine::lora::{LoraConfig, initial_a};
use crate::engine::model::SpecialTokens;
use crate::engine::peft::{ModuleAdapter, ModuleShape};

/// One linear layer: frozen weight plus an optional adapter.
pub struct Linear<D: Device> {
    /// Hugging Face module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    pub in_features: usize,
    pub out_features: usize,
    pub weight: D::Frozen,
    pub adapter: Option<Adapter<D::Buf>>,
    /// Block index and site naming this layer's dropout streams.
    pub(crate) stream: (u32, Site),
}

impl<D: Device> Linear<D> {
    /// The kernels' sizes of this layer applied to `tokens` rows (rank 0 without an adapter).
    pub fn dims(&self, tokens: usize) -> LoraDims {
        LoraDims {
            tokens,
            in_features: self.in_features,
            out_features: self.out_features,
            rank: self.adapter.as_ref().map_or(0, |a| a.rank),
        }
    }
}

/// One decoder block.
pub struct Block<D: Device> {
    pub input_norm: D::Buf,
    pub q_proj: Linear<D>,
    pub k_proj: Linear<D>,
    pub v_proj: Linear<D>,
    pub o_proj: Linear<D>,
    pub post_norm: D::Buf,
    pub gate_proj: Linear<D>,
    pub up_proj: Linear<D>,
    pub down_proj: Linear<D>,
}

impl<D: Device> Block<D> {
    /// The block's linears in model order (the order adapters are listed and saved).
    pub fn linears(&self) -> [&Linear<D>; 7] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }

    fn linears_mut(&mut self) -> [&mut Linear<D>; 7] {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ]
    }
}

/// A LLaMA-architecture causal LM on device `D`.
pub struct KernelLlama<D: Device> {
    pub device: Arc<D>,
    pub config: LlamaConfig,
    pub(crate) name: String,
    pub(crate) embed: D::Buf,
    pub(crate) blocks: Vec<Block<D>>,
    pub(crate) norm: D::Buf,
    /// The untied LM head (`vocab x hidden`); `None` when tied to the embedding.
    pub(crate) head: Option<D::Buf>,
    pub(crate) inv_freq: Vec<f32>,
    pub(crate) special: SpecialTokens,
}

/// Where an adapter layer's two matrices sit in the flat parameter list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSlot {
    pub block: usize,
    /// Index into [`Block::linears`].
    pub linear: usize,
}

impl<D: Device> KernelLlama<D> {
    /// Builds the model on `device` from an opened checkpoint, reading one tensor at a time; the attention and
    /// MLP projections are quantised to NF4 when `nf4` (QLoRA), the embedding, norms and head stay dense.
    pub fn load(device: Arc<D>, checkpoint: &mut Checkpoint, nf4: bool) -> Result<Self> {
        let c = checkpoint.config.clone();
        let store = checkpoint.store.as_mut();
        let untied = !c.tie_word_embeddings && store.contains("lm_head.weight");
        let hid = c.hidden_size;
        let mut host = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            Ok(store.get(name, shape)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let embed = device.upload(&host("model.embed_tokens.weight", &[c.vocab_size, hid])?)?;
        let mut blocks = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut linears = Vec::with_capacity(7);
            for (module, out, inp) in c.projections() {
                let path = format!("{p}.{module}");
                let values = host(&format!("{path}.weight"), &[out, inp])?;
                let stream = dropout::locate(&path)
                    .map_err(|e| EngineError::Input(format!("{path}: {e}")))?;
                linears.push(Linear {
                    weight: device.frozen(&values, out, inp, nf4)?,
                    path,
                    in_features: inp,
                    out_features: out,
                    adapter: None,
                    stream,
                });
            }
            let Ok(
                [
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    gate_proj,
                    up_proj,
                    down_proj,
                ],
            ) = <[Linear<D>; 7]>::try_from(linears)
            else {
                unreachable!("seven projections")
            };
            blocks.push(Block {
                input_norm: device
                    .upload(&host(&format!("{p}.input_layernorm.weight"), &[hid])?)?,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                post_norm: device.upload(&host(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[hid],
                )?)?,
                gate_proj,
                up_proj,
                down_proj,
            });
        }
        let norm = device.upload(&host("model.norm.weight", &[hid])?)?;
        let head = if untied {
            Some(device.upload(&host("lm_head.weight", &[c.vocab_size, hid])?)?)
        } else {
            None
        };
        let special = c.special_tokens();
        Ok(Self {
            inv_freq: c.inv_freq(),
            device,
            config: c,
            name: checkpoint.name.clone(),
            embed,
            blocks,
            norm,
            head,
            special,
        })
    }

    /// The LM head's weight (`vocab x hidden`).
    pub(crate) fn head_weight(&self) -> &D::Buf {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// The name adapters record as their base model.
    pub fn base_name(&self) -> &str {
        &self.name
    }

    /// The decoder blocks.
    pub fn blocks(&self) -> &[Block<D>] {
        &self.blocks
    }

    /// Every linear layer, in model order.
    pub fn linears(&self) -> impl Iterator<Item = &Linear<D>> {
        self.blocks.iter().flat_map(|b| b.linears())
    }

    /// The layers with an adapter, in model order: the order of [`KernelLlama::adapter_values`].
    pub fn adapter_slots(&self) -> Vec<ParamSlot> {
        let mut slots = Vec::new();
        for (bi, b) in self.blocks.iter().enumerate() {
            for (li, l) in b.linears().iter().enumerate() {
                if l.adapter.is_some() {
                    slots.push(ParamSlot {
                        block: bi,
                        linear: li,
                    });
                }
            }
        }
        slots
    }

    /// Adds fresh adapters (PEFT's initialisation, the same values as the CPU engine's) to every module
    /// `config` targets; errors when a target matches no module.
    pub fn add_lora(&mut self, config: &LoraConfig, seed: u64) -> Result<usize> {
        config.validate()?;
        config.check_targets(self.linears().map(|l| l.path.as_str()))?;
        let mut count = 0;
        let device = self.device.clone();
        for b in &mut self.blocks {
            for l in b
                .linears_mut()
                .into_iter()
                .filter(|l| config.targets(&l.path))
            {
                let a = initial_a(&l.path, config.r, l.in_features, seed);
                let b = vec![0f32; l.out_features * config.r];
                l.adapter = Some(adapter(&*device, &a, &b, config)?);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Sets the adapters from a loaded PEFT adapter's values, removing every other adapter.
    pub fn set_adapters(&mut self, adapters: &[ModuleAdapter], config: &LoraConfig) -> Result<()> {
        let device = self.device.clone();
        for b in &mut self.blocks {
            for l in b.linears_mut() {
                l.adapter = None;
                let Some(ModuleAdapter { a, b: bm, .. }) =
                    adapters.iter().find(|m| m.path == l.path)
                else {
                    continue;
                };
                if a.len() != config.r * l.in_features || bm.len() != l.out_features * config.r {
                    return Err(EngineError::Input(format!(
                        "{}: adapter of {} and {} values does not fit r = {} on {} -> {} features",
                        l.path,
                        a.len(),
                        bm.len(),
                        config.r,
                        l.in_features,
                        l.out_features
                    )));
                }
                l.adapter = Some(adapter(&*device, a, bm, config)?);
            }
        }
        Ok(())
    }

    /// Removes every adapter.
    pub fn clear_adapters(&mut self) {
        for b in &mut self.blocks {
            for l in b.linears_mut() {
                l.adapter = None;
            }
        }
    }

    /// The adapters' values, `[A, B]` per adapter layer in model order (the training loop's parameter list).
    pub fn adapter_values(&self) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::new();
        for l in self.linears() {
            if let Some(a) = &l.adapter {
                out.push(self.device.download(&a.a)?);
                out.push(self.device.download(&a.b)?);
            }
        }
        Ok(out)
    }

    /// Replaces the adapters' values (same order and sizes as [`KernelLlama::adapter_values`]).
    pub fn set_adapter_values(&mut self, params: &[Vec<f32>]) -> Result<()> {
        let device = self.device.clone();
        let mut it = params.iter();
        for b in &mut self.blocks {
            for l in b.linears_mut() {
                let Some(ad) = &mut l.adapter else { continue };
                let (Some(a), Some(bm)) = (it.next(), it.next()) else {
                    return Err(EngineError::Input(
                        "fewer adapter parameters than adapter layers".into(),
                    ));
                };
                if a.len() != device.len(&ad.a) || bm.len() != device.len(&ad.b) {
                    return Err(EngineError::Input(format!(
                        "{}: adapter parameters of the wrong size",
                        l.path
                    )));
                }
                ad.a = device.upload(a)?;
                ad.b = device.upload(bm)?;
            }
        }
        if it.next().is_some() {
            return Err(EngineError::Input(
                "more adapter parameters than adapter layers".into(),
            ));
        }
        Ok(())
    }

    /// Every linear module adapters may target, with its sizes.
    pub fn module_shapes(&self) -> Vec<ModuleShape> {
        self.linears()
            .map(|l| ModuleShape {
                path: l.path.clone(),
                in_features: l.in_features,
                out_features: l.out_features,
            })
            .collect()
    }

    /// Bytes the device holds for the frozen weights (a tied head counted once).
    pub fn frozen_bytes(&self) -> usize {
        let d = &self.device;
        let dense = |b: &D::Buf| d.len(b) * 4;
        let mut total =
            dense(&self.embed) + dense(&self.norm) + self.head.as_ref().map_or(0, dense);
        for b in &self.blocks {
            total += dense(&b.input_norm) + dense(&b.post_norm);
            total += b
                .linears()
                .iter()
                .map(|l| d.frozen_bytes(&l.weight))
                .sum::<usize>();
        }
        total
    }
}

/// An adapter on `device` from host values of `A` and `B`, with `config`'s scale and dropout.
fn adapter<D: Device>(
    device: &D,
    a: &[f32],
    b: &[f32],
    config: &LoraConfig,
) -> Result<Adapter<D::Buf>> {
    Ok(Adapter {
        a: device.upload(a)?,
        b: device.upload(b)?,
        rank: config.r,
        scale: config.scale() as f32,
        dropout: config.dropout as f32,
    })
}
