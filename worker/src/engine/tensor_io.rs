//! Reading and writing f32 tensors in safetensors files (weights, adapters, optimizer state).

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::error::{EngineError, Result};

/// Converts one safetensors tensor to f32 values, naming `path` and `name` on failure.
pub fn view_to_f32(view: &TensorView<'_>, path: &Path, name: &str) -> Result<Vec<f32>> {
    let data = view.data();
    let expected: usize = view.shape().iter().product();
    let out: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(EngineError::weights(
                path,
                format!("tensor `{name}` has dtype {other:?}; accepted: F32, F16, BF16"),
            ));
        }
    };
    if out.len() != expected {
        return Err(EngineError::weights(
            path,
            format!(
                "tensor `{name}` holds {} values, its shape {:?} needs {expected}",
                out.len(),
                view.shape()
            ),
        ));
    }
    Ok(out)
}

/// Parses a safetensors buffer, naming the file on failure (a truncated file fails here).
pub fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| EngineError::weights(path, format!("not a valid safetensors file: {e}")))
}

/// Writes f32 tensors (name, shape, values) to `path`, with `metadata`; byte-for-byte deterministic.
pub fn write_f32(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), data) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| EngineError::weights(path, format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let encoded = safetensors::serialize(views, metadata)
        .map_err(|e| EngineError::weights(path, format!("cannot encode: {e}")))?;
    super::files::write(path, &encoded)
}

/// Tensors by name: shape and values.
pub type NamedTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads every tensor of a safetensors file as f32: name -> (shape, values).
pub fn read_all_f32(path: &Path) -> Result<NamedTensors> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    let st = parse(&bytes, path)?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let values = view_to_f32(&view, path, &name)?;
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}
