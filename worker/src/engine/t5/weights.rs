//! The tensors of a Hugging Face T5 directory: `model.safetensors`, or the shards listed in
//! `model.safetensors.index.json`, read as f32 and handed out by name with their shape checked.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::engine::error::{EngineError, Result};
use crate::engine::tensor_io;

/// Every tensor of a checkpoint, by name, with the file it came from.
pub struct Weights {
    tensors: HashMap<String, (PathBuf, Vec<usize>, Vec<f32>)>,
    dir: PathBuf,
}

impl Weights {
    /// Reads `dir/model.safetensors`, or the shards `dir/model.safetensors.index.json` lists.
    pub fn load(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_files(&index)?
        } else {
            return Err(EngineError::weights(
                dir,
                "neither model.safetensors nor model.safetensors.index.json is there \
                 (only safetensors checkpoints are read)",
            ));
        };
        let mut tensors = HashMap::new();
        for file in files {
            for (name, (shape, values)) in tensor_io::read_all_f32(&file)? {
                tensors.insert(name, (file.clone(), shape, values));
            }
        }
        Ok(Self {
            tensors,
            dir: dir.to_path_buf(),
        })
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, which must have shape `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Some((file, actual, values)) = self.tensors.remove(name) else {
            return Err(EngineError::weights(
                &self.dir,
                format!("missing tensor `{name}`"),
            ));
        };
        if actual != shape {
            return Err(EngineError::weights(
                &file,
                format!("tensor `{name}` has shape {actual:?}; this config needs {shape:?}"),
            ));
        }
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }

    /// Drops a tensor the model does not use (a tied head's copy).
    pub fn discard(&mut self, name: &str) {
        self.tensors.remove(name);
    }
}

/// The distinct shard files an index names, in sorted order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| EngineError::io(index, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::weights(index, format!("not valid JSON: {e}")))?;
    let Some(map) = value.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(EngineError::weights(index, "no `weight_map` object"));
    };
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            return Err(EngineError::weights(
                index,
                format!("weight_map[`{tensor}`] is not a file name"),
            ));
        };
        if file.contains(['/', '\\']) || file.starts_with('.') {
            return Err(EngineError::weights(
                index,
                format!(
                    "weight_map[`{tensor}`] = {file:?}; accepted: a file name in the same folder"
                ),
            ));
        }
        names.insert(file.to_string());
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(names.into_iter().map(|f| dir.join(f)).collect())
}
