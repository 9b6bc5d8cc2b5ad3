//! Elastic workers: from what the coordinator and Slurm show now, how many worker jobs to submit and which to
//! cancel. A pure decision over an observation, so every rule is tested without a cluster; `tandem launch
//! slurm --watch` observes, decides, and carries it out each round.
//!
//! The rules:
//! - **Launch** while queued jobs outnumber the workers that could take them (idle workers, and worker jobs
//!   still starting), up to `max_workers` worker jobs held at once.
//! - **Cancel** a worker job that has been idle (no job, or not yet started) for `idle_timeout` while no work
//!   is queued. Queued work resets the clocks: an idle worker is about to lease it.

use std::collections::BTreeMap;

/// The loop's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Worker jobs (array elements) held at once, at most.
    pub max_workers: u32,
    /// How long a worker job may sit idle while nothing is queued before it is cancelled, ms.
    pub idle_timeout_ms: u64,
}

/// One launched worker job Slurm still holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// `1234_0`.
    pub id: String,
    pub worker: WorkerState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// No live worker registered from this job yet (pending in Slurm, or starting).
    Starting,
    /// A live worker with no job.
    Idle,
    /// A live worker running a job.
    Busy,
}

/// What one round saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub now_ms: u64,
    /// Ready jobs a launched worker could take (not waiting for resources no such worker offers).
    pub queued_jobs: u32,
    /// Live idle workers this loop did not launch (they take queued work too).
    pub other_idle_workers: u32,
    /// The launched worker jobs Slurm still holds.
    pub elements: Vec<Element>,
}

/// What to do this round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Worker jobs to submit, and why.
    pub launch: u32,
    pub launch_reason: String,
    /// Worker jobs to cancel, each with why.
    pub cancel: Vec<(String, String)>,
}

/// The idle clocks carried from round to round.
#[derive(Clone, Debug, Default)]
pub struct Elastic {
    idle_since_ms: BTreeMap<String, u64>,
}

impl Elastic {
    pub fn decide(&mut self, seen: &Observation, policy: Policy) -> Decision {
        let count =
            |state: WorkerState| seen.elements.iter().filter(|e| e.worker == state).count() as u32;
        let free =
            count(WorkerState::Idle) + count(WorkerState::Starting) + seen.other_idle_workers;
        let held = seen.elements.len() as u32;
        let mut decision = Decision::default();

        let wanted = seen.queued_jobs.saturating_sub(free);
        decision.launch = wanted.min(policy.max_workers.saturating_sub(held));
        if decision.launch > 0 {
            decision.launch_reason = format!(
                "{} job(s) queued, {free} worker(s) idle or starting, {held} of at most {} held",
                seen.queued_jobs, policy.max_workers
            );
        }

        // Clocks run only while nothing is queued, for jobs that do no work.
        let idle_now: Vec<&Element> = if seen.queued_jobs == 0 {
            seen.elements
                .iter()
                .filter(|e| e.worker != WorkerState::Busy)
                .collect()
        } else {
            Vec::new()
        };
        self.idle_since_ms
            .retain(|id, _| idle_now.iter().any(|e| &e.id == id));
        for element in idle_now {
            let since = *self
                .idle_since_ms
                .entry(element.id.clone())
                .or_insert(seen.now_ms);
            let idle_ms = seen.now_ms.saturating_sub(since);
            if idle_ms >= policy.idle_timeout_ms {
                let what = match element.worker {
                    WorkerState::Starting => "not started",
                    _ => "idle",
                };
                decision.cancel.push((
                    element.id.clone(),
                    format!("{what} for {} s with no work queued", idle_ms / 1000),
                ));
            }
        }
        for (id, _) in &decision.cancel {
            self.idle_since_ms.remove(id);
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        max_workers: 3,
        idle_timeout_ms: 60_000,
    };

    fn element(id: &str, worker: WorkerState) -> Element {
        Element {
            id: id.into(),
            worker,
        }
    }

    fn seen(now_ms: u64, queued_jobs: u32, elements: Vec<Element>) -> Observation {
        Observation {
            now_ms,
            queued_jobs,
            other_idle_workers: 0,
            elements,
        }
    }

    #[test]
    fn queued_work_launches_workers_up_to_the_limit() {
        let mut elastic = Elastic::default();
        let d = elastic.decide(&seen(0, 5, vec![]), POLICY);
        assert_eq!(d.launch, 3);
        assert!(
            d.launch_reason.starts_with("5 job(s) queued"),
            "{}",
            d.launch_reason
        );
        // Two held (one starting, one busy) and one job queued: the starting one will take it.
        let d = elastic.decide(
            &seen(
                1,
                1,
                vec![
                    element("1_0", WorkerState::Starting),
                    element("1_1", WorkerState::Busy),
                ],
            ),
            POLICY,
        );
        assert_eq!(d.launch, 0);
        // Three held, all busy, more queued: the limit holds.
        let busy = vec![
            element("1_0", WorkerState::Busy),
            element("1_1", WorkerState::Busy),
            element("2_0", WorkerState::Busy),
        ];
        assert_eq!(elastic.decide(&seen(2, 4, busy), POLICY).launch, 0);
    }

    #[test]
    fn idle_workers_elsewhere_take_the_work_first() {
        let mut elastic = Elastic::default();
        let mut observation = seen(0, 2, vec![]);
        observation.other_idle_workers = 2;
        assert_eq!(elastic.decide(&observation, POLICY).launch, 0);
        observation.other_idle_workers = 1;
        assert_eq!(elastic.decide(&observation, POLICY).launch, 1);
    }

    #[test]
    fn an_idle_worker_is_cancelled_after_the_timeout_and_queued_work_resets_its_clock() {
        let mut elastic = Elastic::default();
        let idle = || {
            vec![
                element("1_0", WorkerState::Idle),
                element("1_1", WorkerState::Busy),
            ]
        };
        assert!(
            elastic
                .decide(&seen(0, 0, idle()), POLICY)
                .cancel
                .is_empty()
        );
        assert!(
            elastic
                .decide(&seen(59_000, 0, idle()), POLICY)
                .cancel
                .is_empty()
        );
        // Work queued for a moment: the clock starts again.
        assert!(
            elastic
                .decide(&seen(59_500, 1, idle()), POLICY)
                .cancel
                .is_empty()
        );
        assert!(
            elastic
                .decide(&seen(100_000, 0, idle()), POLICY)
                .cancel
                .is_empty()
        );
        let d = elastic.decide(&seen(160_000, 0, idle()), POLICY);
        assert_eq!(
            d.cancel,
            [(
                "1_0".to_string(),
                "idle for 60 s with no work queued".to_string()
            )]
        );
        assert_eq!(d.launch, 0);
    }

    #[test]
    fn a_worker_job_that_never_started_is_cancelled_when_the_work_is_gone() {
        let mut elastic = Elastic::default();
        let pending = || vec![element("4_0", WorkerState::Starting)];
        assert!(
            elastic
                .decide(&seen(0, 0, pending()), POLICY)
                .cancel
                .is_empty()
        );
        let d = elastic.decide(&seen(61_000, 0, pending()), POLICY);
        assert_eq!(d.cancel.len(), 1);
        assert!(
            d.cancel[0].1.starts_with("not started for 61 s"),
            "{:?}",
            d.cancel
        );
    }

    #[test]
    fn a_busy_worker_is_never_cancelled() {
        let mut elastic = Elastic::default();
        for t in [0, 100_000, 1_000_000] {
            let d = elastic.decide(&seen(t, 0, vec![element("1_0", WorkerState::Busy)]), POLICY);
            assert!(d.cancel.is_empty());
        }
    }
}
