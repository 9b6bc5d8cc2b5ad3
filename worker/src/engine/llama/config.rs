//! LLaMA hyperparameters, read from a Hugging Face `config.json` or a GGUF file's metadata, with every value the
//! engine does not implement rejected by name.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::engine::error::{EngineError, Result};

/// Llama-3.1 rope scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// The architecture of one LLaMA-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

fn usize_key(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
            EngineError::config(path, key, format!("{v} is not a non-negative integer"))
        }),
    }
}

fn f64_key(obj: &serde_json::Map<String, Value>, key: &str, path: &Path) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| EngineError::config(path, key, format!("{v} is not a number"))),
    }
}

fn required<T>(v: Option<T>, key: &str, path: &Path) -> Result<T> {
    v.ok_or_else(|| EngineError::config(path, key, "missing; a LLaMA config needs it"))
}

fn token_ids(v: Option<&Value>, key: &str, path: &Path) -> Result<Vec<u32>> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Number(n)) => Ok(vec![
            n.as_u64()
                .ok_or_else(|| EngineError::config(path, key, format!("{n} is not a token id")))?
                as u32,
        ]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|i| i as u32)
                    .ok_or_else(|| EngineError::config(path, key, format!("{x} is not a token id")))
            })
            .collect(),
        Some(other) => Err(EngineError::config(
            path,
            key,
            format!("{other} is not a token id or list of ids"),
        )),
    }
}

impl LlamaConfig {
    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::config(path, "(file)", format!("not valid JSON: {e}")))?;
        Self::from_hf_json(&json, path)
    }

    /// Validates a parsed `config.json` (`path` names it in errors).
    pub fn from_hf_json(json: &Value, path: &Path) -> Result<Self> {
        let obj = json
            .as_object()
            .ok_or_else(|| EngineError::config(path, "(file)", "not a JSON object"))?;
        if let Some(mt) = obj.get("model_type").and_then(Value::as_str)
            && !matches!(mt, "llama" | "mistral")
        {
            return Err(EngineError::config(
                path,
                "model_type",
                format!("{mt:?}; accepted: \"llama\""),
            ));
        }
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(EngineError::config(
                path,
                "hidden_act",
                format!("{act:?}; accepted: \"silu\""),
            ));
        }
        for key in ["attention_bias", "mlp_bias"] {
            if obj.get(key).and_then(Value::as_bool) == Some(true) {
                return Err(EngineError::config(
                    path,
                    key,
                    "true; accepted: false (no biases)",
                ));
            }
        }
        if let Some(w) = obj.get("sliding_window").filter(|v| !v.is_null()) {
            return Err(EngineError::config(
                path,
                "sliding_window",
                format!("{w}; accepted: null"),
            ));
        }
        let hidden_size = required(usize_key(obj, "hidden_size", path)?, "hidden_size", path)?;
        let num_attention_heads = required(
            usize_key(obj, "num_attention_heads", path)?,
            "num_attention_heads",
            path,
        )?;
        let num_key_value_heads =
            usize_key(obj, "num_key_value_heads", path)?.unwrap_or(num_attention_heads);
        let head_dim =
            usize_key(obj, "head_dim", path)?.unwrap_or(hidden_size / num_attention_heads.max(1));
        let rope_scaling = match obj.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(Value::Object(rs)) => {
                let kind = rs
                    .get("rope_type")
                    .or_else(|| rs.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let get = |k: &str| {
                            rs.get(k).and_then(Value::as_f64).ok_or_else(|| {
                                EngineError::config(
                                    path,
                                    format!("rope_scaling.{k}"),
                                    "missing or not a number",
                                )
                            })
                        };
                        Some(Llama3RopeScaling {
                            factor: get("factor")?,
                            low_freq_factor: get("low_freq_factor")?,
                            high_freq_factor: get("high_freq_factor")?,
                            original_max_position_embeddings: get(
                                "original_max_position_embeddings",
                            )?,
                        })
                    }
                    other => {
                        return Err(EngineError::config(
                            path,
                            "rope_scaling.rope_type",
                            format!(
                                "{other:?}; accepted: \"llama3\", \"default\" or no rope_scaling"
                            ),
                        ));
                    }
                }
            }
            Some(other) => {
                return Err(EngineError::config(
                    path,
                    "rope_scaling",
                    format!("{other} is not an object"),
                ));
            }
        };
        let config = Self {
            hidden_size,
            intermediate_size: required(
                usize_key(obj, "intermediate_size", path)?,
                "intermediate_size",
                path,
            )?,
            num_hidden_layers: required(
                usize_key(obj, "num_hidden_layers", path)?,
                "num_hidden_layers",
                path,
            )?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f64_key(obj, "rms_norm_eps", path)?.unwrap_or(1e-6),
            rope_theta: f64_key(obj, "rope_theta", path)?.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: usize_key(obj, "max_position_embeddings", path)?
                .unwrap_or(2048),
            vocab_size: required(usize_key(obj, "vocab_size", path)?, "vocab_size", path)?,
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: token_ids(obj.get("bos_token_id"), "bos_token_id", path)?
                .first()
                .copied(),
            eos_token_ids: token_ids(obj.get("eos_token_id"), "eos_token_id", path)?,
            pad_token_id: token_ids(obj.get("pad_token_id"), "pad_token_id", path)?
                .first()
                .copied(),
        };
        config.check(path)?;
        Ok(config)
    }

    /// Structural checks shared by both sources.
    pub fn check(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| Err(EngineError::config(path, key, msg));
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return bad(
                "num_attention_heads",
                "head counts must be at least 1".into(),
            );
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim == 0 {
            return bad(
                "head_dim",
                format!(
                    "{} must be even and positive for rotary embeddings",
                    self.head_dim
                ),
            );
        }
        if self.hidden_size == 0 || self.vocab_size == 0 || self.num_hidden_layers == 0 {
            return bad(
                "hidden_size",
                "hidden_size, vocab_size and num_hidden_layers must be positive".into(),
            );
        }
        Ok(())
    }

    /// The seven projections of a block in model order (the order adapters are listed and saved): module
    /// name, output and input features.
    pub fn projections(&self) -> [(&'static str, usize, usize); 7] {
        let (h, kvh, d, hid, inter) = (
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
            self.hidden_size,
            self.intermediate_size,
        );
        [
            ("self_attn.q_proj", h * d, hid),
            ("self_attn.k_proj", kvh * d, hid),
            ("self_attn.v_proj", kvh * d, hid),
            ("self_attn.o_proj", hid, h * d),
            ("mlp.gate_proj", inter, hid),
            ("mlp.up_proj", inter, hid),
            ("mlp.down_proj", hid, inter),
        ]
    }

    /// The model's special tokens.
    pub fn special_tokens(&self) -> crate::engine::model::SpecialTokens {
        crate::engine::model::SpecialTokens {
            bos: self.bos_token_id,
            eos: self.eos_token_ids.clone(),
            pad: self.pad_token_id,
            decoder_start: None,
        }
    }

    /// Rotary inverse frequencies (`head_dim / 2` of them), with Llama-3.1 scaling applied when configured.
    pub fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim;
        let base: Vec<f32> = (0..dim / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / dim as f32;
                1.0 / (self.rope_theta as f32).powf(exponent)
            })
            .collect();
        let Some(s) = self.rope_scaling else {
            return base;
        };
        let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
        let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
        base.iter()
            .map(|&f| {
                let f = f as f64;
                let wavelen = 2.0 * std::f64::consts::PI / f;
                let scaled = if wavelen > low_wavelen {
                    f / s.factor
                } else {
                    f
                };
                let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                let out = if medium {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * scaled / s.factor + smooth * scaled
                } else {
                    scaled
                };
                out as f32
            })
            .collect()
    }
}

/// The file a config came from, for error messages.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "eos_token_id": [1, 2], "bos_token_id": 0, "tie_word_embeddings": true
        })
    }

    #[test]
    fn reads_gqa_and_token_ids() {
        let c = LlamaConfig::from_hf_json(&base(), Path::new("config.json")).unwrap();
        assert_eq!(
            (c.num_key_value_heads, c.head_dim, c.eos_token_ids.clone()),
            (2, 16, vec![1, 2])
        );
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn unsupported_values_are_named() {
        let mut j = base();
        j["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 2.0});
        let e = LlamaConfig::from_hf_json(&j, Path::new("m/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/config.json")
                && e.contains("rope_scaling.rope_type")
                && e.contains("yarn"),
            "{e}"
        );
        let mut j = base();
        j["hidden_act"] = "gelu".into();
        let e = LlamaConfig::from_hf_json(&j, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_act"), "{e}");
        let mut j = base();
        j["num_key_value_heads"] = 3.into();
        let e = LlamaConfig::from_hf_json(&j, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut j = base();
        j["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = LlamaConfig::from_hf_json(&j, Path::new("config.json")).unwrap();
        let plain = LlamaConfig {
            rope_scaling: None,
            ..c.clone()
        }
        .inv_freq();
        let scaled = c.inv_freq();
        assert_eq!(scaled[0], plain[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
    }
}
