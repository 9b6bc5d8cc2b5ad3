//! Following one experiment: a snapshot of its jobs, then each change to one of them, until it is done.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::Scheduler;
use super::api::JobView;
use super::error::SchedulerResult;

/// What a watcher of an experiment learns.
#[derive(Clone, Debug)]
pub enum WatchUpdate {
    /// A job as it stands now, what changed (empty in a snapshot) and the experiment's state.
    Job {
        job: Box<JobView>,
        message: String,
        experiment_state: &'static str,
    },
    /// The experiment is done in `state` (anything but "running"); nothing follows.
    Done { state: &'static str },
}

/// How many updates wait for a slow watcher before the sender waits.
const WATCH_BUFFER: usize = 256;

impl Scheduler {
    /// Watches experiment `experiment_id` as `team` (`None`: an admin): every job of a snapshot, then every
    /// change of one of its jobs; a watcher that falls behind the event broadcast gets a fresh snapshot. Ends
    /// with [`WatchUpdate::Done`] once the experiment is no longer running, or when the receiver is dropped.
    pub fn watch(
        self: &Arc<Self>,
        team: Option<String>,
        experiment_id: String,
    ) -> SchedulerResult<mpsc::Receiver<WatchUpdate>> {
        // Subscribe before the snapshot so no change falls between them.
        let mut events = self.subscribe();
        let view = self.experiment(team.as_deref(), &experiment_id)?;
        let scheduler = self.clone();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            let mut view = view;
            'snapshot: loop {
                for job in &view.jobs {
                    let update = WatchUpdate::Job {
                        job: Box::new(job.clone()),
                        message: String::new(),
                        experiment_state: view.state,
                    };
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
                if view.state != "running" {
                    let _ = tx.send(WatchUpdate::Done { state: view.state }).await;
                    return;
                }
                loop {
                    let event = match events.recv().await {
                        Ok(event) => event,
                        Err(RecvError::Lagged(_)) => {
                            match scheduler.experiment(team.as_deref(), &experiment_id) {
                                Ok(fresh) => {
                                    view = fresh;
                                    continue 'snapshot;
                                }
                                Err(_) => return,
                            }
                        }
                        Err(_) => return,
                    };
                    if !event.experiments.contains(&experiment_id) {
                        continue;
                    }
                    let Ok(fresh) = scheduler.experiment(team.as_deref(), &experiment_id) else {
                        return;
                    };
                    if let Some(job) = fresh.jobs.iter().find(|j| j.job.id == event.job_id) {
                        let update = WatchUpdate::Job {
                            job: Box::new(job.clone()),
                            message: event.message.clone(),
                            experiment_state: fresh.state,
                        };
                        if tx.send(update).await.is_err() {
                            return;
                        }
                    }
                    if fresh.state != "running" {
                        let _ = tx.send(WatchUpdate::Done { state: fresh.state }).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}
