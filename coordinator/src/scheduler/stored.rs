//! What the store holds beside the in-memory state, read and written for the services: artifacts, metric
//! batches, job configs, manifests, blobs (verified reads, re-hashing, artifact and input uploads, which
//! inputs are missing) and token changes.

use super::Scheduler;
use super::api::TeamScope;
use super::error::{SchedulerError, SchedulerResult};
use tandem_experiments::planner::inputs::parse_listing;

use crate::store::{ArtifactRecord, BlobWriter, InputRef, StoreError, TokenRecord};

/// An artifact upload in progress: bytes go to a temporary blob that becomes visible only once its size and
/// hash check out.
pub struct ArtifactUpload {
    writer: BlobWriter,
}

impl ArtifactUpload {
    pub fn write(&mut self, data: &[u8]) -> SchedulerResult<()> {
        Ok(self.writer.write(data)?)
    }

    /// Checks the declared size and hash and stores the blob; returns its size. A mismatch rejects the upload.
    pub fn finish(self, declared_size: u64, sha256: &str) -> SchedulerResult<u64> {
        let size = self.writer.written();
        if size != declared_size {
            return Err(SchedulerError::InvalidArgument(format!(
                "upload rejected: declared {declared_size} bytes, received {size}"
            )));
        }
        self.writer.finish(sha256).map_err(|err| match err {
            StoreError::HashMismatch { .. } => {
                SchedulerError::InvalidArgument(format!("upload rejected: {err}"))
            }
            other => SchedulerError::Store(other),
        })?;
        Ok(size)
    }
}

impl Scheduler {
    /// The artifacts recorded for `job_id`.
    pub fn artifacts(&self, job_id: &str) -> SchedulerResult<Vec<ArtifactRecord>> {
        Ok(self.store.artifacts(job_id)?)
    }

    /// Every stored metric batch of `job_id` (encoded), by sequence number.
    pub fn metric_batches(&self, job_id: &str) -> SchedulerResult<Vec<(u64, Vec<u8>)>> {
        Ok(self.store.metric_batches(job_id)?)
    }

    /// The config `job_id` was queued with.
    pub fn job_config(&self, job_id: &str) -> SchedulerResult<Option<Vec<u8>>> {
        Ok(self.store.job_config(job_id)?)
    }

    /// The manifest `experiment_id` was submitted with (empty when none is stored).
    pub fn manifest(&self, experiment_id: &str) -> SchedulerResult<Vec<u8>> {
        Ok(self.store.manifest(experiment_id)?.unwrap_or_default())
    }

    /// The file holding blob `sha256` and its size (`NotFound` when the store lacks it).
    pub fn blob_file(&self, sha256: &str) -> SchedulerResult<(std::path::PathBuf, u64)> {
        let path = self.store.blobs().path_of(sha256)?;
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok((path, meta.len())),
            _ => Err(SchedulerError::Store(StoreError::NotFound(format!(
                "blob {sha256}"
            )))),
        }
    }

    /// The SHA-256 of what blob `sha256` holds now (an audit compares the two).
    pub fn rehash_blob(&self, sha256: &str) -> SchedulerResult<String> {
        Ok(self.store.blobs().rehash(sha256)?)
    }

    /// Whether `scope` may download blob `sha256`: an input of its experiments or an artifact of their jobs.
    pub fn blob_visible_to(&self, scope: TeamScope<'_>, sha256: &str) -> SchedulerResult<bool> {
        for (experiment, _, _) in self.experiments(scope) {
            if experiment.inputs.iter().any(|i| i.sha256 == sha256) {
                return Ok(true);
            }
            for job_id in &experiment.job_ids {
                if self.artifacts(job_id)?.iter().any(|a| a.sha256 == sha256) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The digests of `sha256s` that `holder` must still upload (each hash checked), in the order given: those
    /// the blob store lacks and, for a team, those it has not uploaded itself (another team's blob is not
    /// revealed by its digest). `None` (an admin) asks about the store alone.
    pub fn missing_blobs(
        &self,
        holder: Option<&str>,
        sha256s: &[String],
    ) -> SchedulerResult<Vec<String>> {
        let mut missing = Vec::new();
        for sha256 in sha256s {
            self.store.blobs().path_of(sha256)?;
            if !self.blob_held(holder, sha256)? && !missing.contains(sha256) {
                missing.push(sha256.clone());
            }
        }
        Ok(missing)
    }

    /// Whether blob `sha256` is stored and, for a team `holder`, uploaded by that team.
    fn blob_held(&self, holder: Option<&str>, sha256: &str) -> SchedulerResult<bool> {
        if !self.store.blobs().contains(sha256) {
            return Ok(false);
        }
        match holder {
            None => Ok(true),
            Some(team) => Ok(self.store.blob_held_by(sha256, team)?),
        }
    }

    /// Records, durably, that `team` uploaded blob `sha256`'s bytes.
    pub async fn add_blob_holder(&self, sha256: &str, team: &str) -> SchedulerResult<()> {
        self.transact(|state| {
            state.write().add_blob_holder(sha256, team)?;
            Ok(())
        })
        .await
    }

    /// Starts the upload of an input blob (a client's model file, dataset or folder listing); at most `limit`
    /// bytes. The blob is stored under its verified hash only.
    pub fn begin_input_upload(&self, limit: u64) -> SchedulerResult<ArtifactUpload> {
        Ok(ArtifactUpload {
            writer: self.store.blobs().writer(limit)?,
        })
    }

    /// Checks that every input's blob is stored and, for a folder, that its listing reads and every listed
    /// file is stored; an error names the input and what is missing.
    pub fn check_input_blobs(
        &self,
        holder: Option<&str>,
        inputs: &[InputRef],
    ) -> SchedulerResult<()> {
        let blobs = self.store.blobs();
        let missing = |input: &InputRef, what: String| {
            let whose = if holder.is_some() {
                "your team's uploads"
            } else {
                "the store"
            };
            SchedulerError::FailedPrecondition(format!(
                "input {} ({}): {what} is not in {whose}; upload it first (tandem submit does)",
                input.name, input.sha256
            ))
        };
        for input in inputs {
            if !self.blob_held(holder, &input.sha256)? {
                return Err(missing(input, "its blob".into()));
            }
            if input.folder {
                let listing = blobs.read_verified(&input.sha256)?;
                let files = parse_listing(&listing).map_err(|e| {
                    SchedulerError::InvalidArgument(format!(
                        "input {} ({}): {e}",
                        input.name, input.sha256
                    ))
                })?;
                for file in &files {
                    if !self.blob_held(holder, &file.sha256)? {
                        return Err(missing(input, format!("listed file {}", file.relative)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts an upload for `job_id` after checking that `worker_id` holds its lease; at most `limit` bytes.
    pub fn begin_artifact_upload(
        &self,
        worker_id: &str,
        job_id: &str,
        attempt: u32,
        limit: u64,
    ) -> SchedulerResult<ArtifactUpload> {
        self.check_upload(worker_id, job_id, attempt)?;
        Ok(ArtifactUpload {
            writer: self.store.blobs().writer(limit)?,
        })
    }

    /// Stores a created or revoked token with its audit entry, durably.
    pub async fn record_token(
        &self,
        actor: &str,
        action: &str,
        record: &TokenRecord,
        detail: String,
    ) -> SchedulerResult<()> {
        self.transact(|state| {
            state.write().put_token(record)?;
            state.audit(actor, action, None, None, detail);
            Ok(())
        })
        .await
    }
}
