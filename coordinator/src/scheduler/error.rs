//! The scheduler's error enum; the gRPC layer maps each variant to one status code (`grpc/status.rs`).

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller no longer holds the job's lease (it expired, was cancelled or went to another worker).
    #[error("lease lost for job {job}: {detail}")]
    LeaseLost { job: String, detail: String },
    /// The job was cancelled while the caller held its lease: stop working on it.
    #[error("job {0} was cancelled")]
    Cancelled(String),
    /// The worker id is not registered (e.g. a store that was wiped): register again.
    #[error("unknown worker {0}: register again")]
    UnknownWorker(String),
    /// Something the request relies on is not there yet (e.g. an input blob that was not uploaded).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Stored data can no longer be read (e.g. an undecodable metric batch).
    #[error("{0}")]
    DataLoss(String),
}

pub type SchedulerResult<T> = Result<T, SchedulerError>;
