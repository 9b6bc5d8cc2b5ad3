//! The GPU ordinals a worker offers (`0..gpus`), handed to the jobs it runs side by side: a job holds the
//! ordinals its resources ask for while it runs and gives them back before its outcome is reported, so the
//! coordinator, which frees the job's GPUs on that report, never leases a GPU still in use.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::runner::{RunError, StopFlag};

/// How long a job waits for ordinals still held by a job that lost its lease and is stopping.
const WAIT_FOR_STOPPING_JOB: Duration = Duration::from_secs(120);
/// How often a waiting job looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The worker's free GPU ordinals.
pub(crate) struct GpuPool {
    free: Mutex<BTreeSet<u32>>,
    total: u32,
    returned: Notify,
}

/// Ordinals held by one job; given back when dropped.
pub(crate) struct GpuLease {
    pool: Arc<GpuPool>,
    ordinals: Vec<u32>,
}

impl GpuPool {
    /// A pool of ordinals `0..gpus`.
    pub(crate) fn new(gpus: u32) -> Arc<GpuPool> {
        Arc::new(GpuPool {
            free: Mutex::new((0..gpus).collect()),
            total: gpus,
            returned: Notify::new(),
        })
    }

    /// The lowest `n` free ordinals, or `None` when fewer are free.
    fn try_take(&self, n: u32) -> Option<Vec<u32>> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if (free.len() as u64) < u64::from(n) {
            return None;
        }
        let taken: Vec<u32> = free.iter().copied().take(n as usize).collect();
        for ordinal in &taken {
            free.remove(ordinal);
        }
        Some(taken)
    }

    fn give_back(&self, ordinals: &[u32]) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.extend(ordinals.iter().copied());
        drop(free);
        self.returned.notify_waiters();
    }

    /// Takes `n` ordinals for a job. The coordinator leases no more GPUs than are free, so they normally are;
    /// only a job that lost its lease and is still stopping can hold some, and then this waits for it (until
    /// the job is asked to stop, or [`WAIT_FOR_STOPPING_JOB`] passes: a retryable failure).
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        n: u32,
        stop: &StopFlag,
    ) -> Result<GpuLease, RunError> {
        if n > self.total {
            return Err(RunError::retryable(format!(
                "the job asks for {n} GPUs; this worker offers {}",
                self.total
            )));
        }
        let deadline = Instant::now() + WAIT_FOR_STOPPING_JOB;
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(ordinals) = self.try_take(n) {
                return Ok(GpuLease {
                    pool: self.clone(),
                    ordinals,
                });
            }
            if let Some(reason) = stop.get() {
                return Err(RunError::Stopped(reason));
            }
            if Instant::now() >= deadline {
                return Err(RunError::retryable(format!(
                    "{n} GPU(s) asked for, but a stopping job still holds this worker's GPUs after {}s",
                    WAIT_FOR_STOPPING_JOB.as_secs()
                )));
            }
            tracing::info!(gpus = n, "waiting for a stopping job's GPUs");
            let _ = tokio::time::timeout(STOP_POLL, returned).await;
        }
    }
}

impl GpuLease {
    pub(crate) fn ordinals(&self) -> &[u32] {
        &self.ordinals
    }
}

impl Drop for GpuLease {
    fn drop(&mut self) {
        self.pool.give_back(&self.ordinals);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_get_distinct_ordinals_and_give_them_back() {
        let pool = GpuPool::new(3);
        let stop = StopFlag::default();
        let a = pool.acquire(1, &stop).await.unwrap();
        let b = pool.acquire(2, &stop).await.unwrap();
        assert_eq!(a.ordinals(), [0]);
        assert_eq!(b.ordinals(), [1, 2]);
        drop(a);
        let c = pool.acquire(1, &stop).await.unwrap();
        assert_eq!(c.ordinals(), [0]);
        let none = pool.acquire(0, &stop).await.unwrap();
        assert!(none.ordinals().is_empty());
    }

    #[tokio::test]
    async fn a_job_waits_for_ordinals_a_stopping_job_still_holds() {
        let pool = GpuPool::new(1);
        let stop = StopFlag::default();
        let held = pool.acquire(1, &stop).await.unwrap();
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let stop = StopFlag::default();
                pool.acquire(1, &stop).await.map(|l| l.ordinals().to_vec())
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "ordinal 0 is still held");
        drop(held);
        assert_eq!(waiter.await.unwrap().unwrap(), [0]);
    }

    #[tokio::test]
    async fn more_gpus_than_offered_or_a_stop_end_the_wait() {
        let pool = GpuPool::new(1);
        let stop = StopFlag::default();
        let Err(RunError::Failed { reason, permanent }) = pool.acquire(2, &stop).await else {
            panic!("two GPUs from a pool of one")
        };
        assert!(!permanent);
        assert!(
            reason.contains("asks for 2 GPUs; this worker offers 1"),
            "{reason}"
        );
        let _held = pool.acquire(1, &stop).await.unwrap();
        stop.request(super::super::runner::StopReason::Cancelled);
        assert!(matches!(
            pool.acquire(1, &stop).await,
            Err(RunError::Stopped(_))
        ));
    }
}
