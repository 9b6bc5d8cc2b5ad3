//! T5 hyperparameters read from a Hugging Face `config.json` and checked against what the engine
//! implements.

use std::path::Path;

use serde_json::{Map, Value};

use crate::engine::error::{EngineError, Result};

/// The feed-forward block of every layer (`feed_forward_proj`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedForwardKind {
    /// `wo(relu(wi(x)))`: t5-base and the original T5 checkpoints.
    Relu,
    /// `wo(gelu_new(wi_0(x)) * wi_1(x))` with the tanh-approximated GELU: T5 v1.1 and FLAN-T5.
    GatedGelu,
}

/// The T5 settings the engine uses.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Size of one attention head.
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_decoder_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward: FeedForwardKind,
    /// The LM head reuses the shared embedding, and the decoder output is scaled by `d_model^-0.5`
    /// first.
    pub tie_word_embeddings: bool,
    pub pad_token_id: u32,
    pub eos_token_id: u32,
    pub decoder_start_token_id: u32,
    /// `n_positions` when the config states one (t5-base: 512); T5 itself has no position limit.
    pub max_positions: Option<usize>,
}

impl T5Config {
    /// Width of the attention's projections (`num_heads * d_kv`), which may differ from `d_model`.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Reads and checks `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses the text of a `config.json`; `path` names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| EngineError::config(path, "(file)", format!("not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(EngineError::config(
                path,
                "(file)",
                "expected a JSON object",
            ));
        };
        let keys = Keys { map: &map, path };

        if let Some(model_type) = keys.string("model_type")?.filter(|t| t != "t5") {
            return Err(EngineError::config(
                path,
                "model_type",
                format!("{model_type:?}; accepted: \"t5\""),
            ));
        }
        if keys.boolean("is_encoder_decoder")? == Some(false) {
            return Err(EngineError::config(
                path,
                "is_encoder_decoder",
                "false; a T5 model is an encoder-decoder",
            ));
        }
        let feed_forward_proj = keys.string("feed_forward_proj")?.unwrap_or("relu".into());
        let feed_forward = match feed_forward_proj.as_str() {
            "relu" => FeedForwardKind::Relu,
            "gated-gelu" => FeedForwardKind::GatedGelu,
            other => {
                return Err(EngineError::config(
                    path,
                    "feed_forward_proj",
                    format!("{other:?}; accepted: \"relu\" (t5-base) or \"gated-gelu\" (FLAN-T5)"),
                ));
            }
        };
        // Newer configs repeat the activation; it must agree with feed_forward_proj.
        if let Some(act) = keys.string("dense_act_fn")? {
            let expected = match feed_forward {
                FeedForwardKind::Relu => "relu",
                FeedForwardKind::GatedGelu => "gelu_new",
            };
            if act != expected {
                return Err(EngineError::config(
                    path,
                    "dense_act_fn",
                    format!(
                        "{act:?} with feed_forward_proj {feed_forward_proj:?}; accepted: {expected:?}"
                    ),
                ));
            }
        }

        let num_layers = keys.positive("num_layers", 6)?;
        let pad_token_id = keys.token("pad_token_id", 0)?;
        let config = Self {
            vocab_size: keys.positive("vocab_size", 32128)?,
            d_model: keys.positive("d_model", 512)?,
            d_kv: keys.positive("d_kv", 64)?,
            d_ff: keys.positive("d_ff", 2048)?,
            num_layers,
            num_decoder_layers: keys.positive("num_decoder_layers", num_layers)?,
            num_heads: keys.positive("num_heads", 8)?,
            relative_attention_num_buckets: keys.positive("relative_attention_num_buckets", 32)?,
            relative_attention_max_distance: keys
                .positive("relative_attention_max_distance", 128)?,
            layer_norm_epsilon: keys.float("layer_norm_epsilon", 1e-6)?,
            feed_forward,
            tie_word_embeddings: keys.boolean("tie_word_embeddings")?.unwrap_or(true),
            pad_token_id,
            eos_token_id: keys.token("eos_token_id", 1)?,
            decoder_start_token_id: keys.token("decoder_start_token_id", pad_token_id)?,
            max_positions: keys.optional_positive("n_positions")?,
        };
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let buckets = self.relative_attention_num_buckets;
        if buckets < 4 {
            return Err(EngineError::config(
                path,
                "relative_attention_num_buckets",
                format!("{buckets}; accepted: at least 4"),
            ));
        }
        if self.relative_attention_max_distance <= buckets / 2 {
            return Err(EngineError::config(
                path,
                "relative_attention_max_distance",
                format!(
                    "{}; accepted: more than relative_attention_num_buckets / 2 ({})",
                    self.relative_attention_max_distance,
                    buckets / 2
                ),
            ));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err(EngineError::config(
                path,
                "layer_norm_epsilon",
                format!("{}; accepted: a positive number", self.layer_norm_epsilon),
            ));
        }
        for (key, id) in [
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if id as usize >= self.vocab_size {
                return Err(EngineError::config(
                    path,
                    key,
                    format!("{id} is outside the vocabulary of {}", self.vocab_size),
                ));
            }
        }
        Ok(())
    }
}

/// Typed access to the keys of a config object; every error names the file and key.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
}

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, value: &Value, accepted: &str) -> EngineError {
        EngineError::config(self.path, key, format!("{value}; accepted: {accepted}"))
    }

    fn optional_positive(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Ok(Some(n as usize)),
                _ => Err(self.bad(key, v, "a positive integer")),
            },
        }
    }

    fn positive(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.optional_positive(key)?.unwrap_or(default))
    }

    fn token(&self, key: &str, default: u32) -> Result<u32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Ok(n),
                None => Err(self.bad(key, v, "a token id (a non-negative integer)")),
            },
        }
    }

    fn float(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(key, v, "a number")),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(key, v, "true or false")),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.bad(key, v, "a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<T5Config> {
        T5Config::from_json(text, Path::new("config.json"))
    }

    #[test]
    fn reads_t5_base_style_config_with_defaults() {
        let c = parse(r#"{"model_type":"t5","d_model":768,"d_ff":3072,"num_heads":12,"num_layers":12,"n_positions":512}"#)
            .unwrap();
        assert_eq!(c.feed_forward, FeedForwardKind::Relu);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.num_decoder_layers, 12);
        assert_eq!(c.inner_dim(), 12 * 64);
        assert_eq!(c.max_positions, Some(512));
        assert_eq!(
            (c.pad_token_id, c.eos_token_id, c.decoder_start_token_id),
            (0, 1, 0)
        );
    }

    #[test]
    fn reads_flan_t5_style_config() {
        let c = parse(
            r#"{"feed_forward_proj":"gated-gelu","dense_act_fn":"gelu_new","tie_word_embeddings":false,
                "num_decoder_layers":3,"num_layers":2}"#,
        )
        .unwrap();
        assert_eq!(c.feed_forward, FeedForwardKind::GatedGelu);
        assert!(!c.tie_word_embeddings);
        assert_eq!((c.num_layers, c.num_decoder_layers), (2, 3));
    }

    #[test]
    fn unsupported_keys_are_named() {
        let err = parse(r#"{"feed_forward_proj":"gated-silu"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("feed_forward_proj"),
            "{err}"
        );
        assert!(err.contains("gated-gelu"), "{err}");
        let err = parse(r#"{"model_type":"bart"}"#).unwrap_err().to_string();
        assert!(err.contains("model_type"), "{err}");
        let err = parse(r#"{"d_model":-3}"#).unwrap_err().to_string();
        assert!(
            err.contains("d_model") && err.contains("positive integer"),
            "{err}"
        );
        let err = parse(r#"{"feed_forward_proj":"relu","dense_act_fn":"gelu"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dense_act_fn"), "{err}");
        let err = parse(r#"{"vocab_size":10,"eos_token_id":12}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("eos_token_id"), "{err}");
        let err = parse("[1]").unwrap_err().to_string();
        assert!(err.contains("JSON object"), "{err}");
    }
}
