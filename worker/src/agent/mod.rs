//! The worker agent: registers with a coordinator, long-polls for leases, runs each job with the
//! [`JobRunner`] registered for its kind, heartbeats (renewing the lease, learning of cancellations), streams
//! metrics with per-job sequence numbers, uploads artifacts, completes or fails the job, reconnects with
//! back-off when the coordinator goes away, and on shutdown (SIGTERM) checkpoints and hands its lease back.

pub mod cli;
pub mod cluster;
pub mod devices;
mod gpus;
pub mod inputs;
mod runner;
pub mod runners;
pub mod test_runner;
pub mod transfer;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_proto as pb;
use tokio::sync::{mpsc, watch};

use inputs::InputCache;
pub use runner::{JobContext, JobRunner, ParentArtifact, RunError, RunnerRegistry, StopReason};
use runner::{MetricMsg, StopFlag};
use transfer::{TransferError, WorkerClient, download_to_cache, with_retry};

/// How a worker presents itself and where it keeps files.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub coordinator: String,
    pub token: Option<String>,
    pub ca_cert: Option<Vec<u8>>,
    pub name: String,
    pub resources: pb::Resources,
    pub work_dir: PathBuf,
    /// The machine-wide cache of inputs fetched by digest (see [`inputs`]), shared by the machine's workers.
    pub cache_dir: PathBuf,
    /// Long-poll wait per lease call.
    pub lease_wait: Duration,
    pub version: String,
    pub git_commit: String,
    pub cargo_lock_sha256: String,
    pub host: String,
    /// CUDA devices found on this machine (reported facts, not what `resources` offers).
    pub devices: Vec<pb::Device>,
    /// The cluster scheduler's job this worker runs in (Slurm), reported at registration.
    pub cluster_job: Option<pb::ClusterJob>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("coordinator refused: {}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("the worker has no job kinds to offer")]
    NoKinds,
    #[error("a lease slot ended unexpectedly: {0}")]
    Slot(String),
}

/// Runs the agent until `shutdown` turns true (running jobs are checkpointed and handed back first).
///
/// The worker holds up to `max(1, gpus)` leases at once: one lease loop ("slot") per offered GPU, or one CPU
/// slot on a worker that offers none (one job at a time). Each job takes the GPU ordinals its resources ask
/// for from the worker's pool ([`gpus::GpuPool`]); the coordinator's per-worker accounting never leases more
/// GPUs, CPU threads or GPU memory than the worker offers, so jobs that run side by side never share a GPU.
pub async fn run(
    config: AgentConfig,
    registry: RunnerRegistry,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    if registry.kinds().is_empty() {
        return Err(AgentError::NoKinds);
    }
    let client = transfer::connect(
        &config.coordinator,
        config.token.as_deref(),
        config.ca_cert.as_deref(),
    )?;
    let mut registration = Registration::new(&config, &registry, client.clone());
    let Some(registered) = registration.register(&mut shutdown).await? else {
        return Ok(());
    };
    let slots = config.resources.gpus.max(1);
    let agent = Arc::new(Agent {
        gpus: gpus::GpuPool::new(config.resources.gpus),
        config,
        registry,
        client,
        registration: tokio::sync::Mutex::new(registration),
        registered: Mutex::new(registered),
    });
    // The slots stop on the agent's shutdown, or when one of them fails (the others hand their leases back).
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = tokio::task::JoinSet::new();
    for slot in 0..slots {
        running.spawn(lease_loop(agent.clone(), slot, stop_rx.clone()));
    }
    let mut first_error = None;
    let mut stopping = false;
    loop {
        tokio::select! {
            joined = running.join_next() => {
                let Some(joined) = joined else { break };
                let result = joined.unwrap_or_else(|e| Err(AgentError::Slot(e.to_string())));
                if let Err(error) = result {
                    tracing::warn!(%error, "a lease slot failed; stopping the others");
                    let _ = stop_tx.send(true);
                    first_error.get_or_insert(error);
                }
            }
            changed = shutdown.changed(), if !stopping => {
                if changed.is_err() || *shutdown.borrow() {
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// What the lease slots of one agent share: settings, runners, connection, registration and GPUs.
struct Agent {
    config: AgentConfig,
    registry: RunnerRegistry,
    client: WorkerClient,
    registration: tokio::sync::Mutex<Registration>,
    /// The registration the slots lease under; replaced when the coordinator forgets the worker.
    registered: Mutex<Registered>,
    gpus: Arc<gpus::GpuPool>,
}

impl Agent {
    fn registered(&self) -> Registered {
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Registers again after the coordinator answered that it does not know worker `stale`. Done once for
    /// all slots: a slot that finds the registration already renewed by another uses the new one. Returns
    /// false when the agent shut down meanwhile.
    async fn register_again(
        &self,
        stale: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, AgentError> {
        let mut registration = self.registration.lock().await;
        if self.registered().worker_id != stale {
            return Ok(true);
        }
        tracing::warn!(
            worker = stale,
            "coordinator does not know this worker; registering again"
        );
        registration.known_id = None;
        let Some(fresh) = registration.register(shutdown).await? else {
            return Ok(false);
        };
        *self.registered.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(true)
    }
}

/// One lease slot: long-polls for a job, runs it to its end, and again, until `shutdown` turns true.
async fn lease_loop(
    agent: Arc<Agent>,
    slot: u32,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut delay = Duration::from_millis(50);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let registered = agent.registered();
        let request = pb::LeaseRequest {
            worker_id: registered.worker_id.clone(),
            wait_ms: agent.config.lease_wait.as_millis() as u64,
        };
        let mut lease_client = agent.client.clone();
        let reply = tokio::select! {
            reply = lease_client.lease_job(request) => reply,
            _ = shutdown.changed() => return Ok(()),
        };
        match reply {
            Ok(reply) => {
                delay = Duration::from_millis(50);
                if let Some(lease) = reply.into_inner().lease {
                    run_job(&agent, &registered, slot, lease, shutdown.clone()).await;
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                tracing::debug!(
                    slot,
                    message = status.message(),
                    "lease refused: unknown worker"
                );
                if !agent
                    .register_again(&registered.worker_id, &mut shutdown)
                    .await?
                {
                    return Ok(());
                }
            }
            Err(status) if transfer::is_transient(&status) => {
                tracing::warn!(slot, code = ?status.code(), message = status.message(), "lease call failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(status) => return Err(AgentError::Refused(status)),
        }
    }
}

struct Registration {
    request: pb::RegisterRequest,
    client: WorkerClient,
    known_id: Option<String>,
}

#[derive(Clone)]
struct Registered {
    worker_id: String,
    heartbeat: Duration,
}

impl Registration {
    fn new(config: &AgentConfig, registry: &RunnerRegistry, client: WorkerClient) -> Registration {
        let request = pb::RegisterRequest {
            name: config.name.clone(),
            resources: Some(config.resources),
            kinds: registry.kinds(),
            version: config.version.clone(),
            git_commit: config.git_commit.clone(),
            cargo_lock_sha256: config.cargo_lock_sha256.clone(),
            host: config.host.clone(),
            worker_id: String::new(),
            devices: config.devices.clone(),
            cluster_job: config.cluster_job.clone(),
        };
        Registration {
            request,
            client,
            known_id: None,
        }
    }

    async fn register(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Registered>, AgentError> {
        let mut request = self.request.clone();
        request.worker_id = self.known_id.clone().unwrap_or_default();
        let client = self.client.clone();
        let call = with_retry("register", || {
            let mut client = client.clone();
            let request = request.clone();
            async move { client.register(request).await }
        });
        let reply = tokio::select! {
            reply = call => reply.map_err(AgentError::Refused)?.into_inner(),
            _ = shutdown.changed() => return Ok(None),
        };
        tracing::info!(worker = %reply.worker_id, "registered with the coordinator");
        self.known_id = Some(reply.worker_id.clone());
        Ok(Some(Registered {
            worker_id: reply.worker_id,
            heartbeat: Duration::from_millis(reply.heartbeat_interval_ms.max(50)),
        }))
    }
}

/// Runs one leased job to its end and reports the outcome.
async fn run_job(
    agent: &Agent,
    registered: &Registered,
    slot: u32,
    lease: pb::Lease,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(job) = lease.job.clone() else { return };
    let client = &agent.client;
    let worker_id = registered.worker_id.clone();
    let attempt = lease.attempt;
    // The peak reported when the job finishes is the process's since this lease (with jobs side by side, the
    // whole process's).
    crate::engine::alloc::reset_peak_resident();
    tracing::info!(job = %job.id, kind = %job.kind, name = %job.name, attempt, slot, "job leased");
    let stop = Arc::new(StopFlag::default());
    let progress = Arc::new(Mutex::new((0u64, 0u64)));

    // Heartbeats: renew the lease, carry progress, learn of cancellation.
    let heartbeat = {
        let client = client.clone();
        let (worker_id, job_id, stop, progress) = (
            worker_id.clone(),
            job.id.clone(),
            stop.clone(),
            progress.clone(),
        );
        let interval = registered.heartbeat;
        tokio::spawn(async move {
            loop {
                let (step, total) = *progress.lock().unwrap_or_else(|p| p.into_inner());
                let request = pb::HeartbeatRequest {
                    worker_id: worker_id.clone(),
                    jobs: vec![pb::JobProgress {
                        job_id: job_id.clone(),
                        attempt,
                        step,
                        total,
                    }],
                };
                match client.clone().heartbeat(request).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        if reply.cancel.contains(&job_id) {
                            tracing::info!(job = %job_id, "coordinator says stop (cancelled or lease lost)");
                            stop.request(StopReason::Cancelled);
                        }
                    }
                    Err(status) => tracing::warn!(code = ?status.code(), "heartbeat failed"),
                }
                tokio::time::sleep(interval).await;
            }
        })
    };
    // Shutdown requests reach the runner through the stop flag.
    let shutdown_watch = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while shutdown.changed().await.is_ok() {
                if *shutdown.borrow() {
                    stop.request(StopReason::Shutdown);
                    return;
                }
            }
        })
    };
    let (metrics_tx, metrics_rx) = mpsc::unbounded_channel();
    let sender = tokio::spawn(metric_sender(client.clone(), metrics_rx, stop.clone()));

    let outcome = prepare_and_run(
        agent,
        &worker_id,
        &lease,
        &job,
        metrics_tx,
        stop.clone(),
        progress,
    )
    .await;
    let metrics_ok = sender.await.unwrap_or(false);
    shutdown_watch.abort();

    let result = match outcome {
        Ok(()) if metrics_ok => {
            let request = pb::CompleteRequest {
                worker_id: worker_id.clone(),
                job_id: job.id.clone(),
                attempt,
            };
            with_retry("complete", || {
                let mut client = client.clone();
                let request = request.clone();
                async move { client.complete_job(request).await.map(|_| ()) }
            })
            .await
            .map(|_| "succeeded")
        }
        Ok(()) => Ok("lease lost while sending metrics"),
        Err(RunError::Stopped(StopReason::Shutdown)) => {
            let request = pb::ReleaseRequest {
                worker_id: worker_id.clone(),
                job_id: job.id.clone(),
                attempt,
                reason: "worker shutting down".into(),
            };
            with_retry("release", || {
                let mut client = client.clone();
                let request = request.clone();
                async move { client.release_job(request).await.map(|_| ()) }
            })
            .await
            .map(|_| "handed back")
        }
        Err(RunError::Stopped(reason)) => Ok(match reason {
            StopReason::Cancelled => "cancelled",
            _ => "lease lost",
        }),
        Err(RunError::Failed { reason, permanent }) => {
            tracing::warn!(job = %job.id, %reason, permanent, "job failed");
            let request = pb::FailRequest {
                worker_id: worker_id.clone(),
                job_id: job.id.clone(),
                attempt,
                reason,
                permanent,
            };
            with_retry("fail", || {
                let mut client = client.clone();
                let request = request.clone();
                async move { client.fail_job(request).await.map(|_| ()) }
            })
            .await
            .map(|_| "failed")
        }
    };
    heartbeat.abort();
    match result {
        Ok(what) => {
            // A long-lived worker gives the finished job's freed buffers back before the next job.
            use crate::engine::alloc;
            let peak_rss_mib = alloc::peak_resident_mib();
            alloc::release_free_memory();
            let rss_after_mib = alloc::resident_mib();
            alloc::reset_peak_resident();
            tracing::info!(job = %job.id, attempt, outcome = what, peak_rss_mib, rss_after_mib, "job finished")
        }
        Err(status) => {
            tracing::warn!(job = %job.id, code = ?status.code(), message = status.message(), "could not report the job's outcome")
        }
    }
}

/// Downloads what the job reads, takes the GPU ordinals it asks for, then runs its runner on a blocking thread.
/// The ordinals go back to the worker's pool when this returns, before the outcome is reported (on which the
/// coordinator frees the job's GPUs).
async fn prepare_and_run(
    agent: &Agent,
    worker_id: &str,
    lease: &pb::Lease,
    job: &pb::JobSpec,
    metrics: mpsc::UnboundedSender<MetricMsg>,
    stop: Arc<StopFlag>,
    progress: Arc<Mutex<(u64, u64)>>,
) -> Result<(), RunError> {
    let (config, client) = (&agent.config, &agent.client);
    let Some(runner) = agent.registry.get(&job.kind) else {
        return Err(RunError::permanent(format!(
            "this worker has no runner for job kind {:?}",
            job.kind
        )));
    };
    let cache = config.work_dir.join("blobs");
    let input_cache = InputCache::new(&config.cache_dir);
    let mut inputs = BTreeMap::new();
    for input in &job.inputs {
        let path = input_cache
            .fetch(client, input)
            .await
            .map_err(|e| match e.is_permanent() {
                true => RunError::permanent(e.to_string()),
                false => RunError::retryable(e.to_string()),
            })?;
        inputs.insert(input.role.clone(), path);
    }
    let mut parents = Vec::new();
    for parent in &lease.parents {
        let path = download_to_cache(client, &parent.sha256, &cache)
            .await
            .map_err(|e| RunError::retryable(format!("parent artifact {}: {e}", parent.name)))?;
        parents.push(ParentArtifact {
            job_id: parent.job_id.clone(),
            name: parent.name.clone(),
            sha256: parent.sha256.clone(),
            path,
        });
    }
    let (checkpoint, next_seq) = match &lease.checkpoint {
        Some(c) => {
            let path = download_to_cache(client, &c.sha256, &cache)
                .await
                .map_err(|e| RunError::retryable(format!("checkpoint: {e}")))?;
            tracing::info!(job = %job.id, checkpoint = %c.sha256, metric_seq = c.metric_seq, "resuming from checkpoint");
            (Some(path), c.metric_seq)
        }
        None => (None, 0),
    };
    let gpus = agent
        .gpus
        .acquire(job.resources.map_or(0, |r| r.gpus), &stop)
        .await?;
    if !gpus.ordinals().is_empty() {
        tracing::info!(job = %job.id, gpus = ?gpus.ordinals(), "job pinned to GPUs");
    }
    let work_dir = config.work_dir.join("jobs").join(format!(
        "{}-{}",
        &job.id[..job.id.len().min(16)],
        lease.attempt
    ));
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| RunError::retryable(format!("creating {}: {e}", work_dir.display())))?;
    let mut ctx = JobContext {
        handle: tokio::runtime::Handle::current(),
        client: client.clone(),
        worker_id: worker_id.to_string(),
        lease: lease.clone(),
        job: job.clone(),
        work_dir: work_dir.clone(),
        inputs,
        parents,
        checkpoint,
        next_seq,
        metrics,
        stop,
        progress,
        gpu_ordinals: gpus.ordinals().to_vec(),
    };
    let result = tokio::task::spawn_blocking(move || {
        let result = runner.run(&mut ctx);
        drop(ctx);
        result
    })
    .await
    .unwrap_or_else(|panic| Err(RunError::retryable(format!("runner panicked: {panic}"))));
    let _ = std::fs::remove_dir_all(&work_dir);
    result
}

/// Sends metric batches until the channel closes and everything is acknowledged. Returns false when the
/// lease was lost (the coordinator refused the batches).
async fn metric_sender(
    client: WorkerClient,
    mut rx: mpsc::UnboundedReceiver<MetricMsg>,
    stop: Arc<StopFlag>,
) -> bool {
    let mut pending: VecDeque<pb::MetricBatch> = VecDeque::new();
    let mut flushes = Vec::new();
    let mut closed = false;
    loop {
        if pending.is_empty() {
            for flush in flushes.drain(..) {
                let _: Result<(), bool> = oneshot_send(flush, true);
            }
            if closed {
                return true;
            }
            match rx.recv().await {
                None => closed = true,
                Some(MetricMsg::Batch(b)) => pending.push_back(b),
                Some(MetricMsg::Flush(tx)) => flushes.push(tx),
            }
        }
        loop {
            match rx.try_recv() {
                Ok(MetricMsg::Batch(b)) => pending.push_back(b),
                Ok(MetricMsg::Flush(tx)) => flushes.push(tx),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        if pending.is_empty() {
            continue;
        }
        let take = pending.len().min(512);
        let batches: Vec<pb::MetricBatch> = pending.iter().take(take).cloned().collect();
        let result = with_retry("metrics", || {
            let mut client = client.clone();
            let batches = batches.clone();
            async move { client.stream_metrics(tokio_stream::iter(batches)).await }
        })
        .await;
        match result {
            Ok(_) => {
                pending.drain(..take);
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "metrics refused; stopping the job");
                stop.request(if status.code() == tonic::Code::Aborted {
                    StopReason::Cancelled
                } else {
                    StopReason::LeaseLost
                });
                for flush in flushes.drain(..) {
                    let _ = oneshot_send(flush, false);
                }
                // Drain and drop the rest so the runner never blocks on us.
                while let Some(msg) = rx.recv().await {
                    if let MetricMsg::Flush(tx) = msg {
                        let _ = oneshot_send(tx, false);
                    }
                }
                return false;
            }
        }
    }
}

fn oneshot_send(tx: tokio::sync::oneshot::Sender<bool>, value: bool) -> Result<(), bool> {
    tx.send(value)
}
