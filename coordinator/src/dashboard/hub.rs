//! One subscriber to the scheduler's job events for all of the dashboard's event streams. Every [`COALESCE`] it
//! drains what happened and tells the streams which experiments changed, so a burst of changes wakes each
//! watching page once, and a change on the dispatch path wakes no dashboard task.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;

use super::snapshot::Snapshots;
use crate::scheduler::Scheduler;

/// How long changes are gathered before the streams hear of them.
pub const COALESCE: Duration = Duration::from_secs(1);

/// What changed during one interval.
#[derive(Debug, Default)]
pub struct Changes {
    /// The changed jobs of each changed experiment.
    by_experiment: HashMap<String, BTreeSet<String>>,
    /// Events were missed (the scheduler's channel overflowed): any experiment may have changed.
    missed: bool,
}

impl Changes {
    /// Experiment `id`'s changed jobs, if it may have changed (an empty list when events were missed).
    pub fn of(&self, id: &str) -> Option<Vec<String>> {
        match self.by_experiment.get(id) {
            Some(jobs) => Some(jobs.iter().cloned().collect()),
            None => self.missed.then(Vec::new),
        }
    }

    fn is_empty(&self) -> bool {
        self.by_experiment.is_empty() && !self.missed
    }
}

/// The gathered changes, for the event streams to subscribe to.
pub struct Hub {
    changes: broadcast::Sender<Arc<Changes>>,
}

impl Hub {
    /// Subscribes to `scheduler`'s events and starts the gathering task (it ends with the scheduler's channel).
    /// Each announcement is marked in `snapshots` before it is sent.
    pub fn start(scheduler: &Scheduler, snapshots: Arc<Snapshots>) -> Hub {
        let (changes, _) = broadcast::channel(16);
        tokio::spawn(gather(scheduler.subscribe(), changes.clone(), snapshots));
        Hub { changes }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Changes>> {
        self.changes.subscribe()
    }
}

async fn gather(
    mut events: broadcast::Receiver<crate::scheduler::JobEvent>,
    out: broadcast::Sender<Arc<Changes>>,
    snapshots: Arc<Snapshots>,
) {
    let mut tick = tokio::time::interval(COALESCE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let watched = out.receiver_count() > 0;
        let mut changes = Changes::default();
        let closed = loop {
            match events.try_recv() {
                Ok(event) => {
                    for experiment in event.experiments {
                        let jobs = changes.by_experiment.entry(experiment).or_default();
                        if watched {
                            jobs.insert(event.job_id.clone());
                        }
                    }
                }
                Err(TryRecvError::Lagged(_)) => changes.missed = true,
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Closed) => break true,
            }
        };
        // Marked before the pages hear of it, and even with no page watching: a page that opens later must not
        // get a reply read before these changes. Missed events may have changed anything.
        match changes.missed {
            true => snapshots.announce_all(),
            false => snapshots.announce(changes.by_experiment.keys()),
        }
        if watched && !changes.is_empty() {
            // No receiver left between the count and the send is harmless.
            let _ = out.send(Arc::new(changes));
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_experiment_hears_of_its_own_jobs_and_of_missed_events_only() {
        let mut changes = Changes::default();
        changes
            .by_experiment
            .entry("e1".into())
            .or_default()
            .extend(["j2".to_string(), "j1".to_string(), "j2".to_string()]);
        assert_eq!(changes.of("e1"), Some(vec!["j1".into(), "j2".into()]));
        assert_eq!(changes.of("e2"), None);
        changes.missed = true;
        assert_eq!(changes.of("e2"), Some(vec![]));
    }
}
