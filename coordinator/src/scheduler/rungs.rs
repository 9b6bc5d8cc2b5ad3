//! ASHA at the coordinator: a training-sweep point reports its validation loss at a rung, the value is compared
//! with the other points of its group that reached the same rung (asynchronous successive halving), and the
//! answer is stored with the value, so a retried attempt hears the same answer and `tandem results --sweep`
//! shows where a point stopped.

use tandem_experiments::manifest::training_sweep::asha_decision;
use tandem_experiments::planner::{AshaRule, JobConfig};

use super::Scheduler;
use super::error::{SchedulerError, SchedulerResult};
use crate::store::{RungRecord, now_ms};

/// What the coordinator answers at a rung.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RungDecision {
    pub stop: bool,
    pub cutoff: f64,
    /// Values recorded at the rung, this one included.
    pub recorded: u32,
}

/// The ASHA rule in a job's config (canonical JSON, as the planner wrote it).
fn asha_rule(job_id: &str, config: &[u8]) -> SchedulerResult<AshaRule> {
    let not_a_point =
        || SchedulerError::InvalidArgument(format!("job {job_id} is not a sweep point with ASHA"));
    match serde_json::from_slice::<JobConfig>(config) {
        Ok(JobConfig::Train(train)) => train.asha.ok_or_else(not_a_point),
        _ => Err(not_a_point()),
    }
}

impl Scheduler {
    /// Records leased job `job_id`'s validation loss `value` at ASHA rung `rung` (optimizer step `step`) and
    /// decides whether it finishes now. Asked again for the same job and rung, it answers as the first time.
    pub async fn report_rung(
        &self,
        worker_id: &str,
        job_id: &str,
        attempt: u32,
        rung: u32,
        step: u64,
        value: f64,
    ) -> SchedulerResult<RungDecision> {
        // A diverged point (NaN or infinite loss) is the worst possible value, and JSON has no NaN.
        let value = if value.is_finite() { value } else { f64::MAX };
        self.transact(|tx| {
            tx.check_lease(worker_id, job_id, attempt)?;
            let config = tx
                .read()
                .job_config(job_id)?
                .ok_or_else(|| SchedulerError::NotFound(format!("no config for job {job_id}")))?;
            let rule = asha_rule(job_id, &config)?;
            if rule.spec().rung_of(step as usize) != Some(rung) {
                return Err(SchedulerError::InvalidArgument(format!(
                    "job {job_id}: step {step} is not rung {rung} (grace period {}, reduction factor {})",
                    rule.grace_period, rule.reduction_factor
                )));
            }
            let recorded = tx.read().rungs(&rule.group, rung)?;
            if let Some(previous) = recorded.iter().find(|r| r.job_id == job_id) {
                return Ok(RungDecision {
                    stop: previous.stop,
                    cutoff: previous.cutoff,
                    recorded: recorded.len() as u32,
                });
            }
            let others: Vec<f64> = recorded.iter().map(|r| r.value).collect();
            let (stop, cutoff) = asha_decision(&others, value, rule.reduction_factor, false);
            tx.write().put_rung(
                &rule.group,
                &RungRecord {
                    job_id: job_id.to_owned(),
                    rung,
                    step,
                    value,
                    stop,
                    cutoff,
                    at_ms: now_ms(),
                },
            )?;
            let verdict = if stop { "stop" } else { "continue" };
            tx.audit(
                &format!("worker:{worker_id}"),
                "asha",
                None,
                Some(job_id),
                format!("rung {rung} (step {step}): val_loss {value:.4}, cutoff {cutoff:.4}: {verdict}"),
            );
            tracing::info!(job = job_id, rung, step, value, cutoff, stop, "asha rung");
            Ok(RungDecision {
                stop,
                cutoff,
                recorded: others.len() as u32 + 1,
            })
        })
        .await
    }
}
