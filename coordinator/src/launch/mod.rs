//! Launching workers through a cluster's resource manager: Slurm batch jobs that are rendered, submitted,
//! watched, cancelled and kept matched to the queued work, and Kubernetes Indexed Jobs (rendered only).
//!
//! - [`worker`]: what every launched worker is (the coordinator it serves, its GPUs, CPUs, memory, grace).
//! - [`script`]: the Slurm batch script of one launch; [`k8s`]: the Kubernetes Job of one launch.
//! - [`slurm`]: `sbatch`, `squeue`, `scancel`, `scontrol`, `sacct`, run as commands, their output parsed.
//! - [`ledger`]: the launches and cancels made from one state folder, appended one JSON line each.
//! - [`elastic`]: how many workers to start or stop for the work queued now (a pure decision).

pub mod elastic;
pub mod k8s;
pub mod ledger;
pub mod script;
pub mod slurm;
pub mod worker;

/// Why a launch, a status query or a cancel did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A flag's value Slurm or Kubernetes would reject, or that cannot go into a script safely.
    #[error("{flag}: {message}")]
    Invalid { flag: String, message: String },
    /// A Slurm command could not be started (not installed, not on PATH).
    #[error("{command}: cannot run it ({source}); is Slurm installed and on PATH on this machine?")]
    Missing {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A Slurm command ran and refused; `stderr` is Slurm's own words, `flag` the option that caused it when
    /// known.
    #[error("{command} failed{}: {stderr}", flag.as_ref().map(|f| format!(" (caused by {f})")).unwrap_or_default())]
    Refused {
        command: String,
        flag: Option<String>,
        stderr: String,
    },
    /// A Slurm command's output was not what it documents.
    #[error("{command}: unexpected output {output:?}")]
    Output { command: String, output: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Ledger {
        path: String,
        line: usize,
        message: String,
    },
}

impl LaunchError {
    pub(crate) fn invalid(flag: &str, message: impl Into<String>) -> LaunchError {
        LaunchError::Invalid {
            flag: flag.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> LaunchError {
        LaunchError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
