//! Generation with transformers' `generate` semantics: greedy, sampling (temperature, top-k, top-p; seeded),
//! beam search (length penalty, early stopping, optionally sampling inside beams), repetition penalty, EOS,
//! batches of prompts; returns only the new tokens (the echoed prompt removed).

pub mod beam;
pub mod processors;

use tandem_experiments::manifest::GenerationSpec;

use super::error::{EngineError, Result};
use super::load::TextModel;
use super::model::{Architecture, Decoder};
use super::rng::{Purpose, Stream};
use super::train::examples::fill_template;

/// Decoding settings (a `GenerationSpec` plus the seed of sampling).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    /// End-of-sequence ids are suppressed until this many new tokens exist.
    pub min_new_tokens: usize,
    pub do_sample: bool,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub num_beams: usize,
    pub length_penalty: f64,
    pub repetition_penalty: f64,
    pub early_stopping: bool,
    pub seed: u64,
    /// End-of-sequence ids replacing the model's own (transformers' `eos_token_id` argument); `None` = the
    /// model's.
    pub eos_token_ids: Option<Vec<u32>>,
}

impl GenerateConfig {
    /// The settings of a manifest's generation section.
    pub fn from_spec(spec: &GenerationSpec, seed: u64) -> Self {
        Self {
            max_new_tokens: spec.max_new_tokens,
            min_new_tokens: spec.min_new_tokens,
            do_sample: spec.do_sample,
            temperature: spec.temperature,
            top_k: spec.top_k,
            top_p: spec.top_p,
            num_beams: spec.num_beams,
            length_penalty: spec.length_penalty,
            repetition_penalty: spec.repetition_penalty,
            early_stopping: spec.early_stopping,
            seed,
            eos_token_ids: None,
        }
    }

    /// Greedy decoding of `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            min_new_tokens: 0,
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            num_beams: 1,
            length_penalty: 1.0,
            repetition_penalty: 1.0,
            early_stopping: false,
            seed: 0,
            eos_token_ids: None,
        }
    }

    /// The end-of-sequence ids in force for `model`.
    pub fn eos_for(&self, model: &dyn Decoder) -> Vec<u32> {
        self.eos_token_ids
            .clone()
            .unwrap_or_else(|| model.special_tokens().eos.clone())
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::Input(m));
        if self.num_beams == 0 {
            return bad("generation.num_beams must be at least 1".into());
        }
        if self.do_sample && (self.temperature.is_nan() || self.temperature <= 0.0) {
            return bad(format!(
                "generation.temperature must be positive when sampling, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!(
                "generation.top_p must be in (0, 1], got {}",
                self.top_p
            ));
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return bad(format!(
                "generation.repetition_penalty must be positive, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// Applies the processors transformers uses for this configuration to one row of scores, in its order
/// (minimum length first); `generated` new tokens exist so far.
pub(crate) fn process_row(
    scores: &mut [f32],
    seen: &[u32],
    cfg: &GenerateConfig,
    min_keep: usize,
    generated: usize,
    eos: &[u32],
) {
    if generated < cfg.min_new_tokens {
        processors::suppress(scores, eos);
    }
    processors::repetition_penalty(scores, seen, cfg.repetition_penalty as f32);
    if cfg.do_sample {
        processors::temperature(scores, cfg.temperature as f32);
        processors::top_k(scores, cfg.top_k, min_keep);
        processors::top_p(scores, cfg.top_p as f32, min_keep);
    }
}

/// Draws an index from `weights` (non-negative, not all zero) with one uniform number.
pub(crate) fn draw(weights: &[f32], stream: &mut Stream) -> usize {
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let target = stream.uniform_f64() * total;
    let mut acc = 0f64;
    let mut last_positive = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            acc += f64::from(w);
            last_positive = i;
            if acc > target {
                return i;
            }
        }
    }
    last_positive
}

/// The tokens each row's decoder has seen before generation (for the repetition penalty).
fn initial_context(model: &dyn Decoder, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
    match model.architecture() {
        Architecture::DecoderOnly => prompts.to_vec(),
        Architecture::EncoderDecoder => {
            vec![model.special_tokens().decoder_start.into_iter().collect(); prompts.len()]
        }
    }
}

/// Generates continuations of `prompts` (token ids); returns each prompt's new tokens, EOS excluded.
pub fn generate(
    model: &dyn Decoder,
    prompts: &[Vec<u32>],
    cfg: &GenerateConfig,
) -> Result<Vec<Vec<u32>>> {
    cfg.validate()?;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if cfg.max_new_tokens == 0 {
        return Ok(vec![Vec::new(); prompts.len()]);
    }
    if cfg.num_beams > 1 {
        return beam::beam_search(model, prompts, cfg, &initial_context(model, prompts));
    }
    let eos = cfg.eos_for(model);
    let pad = model
        .special_tokens()
        .pad
        .or_else(|| eos.first().copied())
        .unwrap_or(0);
    let mut seen = initial_context(model, prompts);
    let (mut state, mut logits) = model.start(prompts)?;
    let rows = prompts.len();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); rows];
    let mut done = vec![false; rows];
    for step in 0..cfg.max_new_tokens {
        let table = logits.to_vec2::<f32>()?;
        let mut next = vec![pad; rows];
        for r in 0..rows {
            if done[r] {
                continue;
            }
            let mut scores = table[r].clone();
            process_row(&mut scores, &seen[r], cfg, 1, step, &eos);
            let token = if cfg.do_sample {
                let probs = processors::softmax(&scores);
                let mut stream = Stream::new(cfg.seed, Purpose::Sampling, &[r as u64, step as u64]);
                draw(&probs, &mut stream) as u32
            } else {
                processors::argmax(&scores) as u32
            };
            next[r] = token;
            seen[r].push(token);
            if eos.contains(&token) {
                done[r] = true;
            } else {
                out[r].push(token);
            }
        }
        if done.iter().all(|&d| d) || step + 1 == cfg.max_new_tokens {
            break;
        }
        logits = model.step(state.as_mut(), &next)?;
    }
    Ok(out)
}

/// Fills the inference template with each input, generates in batches of `batch_size`, and decodes the new
/// tokens to text (the prompt is never echoed).
pub fn generate_texts(
    loaded: &dyn TextModel,
    inputs: &[String],
    template: &str,
    cfg: &GenerateConfig,
    batch_size: usize,
    on_batch: &mut dyn FnMut(usize),
) -> Result<Vec<String>> {
    let mut prompts = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let text = fill_template(template, input)?;
        let ids = loaded
            .tokenizer()
            .encode(text.as_str(), true)
            .map_err(|e| EngineError::Input(format!("row {i}: cannot tokenise: {e}")))?
            .get_ids()
            .to_vec();
        if let Some(max) = loaded.decoder().max_positions()
            && loaded.decoder().architecture() == Architecture::DecoderOnly
            && ids.len() + cfg.max_new_tokens > max
        {
            return Err(EngineError::Input(format!(
                "row {i}: {} prompt tokens + max_new_tokens {} exceed the model's context of {max}",
                ids.len(),
                cfg.max_new_tokens
            )));
        }
        prompts.push(ids);
    }
    let mut texts = Vec::with_capacity(inputs.len());
    for (bi, chunk) in prompts.chunks(batch_size.max(1)).enumerate() {
        let mut batch_cfg = cfg.clone();
        // Each batch gets its own sampling stream, so results do not depend on what else was generated.
        batch_cfg.seed = super::rng::key(cfg.seed, Purpose::Sampling, &[bi as u64]);
        for ids in generate(loaded.decoder(), chunk, &batch_cfg)? {
            texts.push(loaded.decode(&ids)?.trim().to_string());
        }
        on_batch(chunk.len());
    }
    Ok(texts)
}
