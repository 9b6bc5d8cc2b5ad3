//! Workers and their leases: registration, the long-polled lease (placement over each team's ready queue) and
//! heartbeats that renew leases and carry progress.

use std::time::Duration;

use super::Scheduler;
use super::api::{HeartbeatOutcome, LeaseGrant, ProgressReport};
use super::error::{SchedulerError, SchedulerResult};
use super::placement::{self, Candidate};
use super::state::LiveWorker;
use crate::store::{AttemptRecord, JobRecord, JobState, WorkerRecord, now_ms};

/// How many ready jobs per team (in priority order, skipping back-offs and kinds the worker lacks) placement
/// looks at for one lease; a job deeper in a queue that alone would fit waits for the ones before it.
const CANDIDATES_PER_TEAM: usize = 16;

impl Scheduler {
    /// Registers a worker (or refreshes a known one when `known_id` names it).
    pub async fn register_worker(
        &self,
        known_id: Option<&str>,
        mut record: WorkerRecord,
    ) -> SchedulerResult<String> {
        let now = now_ms();
        self.transact(|state| {
            let id = match known_id.filter(|id| state.workers.contains_key(*id)) {
                Some(id) => id.to_string(),
                None => format!("w{}-{}", state.write().next_id()?, record.name),
            };
            record.id = id.clone();
            record.last_seen_ms = now;
            if let Some(live) = state.workers.get_mut(&id) {
                record.registered_ms = live.record.registered_ms;
                live.record = record.clone();
            } else {
                record.registered_ms = now;
                state
                    .workers
                    .insert(id.clone(), LiveWorker::idle(record.clone()));
            }
            state.write().put_worker(&record)?;
            state.audit(
                &format!("worker:{}", record.name),
                "register",
                None,
                None,
                format!("worker {id}"),
            );
            Ok(())
        })
        .await?;
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
            if let Some(job) = self.try_lease(worker_id).await? {
                return Ok(Some(self.grant(worker_id, job)?));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Leases the best-placed ready job that fits `worker_id`, if any; returns the leased job.
    async fn try_lease(&self, worker_id: &str) -> SchedulerResult<Option<JobRecord>> {
        let now = now_ms();
        self.transact(|state| {
            let state = &mut **state;
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
            Ok(Some(job))
        })
        .await
    }

    /// What the worker needs to run a job it leased: its config, checkpoint and its parents' outputs.
    fn grant(&self, worker_id: &str, job: JobRecord) -> SchedulerResult<LeaseGrant> {
        let experiment_id = job.experiments.first().cloned().unwrap_or_default();
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
        Ok(LeaseGrant {
            attempt: job.attempt_log.len() as u32,
            deadline_ms: job.lease_deadline_ms,
            // A replay always starts from scratch.
            checkpoint: job.checkpoint.clone().filter(|_| job.replay_of.is_none()),
            config,
            parents,
            experiment_id,
            job,
        })
    }

    /// Renews the leases a worker reports and tells it which jobs to stop (cancelled or lease lost).
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        reports: &[ProgressReport],
    ) -> SchedulerResult<HeartbeatOutcome> {
        let now = now_ms();
        self.transact(|state| {
            let mut outcome = HeartbeatOutcome::default();
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
            Ok(outcome)
        })
        .await
    }

    /// Checks that an upload for `job_id` comes from its lease holder (before accepting bytes).
    pub fn check_upload(&self, worker_id: &str, job_id: &str, attempt: u32) -> SchedulerResult<()> {
        self.read(|state| state.check_lease(worker_id, job_id, attempt))
    }
}
