//! LLaMA-architecture models (LLaMA 3.x, SmolLM2, TinyLlama): config, weights (safetensors or GGUF), the
//! decoder itself, and loading a model directory or GGUF file together with its tokenizer.

pub mod config;
pub mod gguf;
pub mod model;
pub mod weights;

use std::path::Path;

use tokenizers::Tokenizer;

pub use config::LlamaConfig;
pub use model::Llama;

use crate::engine::error::{EngineError, Result};

/// A LLaMA checkpoint opened but not loaded: its config, a store that reads one tensor at a time, the tokenizer
/// and the name adapters record. Each engine builds its model from it.
pub struct Checkpoint {
    pub config: LlamaConfig,
    pub store: Box<dyn weights::WeightStore>,
    pub tokenizer: Tokenizer,
    pub name: String,
}

/// Loads a LLaMA from a Hugging Face directory (config.json, safetensors, tokenizer.json) or a `.gguf` file,
/// with its tokenizer; checks that the tokenizer fits the model's vocabulary.
pub fn load(path: &Path) -> Result<(Llama, Tokenizer)> {
    let mut c = open(path)?;
    Ok((
        Llama::load(c.config, c.store.as_mut(), &c.name)?,
        c.tokenizer,
    ))
}

/// Opens a LLaMA checkpoint (a Hugging Face directory or a `.gguf` file) without reading its tensors; checks
/// that the tokenizer fits the model's vocabulary.
pub fn open(path: &Path) -> Result<Checkpoint> {
    let name = model::base_name(path);
    let check_vocab = |tokenizer: &Tokenizer, config: &LlamaConfig, tok_path: &Path| {
        crate::engine::load::check_tokenizer_fits(
            tokenizer,
            config.vocab_size,
            "the model's vocab_size",
            tok_path,
        )
    };
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let (store, config, tokenizer) = gguf::open(path)?;
        check_vocab(&tokenizer, &config, path)?;
        let name = gguf::source_id(&store).unwrap_or(name);
        return Ok(Checkpoint {
            config,
            store: Box::new(store),
            tokenizer,
            name,
        });
    }
    if !path.exists() {
        return Err(EngineError::io(
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    if !path.is_dir() {
        return Err(EngineError::weights(
            path,
            "accepted: a Hugging Face model directory or a .gguf file",
        ));
    }
    let config = LlamaConfig::from_hf_file(&path.join("config.json"))?;
    let tok_path = path.join("tokenizer.json");
    if !tok_path.exists() {
        return Err(EngineError::tokenizer(
            &tok_path,
            "missing; a model directory needs tokenizer.json",
        ));
    }
    let tokenizer = crate::engine::load::read_tokenizer_json(&tok_path)?;
    check_vocab(&tokenizer, &config, &tok_path)?;
    let store = weights::SafetensorsStore::open(path)?;
    Ok(Checkpoint {
        config,
        store: Box::new(store),
        tokenizer,
        name,
    })
}
