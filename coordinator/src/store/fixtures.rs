//! Plain records for unit tests across the crate.

use super::{JobRecord, JobState, Resources, WorkerRecord};

/// A ready job `id` of team "a" in experiment "e1", never attempted.
pub fn job_record(id: &str) -> JobRecord {
    JobRecord {
        id: id.into(),
        kind: "test.emit".into(),
        name: id.into(),
        deps: vec![],
        resources: Resources::default(),
        inputs: vec![],
        placement: None,
        team: "a".into(),
        priority: 0,
        submit_seq: 1,
        state: JobState::Ready,
        attempts: 0,
        attempt_log: vec![],
        last_error: None,
        worker: None,
        lease_deadline_ms: 0,
        not_before_ms: 0,
        checkpoint: None,
        experiments: vec!["e1".into()],
        created_ms: 1_700_000_000_000,
        finished_ms: None,
        replay_of: None,
    }
}

/// A registered worker `id` named `name`, with no resources, kinds or devices.
pub fn worker_record(id: &str, name: &str) -> WorkerRecord {
    WorkerRecord {
        id: id.into(),
        name: name.into(),
        resources: Resources::default(),
        kinds: vec![],
        version: String::new(),
        git_commit: String::new(),
        cargo_lock_sha256: String::new(),
        host: String::new(),
        registered_ms: 0,
        last_seen_ms: 0,
        devices: vec![],
        cluster_job: None,
    }
}
