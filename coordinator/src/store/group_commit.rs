//! Group commit: writers queue a request, one flusher thread makes the store durable for every request that
//! was queued before its flush started, then answers them all. Throughput holds under many concurrent writers
//! because they share one fsync.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

type Waiter = oneshot::Sender<Result<(), String>>;

/// Handle to the flusher thread. Dropping it stops the thread and waits for it, so whatever the flush
/// closure holds (a database handle) is released when the handle is gone.
pub struct GroupCommit {
    queue: Option<mpsc::Sender<Waiter>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher thread; `flush` makes everything written so far durable.
    pub fn start<F>(flush: F) -> GroupCommit
    where
        F: Fn() -> Result<(), String> + Send + 'static,
    {
        let (queue, requests) = mpsc::channel::<Waiter>();
        let thread = std::thread::Builder::new()
            .name("tandem-group-commit".into())
            .spawn(move || {
                while let Ok(first) = requests.recv() {
                    let mut waiters = vec![first];
                    while let Ok(next) = requests.try_recv() {
                        waiters.push(next);
                    }
                    let result = flush();
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                }
            })
            .expect("spawning the group-commit thread");
        GroupCommit {
            queue: Some(queue),
            thread: Some(thread),
        }
    }

    /// Asks for a flush covering every write made before this call; await the result.
    pub fn commit(&self) -> CommitWait {
        let (tx, rx) = oneshot::channel();
        match self.queue.as_ref().map(|q| q.send(tx)) {
            Some(Ok(())) => CommitWait { rx: Some(rx) },
            _ => CommitWait { rx: None },
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Resolves once the writes made before `commit()` are durable.
pub struct CommitWait {
    rx: Option<oneshot::Receiver<Result<(), String>>>,
}

impl Future for CommitWait {
    type Output = Result<(), String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.rx.as_mut() {
            None => Poll::Ready(Err("the group-commit thread has stopped".into())),
            Some(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                Poll::Ready(Err(_)) => {
                    Poll::Ready(Err("the group-commit thread has stopped".into()))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_flushes_and_all_succeed() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counter = flushes.clone();
        let group = Arc::new(GroupCommit::start(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2));
            Ok(())
        }));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let group = group.clone();
            tasks.push(tokio::spawn(async move { group.commit().await }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let done = flushes.load(Ordering::SeqCst);
        assert!((1..200).contains(&done), "flushes: {done}");
    }

    #[tokio::test]
    async fn flush_errors_reach_every_waiter() {
        let group = GroupCommit::start(|| Err("disk full".into()));
        assert_eq!(group.commit().await, Err("disk full".to_string()));
    }
}
