//! What a worker runs: the [`JobRunner`] trait, dispatched on a job's kind, and the [`JobContext`] a runner
//! uses to read its inputs, resume from a checkpoint, stream metrics, upload artifacts and notice when to stop.
//!
//! Runners are synchronous (training is CPU/GPU-bound) and run on a blocking thread; the context's methods
//! block on the agent's async machinery where they must (uploads, the metric flush before a checkpoint).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tandem_experiments::planner::artifacts::ArtifactRole;
use tandem_proto as pb;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use super::transfer::{self, WorkerClient};

/// Why a runner should stop before finishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The experiment was cancelled: stop now, nothing to hand back.
    Cancelled,
    /// The worker is shutting down (SIGTERM): save a checkpoint, then stop; the lease is handed back.
    Shutdown,
    /// The coordinator gave the job to someone else: stop now.
    LeaseLost,
}

/// How a run ended when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("stopped: {0:?}")]
    Stopped(StopReason),
    /// `permanent`: retrying cannot help (a bad config); otherwise the coordinator retries with back-off.
    #[error("{reason}")]
    Failed { reason: String, permanent: bool },
}

impl RunError {
    pub fn retryable(reason: impl Into<String>) -> RunError {
        RunError::Failed {
            reason: reason.into(),
            permanent: false,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> RunError {
        RunError::Failed {
            reason: reason.into(),
            permanent: true,
        }
    }
}

/// Runs jobs of one or more kinds. Implementations must be deterministic given the job's config, inputs,
/// parents and checkpoint, and should check [`JobContext::stop_requested`] between steps.
pub trait JobRunner: Send + Sync + 'static {
    fn run(&self, ctx: &mut JobContext) -> Result<(), RunError>;
}

/// Job kinds this worker can run, each with its runner.
#[derive(Clone, Default)]
pub struct RunnerRegistry {
    runners: BTreeMap<String, Arc<dyn JobRunner>>,
}

impl RunnerRegistry {
    pub fn new() -> RunnerRegistry {
        RunnerRegistry::default()
    }

    pub fn register(&mut self, kind: &str, runner: Arc<dyn JobRunner>) {
        self.runners.insert(kind.to_string(), runner);
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn JobRunner>> {
        self.runners.get(kind).cloned()
    }

    /// The kinds advertised to the coordinator.
    pub fn kinds(&self) -> Vec<String> {
        self.runners.keys().cloned().collect()
    }
}

/// An output of a dependency, downloaded and verified.
#[derive(Clone, Debug)]
pub struct ParentArtifact {
    pub job_id: String,
    pub name: String,
    pub sha256: String,
    pub path: PathBuf,
}

/// Messages to the metric sender task.
pub(crate) enum MetricMsg {
    Batch(pb::MetricBatch),
    /// Answered (true) once every batch sent before it is durably acknowledged; false if the lease was lost.
    Flush(oneshot::Sender<bool>),
}

/// Shared stop flag: 0 = run, else a [`StopReason`].
#[derive(Default)]
pub(crate) struct StopFlag(AtomicU8);

impl StopFlag {
    pub(crate) fn request(&self, reason: StopReason) {
        let code = match reason {
            StopReason::Cancelled => 1,
            StopReason::Shutdown => 2,
            StopReason::LeaseLost => 3,
        };
        // Cancellation and lease loss win over a shutdown request.
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
                match (old, code) {
                    (0, c) => Some(c),
                    (2, c) if c != 2 => Some(c),
                    _ => None,
                }
            });
    }

    pub(crate) fn get(&self) -> Option<StopReason> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(StopReason::Cancelled),
            2 => Some(StopReason::Shutdown),
            3 => Some(StopReason::LeaseLost),
            _ => None,
        }
    }
}

/// Everything a runner may use while running one job.
pub struct JobContext {
    pub(crate) handle: Handle,
    pub(crate) client: WorkerClient,
    pub(crate) worker_id: String,
    pub(crate) lease: pb::Lease,
    pub(crate) job: pb::JobSpec,
    pub(crate) work_dir: PathBuf,
    pub(crate) inputs: BTreeMap<String, PathBuf>,
    pub(crate) parents: Vec<ParentArtifact>,
    pub(crate) checkpoint: Option<PathBuf>,
    pub(crate) next_seq: u64,
    pub(crate) metrics: mpsc::UnboundedSender<MetricMsg>,
    pub(crate) stop: Arc<StopFlag>,
    pub(crate) progress: Arc<Mutex<(u64, u64)>>,
    pub(crate) gpu_ordinals: Vec<u32>,
}

impl JobContext {
    pub fn job_id(&self) -> &str {
        &self.job.id
    }

    pub fn kind(&self) -> &str {
        &self.job.kind
    }

    pub fn name(&self) -> &str {
        &self.job.name
    }

    /// The job's config as the planner wrote it (canonical JSON).
    pub fn config(&self) -> &[u8] {
        &self.job.config
    }

    /// The leased job as the coordinator sent it.
    pub fn job(&self) -> &pb::JobSpec {
        &self.job
    }

    /// The CUDA device ordinals this worker pinned the job to (as many as its resources ask for; empty for a
    /// job that asks for no GPU). No other job of the worker uses them while this one runs.
    pub fn gpu_ordinals(&self) -> &[u32] {
        &self.gpu_ordinals
    }

    /// Attempt number (1-based; a resumed job has a higher number).
    pub fn attempt(&self) -> u32 {
        self.lease.attempt
    }

    pub fn experiment_id(&self) -> &str {
        &self.lease.experiment_id
    }

    /// A private scratch folder for this attempt.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// An experiment input by role (a planner job's `model`, `dataset`, `bertscore_model`; a job graph's file
    /// name), fetched by digest into the machine's input cache: a file, or a folder.
    pub fn input(&self, name: &str) -> Option<&Path> {
        self.inputs.get(name).map(PathBuf::as_path)
    }

    pub fn inputs(&self) -> &BTreeMap<String, PathBuf> {
        &self.inputs
    }

    /// Output artifacts of the job's dependencies.
    pub fn parents(&self) -> &[ParentArtifact] {
        &self.parents
    }

    /// The last checkpoint this job uploaded (resume from it), if any.
    pub fn checkpoint(&self) -> Option<&Path> {
        self.checkpoint.as_deref()
    }

    /// Sends one batch of metric points (the next sequence number). Batches are resent until acknowledged;
    /// a deterministic runner resuming from a checkpoint re-emits the same batches with the same numbers, so
    /// nothing is stored twice.
    pub fn emit(&mut self, points: Vec<pb::MetricPoint>) {
        let batch = pb::MetricBatch {
            job_id: self.job.id.clone(),
            attempt: self.lease.attempt,
            seq: self.next_seq,
            points,
            worker_id: self.worker_id.clone(),
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        self.next_seq += 1;
        let _ = self.metrics.send(MetricMsg::Batch(batch));
    }

    /// Reports progress (shown by `tandem watch`).
    pub fn set_progress(&self, step: u64, total: u64) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = (step, total);
    }

    /// Why the runner should stop, if it should.
    pub fn stop_requested(&self) -> Option<StopReason> {
        self.stop.get()
    }

    /// A check for a stop request that outlives borrows of the context (for engine loops that take a callback).
    pub fn stop_check(&self) -> impl Fn() -> bool + use<> {
        let stop = self.stop.clone();
        move || stop.get().is_some()
    }

    /// Blocks until every metric batch emitted so far is durably acknowledged.
    pub fn flush_metrics(&self) -> Result<(), RunError> {
        let (tx, rx) = oneshot::channel();
        if self.metrics.send(MetricMsg::Flush(tx)).is_err() {
            return Err(RunError::Stopped(StopReason::LeaseLost));
        }
        match self.handle.block_on(rx) {
            Ok(true) => Ok(()),
            _ => Err(RunError::Stopped(StopReason::LeaseLost)),
        }
    }

    /// Uploads `path` as the job's checkpoint (after flushing metrics, so a resumed run continues the metric
    /// sequence exactly where this one was).
    pub fn save_checkpoint(&mut self, path: &Path) -> Result<(), RunError> {
        self.flush_metrics()?;
        let role = ArtifactRole::Checkpoint.as_str();
        self.upload(path, "checkpoint", role).map(|_| ())
    }

    /// Uploads `path` as output artifact `name` (one plain file name).
    pub fn put_artifact(&mut self, name: &str, path: &Path) -> Result<pb::ArtifactRef, RunError> {
        self.upload(path, name, ArtifactRole::Output.as_str())
    }

    fn upload(&mut self, path: &Path, name: &str, role: &str) -> Result<pb::ArtifactRef, RunError> {
        let header = pb::ArtifactHeader {
            job_id: self.job.id.clone(),
            attempt: self.lease.attempt,
            name: name.to_string(),
            sha256: String::new(),
            size: 0,
            role: role.to_string(),
            metric_seq: self.next_seq,
            worker_id: self.worker_id.clone(),
        };
        let client = self.client.clone();
        let result = self
            .handle
            .block_on(transfer::upload_file(client, header, path));
        match result {
            Ok(artifact) => Ok(artifact),
            Err(transfer::TransferError::Rpc(status)) if status.code() == tonic::Code::Aborted => {
                self.stop.request(StopReason::Cancelled);
                Err(RunError::Stopped(StopReason::Cancelled))
            }
            Err(transfer::TransferError::Rpc(status))
                if status.code() == tonic::Code::FailedPrecondition =>
            {
                self.stop.request(StopReason::LeaseLost);
                Err(RunError::Stopped(StopReason::LeaseLost))
            }
            // A size limit (the artifact's or the job's) does not get better on retry.
            Err(transfer::TransferError::Rpc(status))
                if status.code() == tonic::Code::ResourceExhausted =>
            {
                Err(RunError::permanent(format!(
                    "uploading {name}: {}",
                    status.message()
                )))
            }
            Err(err) => Err(RunError::retryable(format!("uploading {name}: {err}"))),
        }
    }

    /// ASHA: reports the job's validation loss `value` at `rung` (optimizer step `step`) once every metric
    /// emitted so far is stored, and returns the coordinator's answer: `(stop, cutoff)`.
    pub fn report_rung(
        &mut self,
        rung: u32,
        step: usize,
        value: f64,
    ) -> Result<(bool, f64), RunError> {
        self.flush_metrics()?;
        let request = pb::RungRequest {
            worker_id: self.worker_id.clone(),
            job_id: self.job.id.clone(),
            attempt: self.lease.attempt,
            rung,
            step: step as u64,
            value,
        };
        let mut client = self.client.clone();
        match self.handle.block_on(client.report_rung(request)) {
            Ok(reply) => {
                let reply = reply.into_inner();
                Ok((reply.stop, reply.cutoff))
            }
            Err(status) if status.code() == tonic::Code::Aborted => {
                self.stop.request(StopReason::Cancelled);
                Err(RunError::Stopped(StopReason::Cancelled))
            }
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                self.stop.request(StopReason::LeaseLost);
                Err(RunError::Stopped(StopReason::LeaseLost))
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => Err(
                RunError::permanent(format!("ASHA rung {rung}: {}", status.message())),
            ),
            Err(status) => Err(RunError::retryable(format!(
                "ASHA rung {rung}: {}",
                status.message()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_overrides_shutdown_but_not_the_reverse() {
        let flag = StopFlag::default();
        assert_eq!(flag.get(), None);
        flag.request(StopReason::Shutdown);
        assert_eq!(flag.get(), Some(StopReason::Shutdown));
        flag.request(StopReason::Cancelled);
        assert_eq!(flag.get(), Some(StopReason::Cancelled));
        flag.request(StopReason::Shutdown);
        assert_eq!(flag.get(), Some(StopReason::Cancelled));
    }
}
