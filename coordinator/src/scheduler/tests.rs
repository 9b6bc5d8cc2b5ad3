//! Scheduler unit tests: the state machine, leases, cache, cancellation and recovery, driven directly.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::{
    ArtifactRecord, CheckpointRef, InputRef, JobState, Resources, SledStore, WorkerRecord,
    sha256_hex,
};

fn config() -> SchedulerConfig {
    SchedulerConfig {
        lease_ttl_ms: 10_000,
        heartbeat_interval_ms: 100,
        max_attempts: 2,
        backoff_base_ms: 1,
        backoff_max_ms: 5,
        max_lease_wait_ms: 50,
        tick_ms: 10,
    }
}

fn open(dir: &std::path::Path, config: SchedulerConfig) -> Arc<Scheduler> {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
    Scheduler::open(store, config).unwrap()
}

fn job(id: &str, deps: &[&str]) -> PlannedJob {
    PlannedJob {
        id: id.into(),
        kind: "test.emit".into(),
        name: format!("job {id}"),
        deps: deps.iter().map(|d| d.to_string()).collect(),
        resources: Resources {
            gpus: 0,
            gpu_memory_mib: 0,
            cpu_threads: 1,
        },
        config: b"{}".to_vec(),
        inputs: vec![],
        placement: None,
    }
}

fn submission(team: &str, jobs: Vec<PlannedJob>) -> Submission {
    Submission {
        name: "exp".into(),
        team: team.into(),
        submitter: "tester".into(),
        manifest: b"manifest".to_vec(),
        manifest_format: "jobgraph+json".into(),
        manifest_name: "m.json".into(),
        inputs: vec![],
        inputs_held_by: None,
        priority: 0,
        jobs,
    }
}

fn worker(name: &str, threads: u32) -> WorkerRecord {
    WorkerRecord {
        id: String::new(),
        name: name.into(),
        resources: Resources {
            gpus: 0,
            gpu_memory_mib: 0,
            cpu_threads: threads,
        },
        kinds: vec!["test.emit".into()],
        version: "test".into(),
        git_commit: "unknown".into(),
        cargo_lock_sha256: String::new(),
        host: "localhost".into(),
        registered_ms: 0,
        last_seen_ms: 0,
        devices: Vec::new(),
        cluster_job: None,
    }
}

const WAIT: Duration = Duration::from_millis(20);

#[tokio::test]
async fn dependencies_gate_readiness_and_completion_unblocks() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    let out = s
        .submit(submission("a", vec![job("j1", &[]), job("j2", &["j1"])]))
        .await
        .unwrap();
    let w = s.register_worker(None, worker("w", 4)).await.unwrap();
    let first = s.lease(&w, WAIT).await.unwrap().expect("j1 is ready");
    assert_eq!(first.job.id, "j1");
    assert!(
        s.lease(&w, WAIT).await.unwrap().is_none(),
        "j2 waits for j1"
    );
    s.complete(&w, "j1", first.attempt).await.unwrap();
    let second = s.lease(&w, WAIT).await.unwrap().expect("j2 became ready");
    assert_eq!(second.job.id, "j2");
    s.complete(&w, "j2", second.attempt).await.unwrap();
    let view = s.experiment(Some("a"), &out.experiment_id).unwrap();
    assert_eq!(view.state, "succeeded");
}

#[tokio::test]
async fn expired_leases_requeue_then_fail_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        SchedulerConfig {
            lease_ttl_ms: 1,
            ..config()
        },
    );
    let out = s
        .submit(submission("a", vec![job("j1", &[])]))
        .await
        .unwrap();
    let w = s.register_worker(None, worker("w", 4)).await.unwrap();
    let lease = s.lease(&w, WAIT).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.tick().await.unwrap(), 1);
    // The expired lease's worker has lost it.
    assert!(matches!(
        s.complete(&w, "j1", lease.attempt).await,
        Err(SchedulerError::LeaseLost { .. })
    ));
    tokio::time::sleep(Duration::from_millis(10)).await;
    s.tick().await.unwrap();
    let again = s
        .lease(&w, Duration::from_millis(50))
        .await
        .unwrap()
        .expect("requeued after back-off");
    assert_eq!(again.attempt, 2);
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.tick().await.unwrap();
    let view = s.experiment(None, &out.experiment_id).unwrap();
    let j = &view.jobs[0].job;
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.attempts, 2);
    assert!(j.last_error.as_deref().unwrap().contains("lease expired"));
    assert_eq!(view.state, "failed");
}

#[tokio::test]
async fn failures_retry_unless_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    s.submit(submission("a", vec![job("j1", &[]), job("j2", &[])]))
        .await
        .unwrap();
    let w = s.register_worker(None, worker("w", 1)).await.unwrap();
    let l1 = s.lease(&w, WAIT).await.unwrap().unwrap();
    assert!(
        s.fail(&w, &l1.job.id, l1.attempt, "oom", false)
            .await
            .unwrap(),
        "first failure is retried"
    );
    let l2 = s
        .lease(&w, Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    let permanent = l2.job.id.clone();
    assert!(
        !s.fail(&w, &permanent, l2.attempt, "bad config", true)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn cancellation_reaches_the_worker_on_its_next_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    let out = s
        .submit(submission("a", vec![job("j1", &[])]))
        .await
        .unwrap();
    let w = s.register_worker(None, worker("w", 4)).await.unwrap();
    let lease = s.lease(&w, WAIT).await.unwrap().unwrap();
    let report = [ProgressReport {
        job_id: "j1".into(),
        attempt: lease.attempt,
        step: 1,
        total: 10,
    }];
    assert!(s.heartbeat(&w, &report).await.unwrap().cancel.is_empty());
    assert_eq!(
        s.experiment(None, &out.experiment_id).unwrap().jobs[0]
            .job
            .state,
        JobState::Running
    );
    assert!(matches!(
        s.cancel(Some("b"), "team:b", &out.experiment_id).await,
        Err(SchedulerError::PermissionDenied(_))
    ));
    assert_eq!(
        s.cancel(Some("a"), "team:a", &out.experiment_id)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.heartbeat(&w, &report).await.unwrap().cancel,
        vec!["j1".to_string()]
    );
    assert_eq!(
        s.experiment(None, &out.experiment_id).unwrap().state,
        "cancelled"
    );
    // Retry brings it back.
    assert_eq!(
        s.retry(Some("a"), "team:a", &out.experiment_id)
            .await
            .unwrap(),
        1
    );
    assert!(s.lease(&w, WAIT).await.unwrap().is_some());
}

#[tokio::test]
async fn a_new_lease_carries_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    s.submit(submission("a", vec![job("j1", &[])]))
        .await
        .unwrap();
    let w1 = s.register_worker(None, worker("w1", 4)).await.unwrap();
    let w2 = s.register_worker(None, worker("w2", 4)).await.unwrap();
    let lease = s.lease(&w1, WAIT).await.unwrap().unwrap();
    assert!(lease.checkpoint.is_none());
    let sha = s.store().blobs().put_bytes(b"ckpt").unwrap();
    let record = ArtifactRecord {
        job_id: "j1".into(),
        name: "checkpoint".into(),
        sha256: sha.clone(),
        size: 4,
        role: "checkpoint".into(),
        attempt: lease.attempt,
        metric_seq: 7,
        created_ms: 0,
    };
    assert!(matches!(
        s.record_artifact(&w2, record.clone()).await,
        Err(SchedulerError::LeaseLost { .. })
    ));
    s.record_artifact(&w1, record).await.unwrap();
    s.release(&w1, "j1", lease.attempt, "shutting down")
        .await
        .unwrap();
    let resumed = s.lease(&w2, WAIT).await.unwrap().unwrap();
    assert_eq!(
        resumed.checkpoint,
        Some(CheckpointRef {
            sha256: sha,
            metric_seq: 7
        })
    );
    assert_eq!(resumed.job.attempts, 1, "a released lease is not counted");
}

#[tokio::test]
async fn succeeded_jobs_are_served_from_the_cache_across_experiments() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    s.submit(submission("a", vec![job("j1", &[])]))
        .await
        .unwrap();
    let w = s.register_worker(None, worker("w", 4)).await.unwrap();
    let lease = s.lease(&w, WAIT).await.unwrap().unwrap();
    s.complete(&w, "j1", lease.attempt).await.unwrap();
    let again = s
        .submit(submission("a", vec![job("j1", &[]), job("j3", &["j1"])]))
        .await
        .unwrap();
    assert_eq!(again.cached, 1);
    let next = s.lease(&w, WAIT).await.unwrap().unwrap();
    assert_eq!(next.job.id, "j3", "j1 is not run again");
    assert!(s.experiment(None, &again.experiment_id).unwrap().jobs[0].cached);
}

#[tokio::test]
async fn resent_metric_batches_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    s.submit(submission("a", vec![job("j1", &[])]))
        .await
        .unwrap();
    let w = s.register_worker(None, worker("w", 4)).await.unwrap();
    let lease = s.lease(&w, WAIT).await.unwrap().unwrap();
    let batch = |seq| MetricBatchIn {
        job_id: "j1".into(),
        attempt: lease.attempt,
        seq,
        encoded: vec![seq as u8],
        points: 3,
        names: vec!["loss".into()],
        last: None,
    };
    let first = s
        .ingest_metrics(&w, vec![batch(0), batch(1)])
        .await
        .unwrap();
    assert_eq!((first.batches, first.duplicates, first.points), (2, 0, 6));
    let resent = s
        .ingest_metrics(&w, vec![batch(1), batch(2)])
        .await
        .unwrap();
    assert_eq!((resent.batches, resent.duplicates), (1, 1));
    assert_eq!(s.store().metric_batches("j1").unwrap().len(), 3);
}

#[tokio::test]
async fn reopening_the_store_resumes_every_job_where_it_stood() {
    let dir = tempfile::tempdir().unwrap();
    let (experiment_id, worker_id, attempt) = {
        let s = open(dir.path(), config());
        let out = s
            .submit(submission(
                "a",
                vec![job("j1", &[]), job("j2", &[]), job("j3", &["j1"])],
            ))
            .await
            .unwrap();
        let w = s.register_worker(None, worker("w", 4)).await.unwrap();
        let l1 = s.lease(&w, WAIT).await.unwrap().unwrap();
        s.complete(&w, &l1.job.id, l1.attempt).await.unwrap();
        let l2 = s.lease(&w, WAIT).await.unwrap().unwrap();
        (out.experiment_id, w, l2.attempt)
    };
    let s = open(dir.path(), config());
    let view = s.experiment(None, &experiment_id).unwrap();
    let states: Vec<_> = view
        .jobs
        .iter()
        .map(|j| (j.job.id.clone(), j.job.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("j1".to_string(), JobState::Succeeded),
            ("j2".to_string(), JobState::Leased),
            ("j3".to_string(), JobState::Ready)
        ]
    );
    // The worker that held j2 can still complete it after the restart.
    s.complete(&worker_id, "j2", attempt).await.unwrap();
    let l3 = s.lease(&worker_id, WAIT).await.unwrap().unwrap();
    assert_eq!(l3.job.id, "j3");
}

#[tokio::test]
async fn teams_share_workers_fairly_and_priorities_order_a_team() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    s.submit(submission(
        "a",
        (0..4).map(|i| job(&format!("a{i}"), &[])).collect(),
    ))
    .await
    .unwrap();
    let mut urgent = submission("b", vec![job("b-low", &[])]);
    urgent.priority = 0;
    s.submit(urgent).await.unwrap();
    let mut high = submission("b", vec![job("b-high", &[])]);
    high.priority = 5;
    s.submit(high).await.unwrap();
    let w = s.register_worker(None, worker("w", 8)).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(s.lease(&w, WAIT).await.unwrap().unwrap().job.id);
    }
    // a and b alternate (a was queued first); b's higher priority job goes before its older one.
    assert_eq!(order, vec!["a0", "b-high", "a1", "b-low"]);
}

#[tokio::test]
async fn jobs_only_go_to_workers_they_fit() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    let mut gpu_job = job("gpu", &[]);
    gpu_job.resources = Resources {
        gpus: 1,
        gpu_memory_mib: 20_000,
        cpu_threads: 1,
    };
    s.submit(submission("a", vec![gpu_job])).await.unwrap();
    let cpu = s.register_worker(None, worker("cpu", 16)).await.unwrap();
    assert!(s.lease(&cpu, WAIT).await.unwrap().is_none());
    let mut big = worker("gpu", 4);
    big.resources.gpus = 1;
    big.resources.gpu_memory_mib = 24_000;
    let g = s.register_worker(None, big).await.unwrap();
    assert_eq!(s.lease(&g, WAIT).await.unwrap().unwrap().job.id, "gpu");
}

#[tokio::test]
async fn a_waiting_lease_wakes_when_a_job_becomes_ready() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        SchedulerConfig {
            max_lease_wait_ms: 10_000,
            ..config()
        },
    );
    let w = s.register_worker(None, worker("w", 4)).await.unwrap();
    let waiter = {
        let s = s.clone();
        let w = w.clone();
        tokio::spawn(async move { s.lease(&w, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.submit(submission("a", vec![job("j1", &[])]))
        .await
        .unwrap();
    let lease = waiter.await.unwrap().unwrap().expect("woken by the submit");
    assert_eq!(lease.job.id, "j1");
}

#[test]
fn graph_errors_name_the_job_and_field() {
    let none = |_: &str| None;
    let err = validate_graph(&[job("x", &["missing"])], none)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("jobs[0]") && err.contains("deps[0]") && err.contains("missing"),
        "{err}"
    );
    let err = validate_graph(&[job("x", &["y"]), job("y", &["x"])], none)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cycle"), "{err}");
    let err = validate_graph(&[job("x", &[]), job("x", &[])], none)
        .unwrap_err()
        .to_string();
    assert!(err.contains("duplicate"), "{err}");
}

fn checkpoint(job_id: &str, attempt: u32) -> ArtifactRecord {
    ArtifactRecord {
        job_id: job_id.into(),
        name: "checkpoint.json".into(),
        sha256: sha256_hex(b"checkpoint"),
        size: 10,
        role: "checkpoint".into(),
        attempt,
        metric_seq: 3,
        created_ms: 1,
    }
}

#[tokio::test]
async fn a_replay_reruns_a_succeeded_job_from_scratch_beside_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    let mut parent = job("p", &[]);
    parent.config = b"{\"steps\":1}".to_vec();
    let mut child = job("c", &["p"]);
    child.config = b"{\"steps\":7}".to_vec();
    let out = s
        .submit(submission("a", vec![parent, child]))
        .await
        .unwrap();
    let e = out.experiment_id.clone();
    let w = s.register_worker(None, worker("w", 4)).await.unwrap();
    let lp = s.lease(&w, WAIT).await.unwrap().unwrap();
    s.complete(&w, "p", lp.attempt).await.unwrap();
    // Only a succeeded job of the caller's experiment can be replayed.
    assert!(matches!(
        s.replay(Some("a"), "team:a", &e, "c").await,
        Err(SchedulerError::InvalidArgument(_))
    ));
    let lc = s.lease(&w, WAIT).await.unwrap().unwrap();
    s.record_artifact(&w, checkpoint("c", lc.attempt))
        .await
        .unwrap();
    s.complete(&w, "c", lc.attempt).await.unwrap();
    assert!(matches!(
        s.replay(Some("b"), "team:b", &e, "c").await,
        Err(SchedulerError::PermissionDenied(_))
    ));
    assert!(matches!(
        s.replay(Some("a"), "team:a", &e, "nope").await,
        Err(SchedulerError::NotFound(_))
    ));

    let r = s.replay(Some("a"), "team:a", &e, "c").await.unwrap();
    assert!(r.starts_with("replay-") && r.ends_with("-c"), "{r}");
    let lease = s
        .lease(&w, WAIT)
        .await
        .unwrap()
        .expect("the replay is ready");
    assert_eq!(lease.job.id, r);
    assert_eq!(lease.config, b"{\"steps\":7}", "same config");
    assert_eq!(lease.job.deps, vec!["p".to_string()]);
    assert_eq!(lease.experiment_id, e);
    assert!(
        lease.checkpoint.is_none(),
        "a replay never resumes from the original's checkpoint"
    );
    // A checkpoint the replay uploads is not a resume point either.
    s.record_artifact(&w, checkpoint(&r, lease.attempt))
        .await
        .unwrap();
    s.fail(&w, &r, lease.attempt, "flaky", false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    s.tick().await.unwrap();
    let again = s
        .lease(&w, Duration::from_millis(50))
        .await
        .unwrap()
        .expect("requeued");
    assert_eq!(again.job.id, r);
    assert!(again.checkpoint.is_none());
    s.complete(&w, &r, again.attempt).await.unwrap();

    // The experiment is unchanged: same jobs, the original still succeeded once with its checkpoint.
    let view = s.experiment(Some("a"), &e).unwrap();
    assert_eq!(view.jobs.len(), 2);
    assert_eq!(view.state, "succeeded");
    let original = view.jobs.iter().find(|j| j.job.id == "c").unwrap();
    assert_eq!(original.job.attempts, 1);
    assert!(original.job.checkpoint.is_some());
    let (replay, of) = s.replay_view(Some("a"), &r).unwrap();
    assert_eq!(replay.job.state, JobState::Succeeded);
    assert_eq!(replay.job.replay_of.as_deref(), Some("c"));
    assert_eq!(of.id, "c");
    assert!(matches!(
        s.replay_view(Some("b"), &r),
        Err(SchedulerError::PermissionDenied(_))
    ));
    assert!(matches!(
        s.replay_view(Some("a"), "c"),
        Err(SchedulerError::NotFound(_))
    ));
    // The request and the replay's own lease are in the experiment's audit log.
    let log = s.audit_log(&view.record).unwrap();
    assert!(
        log.iter()
            .any(|e| e.action == "replay" && e.actor == "team:a")
    );
    assert!(
        log.iter()
            .any(|e| e.action == "complete" && e.job_id.as_deref() == Some(r.as_str()))
    );
    // A restart keeps the replay as its own record.
    drop(s);
    let s = open(dir.path(), config());
    let (replay, _) = s.replay_view(None, &r).unwrap();
    assert_eq!(replay.job.state, JobState::Succeeded);
    assert_eq!(s.experiment(None, &e).unwrap().jobs.len(), 2);
}

#[tokio::test]
async fn a_submission_needs_its_input_blobs_and_every_file_a_folder_lists() {
    use tandem_experiments::manifest::hash::listing;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    let weights = sha256_hex(b"weights");
    let config = sha256_hex(b"config");
    let text = listing([
        (config.as_str(), "config.json"),
        (weights.as_str(), "model.safetensors"),
    ]);
    let folder = InputRef {
        name: "model".into(),
        sha256: sha256_hex(text.as_bytes()),
        size: 13,
        folder: true,
        file_name: String::new(),
    };
    let mut planned = job("j1", &[]);
    planned.inputs = vec![folder.clone()];
    let mut sub = submission("a", vec![planned]);
    sub.inputs = vec![folder.clone()];
    let err = s.submit(sub.clone()).await.unwrap_err();
    assert!(
        matches!(&err, SchedulerError::FailedPrecondition(m) if m.contains("input model") && m.contains("its blob")),
        "{err}"
    );
    assert_eq!(
        s.missing_blobs(None, &[folder.sha256.clone(), config.clone()])
            .unwrap(),
        vec![folder.sha256.clone(), config.clone()]
    );
    s.store().blobs().put_bytes(text.as_bytes()).unwrap();
    s.store().blobs().put_bytes(b"config").unwrap();
    let err = s.submit(sub.clone()).await.unwrap_err();
    assert!(
        matches!(&err, SchedulerError::FailedPrecondition(m) if m.contains("listed file model.safetensors")),
        "{err}"
    );
    s.store().blobs().put_bytes(b"weights").unwrap();
    assert!(
        s.missing_blobs(None, &[folder.sha256.clone(), weights])
            .unwrap()
            .is_empty()
    );
    s.submit(sub).await.unwrap();
}

#[tokio::test]
async fn a_team_may_name_only_blobs_it_uploaded_itself() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    // Another team's blob is in the store; this team knows its digest but never sent the bytes.
    let sha256 = s.store().blobs().put_bytes(b"radiology's reports").unwrap();
    s.add_blob_holder(&sha256, "radiology").await.unwrap();
    let input = InputRef {
        name: "dataset".into(),
        sha256: sha256.clone(),
        size: 19,
        folder: false,
        file_name: "reports.csv".into(),
    };
    let mut sub = submission("cardiology", vec![job("j1", &[])]);
    sub.inputs = vec![input];
    sub.inputs_held_by = Some("cardiology".into());
    let err = s.submit(sub.clone()).await.unwrap_err();
    assert!(
        matches!(&err, SchedulerError::FailedPrecondition(m) if m.contains("input dataset") && m.contains("your team's uploads")),
        "{err}"
    );
    // The store does not reveal it either: to this team it is missing until it uploads the bytes.
    let digests = [sha256.clone()];
    assert_eq!(
        s.missing_blobs(Some("cardiology"), &digests).unwrap(),
        digests
    );
    assert!(
        s.missing_blobs(Some("radiology"), &digests)
            .unwrap()
            .is_empty()
    );
    assert!(s.missing_blobs(None, &digests).unwrap().is_empty());
    s.add_blob_holder(&sha256, "cardiology").await.unwrap();
    assert!(
        s.missing_blobs(Some("cardiology"), &digests)
            .unwrap()
            .is_empty()
    );
    s.submit(sub).await.unwrap();
}

#[tokio::test]
async fn a_refused_change_writes_nothing_and_an_accepted_one_writes_its_job_audit_and_event() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    s.submit(submission("a", vec![job("j1", &[])]))
        .await
        .unwrap();
    let w = s.register_worker(None, worker("w", 4)).await.unwrap();
    let lease = s.lease(&w, WAIT).await.unwrap().unwrap();
    let mut events = s.subscribe();
    let audited = s.store().audit_entries().unwrap().len();
    assert!(matches!(
        s.complete(&w, "j1", lease.attempt + 1).await,
        Err(SchedulerError::LeaseLost { .. })
    ));
    assert_eq!(s.store().audit_entries().unwrap().len(), audited);
    assert!(
        events.try_recv().is_err(),
        "a refused change publishes nothing"
    );
    s.complete(&w, "j1", lease.attempt).await.unwrap();
    assert_eq!(s.store().audit_entries().unwrap().len(), audited + 1);
    let stored = s.store().jobs().unwrap();
    assert_eq!(stored[0].state, JobState::Succeeded);
    let event = events.try_recv().unwrap();
    assert_eq!(event.job_id, "j1");
    assert!(event.message.ends_with("succeeded"), "{}", event.message);
}

fn gpu_job(id: &str, gpus: u32, gpu_memory_mib: u64) -> PlannedJob {
    let mut planned = job(id, &[]);
    planned.resources = Resources {
        gpus,
        gpu_memory_mib,
        cpu_threads: 1,
    };
    planned
}

fn gpu_worker(name: &str, gpus: u32, gpu_memory_mib: u64) -> WorkerRecord {
    let mut record = worker(name, 8);
    record.resources.gpus = gpus;
    record.resources.gpu_memory_mib = gpu_memory_mib;
    record
}

fn waiting_reason(s: &Scheduler, experiment: &str) -> (JobState, Option<String>) {
    let view = s.experiment(None, experiment).unwrap();
    (view.jobs[0].job.state, view.jobs[0].waiting_reason.clone())
}

#[tokio::test]
async fn a_job_no_live_worker_can_hold_stays_queued_with_a_reason_until_one_that_fits_registers() {
    let dir = tempfile::tempdir().unwrap();
    // Workers count as live for three heartbeat intervals: long enough for a slow commit on a busy machine.
    let s = open(
        dir.path(),
        SchedulerConfig {
            heartbeat_interval_ms: 10_000,
            ..config()
        },
    );
    let out = s
        .submit(submission("a", vec![gpu_job("big", 2, 80 * 1024)]))
        .await
        .unwrap();
    let experiment = &out.experiment_id;
    assert_eq!(
        waiting_reason(&s, experiment),
        (JobState::Ready, Some("no live worker".into()))
    );
    let cpu = s
        .register_worker(None, worker("cpu-node", 64))
        .await
        .unwrap();
    assert_eq!(
        waiting_reason(&s, experiment).1.as_deref(),
        Some("needs 2 GPUs with 80 GiB each; no live worker offers a GPU")
    );
    let small = s
        .register_worker(None, gpu_worker("gpu-node-3", 1, 40 * 1024))
        .await
        .unwrap();
    for w in [&cpu, &small] {
        assert!(
            s.lease(w, WAIT).await.unwrap().is_none(),
            "{w} cannot hold it"
        );
    }
    s.tick().await.unwrap();
    assert_eq!(
        waiting_reason(&s, experiment),
        (
            JobState::Ready,
            Some(
                "needs 2 GPUs with 80 GiB each; the largest live worker offers 1 GPU with 40 GiB \
                 (worker gpu-node-3)"
                    .into()
            )
        )
    );
    let big = s
        .register_worker(None, gpu_worker("gpu-node-9", 2, 80 * 1024))
        .await
        .unwrap();
    assert_eq!(
        waiting_reason(&s, experiment),
        (JobState::Ready, None),
        "a live worker fits: the job only waits for its turn"
    );
    let lease = s.lease(&big, WAIT).await.unwrap().expect("the job fits");
    assert_eq!(lease.job.id, "big");
    assert_eq!(waiting_reason(&s, experiment), (JobState::Leased, None));
}

#[tokio::test]
async fn a_worker_whose_gpus_are_all_leased_gets_only_cpu_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    s.submit(submission(
        "a",
        vec![
            gpu_job("gpu-1", 1, 20_000),
            gpu_job("gpu-2", 1, 20_000),
            job("cpu", &[]),
        ],
    ))
    .await
    .unwrap();
    let w = s
        .register_worker(None, gpu_worker("one-gpu", 1, 24_000))
        .await
        .unwrap();
    let first = s.lease(&w, WAIT).await.unwrap().unwrap();
    assert_eq!(first.job.id, "gpu-1");
    let second = s.lease(&w, WAIT).await.unwrap().unwrap();
    assert_eq!(
        second.job.id, "cpu",
        "gpu-2 waits: the worker's one GPU is leased"
    );
    assert!(s.lease(&w, WAIT).await.unwrap().is_none());
    s.complete(&w, "gpu-1", first.attempt).await.unwrap();
    let third = s.lease(&w, WAIT).await.unwrap().unwrap();
    assert_eq!(third.job.id, "gpu-2");
}

/// A train job config of an ASHA sweep point (group `g`, grace 1, reduction factor 2), as the planner writes it.
fn asha_point(id: &str) -> PlannedJob {
    use tandem_experiments::manifest::{
        ComputeDtype, DevicePreference, ModelFamily, PromptSpec, Quantization, Stage, defaults,
    };
    use tandem_experiments::planner::{
        AshaRule, DataSlice, JobConfig, ModelRef, TrainConfig, wire,
    };
    let config = JobConfig::Train(TrainConfig {
        stage: Stage::Stage1,
        fold: None,
        seed: 1,
        model: ModelRef {
            family: ModelFamily::Llama,
            sha256: "sha256:00".into(),
            quantization: Quantization::None,
            compute_dtype: ComputeDtype::F32,
            device: DevicePreference::Auto,
        },
        lora: defaults::lora(),
        prompt: PromptSpec {
            train: "{input}".into(),
            inference: "{input}".into(),
        },
        training: defaults::training(Stage::Stage1),
        data: DataSlice {
            prep_job: "prep".into(),
            fold: None,
            part: "train".into(),
            indices_sha256: None,
        },
        init_adapter: None,
        asha: Some(AshaRule {
            group: "g".into(),
            grace_period: 1,
            reduction_factor: 2,
        }),
    });
    PlannedJob {
        config: wire::config_bytes(&config),
        kind: "train".into(),
        ..job(id, &[])
    }
}

#[tokio::test]
async fn asha_rungs_are_decided_against_the_group_and_answered_the_same_on_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), config());
    s.submit(submission(
        "a",
        vec![
            asha_point("p0"),
            asha_point("p1"),
            asha_point("p2"),
            job("plain", &[]),
        ],
    ))
    .await
    .unwrap();
    let mut w = worker("w", 8);
    w.kinds.push("train".into());
    let w = s.register_worker(None, w).await.unwrap();
    let mut attempts = std::collections::HashMap::new();
    for _ in 0..4 {
        let lease = s.lease(&w, WAIT).await.unwrap().expect("four ready jobs");
        attempts.insert(lease.job.id.clone(), lease.attempt);
    }
    let at = |id: &str| attempts[id];
    // The first value at a rung goes on; a worse one than the best half stops; a middling one goes on.
    let first = s.report_rung(&w, "p0", at("p0"), 0, 1, 1.0).await.unwrap();
    assert!(!first.stop);
    let worse = s.report_rung(&w, "p1", at("p1"), 0, 1, 3.0).await.unwrap();
    assert_eq!((worse.stop, worse.cutoff, worse.recorded), (true, 2.0, 2));
    let middle = s.report_rung(&w, "p2", at("p2"), 0, 1, 1.5).await.unwrap();
    assert_eq!((middle.stop, middle.cutoff), (false, 1.5));
    // Asked again (a retried attempt after a crash), p1 hears the stored answer, whatever it reports now.
    let again = s.report_rung(&w, "p1", at("p1"), 0, 1, 0.1).await.unwrap();
    assert!(again.stop);
    // A step that is no rung, a job without ASHA, and a stale attempt are refused.
    let err = s
        .report_rung(&w, "p0", at("p0"), 1, 3, 1.0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("step 3 is not rung 1"), "{err}");
    let err = s
        .report_rung(&w, "plain", at("plain"), 0, 1, 1.0)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not a sweep point with ASHA"),
        "{err}"
    );
    let err = s
        .report_rung(&w, "p2", at("p2") + 1, 0, 1, 1.0)
        .await
        .unwrap_err();
    assert!(matches!(err, SchedulerError::LeaseLost { .. }), "{err}");
    // The decisions are in the store, for `results --sweep` and for a coordinator that restarts.
    let stored = s.store().rungs("g", 0).unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored.iter().filter(|r| r.stop).count(), 1);
}
