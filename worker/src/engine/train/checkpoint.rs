//! Training checkpoints: the adapter, the optimizer's moments, and the loop state (step, data position, early
//! stopping), in `checkpoints/checkpoint-<step>/`; the newest `keep` are kept.

use std::path::{Path, PathBuf};

use crate::engine::error::{EngineError, Result};
use crate::engine::tensor_io;
use serde::{Deserialize, Serialize};
use tandem_kernels::ops::optim::{AdamWState, Moments};

/// Where the loop is: enough to continue exactly as if never interrupted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer updates done.
    pub step: usize,
    /// Epoch of the next micro-batch.
    pub epoch: usize,
    /// Index of the next micro-batch within that epoch.
    pub micro: usize,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    pub evals_without_improvement: usize,
    pub last_val_loss: Option<f64>,
    /// All randomness is keyed by (seed, step, micro, epoch), so the seed is the whole RNG state.
    pub seed: u64,
    /// Train loss of each update so far (for the summary).
    pub losses: Vec<f64>,
}

/// Names of the optimizer tensors of parameter `i`.
fn moment_names(i: usize) -> (String, String) {
    (
        format!("param.{i}.exp_avg"),
        format!("param.{i}.exp_avg_sq"),
    )
}

/// Writes the optimizer's moments (`param.{i}.exp_avg`, `param.{i}.exp_avg_sq`) and step counter (metadata `t`),
/// with the run's weight decay for the record (metadata `weight_decay`); the layout is unchanged since the
/// optimizer moved to `tandem_kernels::ops::optim`, so older checkpoints load.
pub fn save_optimizer(opt: &AdamWState, weight_decay: f64, path: &Path) -> Result<()> {
    let mut tensors = Vec::new();
    for (i, m) in opt.moments.iter().enumerate() {
        let (a, b) = moment_names(i);
        tensors.push((a, vec![m.m.len()], m.m.clone()));
        tensors.push((b, vec![m.v.len()], m.v.clone()));
    }
    let meta = std::collections::HashMap::from([
        ("t".to_string(), opt.step.to_string()),
        ("weight_decay".to_string(), format!("{weight_decay:e}")),
    ]);
    tensor_io::write_f32(path, &tensors, Some(meta))
}

/// Reads optimizer moments saved by `save_optimizer` into `opt` (sizes must match).
pub fn load_optimizer(opt: &mut AdamWState, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| EngineError::Checkpoint {
            path: path.into(),
            message: format!("unreadable: {e}"),
        })?;
    let t = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("t"))
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| EngineError::Checkpoint {
            path: path.into(),
            message: "missing step counter `t`".into(),
        })?;
    let tensors = tensor_io::read_all_f32(path)?;
    for (i, mom) in opt.moments.iter_mut().enumerate() {
        let (a, b) = moment_names(i);
        let (Some(m), Some(v)) = (tensors.get(&a), tensors.get(&b)) else {
            return Err(EngineError::Checkpoint {
                path: path.into(),
                message: format!("missing `{a}`"),
            });
        };
        if m.1.len() != mom.m.len() || v.1.len() != mom.v.len() {
            return Err(EngineError::Checkpoint {
                path: path.into(),
                message: format!(
                    "`{a}` has {} values, the adapter needs {}",
                    m.1.len(),
                    mom.m.len()
                ),
            });
        }
        *mom = Moments {
            m: m.1.clone(),
            v: v.1.clone(),
        };
    }
    opt.step = t;
    Ok(())
}

/// The checkpoint folders under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(out);
    };
    for e in entries {
        let e = e.map_err(|err| EngineError::io(root, err))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<usize>().ok())
            && e.path().join("state.json").exists()
        {
            out.push((step, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes all but the newest `keep` checkpoints.
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    let all = list(root)?;
    let excess = all.len().saturating_sub(keep.max(1));
    for (_, dir) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
    }
    Ok(())
}

/// Writes the loop state.
pub fn save_state(state: &LoopState, path: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    crate::engine::files::write(path, json.as_bytes())
}

/// Reads the loop state.
pub fn load_state(path: &Path) -> Result<LoopState> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EngineError::Checkpoint {
        path: path.into(),
        message: format!("bad state.json: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn optimizer_state_round_trips_and_the_earlier_layout_loads() {
        let dir = tempfile::tempdir().unwrap();
        // As written before the optimizer moved to tandem_kernels (the layout did not change).
        let earlier = dir.path().join("earlier.safetensors");
        let tensors = [
            ("param.0.exp_avg".to_string(), vec![2], vec![0.1f32, 0.2]),
            ("param.0.exp_avg_sq".to_string(), vec![2], vec![0.3f32, 0.4]),
        ];
        let meta = HashMap::from([
            ("t".to_string(), "7".to_string()),
            ("weight_decay".to_string(), "1e-2".to_string()),
        ]);
        tensor_io::write_f32(&earlier, &tensors, Some(meta)).unwrap();
        let mut opt = AdamWState::new(&[2]);
        load_optimizer(&mut opt, &earlier).unwrap();
        assert_eq!(opt.step, 7);
        assert_eq!(
            opt.moments[0],
            Moments {
                m: vec![0.1, 0.2],
                v: vec![0.3, 0.4]
            }
        );
        let now = dir.path().join("now.safetensors");
        save_optimizer(&opt, 0.01, &now).unwrap();
        let mut back = AdamWState::new(&[2]);
        load_optimizer(&mut back, &now).unwrap();
        assert_eq!(back, opt);
        let e = load_optimizer(&mut AdamWState::new(&[3]), &now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 3"), "{e}");
    }
}
