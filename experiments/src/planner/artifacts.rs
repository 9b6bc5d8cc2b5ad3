//! The names of the artifacts planner jobs hand to each other, and the roles an uploaded artifact can have:
//! one list that the worker's runners (which write them) and the coordinator's CLI (which reads them) share.

/// A data-prep job's output: the split and the usable rows it names.
pub const PREPARED: &str = "prepared.json";
/// An eval job's corpus scores, as the report and `tandem results` read them.
pub const EVAL_RESULT: &str = "eval_result.json";
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
