//! The names of the artifacts planner jobs hand to each other, and the roles an uploaded artifact can have:
//! one list that the worker's runners (which write them) and the coordinator's CLI (which reads them) share.

use serde::{Deserialize, Serialize};

use crate::manifest::{Stage, TrainPoint};

/// A data-prep job's output: the split and the usable rows it names.
pub const PREPARED: &str = "prepared.json";
/// An eval job's corpus scores, as the report and `tandem results` read them.
pub const EVAL_RESULT: &str = "eval_result.json";
/// An eval job's corpus scores on the validation rows (scores a training-sweep point; not a table cell).
pub const VAL_RESULT: &str = "val_result.json";
/// A train job's summary: steps run, best and last validation loss, how it stopped ([`TrainOutcome`]).
pub const TRAIN_SUMMARY: &str = "train_summary.json";
/// A select job's record of every point it compared and the one it chose.
pub const SELECTION: &str = "selection.json";
/// A train job's PEFT adapter config.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// A train job's PEFT adapter weights.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The files of a PEFT adapter, each uploaded as its own artifact.
pub const ADAPTER_FILES: [&str; 2] = [ADAPTER_CONFIG, ADAPTER_WEIGHTS];

/// What an uploaded artifact is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactRole {
    /// A result of the job, handed to its dependents and exported.
    Output,
    /// Where an interrupted attempt resumes from.
    Checkpoint,
}

impl ArtifactRole {
    pub const ACCEPTED: &str = "\"output\" or \"checkpoint\"";

    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactRole::Output => "output",
            ArtifactRole::Checkpoint => "checkpoint",
        }
    }

    pub fn parse(text: &str) -> Option<ArtifactRole> {
        match text {
            "output" => Some(ArtifactRole::Output),
            "checkpoint" => Some(ArtifactRole::Checkpoint),
            _ => None,
        }
    }
}

/// What a train job writes as [`TRAIN_SUMMARY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Optimizer updates run.
    pub steps: usize,
    pub best_step: Option<usize>,
    pub best_val_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    /// Stopped by the manifest's early-stopping patience.
    pub stopped_early: bool,
    /// Stopped by ASHA at a rung.
    pub asha_stop: Option<RungStop>,
}

/// Where ASHA stopped a point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RungStop {
    pub rung: u32,
    pub step: usize,
    pub val_loss: f64,
    /// The value the point had to beat.
    pub cutoff: f64,
}

/// One row of [`SELECTION`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectedPoint {
    pub point: usize,
    pub values: TrainPoint,
    pub train_job: String,
    /// The selection metric's value; `None` = not available (no validation ran, or the score was missing).
    pub metric: Option<f64>,
    pub outcome: TrainOutcome,
}

/// What a select job writes as [`SELECTION`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionRecord {
    pub stage: Stage,
    pub fold: Option<usize>,
    /// `val_loss` or a score key.
    pub metric: String,
    pub maximise: bool,
    pub points: Vec<SelectedPoint>,
    /// The chosen point's number.
    pub chosen: usize,
}

impl SelectionRecord {
    /// The best point by `metric` (ties: the lower point number); `None` when no point has a value.
    pub fn best(points: &[SelectedPoint], maximise: bool) -> Option<usize> {
        points
            .iter()
            .filter_map(|p| p.metric.filter(|m| m.is_finite()).map(|m| (p.point, m)))
            .reduce(|best, next| {
                let better = if maximise {
                    next.1 > best.1
                } else {
                    next.1 < best.1
                };
                if better { next } else { best }
            })
            .map(|(point, _)| point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip() {
        for role in [ArtifactRole::Output, ArtifactRole::Checkpoint] {
            assert_eq!(ArtifactRole::parse(role.as_str()), Some(role));
        }
        assert_eq!(ArtifactRole::parse("input"), None);
    }
}
