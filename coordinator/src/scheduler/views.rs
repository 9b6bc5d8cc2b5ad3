//! What clients see: experiments and their jobs with live progress, replays, workers, and an experiment's
//! audit log.

use std::collections::HashSet;

use super::Scheduler;
use super::api::{ExperimentView, JobView, TeamScope, WorkerView};
use super::error::{SchedulerError, SchedulerResult};
use super::state::State;
use super::waiting;
use crate::store::{AuditEntry, ExperimentRecord, JobRecord, JobState, WorkerRecord, now_ms};

/// An experiment with its jobs as `state` holds them now; a ready job that no `live` worker could hold says why.
fn experiment_view(
    state: &State,
    record: ExperimentRecord,
    live: &[&WorkerRecord],
    changed_after: Option<u64>,
) -> ExperimentView {
    let cached: HashSet<&str> = record.cached_jobs.iter().map(String::as_str).collect();
    let jobs = record
        .job_ids
        .iter()
        .filter(|id| {
            changed_after.is_none_or(|seq| state.changed_at.get(*id).is_some_and(|&at| at > seq))
        })
        .filter_map(|id| state.jobs.get(id))
        .map(|job| JobView {
            job: job.clone(),
            cached: cached.contains(job.id.as_str()),
            progress: state.progress.get(&job.id).cloned().unwrap_or_default(),
            waiting_reason: (job.state == JobState::Ready)
                .then(|| waiting::reason(&job.kind, &job.resources, live))
                .flatten(),
        })
        .collect();
    ExperimentView {
        state: state.experiment_state(&record),
        record,
        jobs,
    }
}

impl Scheduler {
    /// A replay run and the job it replays, if `scope` may see its experiment.
    pub fn replay_view(
        &self,
        scope: TeamScope<'_>,
        replay_id: &str,
    ) -> SchedulerResult<(JobView, JobRecord)> {
        self.read(|state| {
            let not_found = || SchedulerError::NotFound(format!("no replay {replay_id}"));
            let replay = state.jobs.get(replay_id).ok_or_else(not_found)?;
            let original_id = replay.replay_of.as_ref().ok_or_else(not_found)?;
            let experiment_id = replay.experiments.first().ok_or_else(not_found)?;
            state.experiment_for(scope, experiment_id)?;
            let original = state.jobs.get(original_id).ok_or_else(not_found)?.clone();
            Ok((
                JobView {
                    job: replay.clone(),
                    cached: false,
                    progress: state.progress.get(replay_id).cloned().unwrap_or_default(),
                    waiting_reason: None,
                },
                original,
            ))
        })
    }

    pub fn experiment(
        &self,
        scope: TeamScope<'_>,
        experiment_id: &str,
    ) -> SchedulerResult<ExperimentView> {
        Ok(self.experiment_changes(scope, experiment_id, None)?.0)
    }

    /// Experiment `experiment_id` with only the jobs that changed after change `since` (all of them when
    /// `since` is `None` or later than the last change, as after a restart), and the last change's number.
    pub fn experiment_changes(
        &self,
        scope: TeamScope<'_>,
        experiment_id: &str,
        since: Option<u64>,
    ) -> SchedulerResult<(ExperimentView, u64, bool)> {
        let now = now_ms();
        self.read(|state| {
            let record = state.experiment_for(scope, experiment_id)?.clone();
            let live: Vec<&WorkerRecord> = state
                .workers
                .values()
                .filter(|w| self.is_alive(&w.record, now))
                .map(|w| &w.record)
                .collect();
            let since = since.filter(|&s| s <= state.change_seq);
            let view = experiment_view(state, record, &live, since);
            Ok((view, state.change_seq, since.is_some()))
        })
    }

    /// Experiment `experiment_id`'s record, if `scope` may see it, without its jobs (cheap: for readers that need
    /// only some of them, see [`Scheduler::jobs_where`]).
    pub fn experiment_record(
        &self,
        scope: TeamScope<'_>,
        experiment_id: &str,
    ) -> SchedulerResult<ExperimentRecord> {
        self.read(|state| state.experiment_for(scope, experiment_id).cloned())
    }

    /// The jobs among `ids` that `keep` accepts, in the order of `ids`; only those are copied.
    pub fn jobs_where(&self, ids: &[String], keep: impl Fn(&JobRecord) -> bool) -> Vec<JobRecord> {
        self.read(|state| {
            ids.iter()
                .filter_map(|id| state.jobs.get(id))
                .filter(|job| keep(job))
                .cloned()
                .collect()
        })
    }

    /// Experiments visible to `scope`, oldest first.
    pub fn experiments(
        &self,
        scope: TeamScope<'_>,
    ) -> Vec<(ExperimentRecord, &'static str, usize)> {
        self.read(|state| {
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
        })
    }

    /// Whether `job_id` is in an experiment visible to `scope`.
    pub fn can_see_job(&self, scope: TeamScope<'_>, job_id: &str) -> bool {
        self.read(|state| {
            let Some(job) = state.jobs.get(job_id) else {
                return false;
            };
            scope.is_none_or(|team| {
                job.experiments
                    .iter()
                    .any(|e| state.experiments.get(e).is_some_and(|x| x.team == team))
            })
        })
    }

    /// Whether `worker` was seen recently enough (heartbeats or lease calls) to count as live at `now`.
    fn is_alive(&self, worker: &WorkerRecord, now: u64) -> bool {
        let alive_window = self.config.heartbeat_interval_ms * 3 + self.config.max_lease_wait_ms;
        now.saturating_sub(worker.last_seen_ms) <= alive_window
    }

    pub fn workers(&self) -> Vec<WorkerView> {
        let now = now_ms();
        self.read(|state| {
            let mut out: Vec<_> = state
                .workers
                .values()
                .map(|w| WorkerView {
                    record: w.record.clone(),
                    alive: self.is_alive(&w.record, now),
                    jobs: {
                        let mut jobs: Vec<_> = w.leases.iter().cloned().collect();
                        jobs.sort();
                        jobs
                    },
                })
                .collect();
            out.sort_by(|a, b| a.record.id.cmp(&b.record.id));
            out
        })
    }

    pub fn worker(&self, worker_id: &str) -> Option<WorkerRecord> {
        self.read(|state| state.workers.get(worker_id).map(|w| w.record.clone()))
    }

    /// The replay runs (`tandem audit --replay`) of experiment `experiment_id`'s jobs, oldest first.
    pub fn replay_ids(&self, experiment_id: &str) -> Vec<String> {
        self.read(|state| {
            let mut replays: Vec<(u64, String)> = state
                .jobs
                .values()
                .filter(|j| {
                    j.replay_of.is_some() && j.experiments.iter().any(|e| e == experiment_id)
                })
                .map(|j| (j.submit_seq, j.id.clone()))
                .collect();
            replays.sort();
            replays.into_iter().map(|(_, id)| id).collect()
        })
    }

    /// Audit entries of one experiment (its own and those of its jobs and of their replays), oldest first.
    pub fn audit_log(&self, experiment: &ExperimentRecord) -> SchedulerResult<Vec<AuditEntry>> {
        let mut jobs = experiment.job_ids.clone();
        self.read(|state| {
            jobs.extend(
                state
                    .jobs
                    .values()
                    .filter(|j| j.replay_of.is_some() && j.experiments.contains(&experiment.id))
                    .map(|j| j.id.clone()),
            )
        });
        Ok(self.store.audit_entries_of(&experiment.id, &jobs)?)
    }
}
