//! A LLaMA from a GGUF file: its hyperparameters from the metadata and its byte-level BPE tokenizer from the
//! stored vocabulary and merges (as transformers' GGUF loader builds it).

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::config::{Llama3RopeScaling, LlamaConfig};
use super::weights::GgufStore;
use crate::engine::error::{EngineError, Result};

fn meta_u(store: &GgufStore, key: &str) -> Result<Option<usize>> {
    match store.meta(key) {
        None => Ok(None),
        Some(v) => {
            let n = v
                .to_u64()
                .or_else(|_| v.to_u32().map(u64::from))
                .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
                .map_err(|_| {
                    EngineError::config(&store.path, key, format!("{v:?} is not an integer"))
                })?;
            Ok(Some(n as usize))
        }
    }
}

fn meta_f(store: &GgufStore, key: &str) -> Result<Option<f64>> {
    match store.meta(key) {
        None => Ok(None),
        Some(v) => v
            .to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map(Some)
            .map_err(|_| EngineError::config(&store.path, key, format!("{v:?} is not a number"))),
    }
}

fn strings(store: &GgufStore, key: &str) -> Result<Vec<String>> {
    let v = store
        .meta(key)
        .ok_or_else(|| EngineError::tokenizer(&store.path, format!("metadata `{key}` missing")))?;
    let list = v
        .to_vec()
        .map_err(|_| EngineError::tokenizer(&store.path, format!("`{key}` is not an array")))?;
    list.iter()
        .map(|s| {
            s.to_string().cloned().map_err(|_| {
                EngineError::tokenizer(&store.path, format!("`{key}` holds a non-string"))
            })
        })
        .collect()
}

/// An integer metadata value of any integer type, widened.
fn meta_int(v: &Value) -> Option<i128> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => x.into(),
        Value::I64(x) => x.into(),
        _ => return None,
    })
}

/// The token id stored under `key`, if any; it must name one of the `n_tokens` tokens of the vocabulary.
fn token_id(store: &GgufStore, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    let Some(v) = store.meta(key) else {
        return Ok(None);
    };
    let id = meta_int(v)
        .ok_or_else(|| EngineError::config(&store.path, key, format!("{v:?} is not a token id")))?;
    match u32::try_from(id) {
        Ok(id) if (id as usize) < n_tokens => Ok(Some(id)),
        _ => Err(EngineError::config(
            &store.path,
            key,
            format!("{id} is outside the vocabulary of {n_tokens} tokens (tokenizer.ggml.tokens)"),
        )),
    }
}

/// The vocabulary, `tokenizer.ggml.tokens`. The GGUF reader reads bytes that are not UTF-8 as U+FFFD, which no
/// byte-level BPE vocabulary holds; such a token, like a token listed twice, would leave ids that no text maps
/// to, so both are refused.
fn vocabulary(store: &GgufStore) -> Result<Vec<String>> {
    let key = "tokenizer.ggml.tokens";
    let tokens = strings(store, key)?;
    let mut seen = std::collections::HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if t.contains('\u{fffd}') {
            return Err(EngineError::tokenizer(
                &store.path,
                format!("`{key}`[{i}] = {t:?} is not valid UTF-8 (read as U+FFFD)"),
            ));
        }
        if let Some(first) = seen.insert(t.as_str(), i) {
            return Err(EngineError::tokenizer(
                &store.path,
                format!("`{key}`[{i}] = {t:?} repeats `{key}`[{first}]"),
            ));
        }
    }
    Ok(tokens)
}

/// The hyperparameters of a GGUF LLaMA.
pub fn config(store: &GgufStore) -> Result<LlamaConfig> {
    let path = &store.path;
    let arch = store
        .meta("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| EngineError::config(path, "general.architecture", "missing"))?;
    if arch != "llama" {
        return Err(EngineError::config(
            path,
            "general.architecture",
            format!("{arch:?}; accepted: \"llama\""),
        ));
    }
    let need = |key: &str| -> Result<usize> {
        meta_u(store, key)?
            .ok_or_else(|| EngineError::config(path, key, "missing; a LLaMA GGUF needs it"))
    };
    let hidden_size = need("llama.embedding_length")?;
    let num_attention_heads = need("llama.attention.head_count")?;
    let num_key_value_heads =
        meta_u(store, "llama.attention.head_count_kv")?.unwrap_or(num_attention_heads);
    let head_dim = meta_u(store, "llama.rope.dimension_count")?
        .unwrap_or(hidden_size / num_attention_heads.max(1));
    if head_dim.checked_mul(num_attention_heads) != Some(hidden_size)
        && meta_u(store, "llama.attention.key_length")?.is_none()
    {
        // Partial rotary dimensions are not implemented.
        if head_dim != hidden_size / num_attention_heads.max(1) {
            return Err(EngineError::config(
                path,
                "llama.rope.dimension_count",
                format!("{head_dim}; accepted: head dim"),
            ));
        }
    }
    let tokens = vocabulary(store)?;
    let vocab_size = meta_u(store, "llama.vocab_size")?.unwrap_or(tokens.len());
    let rope_scaling = match store
        .meta("llama.rope.scaling.type")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
    {
        None | Some("none") => None,
        Some("llama3") => Some(Llama3RopeScaling {
            factor: meta_f(store, "llama.rope.scaling.factor")?.unwrap_or(8.0),
            low_freq_factor: meta_f(store, "llama.rope.scaling.low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: meta_f(store, "llama.rope.scaling.high_freq_factor")?.unwrap_or(4.0),
            original_max_position_embeddings: meta_f(
                store,
                "llama.rope.scaling.original_context_length",
            )?
            .unwrap_or(8192.0),
        }),
        Some(other) => {
            return Err(EngineError::config(
                path,
                "llama.rope.scaling.type",
                format!("{other:?}; accepted: none, llama3"),
            ));
        }
    };
    let token_id = |key: &str| token_id(store, key, tokens.len());
    let bos = token_id("tokenizer.ggml.bos_token_id")?;
    let eos = token_id("tokenizer.ggml.eos_token_id")?;
    let config = LlamaConfig {
        hidden_size,
        intermediate_size: need("llama.feed_forward_length")?,
        num_hidden_layers: need("llama.block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: meta_f(store, "llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_theta: meta_f(store, "llama.rope.freq_base")?.unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: meta_u(store, "llama.context_length")?.unwrap_or(2048),
        vocab_size,
        tie_word_embeddings: !store.content.tensor_infos.contains_key("output.weight"),
        bos_token_id: bos,
        eos_token_ids: eos.into_iter().collect(),
        pad_token_id: token_id("tokenizer.ggml.padding_token_id")?,
    };
    config.check(path)?;
    Ok(config)
}

/// The byte-level BPE tokenizer stored in a GGUF (`tokenizer.ggml.model = "gpt2"`), built as transformers'
/// GGUF converter builds a Llama-3-style tokenizer: BPE over the vocabulary and merges, byte-level
/// pre-tokenisation without a prefix space, control tokens registered as special.
pub fn tokenizer(store: &GgufStore) -> Result<Tokenizer> {
    let path = &store.path;
    let model = store
        .meta("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if model != "gpt2" {
        return Err(EngineError::tokenizer(
            path,
            format!("tokenizer.ggml.model is {model:?}; accepted: \"gpt2\" (byte-level BPE)"),
        ));
    }
    let tokens = vocabulary(store)?;
    let merges_raw = strings(store, "tokenizer.ggml.merges")?;
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            EngineError::tokenizer(
                path,
                format!("tokenizer.ggml.merges[{i}] = {m:?} is not two tokens"),
            )
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(t) = token_id(store, "tokenizer.ggml.unknown_token_id", tokens.len())?
        .and_then(|unk| tokens.get(unk as usize))
    {
        builder = builder.unk_token(t.clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| EngineError::tokenizer(path, format!("cannot build BPE: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
    tok.with_decoder(Some(ByteLevelDecoder::new(false, false, true)));
    if let Some(Value::Array(types)) = store.meta("tokenizer.ggml.token_type") {
        let specials: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| t.to_i32().ok() == Some(3) || t.to_u32().ok() == Some(3))
            .filter_map(|(i, _)| tokens.get(i))
            .map(|t| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        tok.add_special_tokens(specials)
            .map_err(|e| EngineError::tokenizer(path, format!("special tokens: {e}")))?;
    }
    // transformers' GGUF tokenizer (LlamaTokenizerFast, add_bos_token true) prepends BOS when special tokens
    // are requested, whatever `tokenizer.ggml.add_bos_token` says; do the same so token ids agree.
    let add_bos = true;
    let bos = token_id(store, "tokenizer.ggml.bos_token_id", tokens.len())?;
    if let (true, Some(bos)) = (add_bos, bos)
        && let Some(bos_text) = tokens.get(bos as usize)
    {
        let template = TemplateProcessing::builder()
            .try_single(format!("{bos_text}:0 $A:0"))
            .and_then(|b| b.try_pair(format!("{bos_text}:0 $A:0 $B:1")))
            .map_err(|e| EngineError::tokenizer(path, format!("post-processor: {e}")))?
            .special_tokens(vec![(bos_text.clone(), bos)])
            .build()
            .map_err(|e| EngineError::tokenizer(path, format!("post-processor: {e}")))?;
        tok.with_post_processor(Some(template));
    }
    Ok(tok)
}

/// The Hugging Face model id a GGUF file names as its source (`general.source.huggingface.repository`), when it
/// names one.
pub fn source_id(store: &GgufStore) -> Option<String> {
    store
        .meta("general.source.huggingface.repository")
        .and_then(|v| v.to_string().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| super::model::is_model_id(s))
}

/// Opens a GGUF LLaMA: store (with head counts set), config and tokenizer.
pub fn open(path: &Path) -> Result<(GgufStore, LlamaConfig, Tokenizer)> {
    let mut store = GgufStore::open(path)?;
    let config = config(&store)?;
    store.set_heads(config.num_attention_heads, config.num_key_value_heads);
    let tokenizer = tokenizer(&store)?;
    Ok((store, config, tokenizer))
}
