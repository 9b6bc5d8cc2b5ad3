//! The in-memory state behind the scheduler's mutex and its invariants: `set_state` keeps the ready queues,
//! the lease set, team counts and worker usage in step with every job's state, and records which jobs,
//! audit entries and events the surrounding transaction must write and publish.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::api::{JobEvent, Progress, SchedulerConfig, TeamScope};
use super::error::{SchedulerError, SchedulerResult};
use crate::store::{
    AuditEntry, ExperimentRecord, JobRecord, JobState, Resources, Store, WorkerRecord, now_ms,
};

/// A ready job's place in its team's queue: higher priority first, then submission order.
pub(super) type ReadyKey = (i64, u64, String);

pub(super) fn ready_key(job: &JobRecord) -> ReadyKey {
    (-(job.priority as i64), job.submit_seq, job.id.clone())
}

/// A registered worker with the leases it holds and the resources they use.
pub(super) struct LiveWorker {
    pub(super) record: WorkerRecord,
    pub(super) leases: HashSet<String>,
    pub(super) used: Resources,
}

impl LiveWorker {
    pub(super) fn idle(record: WorkerRecord) -> LiveWorker {
        LiveWorker {
            record,
            leases: HashSet::new(),
            used: Resources::default(),
        }
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) experiments: HashMap<String, ExperimentRecord>,
    pub(super) jobs: HashMap<String, JobRecord>,
    pub(super) dependents: HashMap<String, Vec<String>>,
    pub(super) ready: HashMap<String, BTreeSet<ReadyKey>>,
    pub(super) leased: HashSet<String>,
    pub(super) workers: HashMap<String, LiveWorker>,
    pub(super) running_by_team: HashMap<String, u32>,
    pub(super) progress: HashMap<String, Progress>,
    pub(super) next_submit_seq: u64,
    /// Jobs changed since the last write-through.
    pub(super) dirty_jobs: Vec<String>,
    /// Audit entries not yet written.
    pub(super) audit: Vec<AuditEntry>,
    /// Events not yet broadcast.
    pub(super) events: Vec<JobEvent>,
    /// Whether a job became ready since lease waiters were last woken.
    pub(super) became_ready: bool,
    /// Counts the changes broadcast since this process started (in memory only).
    pub(super) change_seq: u64,
    /// The last change (by `change_seq`) of every job that changed since this process started: readers that
    /// keep a copy (the dashboard) ask for what changed after the change they last saw.
    pub(super) changed_at: HashMap<String, u64>,
}

impl State {
    /// Loads every record from `store` and resumes: leased jobs get a fresh deadline (their workers have one
    /// lease TTL to reconnect), blocked jobs whose dependencies succeeded become ready (and are written back).
    pub(super) fn recover(store: &dyn Store, config: &SchedulerConfig) -> SchedulerResult<State> {
        let mut state = State::default();
        for experiment in store.experiments()? {
            state.experiments.insert(experiment.id.clone(), experiment);
        }
        for worker in store.workers()? {
            state
                .workers
                .insert(worker.id.clone(), LiveWorker::idle(worker));
        }
        let now = now_ms();
        state.jobs.reserve(store.job_count());
        store.scan_jobs(&mut |mut job: JobRecord| {
            state.next_submit_seq = state.next_submit_seq.max(job.submit_seq + 1);
            state.add_dependents(&job.id, &job.deps);
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
        Ok(state)
    }

    /// Records that `job_id` depends on each of `deps`.
    pub(super) fn add_dependents(&mut self, job_id: &str, deps: &[String]) {
        for dep in deps {
            self.dependents
                .entry(dep.clone())
                .or_default()
                .push(job_id.to_string());
        }
    }

    pub(super) fn audit(
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

    pub(super) fn event(&mut self, job_id: &str, message: String) {
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
    pub(super) fn set_state(&mut self, job_id: &str, new: JobState) {
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
    pub(super) fn refresh_readiness(&mut self, job_id: &str) {
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

    pub(super) fn experiment_state(&self, experiment: &ExperimentRecord) -> &'static str {
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

    /// The experiment `id`, if `scope` may see it.
    pub(super) fn experiment_for(
        &self,
        scope: TeamScope<'_>,
        id: &str,
    ) -> SchedulerResult<&ExperimentRecord> {
        let experiment = self
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

    /// Validates that `worker_id` holds the lease of `job_id` for `attempt`.
    pub(super) fn check_lease(
        &self,
        worker_id: &str,
        job_id: &str,
        attempt: u32,
    ) -> SchedulerResult<()> {
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
    pub(super) fn close_attempt(&mut self, job_id: &str, outcome: &str, error: Option<String>) {
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
