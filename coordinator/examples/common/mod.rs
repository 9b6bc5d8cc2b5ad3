//! What the coordinator's benchmarks share: an in-process coordinator's options, loopback channels, job graphs
//! of trivial jobs, simulated workers, percentiles and this process's RSS.

#![allow(dead_code)] // each benchmark uses its own subset

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tandem_coordinator::grpc::Limits;
use tandem_coordinator::scheduler::SchedulerConfig;
use tandem_coordinator::server::ServeOptions;
use tandem_proto as pb;
use tandem_proto::client_service_client::ClientServiceClient;
use tandem_proto::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;

/// The multi-threaded runtime a benchmark runs its coordinator and clients in.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn options(store: &Path) -> ServeOptions {
    ServeOptions {
        store_dir: store.to_path_buf(),
        listen: "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        insecure_local: true,
        tls: None,
        scheduler: SchedulerConfig {
            lease_ttl_ms: 60_000,
            max_lease_wait_ms: 2_000,
            ..SchedulerConfig::default()
        },
        limits: Limits {
            max_message_bytes: 256 << 20,
            // The benchmark measures ingest itself: no per-job rate.
            metric_points_per_s: f64::INFINITY,
            metric_points_burst: f64::INFINITY,
            ..Limits::default()
        },
        http: None,
    }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}

pub fn graph(prefix: &str, jobs: usize) -> Vec<u8> {
    let jobs: Vec<serde_json::Value> = (0..jobs)
        .map(|i| serde_json::json!({"name": format!("{prefix}-{i}"), "kind": "bench.noop", "config": {"p": prefix, "i": i}}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"name": prefix, "jobs": jobs})).unwrap()
}

pub async fn submit(addr: SocketAddr, prefix: &str, jobs: usize) {
    let mut client =
        ClientServiceClient::new(channel(addr).await).max_encoding_message_size(256 << 20);
    client
        .submit_experiment(pb::SubmitRequest {
            manifest: graph(prefix, jobs),
            format: "jobgraph+json".into(),
            manifest_name: format!("{prefix}.json"),
            priority: 0,
            ..Default::default()
        })
        .await
        .unwrap();
}

pub async fn register(client: &mut WorkerServiceClient<Channel>, i: usize) -> String {
    client
        .register(pb::RegisterRequest {
            name: format!("sim{i}"),
            resources: Some(pb::Resources {
                gpus: 0,
                gpu_memory_mib: 0,
                cpu_threads: 1,
            }),
            kinds: vec!["bench.noop".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `workers` simulated workers lease and complete trivial jobs until `total` are done: the elapsed time and the
/// latency of every LeaseJob call that returned a job.
pub async fn dispatch(addr: SocketAddr, workers: usize, total: usize) -> (Duration, Vec<Duration>) {
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..workers {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = WorkerServiceClient::new(channel(addr).await);
            let worker_id = register(&mut client, i).await;
            let mut latencies = Vec::new();
            while done.load(Ordering::SeqCst) < total {
                let t = Instant::now();
                let reply = client
                    .lease_job(pb::LeaseRequest {
                        worker_id: worker_id.clone(),
                        wait_ms: 200,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let Some(lease) = reply.lease else { continue };
                latencies.push(t.elapsed());
                client
                    .complete_job(pb::CompleteRequest {
                        worker_id: worker_id.clone(),
                        job_id: lease.job.unwrap().id,
                        attempt: lease.attempt,
                    })
                    .await
                    .unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    (elapsed, latencies)
}

/// A simulated worker holding one leased job.
pub type Holder = (WorkerServiceClient<Channel>, String, pb::Lease);

/// `n` simulated workers (named from `first_index`) that each lease one ready job.
pub async fn lease_holders(addr: SocketAddr, n: usize, first_index: usize) -> Vec<Holder> {
    let mut holders = Vec::new();
    for i in 0..n {
        let mut client =
            WorkerServiceClient::new(channel(addr).await).max_encoding_message_size(256 << 20);
        let worker_id = register(&mut client, first_index + i).await;
        let lease = client
            .lease_job(pb::LeaseRequest {
                worker_id: worker_id.clone(),
                wait_ms: 2000,
            })
            .await
            .unwrap()
            .into_inner()
            .lease
            .expect("a job to hold");
        holders.push((client, worker_id, lease));
    }
    holders
}

/// Each holder streams `calls` StreamMetrics calls of `batches` batches of `points` points of `train_loss` (a
/// decreasing curve) for its job, concurrently, and then completes the job when `complete` says so: the points
/// acknowledged durably.
pub async fn stream_points(
    holders: Vec<Holder>,
    calls: usize,
    batches: usize,
    points: usize,
    complete: bool,
) -> u64 {
    let mut tasks = Vec::new();
    for (mut client, worker_id, lease) in holders {
        tasks.push(tokio::spawn(async move {
            let job_id = lease.job.unwrap().id;
            let mut seq = 0u64;
            let mut acked = 0u64;
            for _ in 0..calls {
                let stream: Vec<pb::MetricBatch> = (0..batches)
                    .map(|_| {
                        let batch = pb::MetricBatch {
                            job_id: job_id.clone(),
                            attempt: lease.attempt,
                            seq,
                            points: (0..points)
                                .map(|p| {
                                    let step = seq * points as u64 + p as u64;
                                    pb::MetricPoint {
                                        name: "train_loss".into(),
                                        step,
                                        value: 2.0 / (1.0 + step as f64 / 1000.0)
                                            + 0.05 * ((step % 7) as f64),
                                    }
                                })
                                .collect(),
                            worker_id: worker_id.clone(),
                            time_ms: 0,
                        };
                        seq += 1;
                        batch
                    })
                    .collect();
                acked += client
                    .stream_metrics(tokio_stream::iter(stream))
                    .await
                    .unwrap()
                    .into_inner()
                    .points;
            }
            if complete {
                client
                    .complete_job(pb::CompleteRequest {
                        worker_id: worker_id.clone(),
                        job_id,
                        attempt: lease.attempt,
                    })
                    .await
                    .unwrap();
            }
            acked
        }));
    }
    let mut points = 0u64;
    for task in tasks {
        points += task.await.unwrap();
    }
    points
}
