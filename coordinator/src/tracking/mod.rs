//! Export to the tools labs already use: an MLflow file store (`mlruns/`) and TensorBoard event files. Both are
//! written from plain [`Run`]s (one per job), which the CLI builds from an experiment's results; nothing here
//! talks to the coordinator.

pub mod mlflow;
pub mod tensorboard;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// One logged value: wall-clock time (ms since the epoch), value, step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub time_ms: u64,
    pub value: f64,
    pub step: i64,
}

/// How a job ended, as MLflow names run states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Scheduled,
    Finished,
    Failed,
    Killed,
}

/// One job as a tracking run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The job id (64 hex digits); MLflow's run id is its first 32.
    pub job_id: String,
    pub name: String,
    pub status: RunStatus,
    pub start_ms: u64,
    pub end_ms: u64,
    pub user: String,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    /// Series name -> points in step order.
    pub metrics: BTreeMap<String, Vec<Point>>,
    /// Output files to copy in as artifacts: (name, local path).
    pub artifacts: Vec<(String, PathBuf)>,
}

/// A whole experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub id: String,
    pub name: String,
    pub created_ms: u64,
    pub runs: Vec<Run>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A name made safe as one path component (MLflow keys, TensorBoard run folders): characters other than
/// letters, digits, `_ - . /` and space become `_`; `..` and leading `/` are removed.
pub fn safe_key(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-. /".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let parts: Vec<&str> = cleaned
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
        .collect();
    if parts.is_empty() {
        "_".into()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_their_folder() {
        assert_eq!(safe_key("eval/bleu4"), "eval/bleu4");
        assert_eq!(safe_key("../../etc/passwd"), "etc/passwd");
        assert_eq!(safe_key("a:b*c"), "a_b_c");
        assert_eq!(safe_key("/"), "_");
    }
}
