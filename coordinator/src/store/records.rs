//! The plain records the coordinator persists: experiments, jobs with their attempts and lease, workers,
//! artifacts, audit entries and tokens. Serialized as JSON values in the store.

use serde::{Deserialize, Serialize};

/// What a job asks for or what a worker offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub gpus: u32,
    pub gpu_memory_mib: u64,
    pub cpu_threads: u32,
}

impl Resources {
    /// True when `request` fits into `self` (GPU memory is per GPU and only matters when GPUs are asked for).
    pub fn fits(&self, request: &Resources) -> bool {
        request.gpus <= self.gpus
            && request.cpu_threads <= self.cpu_threads
            && (request.gpus == 0 || request.gpu_memory_mib <= self.gpu_memory_mib)
    }

    /// `self - used`, saturating at zero (GPU memory per GPU is not reduced: whole GPUs are allocated).
    pub fn minus(&self, used: &Resources) -> Resources {
        Resources {
            gpus: self.gpus.saturating_sub(used.gpus),
            gpu_memory_mib: self.gpu_memory_mib,
            cpu_threads: self.cpu_threads.saturating_sub(used.cpu_threads),
        }
    }

    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            gpus: self.gpus + other.gpus,
            gpu_memory_mib: self.gpu_memory_mib.max(other.gpu_memory_mib),
            cpu_threads: self.cpu_threads + other.cpu_threads,
        }
    }
}

/// A job's place in its life cycle: `blocked -> ready -> leased -> running -> succeeded | failed | cancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Blocked,
    Ready,
    Leased,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn is_leased(self) -> bool {
        matches!(self, JobState::Leased | JobState::Running)
    }

    pub fn label(self) -> &'static str {
        match self {
            JobState::Blocked => "blocked",
            JobState::Ready => "ready",
            JobState::Leased => "leased",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// An input of an experiment (a file, or a folder by its listing), addressed by its SHA-256; its blobs are in
/// the store. `name` is its role (`model`, `dataset`, ...) or, in a job graph, its file name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    /// `sha256` names a folder listing (see `tandem_experiments::planner::inputs`).
    #[serde(default)]
    pub folder: bool,
    /// A file's name on the submitter's machine (its extension matters to loaders); empty for a folder.
    #[serde(default)]
    pub file_name: String,
}

/// Where a job sits in its experiment, as planned (see `tandem.v1.JobPlacement`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementRecord {
    pub stage: String,
    pub fold: Option<u32>,
    pub model_stage: String,
    pub task: String,
    /// (stage, parameter, value) of a sweep point.
    pub sweep: Option<(String, String, f64)>,
    pub configured: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    pub id: String,
    pub name: String,
    pub team: String,
    pub submitter: String,
    pub created_ms: u64,
    pub manifest_sha256: String,
    pub manifest_format: String,
    pub manifest_name: String,
    pub inputs: Vec<InputRef>,
    pub job_ids: Vec<String>,
    /// Jobs that had already succeeded when this experiment was submitted (served from the cache).
    pub cached_jobs: Vec<String>,
    pub priority: i32,
    pub cancelled: bool,
}

/// The last checkpoint a job uploaded: resume from it, and continue metric sequence numbers at `metric_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub sha256: String,
    pub metric_seq: u64,
}

/// One try at running a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub number: u32,
    pub worker: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    /// "running", "succeeded", "failed", "expired", "released", "cancelled".
    pub outcome: String,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub deps: Vec<String>,
    pub resources: Resources,
    pub inputs: Vec<InputRef>,
    /// Where the job sits in its experiment (planner jobs, and job-graph jobs whose config names a stage).
    /// Boxed: a record without one (most records of a large job graph) stays one pointer larger, not 150 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Box<PlacementRecord>>,
    pub team: String,
    pub priority: i32,
    /// Submission order, for FIFO within a priority.
    pub submit_seq: u64,
    pub state: JobState,
    /// Attempts started so far (a released lease does not count).
    pub attempts: u32,
    pub attempt_log: Vec<AttemptRecord>,
    pub last_error: Option<String>,
    pub worker: Option<String>,
    pub lease_deadline_ms: u64,
    /// Back-off: not leased again before this time.
    pub not_before_ms: u64,
    pub checkpoint: Option<CheckpointRef>,
    pub experiments: Vec<String>,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    /// For a replay run (`tandem audit --replay`): the id of the job it re-runs. A replay is never part of an
    /// experiment's job list, never resumes from a checkpoint, and its outputs never replace the original's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
}

impl JobRecord {
    /// This job as if it had never run: blocked, no attempts, lease, error, checkpoint or finish time.
    pub fn unstarted(self) -> JobRecord {
        JobRecord {
            state: JobState::Blocked,
            attempts: 0,
            attempt_log: Vec::new(),
            last_error: None,
            worker: None,
            lease_deadline_ms: 0,
            not_before_ms: 0,
            checkpoint: None,
            finished_ms: None,
            ..self
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: String,
    pub name: String,
    pub resources: Resources,
    pub kinds: Vec<String>,
    pub version: String,
    pub git_commit: String,
    pub cargo_lock_sha256: String,
    pub host: String,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    /// CUDA devices the worker found on its machine (reported facts; what it offers is `resources`). Absent
    /// in records stored before devices were reported.
    #[serde(default)]
    pub devices: Vec<DeviceRecord>,
    /// The cluster scheduler's job the worker runs in (Slurm), when one started it. Absent in records stored
    /// before workers reported it, and for workers started by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_job: Option<ClusterJobRecord>,
}

/// The cluster scheduler's job a worker reported at registration (see `ClusterJob` in the protocol).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterJobRecord {
    /// `slurm`.
    pub scheduler: String,
    /// `1234`, or `1234_5` for an array element.
    pub job_id: String,
    pub node: String,
    pub partition: String,
    /// The GPUs the scheduler gave the job, as it names them (`0,1`).
    pub gpus: String,
    /// Times the job was requeued before this start.
    pub restarts: u32,
}

/// One CUDA device a worker reported at registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub ordinal: u32,
    pub name: String,
    pub memory_mib: u64,
    /// Compute capability as major * 10 + minor (90 for sm_90).
    pub compute_capability: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub job_id: String,
    pub name: String,
    pub sha256: String,
    pub size: u64,
    /// "output" or "checkpoint".
    pub role: String,
    pub attempt: u32,
    pub metric_seq: u64,
    pub created_ms: u64,
}

/// One line of the append-only audit log: a state change and who caused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time_ms: u64,
    pub actor: String,
    pub action: String,
    pub experiment_id: Option<String>,
    pub job_id: Option<String>,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    Team,
    Worker,
    Admin,
}

impl TokenRole {
    pub fn label(self) -> &'static str {
        match self {
            TokenRole::Team => "team",
            TokenRole::Worker => "worker",
            TokenRole::Admin => "admin",
        }
    }
}

/// A training-sweep point's value at an ASHA rung, and what was decided (kept so a retried attempt gets the
/// same answer and `tandem results --sweep` can show where a point stopped).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RungRecord {
    pub job_id: String,
    pub rung: u32,
    pub step: u64,
    pub value: f64,
    pub stop: bool,
    pub cutoff: f64,
    pub at_ms: u64,
}

/// A bearer token, stored by the SHA-256 of its secret only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub role: TokenRole,
    pub name: String,
    pub created_ms: u64,
    pub revoked: bool,
}

/// Milliseconds since the Unix epoch (persisted deadlines use wall-clock time so they survive restarts).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_record_stored_before_devices_were_reported_still_loads() {
        let old = r#"{"id":"w3-gpu1","name":"gpu1","resources":{"gpus":1,"gpu_memory_mib":81559,"cpu_threads":16},
            "kinds":["train.stage1"],"version":"0.1.0","git_commit":"abc","cargo_lock_sha256":"",
            "host":"node7","registered_ms":5,"last_seen_ms":9}"#;
        let record: WorkerRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.name, "gpu1");
        assert_eq!(record.resources.gpus, 1);
        assert!(record.devices.is_empty());
        assert!(record.cluster_job.is_none());
    }

    #[test]
    fn worker_devices_round_trip() {
        let record = WorkerRecord {
            id: "w1-a".into(),
            name: "a".into(),
            resources: Resources::default(),
            kinds: vec![],
            version: "0.1.0".into(),
            git_commit: "unknown".into(),
            cargo_lock_sha256: String::new(),
            host: "h".into(),
            registered_ms: 1,
            last_seen_ms: 2,
            devices: vec![DeviceRecord {
                ordinal: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                memory_mib: 81559,
                compute_capability: 90,
            }],
            cluster_job: Some(ClusterJobRecord {
                scheduler: "slurm".into(),
                job_id: "41_2".into(),
                node: "gpu7".into(),
                partition: "a100".into(),
                gpus: "2".into(),
                restarts: 1,
            }),
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<WorkerRecord>(&json).unwrap(), record);
    }
}
