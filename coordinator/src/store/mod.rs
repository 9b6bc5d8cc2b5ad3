//! The coordinator's durable state behind a small trait, with a sled implementation.
//!
//! Writes land in the store immediately; `commit()` returns a future that resolves once everything written
//! before the call is on disk (group commit: concurrent writers share one flush). The scheduler awaits it
//! before acknowledging any change, so `kill -9` never loses an acknowledged change.

mod blobs;
#[cfg(test)]
pub(crate) mod fixtures;
mod group_commit;
mod records;
mod sled_store;

use std::path::PathBuf;

pub use blobs::{BlobStore, BlobWriter, hex, is_sha256_hex, read_chunk, sha256_hex};
pub use group_commit::{CommitWait, GroupCommit};
pub use records::*;
pub use sled_store::SledStore;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database error: {0}")]
    Db(#[from] sled::Error),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt record in tree {tree}: {source}")]
    Codec {
        tree: &'static str,
        source: serde_json::Error,
    },
    #[error("content hash mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("not a hex SHA-256: {0:?} (expected 64 lower-case hex digits)")]
    BadHash(String),
    #[error("upload larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("durable commit failed: {0}")]
    Commit(String),
    #[error("corrupt store: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Everything the coordinator persists. Implementations must make writes visible to later reads at once and
/// durable once a `commit()` issued after them resolves.
pub trait Store: Send + Sync + 'static {
    fn put_experiment(&self, record: &ExperimentRecord) -> StoreResult<()>;
    fn experiments(&self) -> StoreResult<Vec<ExperimentRecord>>;
    fn put_manifest(&self, experiment_id: &str, manifest: &[u8]) -> StoreResult<()>;
    fn manifest(&self, experiment_id: &str) -> StoreResult<Option<Vec<u8>>>;

    fn put_job(&self, record: &JobRecord) -> StoreResult<()>;
    fn jobs(&self) -> StoreResult<Vec<JobRecord>>;
    /// Calls `visit` with every job, one at a time (recovery without holding two copies of every job).
    fn scan_jobs(&self, visit: &mut dyn FnMut(JobRecord)) -> StoreResult<()>;
    /// How many jobs are stored.
    fn job_count(&self) -> usize;
    fn put_job_config(&self, job_id: &str, config: &[u8]) -> StoreResult<()>;
    fn job_config(&self, job_id: &str) -> StoreResult<Option<Vec<u8>>>;

    fn put_worker(&self, record: &WorkerRecord) -> StoreResult<()>;
    fn workers(&self) -> StoreResult<Vec<WorkerRecord>>;

    /// Stores a metric batch unless `(job_id, seq)` is already stored; returns whether it was new.
    fn insert_metric_batch(&self, job_id: &str, seq: u64, encoded: &[u8]) -> StoreResult<bool>;
    /// Every stored batch of a job, by sequence number.
    fn metric_batches(&self, job_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>>;

    fn put_artifact(&self, record: &ArtifactRecord) -> StoreResult<()>;
    fn artifacts(&self, job_id: &str) -> StoreResult<Vec<ArtifactRecord>>;

    fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()>;
    fn audit_entries(&self) -> StoreResult<Vec<AuditEntry>>;
    /// The entries that name `experiment_id` or one of `job_ids`, oldest first (from an index: the cost follows
    /// the experiment, not the whole log).
    fn audit_entries_of(
        &self,
        experiment_id: &str,
        job_ids: &[String],
    ) -> StoreResult<Vec<AuditEntry>>;

    fn put_token(&self, record: &TokenRecord) -> StoreResult<()>;
    fn tokens(&self) -> StoreResult<Vec<TokenRecord>>;

    /// Records that `team` proved it holds blob `sha256` (it sent the bytes, which hashed to the name).
    fn add_blob_holder(&self, sha256: &str, team: &str) -> StoreResult<()>;
    /// Whether `team` proved it holds blob `sha256`.
    fn blob_held_by(&self, sha256: &str, team: &str) -> StoreResult<bool>;

    /// Records sweep point `record.job_id`'s value at ASHA rung `record.rung` of `group`.
    fn put_rung(&self, group: &str, record: &RungRecord) -> StoreResult<()>;
    /// Every value recorded at `rung` of `group`, in job id order.
    fn rungs(&self, group: &str, rung: u32) -> StoreResult<Vec<RungRecord>>;

    /// A fresh, never-reused number (experiment and worker ids).
    fn next_id(&self) -> StoreResult<u64>;
    /// Resolves once every write made before this call is durable.
    fn commit(&self) -> CommitWait;
    /// Blocking flush, for one-shot command-line use.
    fn flush_now(&self) -> StoreResult<()>;
    fn blobs(&self) -> &BlobStore;
}
