//! The scheduler: the job state machine, leases, placement, the content-addressed cache and recovery.
//!
//! A plain async API (`submit`, `lease`, `heartbeat`, `complete`, ...) that unit tests drive directly; the gRPC
//! services are thin adapters over it. All state lives in memory behind one mutex and is written through to
//! the [`Store`]; every change goes through one transaction helper (`transaction.rs`) that awaits
//! `Store::commit` (group commit) before returning, so whatever it acknowledged survives `kill -9`.
//! `Scheduler::open` on an existing store resumes every experiment.
//!
//! The methods live by concern: `submit.rs` (queueing experiments), `lease.rs` (workers, leases,
//! heartbeats), `outcome.rs` (metrics, artifacts, complete/fail/release, expiry), `control.rs`
//! (cancel/retry/replay), `views.rs` (what clients see), `watch.rs` (following an experiment), `stored.rs` (artifacts, metrics, blobs and tokens
//! kept in the store), `graph.rs` (graph validation).

mod api;
mod control;
mod error;
mod graph;
mod lease;
mod metric_names;
pub mod order;
mod outcome;
pub mod placement;
mod rungs;
mod state;
mod stored;
mod submit;
mod transaction;
mod views;
mod waiting;
mod watch;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, broadcast};

pub use api::{
    ExperimentView, HeartbeatOutcome, JobEvent, JobView, LeaseGrant, MetricAckCounts,
    MetricBatchIn, PlannedJob, Progress, ProgressReport, SchedulerConfig, Submission,
    SubmitOutcome, TeamScope, WorkerView,
};
pub use error::{SchedulerError, SchedulerResult};
pub use graph::validate_graph;
pub use rungs::RungDecision;
pub use stored::ArtifactUpload;
pub use watch::WatchUpdate;

use crate::store::Store;
use state::State;

pub struct Scheduler {
    store: Arc<dyn Store>,
    config: SchedulerConfig,
    state: Mutex<State>,
    ready_notify: Notify,
    events: broadcast::Sender<JobEvent>,
    metric_names: metric_names::MetricNames,
}

impl Scheduler {
    /// Loads every record from `store` and resumes: leased jobs get a fresh deadline (their workers have one
    /// lease TTL to reconnect), blocked jobs whose dependencies succeeded become ready.
    pub fn open(store: Arc<dyn Store>, config: SchedulerConfig) -> SchedulerResult<Arc<Scheduler>> {
        let state = State::recover(&*store, &config)?;
        let (events, _) = broadcast::channel(4096);
        Ok(Arc::new(Scheduler {
            store,
            config,
            state: Mutex::new(state),
            ready_notify: Notify::new(),
            events,
            metric_names: Default::default(),
        }))
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The store itself, for tests that look beneath the scheduler.
    #[cfg(test)]
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
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
}

#[cfg(test)]
mod tests;
