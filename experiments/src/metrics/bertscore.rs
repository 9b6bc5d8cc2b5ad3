//! BERTScore as bert-score 0.3.13 computes it (`bert_score.score(cands, refs, model_type=<dir>, num_layers=L)`):
//! contextual embeddings of the first L layers of a BERT encoder, greedy cosine matching, [CLS]/[SEP] weighted 0,
//! optional idf weights over the references, optional baseline rescaling, an empty candidate or reference scoring
//! 0. bert-score matches pairs in batches of 64 padded with zeros, so a token's best similarity is never below 0
//! when the other side is shorter than the longest of its batch; that is reproduced.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;
use tokenizers::utils::truncation::TruncationParams;

use super::MetricsError;
use super::bert::BertModel;
use super::text::py_strip;

/// bert-score's `batch_size` (the greedy matching pads within batches of this many pairs).
pub const MATCH_BATCH: usize = 64;

/// Baseline values for rescaling: `(score - baseline) / (1 - baseline)` per P, R and F.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Baseline {
    /// Reads a bert-score baseline file (CSV `LAYER,P,R,F`, one row per layer) and takes the row at position
    /// `num_layers`, as bert-score does (`pd.read_csv(path).iloc[num_layers]`).
    pub fn from_file(path: &Path, num_layers: usize) -> Result<Baseline, MetricsError> {
        let text = std::fs::read_to_string(path).map_err(|e| MetricsError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let bad = |line: usize, message: String| MetricsError::Input {
            path: path.to_path_buf(),
            line,
            message,
        };
        let rows: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .skip(1)
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l))
            .collect();
        let (line, row) = *rows.get(num_layers).ok_or_else(|| {
            bad(
                0,
                format!(
                    "no row for num_layers {num_layers} (file has {} data rows)",
                    rows.len()
                ),
            )
        })?;
        let values: Vec<f64> = row
            .split(',')
            .skip(1)
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(line, format!("expected LAYER,P,R,F numbers: {e}")))?;
        if values.len() != 3 {
            return Err(bad(
                line,
                format!("expected 4 columns LAYER,P,R,F, found {}", values.len() + 1),
            ));
        }
        Ok(Baseline {
            precision: values[0],
            recall: values[1],
            f1: values[2],
        })
    }
}

/// How to compute BERTScore.
#[derive(Debug, Clone, PartialEq)]
pub struct BertScoreConfig {
    /// Local Hugging Face directory: config.json, model.safetensors, tokenizer.json (tokenizer_config.json
    /// optional, for `model_max_length` and the special tokens).
    pub model_dir: PathBuf,
    /// bert-score's `num_layers`; `None` uses every layer of the model.
    pub num_layers: Option<usize>,
    /// bert-score's `idf=True` (idf over the references).
    pub idf: bool,
    /// Baseline rescaling, if wanted.
    pub baseline: Option<Baseline>,
    /// Tokens per encoder forward pass (sentences are packed without padding; results do not depend on it).
    pub batch_tokens: usize,
}

impl BertScoreConfig {
    pub fn new(model_dir: impl Into<PathBuf>) -> BertScoreConfig {
        BertScoreConfig {
            model_dir: model_dir.into(),
            num_layers: None,
            idf: false,
            baseline: None,
            batch_tokens: 8192,
        }
    }
}

/// BERTScore of one pair.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BertScoreValue {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// A loaded encoder and tokenizer. The encoder's matrix products use candle's CPU threads, whose number follows
/// the `RAYON_NUM_THREADS` environment variable (default: the physical cores).
pub struct BertScorer {
    model: BertModel,
    tokenizer: Tokenizer,
    cls: u32,
    sep: u32,
    config: BertScoreConfig,
}

impl std::fmt::Debug for BertScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertScorer")
            .field("model", &self.model)
            .field("config", &self.config)
            .finish()
    }
}

#[derive(serde::Deserialize, Default)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
    cls_token: Option<String>,
    sep_token: Option<String>,
}

impl BertScorer {
    pub fn load(config: BertScoreConfig) -> Result<BertScorer, MetricsError> {
        let dir = &config.model_dir;
        if !dir.is_dir() {
            return Err(MetricsError::Io {
                path: dir.clone(),
                message: "BERTScore model directory not found (scripts/fetch-models.sh fetches all-MiniLM-L6-v2)"
                    .to_string(),
            });
        }
        let model = BertModel::load(dir, config.num_layers)?;
        let tok_config_path = dir.join("tokenizer_config.json");
        let tok_config: TokenizerConfig = match std::fs::read_to_string(&tok_config_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| MetricsError::Model {
                path: tok_config_path.clone(),
                message: format!("not a tokenizer_config.json: {e}"),
            })?,
            Err(_) => TokenizerConfig::default(),
        };
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| MetricsError::Model {
            path: tok_path.clone(),
            message: e.to_string(),
        })?;
        let max_pos = model.config().max_position_embeddings;
        // Truncation keeps the special tokens ([CLS], [SEP]); fewer positions than that cannot hold a text.
        let specials = tokenizer
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        if max_pos <= specials {
            return Err(MetricsError::Model {
                path: dir.join("config.json"),
                message: format!(
                    "max_position_embeddings = {max_pos} leaves no room for text beside the {specials} special tokens"
                ),
            });
        }
        let max_length = match tok_config.model_max_length {
            Some(m) if m > specials as f64 && m < max_pos as f64 => m as usize,
            _ => max_pos,
        };
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| MetricsError::Model {
                path: tok_path.clone(),
                message: e.to_string(),
            })?;
        tokenizer.with_padding(None);
        let special = |name: Option<String>, default: &str| -> Result<u32, MetricsError> {
            let token = name.unwrap_or_else(|| default.to_string());
            tokenizer
                .token_to_id(&token)
                .ok_or_else(|| MetricsError::Model {
                    path: tok_path.clone(),
                    message: format!("special token {token} not in the vocabulary"),
                })
        };
        let cls = special(tok_config.cls_token.clone(), "[CLS]")?;
        let sep = special(tok_config.sep_token.clone(), "[SEP]")?;
        Ok(BertScorer {
            model,
            tokenizer,
            cls,
            sep,
            config,
        })
    }

    pub fn config(&self) -> &BertScoreConfig {
        &self.config
    }

    /// Sets (or clears) baseline rescaling, e.g. once the layer count is known.
    pub fn set_baseline(&mut self, baseline: Option<Baseline>) {
        self.config.baseline = baseline;
    }

    /// Number of encoder layers in use (bert-score's `num_layers`).
    pub fn num_layers(&self) -> usize {
        self.model.num_layers()
    }

    /// bert-score's `sent_encode`: strip, then encode with special tokens and truncation.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, MetricsError> {
        let text = py_strip(text);
        if text.is_empty() {
            return Ok(vec![self.cls, self.sep]);
        }
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| MetricsError::Model {
                path: self.config.model_dir.clone(),
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Scores `candidates[i]` against `references[i]` for every i.
    pub fn score(
        &self,
        candidates: &[&str],
        references: &[&str],
    ) -> Result<Vec<BertScoreValue>, MetricsError> {
        if candidates.len() != references.len() {
            return Err(MetricsError::Mismatch {
                candidates: candidates.len(),
                references: references.len(),
            });
        }
        // Unique sentences, tokenised and embedded once.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut sentences: Vec<&str> = Vec::new();
        for s in references.iter().chain(candidates) {
            index.entry(s).or_insert_with(|| {
                sentences.push(s);
                sentences.len() - 1
            });
        }
        let ids: Vec<Vec<u32>> = sentences
            .iter()
            .map(|s| self.token_ids(s))
            .collect::<Result<_, _>>()?;
        let embeddings = self.embed(&ids)?;
        let weight = self.weights(references, &index, &ids);
        let hidden = self.model.config().hidden_size;
        let mut out = Vec::with_capacity(candidates.len());
        for start in (0..candidates.len()).step_by(MATCH_BATCH) {
            let end = (start + MATCH_BATCH).min(candidates.len());
            let hyp_idx: Vec<usize> = candidates[start..end].iter().map(|s| index[s]).collect();
            let ref_idx: Vec<usize> = references[start..end].iter().map(|s| index[s]).collect();
            let max_hyp = hyp_idx.iter().map(|&i| ids[i].len()).max().unwrap_or(0);
            let max_ref = ref_idx.iter().map(|&i| ids[i].len()).max().unwrap_or(0);
            for (&h, &r) in hyp_idx.iter().zip(&ref_idx) {
                let value = greedy_match(
                    (&embeddings[h], &ids[h], ids[h].len() < max_hyp),
                    (&embeddings[r], &ids[r], ids[r].len() < max_ref),
                    hidden,
                    &weight,
                );
                out.push(self.rescale(value));
            }
        }
        Ok(out)
    }

    fn rescale(&self, v: BertScoreValue) -> BertScoreValue {
        match self.config.baseline {
            None => v,
            Some(b) => BertScoreValue {
                precision: (v.precision - b.precision) / (1.0 - b.precision),
                recall: (v.recall - b.recall) / (1.0 - b.recall),
                f1: (v.f1 - b.f1) / (1.0 - b.f1),
            },
        }
    }

    /// Token weights: idf over the references (bert-score's `get_idf_dict`) or 1, with [CLS]/[SEP] at 0.
    fn weights(
        &self,
        references: &[&str],
        index: &HashMap<&str, usize>,
        ids: &[Vec<u32>],
    ) -> TokenWeights {
        if !self.config.idf {
            return TokenWeights {
                table: HashMap::new(),
                default: 1.0,
                zero: [self.cls, self.sep],
            };
        }
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for r in references {
            let set: HashSet<u32> = ids[index[r]].iter().copied().collect();
            for t in set {
                *counts.entry(t).or_default() += 1;
            }
        }
        let n = references.len() as f64;
        let table = counts
            .into_iter()
            .map(|(t, c)| (t, ((n + 1.0) / (c as f64 + 1.0)).ln()))
            .collect();
        TokenWeights {
            table,
            default: (n + 1.0).ln(),
            zero: [u32::MAX, u32::MAX],
        }
    }

    /// Unit-normalised embeddings of every sentence, encoded in packed batches of about `batch_tokens` tokens.
    fn embed(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, MetricsError> {
        let hidden = self.model.config().hidden_size;
        let mut out: Vec<Vec<f32>> = Vec::with_capacity(ids.len());
        let mut start = 0;
        while start < ids.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < ids.len()
                && (end == start || tokens + ids[end].len() <= self.config.batch_tokens)
            {
                tokens += ids[end].len();
                end += 1;
            }
            let batch: Vec<&[u32]> = ids[start..end].iter().map(Vec::as_slice).collect();
            for mut e in self.model.encode(&batch)? {
                for row in e.chunks_mut(hidden) {
                    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                    row.iter_mut().for_each(|v| *v /= norm);
                }
                out.push(e);
            }
            start = end;
        }
        Ok(out)
    }
}

struct TokenWeights {
    table: HashMap<u32, f64>,
    default: f64,
    zero: [u32; 2],
}

impl TokenWeights {
    fn get(&self, token: u32) -> f64 {
        if self.zero.contains(&token) {
            return 0.0;
        }
        self.table.get(&token).copied().unwrap_or(self.default)
    }
}

/// bert-score's `greedy_cos_idf` for one pair; `padded` says whether the side was shorter than the longest of its
/// matching batch (its padding then offers a similarity of 0 to the other side).
fn greedy_match(
    hyp: (&[f32], &[u32], bool),
    rf: (&[f32], &[u32], bool),
    hidden: usize,
    weights: &TokenWeights,
) -> BertScoreValue {
    let (h_emb, h_ids, h_padded) = hyp;
    let (r_emb, r_ids, r_padded) = rf;
    if h_ids.len() <= 2 || r_ids.len() <= 2 {
        return BertScoreValue::default();
    }
    let (nh, nr) = (h_ids.len(), r_ids.len());
    let mut sim = vec![0f32; nh * nr];
    for i in 0..nh {
        let a = &h_emb[i * hidden..(i + 1) * hidden];
        for j in 0..nr {
            let b = &r_emb[j * hidden..(j + 1) * hidden];
            sim[i * nr + j] = a.iter().zip(b).map(|(x, y)| x * y).sum();
        }
    }
    let floor_p = if r_padded { 0.0 } else { f32::NEG_INFINITY };
    let floor_r = if h_padded { 0.0 } else { f32::NEG_INFINITY };
    let weighted = |n: usize, ids: &[u32], best: &dyn Fn(usize) -> f32| -> f64 {
        let total: f64 = ids.iter().map(|&t| weights.get(t)).sum();
        (0..n)
            .map(|k| best(k) as f64 * weights.get(ids[k]) / total)
            .sum()
    };
    let precision = weighted(nh, h_ids, &|i| {
        sim[i * nr..(i + 1) * nr]
            .iter()
            .copied()
            .fold(floor_p, f32::max)
    });
    let recall = weighted(nr, r_ids, &|j| {
        (0..nh).map(|i| sim[i * nr + j]).fold(floor_r, f32::max)
    });
    let f1 = 2.0 * precision * recall / (precision + recall);
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    BertScoreValue {
        precision: finite(precision),
        recall: finite(recall),
        f1: finite(f1),
    }
}
