//! The scheduler: the job state machine, leases, placement, the content-addressed cache and recovery.
//!
//! A plain async API (`submit`, `lease`, `heartbeat`, `complete`, ...) that unit tests drive directly; the gRPC
//! services are thin adapters over it. All state lives in memory behind one mutex and is written through to
//! the [`Store`]; every method that changes state awaits `Store::commit` (group commit) before returning, so
//! whatever it acknowledged survives `kill -9`. `Scheduler::open` on an existing store resumes every experiment.

mod error;
pub mod order;
pub mod placement;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};

pub use error::{SchedulerError, SchedulerResult};
use placement::Candidate;

use crate::store::{
    ArtifactRecord, AttemptRecord, AuditEntry, CheckpointRef, ExperimentRecord, InputRef,
    JobRecord, JobState, Resources, Store, WorkerRecord, now_ms, sha256_hex,
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
    pub config: Vec<u8>,
    pub inputs: Vec<InputRef>,
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
    /// Input files by name with their bytes (stored as blobs).
    pub inputs: Vec<(String, Vec<u8>)>,
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
    pub last: Option<(String, u64, f64)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricAckCounts {
    pub batches: u32,
    pub duplicates: u32,
    pub points: u64,
}

type ReadyKey = (i64, u64, String);

/// How many ready jobs per team (in priority order, skipping back-offs and kinds the worker lacks) placement
/// looks at for one lease; a job deeper in a queue that alone would fit waits for the ones before it.
const CANDIDATES_PER_TEAM: usize = 16;

struct LiveWorker {
    record: WorkerRecord,
    leases: HashSet<String>,
    used: Resources,
}

#[derive(Default)]
struct State {
    experiments: HashMap<String, ExperimentRecord>,
    jobs: HashMap<String, JobRecord>,
    dependents: HashMap<String, Vec<String>>,
    ready: HashMap<String, BTreeSet<ReadyKey>>,
    leased: HashSet<String>,
    workers: HashMap<String, LiveWorker>,
    running_by_team: HashMap<String, u32>,
    progress: HashMap<String, Progress>,
    next_submit_seq: u64,
    dirty_jobs: Vec<String>,
    audit: Vec<AuditEntry>,
    events: Vec<JobEvent>,
    became_ready: bool,
}

pub struct Scheduler {
    store: Arc<dyn Store>,
    config: SchedulerConfig,
    state: Mutex<State>,
    ready_notify: Notify,
    events: broadcast::Sender<JobEvent>,
}

fn ready_key(job: &JobRecord) -> ReadyKey {
    (-(job.priority as i64), job.submit_seq, job.id.clone())
}

impl State {
    fn audit(
        &mut self,
        actor: &str,
        action: &str,
        experiment: Option<&str>,
        job: Option<&str>,
        detail: String,
    ) {
        self.audit.push(AuditEntry {
            time_ms: now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            experiment_id: experiment.map(str::to_string),
            job_id: job.map(str::to_string),
            detail,
        });
    }

    fn event(&mut self, job_id: &str, message: String) {
        let experiments = self
            .jobs
            .get(job_id)
            .map(|j| j.experiments.clone())
            .unwrap_or_default();
        self.events.push(JobEvent {
            job_id: job_id.to_string(),
            experiments,
            message,
        });
    }

    /// Moves a job to `new`, keeping the ready queues, lease set and team counts in step.
    fn set_state(&mut self, job_id: &str, new: JobState) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        let old = job.state;
        if old == new {
            return;
        }
        if old == JobState::Ready
            && let Some(queue) = self.ready.get_mut(&job.team)
        {
            queue.remove(&ready_key(job));
        }
        if old.is_leased() && !new.is_leased() {
            self.leased.remove(job_id);
            if let Some(count) = self.running_by_team.get_mut(&job.team) {
                *count = count.saturating_sub(1);
            }
            if let Some(worker_id) = job.worker.clone()
                && let Some(worker) = self.workers.get_mut(&worker_id)
                && worker.leases.remove(job_id)
            {
                worker.used = Resources {
                    gpus: worker.used.gpus.saturating_sub(job.resources.gpus),
                    gpu_memory_mib: worker.used.gpu_memory_mib,
                    cpu_threads: worker
                        .used
                        .cpu_threads
                        .saturating_sub(job.resources.cpu_threads),
                };
            }
        }
        if new == JobState::Ready {
            self.ready
                .entry(job.team.clone())
                .or_default()
                .insert(ready_key(job));
            self.became_ready = true;
        }
        if new.is_leased() && !old.is_leased() {
            self.leased.insert(job_id.to_string());
            *self.running_by_team.entry(job.team.clone()).or_default() += 1;
        }
        job.state = new;
        if new.is_terminal() {
            job.finished_ms = Some(now_ms());
        }
        self.dirty_jobs.push(job_id.to_string());
        self.event(job_id, format!("{} -> {}", old.label(), new.label()));
    }

    /// A blocked job whose dependencies all succeeded becomes ready.
    fn refresh_readiness(&mut self, job_id: &str) {
        let Some(job) = self.jobs.get(job_id) else {
            return;
        };
        if job.state != JobState::Blocked {
            return;
        }
        let all_done = job.deps.iter().all(|dep| {
            self.jobs
                .get(dep)
                .is_some_and(|d| d.state == JobState::Succeeded)
        });
        if all_done {
            self.set_state(job_id, JobState::Ready);
        }
    }

    fn experiment_state(&self, experiment: &ExperimentRecord) -> &'static str {
        let mut all_succeeded = true;
        let mut any_failed = false;
        let mut any_active = false;
        let mut all_terminal_or_blocked = true;
        for id in &experiment.job_ids {
            let Some(job) = self.jobs.get(id) else {
                continue;
            };
            match job.state {
                JobState::Succeeded => {}
                JobState::Failed => {
                    all_succeeded = false;
                    any_failed = true;
                }
                JobState::Ready | JobState::Leased | JobState::Running => {
                    all_succeeded = false;
                    any_active = true;
                    all_terminal_or_blocked = false;
                }
                JobState::Blocked | JobState::Cancelled => all_succeeded = false,
            }
        }
        if all_succeeded {
            "succeeded"
        } else if experiment.cancelled && !any_active {
            "cancelled"
        } else if any_failed && all_terminal_or_blocked {
            "failed"
        } else {
            "running"
        }
    }

    /// Validates that `worker_id` holds the lease of `job_id` for `attempt`.
    fn check_lease(&self, worker_id: &str, job_id: &str, attempt: u32) -> SchedulerResult<()> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| SchedulerError::NotFound(format!("no job {job_id}")))?;
        let current_attempt = job.attempt_log.len() as u32;
        if job.state == JobState::Cancelled
            && job.worker.as_deref() == Some(worker_id)
            && current_attempt == attempt
        {
            return Err(SchedulerError::Cancelled(job_id.to_string()));
        }
        if job.worker.as_deref() != Some(worker_id)
            || current_attempt != attempt
            || !job.state.is_leased()
        {
            return Err(SchedulerError::LeaseLost {
                job: job_id.to_string(),
                detail: format!(
                    "job is {} (attempt {current_attempt}, worker {})",
                    job.state.label(),
                    job.worker.as_deref().unwrap_or("-")
                ),
            });
        }
        Ok(())
    }

    /// Ends the current attempt with `outcome`.
    fn close_attempt(&mut self, job_id: &str, outcome: &str, error: Option<String>) {
        if let Some(job) = self.jobs.get_mut(job_id)
            && let Some(attempt) = job.attempt_log.last_mut()
            && attempt.ended_ms.is_none()
        {
            attempt.ended_ms = Some(now_ms());
            attempt.outcome = outcome.to_string();
            attempt.error = error;
        }
    }
}

impl Scheduler {
    /// Loads every record from `store` and resumes: leased jobs get a fresh deadline (their workers have one
    /// lease TTL to reconnect), blocked jobs whose dependencies succeeded become ready.
    pub fn open(store: Arc<dyn Store>, config: SchedulerConfig) -> SchedulerResult<Arc<Scheduler>> {
        let mut state = State::default();
        for experiment in store.experiments()? {
            state.experiments.insert(experiment.id.clone(), experiment);
        }
        for worker in store.workers()? {
            state.workers.insert(
                worker.id.clone(),
                LiveWorker {
                    record: worker,
                    leases: HashSet::new(),
                    used: Resources::default(),
                },
            );
        }
        let now = now_ms();
        state.jobs.reserve(store.job_count());
        store.scan_jobs(&mut |mut job: JobRecord| {
            state.next_submit_seq = state.next_submit_seq.max(job.submit_seq + 1);
            for dep in &job.deps {
                state
                    .dependents
                    .entry(dep.clone())
                    .or_default()
                    .push(job.id.clone());
            }
            match job.state {
                JobState::Ready => {
                    state
                        .ready
                        .entry(job.team.clone())
                        .or_default()
                        .insert(ready_key(&job));
                }
                JobState::Leased | JobState::Running => {
                    job.lease_deadline_ms = job.lease_deadline_ms.max(now + config.lease_ttl_ms);
                    state.leased.insert(job.id.clone());
                    *state.running_by_team.entry(job.team.clone()).or_default() += 1;
                    if let Some(worker) = job.worker.as_ref().and_then(|w| state.workers.get_mut(w))
                    {
                        worker.leases.insert(job.id.clone());
                        worker.used = worker.used.plus(&job.resources);
                    }
                }
                _ => {}
            }
            state.jobs.insert(job.id.clone(), job);
        })?;
        let blocked: Vec<String> = state
            .jobs
            .values()
            .filter(|j| j.state == JobState::Blocked)
            .map(|j| j.id.clone())
            .collect();
        for id in blocked {
            state.refresh_readiness(&id);
        }
        for id in std::mem::take(&mut state.dirty_jobs) {
            store.put_job(&state.jobs[&id])?;
        }
        state.events.clear();
        let (events, _) = broadcast::channel(4096);
        Ok(Arc::new(Scheduler {
            store,
            config,
            state: Mutex::new(state),
            ready_notify: Notify::new(),
            events,
        }))
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes every job changed under the lock and the audit entries, then publishes events.
    fn persist(&self, state: &mut State) -> SchedulerResult<()> {
        let mut dirty = std::mem::take(&mut state.dirty_jobs);
        dirty.sort();
        dirty.dedup();
        for id in dirty {
            if let Some(job) = state.jobs.get(&id) {
                self.store.put_job(job)?;
            }
        }
        for entry in std::mem::take(&mut state.audit) {
            self.store.append_audit(&entry)?;
        }
        for event in std::mem::take(&mut state.events) {
            let _ = self.events.send(event);
        }
        if std::mem::take(&mut state.became_ready) {
            self.ready_notify.notify_waiters();
        }
        Ok(())
    }

    async fn durable(&self) -> SchedulerResult<()> {
        self.store
            .commit()
            .await
            .map_err(|e| SchedulerError::Store(crate::store::StoreError::Commit(e)))
    }

    /// Queues an experiment. Jobs whose id already succeeded (in any experiment) are served from the cache;
    /// jobs already queued are shared; failed or cancelled ones are queued again.
    pub async fn submit(&self, submission: Submission) -> SchedulerResult<SubmitOutcome> {
        validate_graph(&submission.jobs, |id| {
            self.lock().jobs.get(id).map(|j| j.state)
        })?;
        let manifest_sha256 = sha256_hex(&submission.manifest);
        let mut inputs = Vec::new();
        for (name, bytes) in &submission.inputs {
            let sha256 = self.store.blobs().put_bytes(bytes)?;
            inputs.push(InputRef {
                name: name.clone(),
                sha256,
                size: bytes.len() as u64,
            });
        }
        let experiment_id = format!("e{:06}", self.store.next_id()?);
        let actor = format!("team:{}/{}", submission.team, submission.submitter);
        let now = now_ms();
        let mut cached = Vec::new();
        let ranks = order::critical_path_ranks(&submission.jobs);
        {
            let mut state = self.lock();
            // This submission's new jobs take seqs after every earlier one, in critical-path order.
            let seq_base = state.next_submit_seq;
            state.next_submit_seq += submission.jobs.len() as u64;
            for planned in &submission.jobs {
                match state.jobs.get(&planned.id).map(|j| j.state) {
                    Some(JobState::Succeeded) => {
                        cached.push(planned.id.clone());
                        let job = state.jobs.get_mut(&planned.id).expect("present");
                        job.experiments.push(experiment_id.clone());
                        state.dirty_jobs.push(planned.id.clone());
                    }
                    Some(JobState::Failed | JobState::Cancelled) => {
                        let job = state.jobs.get_mut(&planned.id).expect("present");
                        job.experiments.push(experiment_id.clone());
                        job.attempts = 0;
                        job.last_error = None;
                        job.state = JobState::Blocked;
                        job.finished_ms = None;
                        state.dirty_jobs.push(planned.id.clone());
                    }
                    Some(_) => {
                        let job = state.jobs.get_mut(&planned.id).expect("present");
                        job.experiments.push(experiment_id.clone());
                        state.dirty_jobs.push(planned.id.clone());
                    }
                    None => {
                        self.store.put_job_config(&planned.id, &planned.config)?;
                        let submit_seq = seq_base + ranks[&planned.id];
                        for dep in &planned.deps {
                            state
                                .dependents
                                .entry(dep.clone())
                                .or_default()
                                .push(planned.id.clone());
                        }
                        state.jobs.insert(
                            planned.id.clone(),
                            JobRecord {
                                id: planned.id.clone(),
                                kind: planned.kind.clone(),
                                name: planned.name.clone(),
                                deps: planned.deps.clone(),
                                resources: planned.resources,
                                inputs: planned.inputs.clone(),
                                team: submission.team.clone(),
                                priority: submission.priority,
                                submit_seq,
                                state: JobState::Blocked,
                                attempts: 0,
                                attempt_log: Vec::new(),
                                last_error: None,
                                worker: None,
                                lease_deadline_ms: 0,
                                not_before_ms: 0,
                                checkpoint: None,
                                experiments: vec![experiment_id.clone()],
                                created_ms: now,
                                finished_ms: None,
                                replay_of: None,
                            },
                        );
                        state.dirty_jobs.push(planned.id.clone());
                    }
                }
            }
            let record = ExperimentRecord {
                id: experiment_id.clone(),
                name: submission.name.clone(),
                team: submission.team.clone(),
                submitter: submission.submitter.clone(),
                created_ms: now,
                manifest_sha256: manifest_sha256.clone(),
                manifest_format: submission.manifest_format.clone(),
                manifest_name: submission.manifest_name.clone(),
                inputs,
                job_ids: submission.jobs.iter().map(|j| j.id.clone()).collect(),
                cached_jobs: cached.clone(),
                priority: submission.priority,
                cancelled: false,
            };
            self.store
                .put_manifest(&experiment_id, &submission.manifest)?;
            self.store.put_experiment(&record)?;
            state.experiments.insert(experiment_id.clone(), record);
            for planned in &submission.jobs {
                state.refresh_readiness(&planned.id);
            }
            state.audit(
                &actor,
                "submit",
                Some(&experiment_id),
                None,
                format!(
                    "{} jobs ({} cached), manifest {} sha256 {manifest_sha256}",
                    submission.jobs.len(),
                    cached.len(),
                    submission.manifest_name
                ),
            );
            self.persist(&mut state)?;
        }
        self.durable().await?;
        tracing::info!(experiment = %experiment_id, jobs = submission.jobs.len(), cached = cached.len(), "experiment submitted");
        Ok(SubmitOutcome {
            experiment_id,
            jobs: submission.jobs.len(),
            cached: cached.len(),
        })
    }

    /// Registers a worker (or refreshes a known one when `known_id` names it).
    pub async fn register_worker(
        &self,
        known_id: Option<&str>,
        mut record: WorkerRecord,
    ) -> SchedulerResult<String> {
        let now = now_ms();
        {
            let mut state = self.lock();
            let id = match known_id.filter(|id| state.workers.contains_key(*id)) {
                Some(id) => id.to_string(),
                None => format!("w{}-{}", self.store.next_id()?, record.name),
            };
            record.id = id.clone();
            record.last_seen_ms = now;
            if let Some(live) = state.workers.get_mut(&id) {
                record.registered_ms = live.record.registered_ms;
                live.record = record.clone();
            } else {
                record.registered_ms = now;
                state.workers.insert(
                    id.clone(),
                    LiveWorker {
                        record: record.clone(),
                        leases: HashSet::new(),
                        used: Resources::default(),
                    },
                );
            }
            self.store.put_worker(&record)?;
            state.audit(
                &format!("worker:{}", record.name),
                "register",
                None,
                None,
                format!("worker {id}"),
            );
            self.persist(&mut state)?;
        }
        self.durable().await?;
        Ok(record.id)
    }

    /// Long-polls for a job for `worker_id`, waiting at most `wait` (capped by the configuration).
    pub async fn lease(
        &self,
        worker_id: &str,
        wait: Duration,
    ) -> SchedulerResult<Option<LeaseGrant>> {
        let wait = wait.min(Duration::from_millis(self.config.max_lease_wait_ms));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.ready_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(grant) = self.try_lease(worker_id)? {
                self.durable().await?;
                return Ok(Some(grant));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    fn try_lease(&self, worker_id: &str) -> SchedulerResult<Option<LeaseGrant>> {
        let now = now_ms();
        let (job, experiment_id) = {
            let mut state = self.lock();
            let state = &mut *state;
            let worker = state
                .workers
                .get_mut(worker_id)
                .ok_or_else(|| SchedulerError::UnknownWorker(worker_id.to_string()))?;
            worker.record.last_seen_ms = now;
            let free = worker.record.resources.minus(&worker.used);
            let kinds = &worker.record.kinds;
            let mut candidates = Vec::new();
            let mut ids = Vec::new();
            for queue in state.ready.values() {
                let mut taken = 0;
                for key in queue.iter() {
                    let job = &state.jobs[&key.2];
                    if job.not_before_ms > now || !kinds.contains(&job.kind) {
                        continue;
                    }
                    candidates.push(Candidate {
                        team: job.team.clone(),
                        priority: job.priority,
                        submit_seq: job.submit_seq,
                        request: job.resources,
                    });
                    ids.push(job.id.clone());
                    taken += 1;
                    if taken == CANDIDATES_PER_TEAM {
                        break;
                    }
                }
            }
            let Some(index) = placement::choose(&free, &candidates, &state.running_by_team) else {
                return Ok(None);
            };
            let job_id = ids.swap_remove(index);
            let worker_name = worker.record.name.clone();
            {
                let job = state.jobs.get_mut(&job_id).expect("ready job exists");
                let number = job.attempt_log.len() as u32 + 1;
                job.attempts += 1;
                job.worker = Some(worker_id.to_string());
                job.lease_deadline_ms = now + self.config.lease_ttl_ms;
                job.attempt_log.push(AttemptRecord {
                    number,
                    worker: worker_id.to_string(),
                    started_ms: now,
                    ended_ms: None,
                    outcome: "running".into(),
                    error: None,
                });
            }
            let request = state.jobs[&job_id].resources;
            if let Some(worker) = state.workers.get_mut(worker_id) {
                worker.leases.insert(job_id.clone());
                worker.used = worker.used.plus(&request);
            }
            state.set_state(&job_id, JobState::Leased);
            let job = state.jobs[&job_id].clone();
            state.audit(
                &format!("worker:{worker_name}"),
                "lease",
                None,
                Some(&job_id),
                format!("attempt {} to {worker_id}", job.attempt_log.len()),
            );
            self.persist(state)?;
            let experiment_id = job.experiments.first().cloned().unwrap_or_default();
            (job, experiment_id)
        };
        let config = self.store.job_config(&job.id)?.unwrap_or_default();
        let mut parents = Vec::new();
        for dep in &job.deps {
            parents.extend(
                self.store
                    .artifacts(dep)?
                    .into_iter()
                    .filter(|a| a.role == "output"),
            );
        }
        tracing::debug!(job = %job.id, worker = %worker_id, "leased");
        Ok(Some(LeaseGrant {
            attempt: job.attempt_log.len() as u32,
            deadline_ms: job.lease_deadline_ms,
            // A replay always starts from scratch.
            checkpoint: job.checkpoint.clone().filter(|_| job.replay_of.is_none()),
            config,
            parents,
            experiment_id,
            job,
        }))
    }

    /// Renews the leases a worker reports and tells it which jobs to stop (cancelled or lease lost).
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        reports: &[ProgressReport],
    ) -> SchedulerResult<HeartbeatOutcome> {
        let now = now_ms();
        let mut outcome = HeartbeatOutcome::default();
        let mut changed = false;
        {
            let mut state = self.lock();
            let worker = state
                .workers
                .get_mut(worker_id)
                .ok_or_else(|| SchedulerError::UnknownWorker(worker_id.to_string()))?;
            worker.record.last_seen_ms = now;
            let deadline = now + self.config.lease_ttl_ms;
            outcome.lease_deadline_ms = deadline;
            for report in reports {
                if state
                    .check_lease(worker_id, &report.job_id, report.attempt)
                    .is_err()
                {
                    outcome.cancel.push(report.job_id.clone());
                    continue;
                }
                let job = state.jobs.get_mut(&report.job_id).expect("checked");
                job.lease_deadline_ms = deadline;
                if job.state == JobState::Leased {
                    state.set_state(&report.job_id, JobState::Running);
                    changed = true;
                }
                let progress = state.progress.entry(report.job_id.clone()).or_default();
                if progress.step != report.step || progress.total != report.total {
                    progress.step = report.step;
                    progress.total = report.total;
                    state.event(
                        &report.job_id,
                        format!("step {}/{}", report.step, report.total),
                    );
                }
            }
            self.persist(&mut state)?;
        }
        if changed {
            self.durable().await?;
        }
        Ok(outcome)
    }

    /// Stores metric batches (a resent `(job, seq)` is counted as a duplicate and not stored again).
    pub async fn ingest_metrics(
        &self,
        worker_id: &str,
        batches: Vec<MetricBatchIn>,
    ) -> SchedulerResult<MetricAckCounts> {
        let mut counts = MetricAckCounts::default();
        {
            let state = self.lock();
            if !state.workers.contains_key(worker_id) {
                return Err(SchedulerError::UnknownWorker(worker_id.to_string()));
            }
            for batch in &batches {
                let job = state
                    .jobs
                    .get(&batch.job_id)
                    .ok_or_else(|| SchedulerError::NotFound(format!("no job {}", batch.job_id)))?;
                // The current attempt's worker may still flush metrics after completing.
                let attempt = job.attempt_log.len() as u32;
                if job.state == JobState::Cancelled
                    && job.worker.as_deref() == Some(worker_id)
                    && attempt == batch.attempt
                {
                    return Err(SchedulerError::Cancelled(batch.job_id.clone()));
                }
                if job.worker.as_deref() != Some(worker_id)
                    || attempt != batch.attempt
                    || !(job.state.is_leased() || job.state == JobState::Succeeded)
                {
                    return Err(SchedulerError::LeaseLost {
                        job: batch.job_id.clone(),
                        detail: format!(
                            "metrics for attempt {} but the job is {} (attempt {attempt})",
                            batch.attempt,
                            job.state.label()
                        ),
                    });
                }
            }
        }
        for batch in &batches {
            if self
                .store
                .insert_metric_batch(&batch.job_id, batch.seq, &batch.encoded)?
            {
                counts.batches += 1;
                counts.points += batch.points;
            } else {
                counts.duplicates += 1;
            }
        }
        {
            let mut state = self.lock();
            for batch in &batches {
                if let Some((name, step, value)) = &batch.last {
                    let progress = state.progress.entry(batch.job_id.clone()).or_default();
                    progress.last_metric = name.clone();
                    progress.last_value = *value;
                    if progress.total == 0 {
                        progress.step = progress.step.max(*step);
                    }
                    state.event(&batch.job_id, format!("{name}={value:.4} at step {step}"));
                }
            }
            for event in std::mem::take(&mut state.events) {
                let _ = self.events.send(event);
            }
        }
        self.durable().await?;
        Ok(counts)
    }

    /// Checks that an upload for `job_id` comes from its lease holder (before accepting bytes).
    pub fn check_upload(&self, worker_id: &str, job_id: &str, attempt: u32) -> SchedulerResult<()> {
        self.lock().check_lease(worker_id, job_id, attempt)
    }

    /// Records a verified artifact; a checkpoint becomes the job's resume point.
    pub async fn record_artifact(
        &self,
        worker_id: &str,
        record: ArtifactRecord,
    ) -> SchedulerResult<()> {
        {
            let mut state = self.lock();
            state.check_lease(worker_id, &record.job_id, record.attempt)?;
            self.store.put_artifact(&record)?;
            let is_replay = state.jobs[&record.job_id].replay_of.is_some();
            if record.role == "checkpoint" && !is_replay {
                let job = state.jobs.get_mut(&record.job_id).expect("checked");
                job.checkpoint = Some(CheckpointRef {
                    sha256: record.sha256.clone(),
                    metric_seq: record.metric_seq,
                });
                state.dirty_jobs.push(record.job_id.clone());
            }
            state.audit(
                &format!("worker:{worker_id}"),
                "artifact",
                None,
                Some(&record.job_id),
                format!(
                    "{} {} sha256 {} ({} bytes)",
                    record.role, record.name, record.sha256, record.size
                ),
            );
            self.persist(&mut state)?;
        }
        self.durable().await
    }

    /// The worker finished the job: it succeeds and its dependents may become ready.
    pub async fn complete(
        &self,
        worker_id: &str,
        job_id: &str,
        attempt: u32,
    ) -> SchedulerResult<()> {
        {
            let mut state = self.lock();
            state.check_lease(worker_id, job_id, attempt)?;
            state.close_attempt(job_id, "succeeded", None);
            state.set_state(job_id, JobState::Succeeded);
            state.audit(
                &format!("worker:{worker_id}"),
                "complete",
                None,
                Some(job_id),
                format!("attempt {attempt}"),
            );
            for dependent in state.dependents.get(job_id).cloned().unwrap_or_default() {
                state.refresh_readiness(&dependent);
            }
            self.persist(&mut state)?;
        }
        self.durable().await
    }

    /// The worker failed the job: retried with back-off unless `permanent` or out of attempts.
    pub async fn fail(
        &self,
        worker_id: &str,
        job_id: &str,
        attempt: u32,
        reason: &str,
        permanent: bool,
    ) -> SchedulerResult<bool> {
        let will_retry;
        {
            let mut state = self.lock();
            state.check_lease(worker_id, job_id, attempt)?;
            state.close_attempt(job_id, "failed", Some(reason.to_string()));
            will_retry = self.requeue_or_fail(&mut state, job_id, reason, permanent);
            state.audit(
                &format!("worker:{worker_id}"),
                "fail",
                None,
                Some(job_id),
                format!("attempt {attempt}: {reason}"),
            );
            self.persist(&mut state)?;
        }
        self.durable().await?;
        Ok(will_retry)
    }

    /// The worker hands the lease back (shutting down after a checkpoint): not counted as an attempt.
    pub async fn release(
        &self,
        worker_id: &str,
        job_id: &str,
        attempt: u32,
        reason: &str,
    ) -> SchedulerResult<()> {
        {
            let mut state = self.lock();
            state.check_lease(worker_id, job_id, attempt)?;
            state.close_attempt(job_id, "released", Some(reason.to_string()));
            let job = state.jobs.get_mut(job_id).expect("checked");
            job.attempts = job.attempts.saturating_sub(1);
            job.not_before_ms = 0;
            state.set_state(job_id, JobState::Ready);
            state.audit(
                &format!("worker:{worker_id}"),
                "release",
                None,
                Some(job_id),
                reason.to_string(),
            );
            self.persist(&mut state)?;
        }
        self.durable().await
    }

    fn requeue_or_fail(
        &self,
        state: &mut State,
        job_id: &str,
        reason: &str,
        permanent: bool,
    ) -> bool {
        let job = state.jobs.get_mut(job_id).expect("job exists");
        job.last_error = Some(reason.to_string());
        if permanent || job.attempts >= self.config.max_attempts {
            state.set_state(job_id, JobState::Failed);
            false
        } else {
            let exponent = job.attempts.saturating_sub(1).min(20);
            let backoff = (self.config.backoff_base_ms << exponent).min(self.config.backoff_max_ms);
            job.not_before_ms = now_ms() + backoff;
            state.set_state(job_id, JobState::Ready);
            true
        }
    }

    /// Expires leases past their deadline (requeue with back-off, or fail after the last attempt) and wakes
    /// lease waiters when a back-off has elapsed. Returns how many leases expired.
    pub async fn tick(&self) -> SchedulerResult<usize> {
        let now = now_ms();
        let expired: Vec<String>;
        {
            let mut state = self.lock();
            expired = state
                .leased
                .iter()
                .filter(|id| state.jobs[*id].lease_deadline_ms < now)
                .cloned()
                .collect();
            for job_id in &expired {
                let worker = state.jobs[job_id].worker.clone().unwrap_or_default();
                let reason = format!("lease expired on worker {worker} (no heartbeat)");
                state.close_attempt(job_id, "expired", Some(reason.clone()));
                self.requeue_or_fail(&mut state, job_id, &reason, false);
                state.audit("coordinator", "expire", None, Some(job_id), reason);
            }
            let backoff_elapsed = state.ready.values().flatten().any(|key| {
                let job = &state.jobs[&key.2];
                job.not_before_ms != 0 && job.not_before_ms <= now
            });
            if backoff_elapsed {
                let due: Vec<String> = state
                    .ready
                    .values()
                    .flatten()
                    .filter(|key| {
                        let job = &state.jobs[&key.2];
                        job.not_before_ms != 0 && job.not_before_ms <= now
                    })
                    .map(|key| key.2.clone())
                    .collect();
                for id in due {
                    if let Some(job) = state.jobs.get_mut(&id) {
                        job.not_before_ms = 0;
                    }
                }
                state.became_ready = true;
            }
            self.persist(&mut state)?;
        }
        if !expired.is_empty() {
            tracing::info!(expired = expired.len(), "leases expired");
            self.durable().await?;
        }
        Ok(expired.len())
    }

    /// Runs `tick` forever at the configured interval.
    pub async fn run_ticker(self: Arc<Self>) {
        let mut interval = tokio::time::interval(Duration::from_millis(self.config.tick_ms));
        loop {
            interval.tick().await;
            if let Err(err) = self.tick().await {
                tracing::error!(error = %err, "scheduler tick failed");
            }
        }
    }

    fn experiment_for<'s>(
        state: &'s State,
        scope: TeamScope<'_>,
        id: &str,
    ) -> SchedulerResult<&'s ExperimentRecord> {
        let experiment = state
            .experiments
            .get(id)
            .ok_or_else(|| SchedulerError::NotFound(format!("no experiment {id}")))?;
        if let Some(team) = scope
            && experiment.team != team
        {
            return Err(SchedulerError::PermissionDenied(format!(
                "experiment {id} belongs to another team than {team}"
            )));
        }
        Ok(experiment)
    }

    /// Cancels an experiment: its jobs stop unless another live experiment also needs them. A running job's
    /// worker learns it on its next heartbeat.
    pub async fn cancel(
        &self,
        scope: TeamScope<'_>,
        actor: &str,
        experiment_id: &str,
    ) -> SchedulerResult<usize> {
        let mut cancelled = 0;
        {
            let mut state = self.lock();
            Self::experiment_for(&state, scope, experiment_id)?;
            let experiment = state.experiments.get_mut(experiment_id).expect("checked");
            experiment.cancelled = true;
            let experiment = experiment.clone();
            self.store.put_experiment(&experiment)?;
            for job_id in &experiment.job_ids {
                let Some(job) = state.jobs.get(job_id) else {
                    continue;
                };
                if job.state.is_terminal() {
                    continue;
                }
                let needed_elsewhere = job.experiments.iter().any(|e| {
                    e != experiment_id && state.experiments.get(e).is_some_and(|x| !x.cancelled)
                });
                if needed_elsewhere {
                    continue;
                }
                if job.state.is_leased() {
                    state.close_attempt(job_id, "cancelled", None);
                }
                state.set_state(job_id, JobState::Cancelled);
                cancelled += 1;
            }
            state.audit(
                actor,
                "cancel",
                Some(experiment_id),
                None,
                format!("{cancelled} jobs cancelled"),
            );
            self.persist(&mut state)?;
        }
        self.durable().await?;
        Ok(cancelled)
    }

    /// Queues an experiment's failed and cancelled jobs again with fresh attempt counts (a job resumes from
    /// its last checkpoint).
    pub async fn retry(
        &self,
        scope: TeamScope<'_>,
        actor: &str,
        experiment_id: &str,
    ) -> SchedulerResult<usize> {
        let mut requeued = 0;
        {
            let mut state = self.lock();
            Self::experiment_for(&state, scope, experiment_id)?;
            let experiment = state.experiments.get_mut(experiment_id).expect("checked");
            experiment.cancelled = false;
            let experiment = experiment.clone();
            self.store.put_experiment(&experiment)?;
            for job_id in &experiment.job_ids {
                let Some(job) = state.jobs.get_mut(job_id) else {
                    continue;
                };
                if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
                    continue;
                }
                job.attempts = 0;
                job.not_before_ms = 0;
                job.finished_ms = None;
                state.set_state(job_id, JobState::Blocked);
                requeued += 1;
            }
            // Dependencies first: a job becomes ready only when everything before it succeeded.
            for job_id in &experiment.job_ids {
                state.refresh_readiness(job_id);
            }
            state.audit(
                actor,
                "retry",
                Some(experiment_id),
                None,
                format!("{requeued} jobs requeued"),
            );
            self.persist(&mut state)?;
        }
        self.durable().await?;
        Ok(requeued)
    }

    /// Queues a replay of `job_id`, a succeeded job of `experiment_id`: a new job record (id
    /// `replay-<n>-<first 16 hex digits of the job id>`)
    /// with the same kind, config, inputs and dependencies, which is never served from the cache, never resumed
    /// from a checkpoint and stores its outputs and metrics under its own id. Returns the replay's id.
    pub async fn replay(
        &self,
        scope: TeamScope<'_>,
        actor: &str,
        experiment_id: &str,
        job_id: &str,
    ) -> SchedulerResult<String> {
        let replay_id;
        {
            let mut state = self.lock();
            let experiment = Self::experiment_for(&state, scope, experiment_id)?;
            if !experiment.job_ids.iter().any(|j| j == job_id) {
                return Err(SchedulerError::NotFound(format!(
                    "experiment {experiment_id} has no job {job_id}"
                )));
            }
            let original =
                state.jobs.get(job_id).cloned().ok_or_else(|| {
                    SchedulerError::NotFound(format!("no job {job_id} in the store"))
                })?;
            if original.state != JobState::Succeeded {
                return Err(SchedulerError::InvalidArgument(format!(
                    "job {job_id} ({}) is {}: only a succeeded job can be replayed",
                    original.name,
                    original.state.label()
                )));
            }
            let config = self.store.job_config(job_id)?.ok_or_else(|| {
                SchedulerError::NotFound(format!("job {job_id} has no stored config"))
            })?;
            replay_id = format!(
                "replay-{:06}-{}",
                self.store.next_id()?,
                &job_id[..job_id.len().min(16)]
            );
            self.store.put_job_config(&replay_id, &config)?;
            let submit_seq = state.next_submit_seq;
            state.next_submit_seq += 1;
            for dep in &original.deps {
                state
                    .dependents
                    .entry(dep.clone())
                    .or_default()
                    .push(replay_id.clone());
            }
            let record = JobRecord {
                id: replay_id.clone(),
                kind: original.kind.clone(),
                name: format!("{} (replay)", original.name),
                deps: original.deps.clone(),
                resources: original.resources,
                inputs: original.inputs.clone(),
                team: original.team.clone(),
                priority: original.priority,
                submit_seq,
                state: JobState::Blocked,
                attempts: 0,
                attempt_log: Vec::new(),
                last_error: None,
                worker: None,
                lease_deadline_ms: 0,
                not_before_ms: 0,
                checkpoint: None,
                experiments: vec![experiment_id.to_string()],
                created_ms: now_ms(),
                finished_ms: None,
                replay_of: Some(job_id.to_string()),
            };
            state.jobs.insert(replay_id.clone(), record);
            state.dirty_jobs.push(replay_id.clone());
            state.refresh_readiness(&replay_id);
            state.audit(
                actor,
                "replay",
                Some(experiment_id),
                Some(job_id),
                format!("replay {replay_id} of {} queued", original.name),
            );
            self.persist(&mut state)?;
        }
        self.durable().await?;
        tracing::info!(experiment = %experiment_id, job = %job_id, replay = %replay_id, "replay queued");
        Ok(replay_id)
    }

    /// A replay run and the job it replays, if `scope` may see its experiment.
    pub fn replay_view(
        &self,
        scope: TeamScope<'_>,
        replay_id: &str,
    ) -> SchedulerResult<(JobView, JobRecord)> {
        let state = self.lock();
        let not_found = || SchedulerError::NotFound(format!("no replay {replay_id}"));
        let replay = state.jobs.get(replay_id).ok_or_else(not_found)?;
        let original_id = replay.replay_of.as_ref().ok_or_else(not_found)?;
        let experiment_id = replay.experiments.first().ok_or_else(not_found)?;
        Self::experiment_for(&state, scope, experiment_id)?;
        let original = state.jobs.get(original_id).ok_or_else(not_found)?.clone();
        Ok((
            JobView {
                job: replay.clone(),
                cached: false,
                progress: state.progress.get(replay_id).cloned().unwrap_or_default(),
            },
            original,
        ))
    }

    pub fn experiment(
        &self,
        scope: TeamScope<'_>,
        experiment_id: &str,
    ) -> SchedulerResult<ExperimentView> {
        let state = self.lock();
        let record = Self::experiment_for(&state, scope, experiment_id)?.clone();
        Ok(Self::view(&state, record))
    }

    fn view(state: &State, record: ExperimentRecord) -> ExperimentView {
        let jobs = record
            .job_ids
            .iter()
            .filter_map(|id| state.jobs.get(id))
            .map(|job| JobView {
                job: job.clone(),
                cached: record.cached_jobs.contains(&job.id),
                progress: state.progress.get(&job.id).cloned().unwrap_or_default(),
            })
            .collect();
        ExperimentView {
            state: state.experiment_state(&record),
            record,
            jobs,
        }
    }

    /// Experiments visible to `scope`, oldest first.
    pub fn experiments(
        &self,
        scope: TeamScope<'_>,
    ) -> Vec<(ExperimentRecord, &'static str, usize)> {
        let state = self.lock();
        let mut out: Vec<_> = state
            .experiments
            .values()
            .filter(|e| scope.is_none_or(|team| e.team == team))
            .map(|e| {
                let done = e
                    .job_ids
                    .iter()
                    .filter(|id| {
                        state
                            .jobs
                            .get(*id)
                            .is_some_and(|j| j.state == JobState::Succeeded)
                    })
                    .count();
                (e.clone(), state.experiment_state(e), done)
            })
            .collect();
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        out
    }

    /// Whether `job_id` is in an experiment visible to `scope`.
    pub fn can_see_job(&self, scope: TeamScope<'_>, job_id: &str) -> bool {
        let state = self.lock();
        let Some(job) = state.jobs.get(job_id) else {
            return false;
        };
        scope.is_none_or(|team| {
            job.experiments
                .iter()
                .any(|e| state.experiments.get(e).is_some_and(|x| x.team == team))
        })
    }

    pub fn workers(&self) -> Vec<WorkerView> {
        let state = self.lock();
        let now = now_ms();
        let alive_window = self.config.heartbeat_interval_ms * 3 + self.config.max_lease_wait_ms;
        let mut out: Vec<_> = state
            .workers
            .values()
            .map(|w| WorkerView {
                record: w.record.clone(),
                alive: now.saturating_sub(w.record.last_seen_ms) <= alive_window,
                jobs: {
                    let mut jobs: Vec<_> = w.leases.iter().cloned().collect();
                    jobs.sort();
                    jobs
                },
            })
            .collect();
        out.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        out
    }

    pub fn worker(&self, worker_id: &str) -> Option<WorkerRecord> {
        self.lock().workers.get(worker_id).map(|w| w.record.clone())
    }

    /// Audit entries of one experiment (its own and those of its jobs and of their replays).
    pub fn audit_log(&self, experiment: &ExperimentRecord) -> SchedulerResult<Vec<AuditEntry>> {
        let mut jobs: HashSet<String> = experiment.job_ids.iter().cloned().collect();
        {
            let state = self.lock();
            jobs.extend(
                state
                    .jobs
                    .values()
                    .filter(|j| j.replay_of.is_some() && j.experiments.contains(&experiment.id))
                    .map(|j| j.id.clone()),
            );
        }
        Ok(self
            .store
            .audit_entries()?
            .into_iter()
            .filter(|e| {
                e.experiment_id.as_deref() == Some(experiment.id.as_str())
                    || e.job_id.as_ref().is_some_and(|j| jobs.contains(j))
            })
            .collect())
    }
}

/// Checks a planned graph: unique non-empty ids and kinds, dependencies present in the graph (or already
/// succeeded), no cycles. Errors name the job and field.
pub fn validate_graph(
    jobs: &[PlannedJob],
    existing: impl Fn(&str) -> Option<JobState>,
) -> SchedulerResult<()> {
    let mut index = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        if job.id.is_empty() {
            return Err(SchedulerError::InvalidArgument(format!(
                "jobs[{i}].id: must not be empty"
            )));
        }
        if job.kind.is_empty() {
            return Err(SchedulerError::InvalidArgument(format!(
                "jobs[{i}] ({}).kind: must not be empty",
                job.name
            )));
        }
        if index.insert(job.id.as_str(), i).is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "jobs[{i}].id: duplicate job id {}",
                job.id
            )));
        }
    }
    for (i, job) in jobs.iter().enumerate() {
        for (d, dep) in job.deps.iter().enumerate() {
            if !index.contains_key(dep.as_str()) && existing(dep) != Some(JobState::Succeeded) {
                return Err(SchedulerError::InvalidArgument(format!(
                    "jobs[{i}] ({}).deps[{d}]: unknown job {dep} (must be a job of this experiment)",
                    job.name
                )));
            }
        }
    }
    // Kahn's algorithm over the in-graph edges.
    let mut indegree = vec![0usize; jobs.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    for (i, job) in jobs.iter().enumerate() {
        for dep in &job.deps {
            if let Some(&d) = index.get(dep.as_str()) {
                indegree[i] += 1;
                children[d].push(i);
            }
        }
    }
    let mut queue: Vec<usize> = (0..jobs.len()).filter(|&i| indegree[i] == 0).collect();
    let mut seen = 0;
    while let Some(i) = queue.pop() {
        seen += 1;
        for &c in &children[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                queue.push(c);
            }
        }
    }
    if seen != jobs.len() {
        let stuck = (0..jobs.len())
            .find(|&i| indegree[i] > 0)
            .expect("a job in the cycle");
        return Err(SchedulerError::InvalidArgument(format!(
            "jobs[{stuck}] ({}).deps: dependency cycle",
            jobs[stuck].name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
