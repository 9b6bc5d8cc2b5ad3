//! What a team does to its experiments once queued: cancel, retry the failed and cancelled jobs, replay a
//! succeeded job.

use super::Scheduler;
use super::api::TeamScope;
use super::error::{SchedulerError, SchedulerResult};
use super::transaction::Transaction;
use crate::store::{ExperimentRecord, JobRecord, JobState, now_ms};

/// Sets experiment `experiment_id`'s cancelled flag (if `scope` may see it) and stores it; returns it.
fn mark_cancelled(
    state: &mut Transaction<'_>,
    scope: TeamScope<'_>,
    experiment_id: &str,
    cancelled: bool,
) -> SchedulerResult<ExperimentRecord> {
    state.experiment_for(scope, experiment_id)?;
    let experiment = state.experiments.get_mut(experiment_id).expect("checked");
    experiment.cancelled = cancelled;
    let experiment = experiment.clone();
    state.write().put_experiment(&experiment)?;
    Ok(experiment)
}

impl Scheduler {
    /// Cancels an experiment: its jobs stop unless another live experiment also needs them. A running job's
    /// worker learns it on its next heartbeat.
    pub async fn cancel(
        &self,
        scope: TeamScope<'_>,
        actor: &str,
        experiment_id: &str,
    ) -> SchedulerResult<usize> {
        self.transact(|state| {
            let experiment = mark_cancelled(state, scope, experiment_id, true)?;
            let mut cancelled = 0;
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
            Ok(cancelled)
        })
        .await
    }

    /// Queues an experiment's failed and cancelled jobs again with fresh attempt counts (a job resumes from
    /// its last checkpoint).
    pub async fn retry(
        &self,
        scope: TeamScope<'_>,
        actor: &str,
        experiment_id: &str,
    ) -> SchedulerResult<usize> {
        self.transact(|state| {
            let experiment = mark_cancelled(state, scope, experiment_id, false)?;
            let mut requeued = 0;
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
            Ok(requeued)
        })
        .await
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
        let replay_id = self
            .transact(|state| {
                let experiment = state.experiment_for(scope, experiment_id)?;
                if !experiment.job_ids.iter().any(|j| j == job_id) {
                    return Err(SchedulerError::NotFound(format!(
                        "experiment {experiment_id} has no job {job_id}"
                    )));
                }
                let original = state.jobs.get(job_id).cloned().ok_or_else(|| {
                    SchedulerError::NotFound(format!("no job {job_id} in the store"))
                })?;
                if original.state != JobState::Succeeded {
                    return Err(SchedulerError::InvalidArgument(format!(
                        "job {job_id} ({}) is {}: only a succeeded job can be replayed",
                        original.name,
                        original.state.label()
                    )));
                }
                let config = state.read().job_config(job_id)?.ok_or_else(|| {
                    SchedulerError::NotFound(format!("job {job_id} has no stored config"))
                })?;
                let store = state.write();
                let replay_id = format!(
                    "replay-{:06}-{}",
                    store.next_id()?,
                    &job_id[..job_id.len().min(16)]
                );
                store.put_job_config(&replay_id, &config)?;
                let submit_seq = state.next_submit_seq;
                state.next_submit_seq += 1;
                state.add_dependents(&replay_id, &original.deps);
                // The original's kind, deps, resources, inputs, placement, team and priority; nothing of its runs.
                let original_name = original.name.clone();
                let record = JobRecord {
                    id: replay_id.clone(),
                    name: format!("{original_name} (replay)"),
                    submit_seq,
                    experiments: vec![experiment_id.to_string()],
                    created_ms: now_ms(),
                    replay_of: Some(job_id.to_string()),
                    ..original.unstarted()
                };
                state.jobs.insert(replay_id.clone(), record);
                state.dirty_jobs.push(replay_id.clone());
                state.refresh_readiness(&replay_id);
                state.audit(
                    actor,
                    "replay",
                    Some(experiment_id),
                    Some(job_id),
                    format!("replay {replay_id} of {original_name} queued"),
                );
                Ok(replay_id)
            })
            .await?;
        tracing::info!(experiment = %experiment_id, job = %job_id, replay = %replay_id, "replay queued");
        Ok(replay_id)
    }
}
