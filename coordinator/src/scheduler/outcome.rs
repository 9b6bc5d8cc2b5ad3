//! What becomes of a leased job: metric batches and artifacts its worker sends, then complete, fail or release;
//! and the ticker that expires leases past their deadline and ends back-offs.

use std::sync::Arc;
use std::time::Duration;

use super::Scheduler;
use super::api::{MetricAckCounts, MetricBatchIn};
use super::error::{SchedulerError, SchedulerResult};
use super::state::State;
use crate::store::{ArtifactRecord, CheckpointRef, JobState, now_ms};

/// Checks that each batch comes from the current attempt's worker (which may still flush metrics after
/// completing).
fn check_metric_batches(
    state: &State,
    worker_id: &str,
    batches: &[MetricBatchIn],
) -> SchedulerResult<()> {
    if !state.workers.contains_key(worker_id) {
        return Err(SchedulerError::UnknownWorker(worker_id.to_string()));
    }
    for batch in batches {
        let job = state
            .jobs
            .get(&batch.job_id)
            .ok_or_else(|| SchedulerError::NotFound(format!("no job {}", batch.job_id)))?;
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
    Ok(())
}

impl Scheduler {
    /// Stores metric batches (a resent `(job, seq)` is counted as a duplicate and not stored again).
    pub async fn ingest_metrics(
        &self,
        worker_id: &str,
        batches: Vec<MetricBatchIn>,
    ) -> SchedulerResult<MetricAckCounts> {
        self.read(|state| check_metric_batches(state, worker_id, &batches))?;
        // Outside the lock: a batch is keyed by (job, seq), so concurrent streams cannot conflict.
        let mut counts = MetricAckCounts::default();
        for batch in &batches {
            if self
                .store
                .insert_metric_batch(&batch.job_id, batch.seq, &batch.encoded)?
            {
                self.metric_names.add(&batch.job_id, &batch.names);
                counts.batches += 1;
                counts.points += batch.points;
            } else {
                counts.duplicates += 1;
            }
        }
        self.transact(|state| {
            state.commit_earlier_writes();
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
            Ok(counts)
        })
        .await
    }

    /// Records a verified artifact; a checkpoint becomes the job's resume point.
    pub async fn record_artifact(
        &self,
        worker_id: &str,
        record: ArtifactRecord,
    ) -> SchedulerResult<()> {
        self.transact(|state| {
            state.check_lease(worker_id, &record.job_id, record.attempt)?;
            state.write().put_artifact(&record)?;
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
            Ok(())
        })
        .await
    }

    /// The worker finished the job: it succeeds and its dependents may become ready.
    pub async fn complete(
        &self,
        worker_id: &str,
        job_id: &str,
        attempt: u32,
    ) -> SchedulerResult<()> {
        self.transact(|state| {
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
            Ok(())
        })
        .await
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
        self.transact(|state| {
            state.check_lease(worker_id, job_id, attempt)?;
            state.close_attempt(job_id, "failed", Some(reason.to_string()));
            let will_retry = self.requeue_or_fail(state, job_id, reason, permanent);
            state.audit(
                &format!("worker:{worker_id}"),
                "fail",
                None,
                Some(job_id),
                format!("attempt {attempt}: {reason}"),
            );
            Ok(will_retry)
        })
        .await
    }

    /// The worker hands the lease back (shutting down after a checkpoint): not counted as an attempt.
    pub async fn release(
        &self,
        worker_id: &str,
        job_id: &str,
        attempt: u32,
        reason: &str,
    ) -> SchedulerResult<()> {
        self.transact(|state| {
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
            Ok(())
        })
        .await
    }

    /// Queues the job again after an exponential back-off, or fails it when `permanent` or out of attempts;
    /// returns whether it will be retried.
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
        let expired = self
            .transact(|state| {
                let expired: Vec<String> = state
                    .leased
                    .iter()
                    .filter(|id| state.jobs[*id].lease_deadline_ms < now)
                    .cloned()
                    .collect();
                for job_id in &expired {
                    let worker = state.jobs[job_id].worker.clone().unwrap_or_default();
                    let reason = format!("lease expired on worker {worker} (no heartbeat)");
                    state.close_attempt(job_id, "expired", Some(reason.clone()));
                    self.requeue_or_fail(state, job_id, &reason, false);
                    state.audit("coordinator", "expire", None, Some(job_id), reason);
                }
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
                if !due.is_empty() {
                    for id in due {
                        if let Some(job) = state.jobs.get_mut(&id) {
                            job.not_before_ms = 0;
                        }
                    }
                    state.became_ready = true;
                }
                Ok(expired.len())
            })
            .await?;
        if expired > 0 {
            tracing::info!(expired, "leases expired");
        }
        Ok(expired)
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
}
