//! Loading a base model by path: picks the architecture, applies QLoRA quantisation when asked, and pairs the
//! model with its tokenizer.

use std::path::Path;

use tandem_experiments::manifest::{ComputeDtype, ModelFamily, Quantization};
use tokenizers::Tokenizer;

use super::error::{EngineError, Result};
use super::model::{Decoder, LanguageModel};

/// How to load a base model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    /// The architecture; `None` = detect (a `.gguf` file or `model_type` in config.json).
    pub family: Option<ModelFamily>,
    pub quantization: Quantization,
    /// The manifest's `compute_dtype`: on the CPU, `bf16` packs the frozen weights for the bf16 GEMM; `f32`
    /// and `f16` compute in f32 (this CPU engine has no f16 arithmetic).
    pub compute_dtype: ComputeDtype,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            family: None,
            quantization: Quantization::None,
            compute_dtype: ComputeDtype::F32,
        }
    }
}

/// A model with its tokenizer.
pub struct LoadedModel {
    pub model: Box<dyn LanguageModel>,
    pub tokenizer: Tokenizer,
}

/// A model that reads and writes text: its tokenizer and its decoder. Building training examples and
/// generating text take one, whichever engine holds the weights.
pub trait TextModel {
    fn tokenizer(&self) -> &Tokenizer;
    fn decoder(&self) -> &dyn Decoder;

    /// Token ids of `text`, without special tokens.
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer()
            .encode(text, false)
            .map_err(|e| EngineError::Input(format!("cannot tokenise: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer()
            .decode(ids, true)
            .map_err(|e| EngineError::Input(format!("cannot detokenise: {e}")))
    }
}

impl TextModel for LoadedModel {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn decoder(&self) -> &dyn Decoder {
        self.model.as_ref()
    }
}

/// Reads a model folder's `tokenizer.json` as transformers' `PreTrainedTokenizerFast` uses it by default: the
/// file's padding and truncation settings are not applied. transformers turns them off unless a call asks for
/// them; applied to every text here, a declared fixed length would pad each text to it (2^40 tokens is an
/// allocation failure) and a length shorter than the special tokens would underflow.
pub fn read_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| EngineError::tokenizer(path, format!("cannot parse: {e}")))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| EngineError::tokenizer(path, format!("truncation: {e}")))?;
    Ok(tokenizer)
}

/// Checks that every id `tokenizer` (read from `path`) can produce has a row among the model's `vocab_size`
/// embeddings (`vocab` says where that size comes from): its token count, the largest id of its vocabulary
/// (added tokens included) and the ids its post-processor puts around a text.
pub fn check_tokenizer_fits(
    tokenizer: &Tokenizer,
    vocab_size: usize,
    vocab: &str,
    path: &Path,
) -> Result<()> {
    let tok_vocab = tokenizer.get_vocab_size(true);
    if tok_vocab > vocab_size {
        return Err(EngineError::tokenizer(
            path,
            format!(
                "the tokenizer has {tok_vocab} tokens but {vocab} is {vocab_size}; they do not belong together"
            ),
        ));
    }
    let outside = |what: String| {
        EngineError::tokenizer(
            path,
            format!("{what}, outside the model's embeddings ({vocab} {vocab_size})"),
        )
    };
    if let Some((token, id)) = tokenizer
        .get_vocab(true)
        .into_iter()
        .max_by_key(|&(_, id)| id)
        .filter(|&(_, id)| id as usize >= vocab_size)
    {
        return Err(outside(format!("token {token:?} has id {id}")));
    }
    let probe = tokenizer
        .encode("a", true)
        .map_err(|e| EngineError::tokenizer(path, format!("cannot encode a probe text: {e}")))?;
    if let Some(id) = probe
        .get_ids()
        .iter()
        .find(|&&id| id as usize >= vocab_size)
    {
        return Err(outside(format!("the post-processor adds id {id}")));
    }
    Ok(())
}

/// The architecture of the model at `path`.
pub fn detect_family(path: &Path) -> Result<ModelFamily> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return Ok(ModelFamily::Llama);
    }
    let cfg = path.join("config.json");
    let text = std::fs::read_to_string(&cfg).map_err(|e| EngineError::io(&cfg, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::config(&cfg, "(file)", format!("not valid JSON: {e}")))?;
    match json.get("model_type").and_then(|v| v.as_str()) {
        Some("llama") | Some("mistral") => Ok(ModelFamily::Llama),
        Some("t5") | Some("mt5") => Ok(ModelFamily::T5),
        Some(other) => Err(EngineError::config(
            &cfg,
            "model_type",
            format!("{other:?}; accepted: \"llama\", \"t5\""),
        )),
        None => Err(EngineError::config(
            &cfg,
            "model_type",
            "missing; accepted: \"llama\", \"t5\"",
        )),
    }
}

/// Loads the model at `path` with `options`.
pub fn load_model(path: &Path, options: ModelOptions) -> Result<LoadedModel> {
    let family = match options.family {
        Some(f) => f,
        None => detect_family(path)?,
    };
    let (mut model, tokenizer): (Box<dyn LanguageModel>, Tokenizer) = match family {
        ModelFamily::Llama => {
            let (model, tokenizer) = super::llama::load(path)?;
            (Box::new(model), tokenizer)
        }
        ModelFamily::T5 => {
            let (model, tokenizer) = super::t5::load(path)?;
            (Box::new(model), tokenizer)
        }
    };
    if options.quantization == Quantization::Nf4 {
        super::qlora::quantize_model(model.as_mut())?;
    }
    Ok(LoadedModel { model, tokenizer })
}
