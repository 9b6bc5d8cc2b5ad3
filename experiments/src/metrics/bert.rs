//! A BERT encoder (Hugging Face `BertModel`) on candle's CPU backend, for BERTScore: word + position + token-type
//! embeddings with LayerNorm, post-LN encoder layers (self-attention, erf GELU feed-forward), optionally truncated
//! to the first `num_layers` layers as bert-score does. Loads `config.json` and `model.safetensors` from a local
//! Hugging Face directory; weights may be stored with or without the `bert.` prefix.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
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
    bias: Vec<f32>,
}

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f64,
}

impl LayerNorm {
    /// Normalises one row in place (statistics accumulated in f64).
    fn apply(&self, row: &mut [f32]) {
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + self.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
            *v = ((*v as f64 - mean) * inv) as f32 * w + b;
        }
    }
}

struct Layer {
    /// Query, key and value projections fused: output columns [q | k | v].
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// A loaded BERT encoder.
pub struct BertModel {
    config: BertConfig,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type0: Vec<f32>,
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
        if config.hidden_size == 0 || config.type_vocab_size == 0 || config.vocab_size == 0 {
            return Err(MetricsError::Model {
                path: config_path,
                message: "hidden_size, vocab_size and type_vocab_size must be positive".to_string(),
            });
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
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
        let values = |name: &str, len: usize| -> Result<Vec<f32>, MetricsError> {
            let v: Vec<f32> = get(name)?
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(candle_err(&weights_path))?;
            if v.len() != len {
                return Err(MetricsError::Model {
                    path: weights_path.clone(),
                    message: format!("tensor {name} has {} values, expected {len}", v.len()),
                });
            }
            Ok(v)
        };
        let h = config.hidden_size;
        let linear =
            |prefixes: &[String], inputs: usize, outputs: usize| -> Result<Linear, MetricsError> {
                let mut weights = Vec::new();
                let mut bias = Vec::new();
                for prefix in prefixes {
                    let w = get(&format!("{prefix}.weight"))?;
                    if w.dims() != [outputs, inputs] {
                        return Err(MetricsError::Model {
                            path: weights_path.clone(),
                            message: format!(
                                "{prefix}.weight has shape {:?}, expected [{outputs}, {inputs}]",
                                w.dims()
                            ),
                        });
                    }
                    bias.extend(values(&format!("{prefix}.bias"), w.dims()[0])?);
                    weights.push(w);
                }
                let joined = Tensor::cat(&weights, 0).map_err(candle_err(&weights_path))?;
                Ok(Linear {
                    weight_t: joined
                        .t()
                        .and_then(|t| t.contiguous())
                        .map_err(candle_err(&weights_path))?,
                    bias,
                })
            };
        let norm = |prefix: &str| -> Result<LayerNorm, MetricsError> {
            Ok(LayerNorm {
                weight: values(&format!("{prefix}.weight"), h)?,
                bias: values(&format!("{prefix}.bias"), h)?,
                eps: config.layer_norm_eps,
            })
        };
        let mut layers = Vec::with_capacity(layers_wanted);
        for i in 0..layers_wanted {
            let p = format!("encoder.layer.{i}");
            let qkv: Vec<String> = ["query", "key", "value"]
                .iter()
                .map(|n| format!("{p}.attention.self.{n}"))
                .collect();
            layers.push(Layer {
                qkv: linear(&qkv, h, h)?,
                attn_out: linear(&[format!("{p}.attention.output.dense")], h, h)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(
                    &[format!("{p}.intermediate.dense")],
                    h,
                    config.intermediate_size,
                )?,
                output: linear(&[format!("{p}.output.dense")], config.intermediate_size, h)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let token_type = values(
            "embeddings.token_type_embeddings.weight",
            config.type_vocab_size * h,
        )?;
        Ok(BertModel {
            word: values("embeddings.word_embeddings.weight", config.vocab_size * h)?,
            position: values(
                "embeddings.position_embeddings.weight",
                config.max_position_embeddings * h,
            )?,
            token_type0: token_type[..h].to_vec(),
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

    /// Contextual embeddings of a batch of token-id sequences. The sequences are packed one after another (no
    /// padding): the dense layers work token by token and attention runs within each sequence, so a sequence's
    /// embeddings do not depend on what else is in the batch. Returns, per sequence, `len x hidden` values
    /// row-major.
    pub fn encode(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, MetricsError> {
        self.encode_inner(batch).map_err(|e| MetricsError::Model {
            path: "<bert forward>".into(),
            message: e.to_string(),
        })
    }

    fn encode_inner(&self, batch: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let h = self.config.hidden_size;
        let threads = candle_core::utils::get_num_threads().max(1);
        let mut offsets = Vec::with_capacity(batch.len() + 1);
        offsets.push(0usize);
        for s in batch {
            if s.len() > self.config.max_position_embeddings {
                candle_core::bail!(
                    "sequence of {} tokens is longer than max_position_embeddings {}",
                    s.len(),
                    self.config.max_position_embeddings
                );
            }
            if let Some(&id) = s.iter().find(|&&id| id as usize >= self.config.vocab_size) {
                candle_core::bail!(
                    "token id {id} is outside the vocabulary of {}",
                    self.config.vocab_size
                );
            }
            offsets.push(offsets[offsets.len() - 1] + s.len());
        }
        let rows = offsets[batch.len()];
        if rows == 0 {
            return Ok(batch.iter().map(|_| Vec::new()).collect());
        }
        // Embeddings: word + token type 0 + position, then LayerNorm.
        let mut x = vec![0f32; rows * h];
        for (s, seq) in batch.iter().enumerate() {
            for (p, &id) in seq.iter().enumerate() {
                let row = &mut x[(offsets[s] + p) * h..(offsets[s] + p + 1) * h];
                let word = &self.word[id as usize * h..(id as usize + 1) * h];
                let pos = &self.position[p * h..(p + 1) * h];
                for k in 0..h {
                    row[k] = word[k] + self.token_type0[k] + pos[k];
                }
            }
        }
        par_rows(&mut x, h, threads, |row| self.emb_norm.apply(row));
        let heads = self.config.num_attention_heads;
        for layer in &self.layers {
            let qkv = linear(&x, rows, &layer.qkv, None, threads)?;
            let context = attention(&qkv, &offsets, h, heads, threads);
            let mut attn = linear(&context, rows, &layer.attn_out, Some(&x), threads)?;
            par_rows(&mut attn, h, threads, |row| layer.attn_norm.apply(row));
            let mut inter = linear(&attn, rows, &layer.intermediate, None, threads)?;
            par_rows(&mut inter, self.config.intermediate_size, threads, |row| {
                row.iter_mut().for_each(|v| *v = gelu(*v))
            });
            x = linear(&inter, rows, &layer.output, Some(&attn), threads)?;
            par_rows(&mut x, h, threads, |row| layer.out_norm.apply(row));
        }
        Ok((0..batch.len())
            .map(|s| x[offsets[s] * h..offsets[s + 1] * h].to_vec())
            .collect())
    }
}

/// `x W^T + b (+ residual)` for `rows` rows; the product runs on candle (multi-threaded GEMM).
fn linear(
    x: &[f32],
    rows: usize,
    lin: &Linear,
    residual: Option<&[f32]>,
    threads: usize,
) -> candle_core::Result<Vec<f32>> {
    let inputs = x.len() / rows;
    let product = Tensor::from_slice(x, (rows, inputs), &Device::Cpu)?.matmul(&lin.weight_t)?;
    let mut y: Vec<f32> = product.flatten_all()?.to_vec1()?;
    let out = lin.bias.len();
    match residual {
        None => par_rows(&mut y, out, threads, |row| {
            row.iter_mut().zip(&lin.bias).for_each(|(v, b)| *v += b)
        }),
        Some(res) => par_chunks_with(&mut y, res, out, threads, |row, r| {
            for ((v, b), r) in row.iter_mut().zip(&lin.bias).zip(r) {
                *v += b + r;
            }
        }),
    }
    Ok(y)
}

/// Self-attention within each packed sequence; `qkv` rows are [q | k | v]. Returns the context, `rows x h`.
fn attention(qkv: &[f32], offsets: &[usize], h: usize, heads: usize, threads: usize) -> Vec<f32> {
    let rows = offsets[offsets.len() - 1];
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut context = vec![0f32; rows * h];
    // Split the sequences into contiguous groups of similar attention cost, one per thread.
    let cost: usize = offsets.windows(2).map(|w| (w[1] - w[0]).pow(2)).sum();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for s in 0..offsets.len() - 1 {
        acc += (offsets[s + 1] - offsets[s]).pow(2);
        if acc * threads >= cost * (groups.len() + 1) && groups.len() + 1 < threads {
            groups.push((start, s + 1));
            start = s + 1;
        }
    }
    groups.push((start, offsets.len() - 1));
    let run = |first: usize, last: usize, out: &mut [f32]| {
        let base = offsets[first];
        let mut scores = Vec::new();
        for s in first..last {
            let (lo, hi) = (offsets[s], offsets[s + 1]);
            let len = hi - lo;
            scores.resize(len, 0f32);
            for head in 0..heads {
                let (qo, ko, vo) = (head * d, h + head * d, 2 * h + head * d);
                for i in lo..hi {
                    let q = &qkv[i * 3 * h + qo..i * 3 * h + qo + d];
                    let mut max = f32::NEG_INFINITY;
                    for (j, score) in (lo..hi).zip(scores.iter_mut()) {
                        let k = &qkv[j * 3 * h + ko..j * 3 * h + ko + d];
                        *score = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                        max = max.max(*score);
                    }
                    let mut total = 0f32;
                    for score in scores.iter_mut() {
                        *score = (*score - max).exp();
                        total += *score;
                    }
                    let row = &mut out[(i - base) * h + head * d..(i - base) * h + head * d + d];
                    for (j, &p) in (lo..hi).zip(scores.iter()) {
                        let v = &qkv[j * 3 * h + vo..j * 3 * h + vo + d];
                        let w = p / total;
                        row.iter_mut().zip(v).for_each(|(c, v)| *c += w * v);
                    }
                }
            }
        }
    };
    std::thread::scope(|scope| {
        let mut rest: &mut [f32] = &mut context;
        for &(first, last) in &groups {
            let (mine, tail) = rest.split_at_mut((offsets[last] - offsets[first]) * h);
            rest = tail;
            if last > first {
                scope.spawn(move || run(first, last, mine));
            }
        }
    });
    context
}

/// GELU with the exact erf form (`0.5 x (1 + erf(x / sqrt 2))`); erf by Abramowitz-Stegun 7.1.26 in f64
/// (absolute error below 1.5e-7).
fn gelu(x: f32) -> f32 {
    let z = x as f64 * std::f64::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    let erf = if z < 0.0 { -erf } else { erf };
    (0.5 * x as f64 * (1.0 + erf)) as f32
}

/// Applies `f` to every row of `data` (rows of `width`), on up to `threads` scoped threads.
fn par_rows(data: &mut [f32], width: usize, threads: usize, f: impl Fn(&mut [f32]) + Sync) {
    let rows = data.len() / width.max(1);
    let per = rows.div_ceil(threads.max(1)).max(1);
    if threads <= 1 || rows < 64 {
        data.chunks_mut(width).for_each(&f);
        return;
    }
    std::thread::scope(|scope| {
        for part in data.chunks_mut(per * width) {
            let f = &f;
            scope.spawn(move || part.chunks_mut(width).for_each(f));
        }
    });
}

/// Like [`par_rows`], with the matching rows of `other`.
fn par_chunks_with(
    data: &mut [f32],
    other: &[f32],
    width: usize,
    threads: usize,
    f: impl Fn(&mut [f32], &[f32]) + Sync,
) {
    let rows = data.len() / width.max(1);
    let per = rows.div_ceil(threads.max(1)).max(1);
    if threads <= 1 || rows < 64 {
        data.chunks_mut(width)
            .zip(other.chunks(width))
            .for_each(|(a, b)| f(a, b));
        return;
    }
    std::thread::scope(|scope| {
        for (part, o) in data.chunks_mut(per * width).zip(other.chunks(per * width)) {
            let f = &f;
            scope.spawn(move || {
                part.chunks_mut(width)
                    .zip(o.chunks(width))
                    .for_each(|(a, b)| f(a, b))
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{BertModel, gelu};

    #[test]
    fn a_sequence_encodes_to_the_same_bits_alone_or_packed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/metrics/tiny-bert");
        let model = BertModel::load(&dir, None).expect("tiny bert");
        let a: Vec<u32> = vec![2, 40, 41, 42, 43, 3];
        let b: Vec<u32> = (2..90).collect();
        let alone = model.encode(&[&a]).expect("encode");
        let packed = model.encode(&[&b, &a, &b[..7]]).expect("encode");
        assert_eq!(alone[0].len(), a.len() * model.config().hidden_size);
        assert_eq!(alone[0], packed[1]);
        assert!(
            model.encode(&[&[9_999_999u32][..]]).is_err(),
            "id outside the vocabulary"
        );
    }

    #[test]
    fn gelu_matches_the_erf_form() {
        // torch.nn.functional.gelu values.
        for (x, y) in [
            (0.0f32, 0.0f32),
            (1.0, 0.841_344_7),
            (-1.0, -0.158_655_26),
            (3.0, 2.995_950_5),
            (-4.0, -1.267e-4),
        ] {
            assert!(
                (gelu(x) - y).abs() < 2e-6,
                "gelu({x}) = {} not {y}",
                gelu(x)
            );
        }
    }
}
