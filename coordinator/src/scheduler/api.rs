//! The scheduler's public types: its settings, what callers hand it (submissions, reports, metric batches) and
//! what it answers (outcomes, lease grants, views, events).

use crate::store::{
    ArtifactRecord, CheckpointRef, ExperimentRecord, InputRef, JobRecord, PlacementRecord,
    Resources, WorkerRecord,
};

/// Timing and retry settings.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub lease_ttl_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub max_lease_wait_ms: u64,
    /// How often lease deadlines and back-offs are checked.
    pub tick_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_ttl_ms: 15_000,
            heartbeat_interval_ms: 3_000,
            max_attempts: 3,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            max_lease_wait_ms: 20_000,
            tick_ms: 200,
        }
    }
}

/// Who is calling: a team (sees only its experiments), or an admin (`None`: sees everything).
pub type TeamScope<'a> = Option<&'a str>;

/// A job as the planner produced it, ready to be queued.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedJob {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub deps: Vec<String>,
    pub resources: Resources,
    /// The config as the planner encoded it (kept and sent as received).
    pub config: Vec<u8>,
    /// What the job reads, by digest (the blobs must be in the store when it is submitted).
    pub inputs: Vec<InputRef>,
    pub placement: Option<PlacementRecord>,
}

/// An experiment to queue.
#[derive(Clone, Debug)]
pub struct Submission {
    pub name: String,
    pub team: String,
    pub submitter: String,
    pub manifest: Vec<u8>,
    pub manifest_format: String,
    pub manifest_name: String,
    /// The experiment's inputs by digest; their blobs (and a folder's listed files) must be in the store.
    pub inputs: Vec<InputRef>,
    /// The team that must have uploaded every input's bytes itself (a digest alone proves nothing); `None` for
    /// an admin, who may name any stored blob.
    pub inputs_held_by: Option<String>,
    pub priority: i32,
    pub jobs: Vec<PlannedJob>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitOutcome {
    pub experiment_id: String,
    pub jobs: usize,
    pub cached: usize,
}

/// What a worker gets with a lease.
#[derive(Clone, Debug)]
pub struct LeaseGrant {
    pub job: JobRecord,
    pub config: Vec<u8>,
    pub attempt: u32,
    pub deadline_ms: u64,
    pub checkpoint: Option<CheckpointRef>,
    pub parents: Vec<ArtifactRecord>,
    pub experiment_id: String,
}

/// Progress a worker reports for one job in a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressReport {
    pub job_id: String,
    pub attempt: u32,
    pub step: u64,
    pub total: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    pub cancel: Vec<String>,
    pub lease_deadline_ms: u64,
}

/// Live progress of a job (not persisted).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub step: u64,
    pub total: u64,
    pub last_metric: String,
    pub last_value: f64,
}

/// A job with what a client needs to show it.
#[derive(Clone, Debug)]
pub struct JobView {
    pub job: JobRecord,
    pub cached: bool,
    pub progress: Progress,
    /// Why a ready job waits when no live worker's offer could hold it (see `waiting.rs`); `None` otherwise.
    pub waiting_reason: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ExperimentView {
    pub record: ExperimentRecord,
    pub state: &'static str,
    pub jobs: Vec<JobView>,
}

#[derive(Clone, Debug)]
pub struct WorkerView {
    pub record: WorkerRecord,
    pub alive: bool,
    pub jobs: Vec<String>,
}

/// A change to a job, broadcast to watchers.
#[derive(Clone, Debug)]
pub struct JobEvent {
    pub job_id: String,
    pub experiments: Vec<String>,
    pub message: String,
}

/// Identifies a metric batch's job attempt, checked against the lease.
#[derive(Clone, Debug)]
pub struct MetricBatchIn {
    pub job_id: String,
    pub attempt: u32,
    pub seq: u64,
    pub encoded: Vec<u8>,
    pub points: u64,
    /// The distinct metric names among the batch's points.
    pub names: Vec<String>,
    pub last: Option<(String, u64, f64)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricAckCounts {
    pub batches: u32,
    pub duplicates: u32,
    pub points: u64,
}
