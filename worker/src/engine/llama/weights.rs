//! Where LLaMA weights come from: a Hugging Face directory (one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, memory-mapped) or a GGUF file (blocks dequantised, q/k rows un-permuted).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use memmap2::Mmap;

use crate::engine::error::{EngineError, Result};
use crate::engine::tensor_io;

/// A source of named f32 tensors, named as in the Hugging Face checkpoint.
pub trait WeightStore {
    /// Whether the checkpoint has `name`.
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name`, which must have `shape`.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor>;
}

/// Memory-mapped safetensors files of a Hugging Face directory.
pub struct SafetensorsStore {
    maps: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `maps`.
    index: HashMap<String, usize>,
}

impl SafetensorsStore {
    /// Opens `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| EngineError::io(&index_path, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EngineError::weights(&index_path, format!("not valid JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    EngineError::weights(&index_path, "missing the `weight_map` object")
                })?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            files.sort();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            return Err(EngineError::weights(
                dir,
                "no model.safetensors or model.safetensors.index.json in the model directory",
            ));
        };
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = File::open(&path).map_err(|e| EngineError::io(&path, e))?;
            // SAFETY: the file is opened read-only and not modified by this process while mapped.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(&path, e))?;
            let st = tensor_io::parse(&mmap, &path)?;
            for name in st.names() {
                index.insert(name.to_string(), maps.len());
            }
            maps.push((path, mmap));
        }
        Ok(Self { maps, index })
    }
}

impl WeightStore for SafetensorsStore {
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Some(&i) = self.index.get(name) else {
            let path = self.maps.first().map(|m| m.0.clone()).unwrap_or_default();
            return Err(EngineError::weights(
                path,
                format!("missing tensor `{name}`"),
            ));
        };
        let (path, mmap) = &self.maps[i];
        let st = tensor_io::parse(mmap, path)?;
        let view = st
            .tensor(name)
            .map_err(|e| EngineError::weights(path, format!("tensor `{name}`: {e}")))?;
        if view.shape() != shape {
            return Err(EngineError::weights(
                path,
                format!(
                    "tensor `{name}` has shape {:?}; the config needs {shape:?}",
                    view.shape()
                ),
            ));
        }
        let values = tensor_io::view_to_f32(&view, path, name)?;
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }
}

/// A GGUF file: metadata plus quantised tensors, dequantised on request.
pub struct GgufStore {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    file: File,
    num_heads: usize,
    num_kv_heads: usize,
}

/// The GGUF name of a Hugging Face LLaMA tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    if hf == "model.embed_tokens.weight" {
        return Some("token_embd.weight".into());
    }
    if hf == "model.norm.weight" {
        return Some("output_norm.weight".into());
    }
    if hf == "lm_head.weight" {
        return Some("output.weight".into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let g = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

/// Undoes llama.cpp's rotary permutation of q/k rows: `[heads, half, 2, in] -> [heads, 2, half, in]`.
pub fn unpermute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for two in 0..2 {
                let src = ((h * half + i) * 2 + two) * cols;
                let dst = ((h * 2 + two) * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

impl GgufStore {
    /// Opens a GGUF file and reads its header (metadata and tensor table).
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        // candle's reader panics on some malformed headers (a `general.alignment` of 0 divides by zero); such a
        // file is refused like any other unreadable one.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gguf_file::Content::read(&mut file)
        }));
        let content = match read {
            Ok(content) => content.map_err(|e| {
                EngineError::weights(path, format!("not a readable GGUF file: {e}"))
            })?,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Err(EngineError::weights(
                    path,
                    format!(
                        "not a readable GGUF file: the header reader failed ({why}; a `general.alignment` of 0 does this)"
                    ),
                ));
            }
        };
        let len = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
        // A truncated file: the last tensor must end inside the file. Shapes and offsets are the file's own
        // numbers, so the arithmetic is checked.
        for (name, info) in &content.tensor_infos {
            let end = info
                .shape
                .dims()
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .and_then(|n| {
                    (n / info.ggml_dtype.block_size()).checked_mul(info.ggml_dtype.type_size())
                })
                .and_then(|bytes| {
                    content
                        .tensor_data_offset
                        .checked_add(info.offset)?
                        .checked_add(bytes as u64)
                });
            match end {
                Some(end) if end <= len => {}
                Some(end) => {
                    return Err(EngineError::weights(
                        path,
                        format!(
                            "file is truncated: tensor `{name}` ends at byte {end}, the file has {len} bytes"
                        ),
                    ));
                }
                None => {
                    return Err(EngineError::weights(
                        path,
                        format!(
                            "tensor `{name}`: shape {:?} at offset {} does not fit in any file (the file has {len} bytes)",
                            info.shape.dims(),
                            info.offset
                        ),
                    ));
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            file,
            num_heads: 0,
            num_kv_heads: 0,
        })
    }

    /// Sets the head counts used to un-permute q/k.
    pub fn set_heads(&mut self, num_heads: usize, num_kv_heads: usize) {
        self.num_heads = num_heads;
        self.num_kv_heads = num_kv_heads;
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&gguf_file::Value> {
        self.content.metadata.get(key)
    }

    /// Dequantises the GGUF tensor `gguf` to f32 with its row-major shape.
    pub fn raw(&mut self, gguf: &str) -> Result<Tensor> {
        let q = self
            .content
            .tensor(&mut self.file, gguf, &Device::Cpu)
            .map_err(|e| EngineError::weights(&self.path, format!("tensor `{gguf}`: {e}")))?;
        Ok(q.dequantize(&Device::Cpu)?)
    }
}

impl WeightStore for GgufStore {
    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.content.tensor_infos.contains_key(&g))
    }

    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let g = gguf_name(name)
            .filter(|g| self.content.tensor_infos.contains_key(g))
            .ok_or_else(|| {
                EngineError::weights(&self.path, format!("missing tensor for `{name}`"))
            })?;
        let t = self.raw(&g)?;
        if t.dims() != shape {
            return Err(EngineError::weights(
                &self.path,
                format!(
                    "tensor `{g}` has shape {:?}; the metadata needs {shape:?}",
                    t.dims()
                ),
            ));
        }
        let heads = if name.ends_with("q_proj.weight") {
            self.num_heads
        } else if name.ends_with("k_proj.weight") {
            self.num_kv_heads
        } else {
            return Ok(t);
        };
        let (rows, cols) = t.dims2()?;
        let values = unpermute_rows(&t.flatten_all()?.to_vec1::<f32>()?, rows, cols, heads);
        Ok(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, half, cols).swapaxes(1, 2) -> [heads, half, 2, cols].
        let (heads, half, cols) = (2, 3, 2);
        let rows = heads * half * 2;
        let original: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut permuted = vec![0f32; original.len()];
        for h in 0..heads {
            for two in 0..2 {
                for i in 0..half {
                    let src = ((h * 2 + two) * half + i) * cols;
                    let dst = ((h * half + i) * 2 + two) * cols;
                    permuted[dst..dst + cols].copy_from_slice(&original[src..src + cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&permuted, rows, cols, heads), original);
    }

    #[test]
    fn names_map_to_gguf() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.k_proj.weight").unwrap(),
            "blk.3.attn_k.weight"
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").unwrap(),
            "token_embd.weight"
        );
        assert!(gguf_name("model.layers.3.foo.weight").is_none());
    }
}
