//! Quick checks of a checkpoint: the top logits of a prompt's last position.

use std::path::Path;

use serde::Serialize;

use super::error::{EngineError, Result};
use super::load::{TextModel, load_model};

/// One entry of the top-k list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopLogit {
    pub id: u32,
    pub logit: f32,
}

/// The prompt's token ids and the `top` highest logits of its last position.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogitsReport {
    pub tokens: Vec<u32>,
    pub top: Vec<TopLogit>,
}

/// Tokenises `prompt` as is (BOS prepended when `bos`), runs the model (with `adapter` if given), and returns
/// the top `top` logits of the last position, highest first (ties by lower id).
pub fn top_logits(
    model_path: &Path,
    adapter: Option<&Path>,
    prompt: &str,
    top: usize,
    bos: bool,
) -> Result<LogitsReport> {
    let mut loaded = load_model(model_path, super::load::ModelOptions::default())?;
    if let Some(dir) = adapter {
        super::peft::load(loaded.model.as_mut(), dir, None)?;
    }
    let mut tokens = loaded.encode(prompt)?;
    if bos {
        let b = loaded.model.special_tokens().bos.ok_or_else(|| {
            EngineError::Input(format!("--bos: {} has no BOS token", model_path.display()))
        })?;
        tokens.insert(0, b);
    }
    let logits = loaded.model.start(std::slice::from_ref(&tokens))?.1;
    let row = logits.squeeze(0)?.to_vec1::<f32>()?;
    Ok(LogitsReport {
        tokens,
        top: top_k(&row, top),
    })
}

/// The `k` largest values with their indices, highest first, ties by lower index.
pub fn top_k(row: &[f32], k: usize) -> Vec<TopLogit> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| TopLogit {
            id: i as u32,
            logit: row[i],
        })
        .collect()
}
