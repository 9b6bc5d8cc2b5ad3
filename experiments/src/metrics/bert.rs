//! A BERT encoder (Hugging Face `BertModel`) on candle's CPU backend, for BERTScore: word + position + token-type
//! embeddings with LayerNorm, post-LN encoder layers (self-attention, erf GELU feed-forward), optionally truncated
//! to the first `num_layers` layers as bert-score does. Loads `config.json` and `model.safetensors` from a local
//! Hugging Face directory; weights may be stored with or without the `bert.` prefix.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use serde::Deserialize;

use super::MetricsError;

/// The fields of a Hugging Face BERT `config.json` the encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub pad_token_id: u32,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".to_string()
}

struct Linear {
    /// Transposed weight, (in, out), contiguous.
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// A loaded BERT encoder.
pub struct BertModel {
    config: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type0: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl std::fmt::Debug for BertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertModel")
            .field("config", &self.config)
            .field("layers", &self.layers.len())
            .finish()
    }
}

fn candle_err(path: &Path) -> impl Fn(candle_core::Error) -> MetricsError + '_ {
    move |e| MetricsError::Model {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl BertModel {
    /// Loads `dir/config.json` and `dir/model.safetensors`, keeping the first `num_layers` encoder layers (all of
    /// them when `None`).
    pub fn load(dir: &Path, num_layers: Option<usize>) -> Result<BertModel, MetricsError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| MetricsError::Io {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| MetricsError::Model {
            path: config_path.clone(),
            message: format!("not a BERT config.json: {e}"),
        })?;
        if config.hidden_act != "gelu" {
            return Err(MetricsError::Model {
                path: config_path,
                message: format!(
                    "hidden_act {:?} is not supported (accepted: \"gelu\")",
                    config.hidden_act
                ),
            });
        }
        if config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(MetricsError::Model {
                path: config_path,
                message: "hidden_size must be a multiple of num_attention_heads".to_string(),
            });
        }
        let layers_wanted = num_layers.unwrap_or(config.num_hidden_layers);
        if layers_wanted > config.num_hidden_layers {
            return Err(MetricsError::Model {
                path: config_path,
                message: format!(
                    "num_layers {layers_wanted} is more than the model's {} layers",
                    config.num_hidden_layers
                ),
            });
        }
        let weights_path = dir.join("model.safetensors");
        if !weights_path.is_file() {
            return Err(MetricsError::Io {
                path: weights_path,
                message: "missing (a Hugging Face BERT directory needs model.safetensors)"
                    .to_string(),
            });
        }
        let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .map_err(candle_err(&weights_path))?;
        let get = |name: &str| -> Result<Tensor, MetricsError> {
            let t = tensors
                .get(name)
                .or_else(|| tensors.get(&format!("bert.{name}")))
                .ok_or_else(|| MetricsError::Model {
                    path: weights_path.clone(),
                    message: format!("tensor {name} missing"),
                })?;
            t.to_dtype(DType::F32).map_err(candle_err(&weights_path))
        };
        let linear = |prefix: &str| -> Result<Linear, MetricsError> {
            let w = get(&format!("{prefix}.weight"))?;
            Ok(Linear {
                weight_t: w
                    .t()
                    .and_then(|t| t.contiguous())
                    .map_err(candle_err(&weights_path))?,
                bias: get(&format!("{prefix}.bias"))?,
            })
        };
        let norm = |prefix: &str| -> Result<LayerNorm, MetricsError> {
            Ok(LayerNorm {
                weight: get(&format!("{prefix}.weight"))?,
                bias: get(&format!("{prefix}.bias"))?,
                eps: config.layer_norm_eps,
            })
        };
        let mut layers = Vec::with_capacity(layers_wanted);
        for i in 0..layers_wanted {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: linear(&format!("{p}.attention.self.query"))?,
                key: linear(&format!("{p}.attention.self.key"))?,
                value: linear(&format!("{p}.attention.self.value"))?,
                attn_out: linear(&format!("{p}.attention.output.dense"))?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&format!("{p}.intermediate.dense"))?,
                output: linear(&format!("{p}.output.dense"))?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let token_type = get("embeddings.token_type_embeddings.weight")?;
        Ok(BertModel {
            word: get("embeddings.word_embeddings.weight")?,
            position: get("embeddings.position_embeddings.weight")?,
            token_type0: token_type.get(0).map_err(candle_err(&weights_path))?,
            emb_norm: norm("embeddings.LayerNorm")?,
            layers,
            config,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Number of encoder layers kept.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Contextual embeddings of a batch of token-id sequences (padded internally; padding is masked out of
    /// attention). Returns, per sequence, `len x hidden` values row-major.
    pub fn encode(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, MetricsError> {
        self.encode_inner(batch).map_err(|e| MetricsError::Model {
            path: "<bert forward>".into(),
            message: e.to_string(),
        })
    }

    fn encode_inner(&self, batch: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let hidden = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let head_dim = hidden / heads;
        let b = batch.len();
        let seq = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        if b == 0 || seq == 0 {
            return Ok(batch.iter().map(|_| Vec::new()).collect());
        }
        if seq > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {seq} tokens is longer than max_position_embeddings {}",
                self.config.max_position_embeddings
            );
        }
        let vocab = self.config.vocab_size as u32;
        let mut ids = Vec::with_capacity(b * seq);
        let mut mask = Vec::with_capacity(b * seq);
        let mut padded = false;
        for s in batch {
            for &id in s.iter() {
                if id >= vocab {
                    candle_core::bail!("token id {id} is outside the vocabulary of {vocab}");
                }
                ids.push(id);
                mask.push(0f32);
            }
            for _ in s.len()..seq {
                ids.push(self.config.pad_token_id.min(vocab - 1));
                mask.push(f32::MIN);
                padded = true;
            }
        }
        let dev = Device::Cpu;
        let ids = Tensor::from_vec(ids, b * seq, &dev)?;
        let words = self.word.index_select(&ids, 0)?.reshape((b, seq, hidden))?;
        let pos = self.position.narrow(0, 0, seq)?;
        let emb = words
            .broadcast_add(&self.token_type0)?
            .broadcast_add(&pos)?;
        let mut x = self.emb_norm.forward(&emb.reshape((b * seq, hidden))?)?;
        let bias = if padded {
            Some(Tensor::from_vec(mask, (b, 1, 1, seq), &dev)?)
        } else {
            None
        };
        let scale = 1.0 / (head_dim as f64).sqrt();
        for layer in &self.layers {
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((b, seq, heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = split(layer.query.forward(&x)?)?;
            let k = split(layer.key.forward(&x)?)?;
            let v = split(layer.value.forward(&x)?)?;
            let mut scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
            if let Some(bias) = &bias {
                scores = scores.broadcast_add(bias)?;
            }
            let max = scores.max_keepdim(D::Minus1)?;
            let exp = scores.broadcast_sub(&max)?.exp()?;
            let probs = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
            let context = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * seq, hidden))?;
            let attn = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&context)? + &x)?)?;
            let inter = layer.intermediate.forward(&attn)?.gelu_erf()?;
            x = layer
                .out_norm
                .forward(&(layer.output.forward(&inter)? + &attn)?)?;
        }
        let all: Vec<f32> = x.flatten_all()?.to_vec1()?;
        Ok(batch
            .iter()
            .enumerate()
            .map(|(i, s)| all[i * seq * hidden..(i * seq + s.len()) * hidden].to_vec())
            .collect())
    }
}
