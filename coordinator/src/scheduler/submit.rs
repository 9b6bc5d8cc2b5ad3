//! Queueing an experiment: its inputs must already be stored blobs (uploaded by digest), its planned jobs
//! become job records (or join the ones already queued, or are served from the cache when they already
//! succeeded).

use super::Scheduler;
use super::api::{Submission, SubmitOutcome};
use super::error::SchedulerResult;
use super::graph::validate_graph;
use super::order;
use crate::store::{ExperimentRecord, JobRecord, JobState, now_ms, sha256_hex};

impl Scheduler {
    /// Queues an experiment. Jobs whose id already succeeded (in any experiment) are served from the cache;
    /// jobs already queued are shared; failed or cancelled ones are queued again.
    pub async fn submit(&self, submission: Submission) -> SchedulerResult<SubmitOutcome> {
        validate_graph(&submission.jobs, |id| {
            self.read(|state| state.jobs.get(id).map(|j| j.state))
        })?;
        let manifest_sha256 = sha256_hex(&submission.manifest);
        let holder = submission.inputs_held_by.as_deref();
        self.check_input_blobs(holder, &submission.inputs)?;
        for planned in &submission.jobs {
            self.check_input_blobs(holder, &planned.inputs)?;
        }
        let inputs = submission.inputs.clone();
        let experiment_id = format!("e{:06}", self.store.next_id()?);
        let actor = format!("team:{}/{}", submission.team, submission.submitter);
        let now = now_ms();
        let ranks = order::critical_path_ranks(&submission.jobs);
        let cached = self
            .transact(|state| {
                let mut cached = Vec::new();
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
                            state.write().put_job_config(&planned.id, &planned.config)?;
                            let submit_seq = seq_base + ranks[&planned.id];
                            state.add_dependents(&planned.id, &planned.deps);
                            state.jobs.insert(
                                planned.id.clone(),
                                JobRecord {
                                    id: planned.id.clone(),
                                    kind: planned.kind.clone(),
                                    name: planned.name.clone(),
                                    deps: planned.deps.clone(),
                                    resources: planned.resources,
                                    inputs: planned.inputs.clone(),
                                    placement: planned.placement.clone().map(Box::new),
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
                let store = state.write();
                store.put_manifest(&experiment_id, &submission.manifest)?;
                store.put_experiment(&record)?;
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
                Ok(cached)
            })
            .await?;
        tracing::info!(experiment = %experiment_id, jobs = submission.jobs.len(), cached = cached.len(), "experiment submitted");
        Ok(SubmitOutcome {
            experiment_id,
            jobs: submission.jobs.len(),
            cached: cached.len(),
        })
    }
}
