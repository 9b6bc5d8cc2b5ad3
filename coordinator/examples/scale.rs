//! Scale benchmark (a program, not a test): an in-process coordinator on a real store and N simulated workers
//! over loopback gRPC, running trivial jobs. Prints:
//! - jobs dispatched per second with durable state (lease + complete, each acknowledged after a flush),
//! - lease latency p50/p99 (a LeaseJob call that returns a job),
//! - metric points ingested per second with durable acks,
//! - coordinator RSS with 100,000 jobs in the store (a fresh process opening that store).
//!
//! `cargo run --release -p tandem-coordinator --example scale -- [--workers 64] [--jobs 20000]
//!  [--metric-calls 10] [--batches 10] [--points 500] [--stored-jobs 100000] [--dir DIR]`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tandem_coordinator::grpc::Limits;
use tandem_coordinator::scheduler::SchedulerConfig;
use tandem_coordinator::server::{ServeOptions, start};
use tandem_proto as pb;
use tandem_proto::client_service_client::ClientServiceClient;
use tandem_proto::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;

struct Args {
    workers: usize,
    jobs: usize,
    metric_calls: usize,
    batches: usize,
    points: usize,
    stored_jobs: usize,
    dir: PathBuf,
    rss_only: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        workers: 64,
        jobs: 20_000,
        metric_calls: 10,
        batches: 10,
        points: 500,
        stored_jobs: 100_000,
        dir: std::env::temp_dir(),
        rss_only: None,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < raw.len() {
        let value = raw.get(i + 1).cloned().unwrap_or_default();
        let number = || {
            value
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("{} expects a number, got {value:?}", raw[i]))
        };
        match raw[i].as_str() {
            "--workers" => args.workers = number(),
            "--jobs" => args.jobs = number(),
            "--metric-calls" => args.metric_calls = number(),
            "--batches" => args.batches = number(),
            "--points" => args.points = number(),
            "--stored-jobs" => args.stored_jobs = number(),
            "--dir" => args.dir = PathBuf::from(&value),
            "--rss-only" => args.rss_only = Some(PathBuf::from(&value)),
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    args
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn options(store: &Path) -> ServeOptions {
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

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}

fn graph(prefix: &str, jobs: usize) -> Vec<u8> {
    let jobs: Vec<serde_json::Value> = (0..jobs)
        .map(|i| serde_json::json!({"name": format!("{prefix}-{i}"), "kind": "bench.noop", "config": {"p": prefix, "i": i}}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"name": prefix, "jobs": jobs})).unwrap()
}

async fn submit(addr: SocketAddr, prefix: &str, jobs: usize) {
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

async fn register(client: &mut WorkerServiceClient<Channel>, i: usize) -> String {
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(store) = &args.rss_only {
        runtime.block_on(async {
            let started = Instant::now();
            let running = start(options(store)).await.unwrap();
            let jobs: usize = running.scheduler.experiments(None).iter().map(|e| e.0.job_ids.len()).sum();
            println!(
                "memory: a fresh coordinator process opened the store with {jobs} jobs in {:.2} s; RSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                rss_mib()
            );
        });
        return;
    }
    let (root, store) = runtime.block_on(run(&args));
    // Dropping the runtime stops every server task, releasing the store for the measuring process.
    drop(runtime);
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .arg("--rss-only")
        .arg(&store)
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&root);
}

async fn run(args: &Args) -> (PathBuf, PathBuf) {
    let root = args
        .dir
        .join(format!("tandem-scale-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    println!(
        "tandem scale benchmark: {} workers, {} jobs, {} cores, store under {}",
        args.workers,
        args.jobs,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        root.display()
    );

    // 1. Dispatch throughput and lease latency.
    let running = start(options(&root.join("dispatch"))).await.unwrap();
    let addr = running.addr;
    submit(addr, "dispatch", args.jobs).await;
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.workers {
        let done = done.clone();
        let total = args.jobs;
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
    println!(
        "dispatch: {} jobs in {:.2} s = {:.0} jobs/s (lease + complete, durable); lease latency p50 {:.2} ms, p99 {:.2} ms",
        args.jobs,
        elapsed.as_secs_f64(),
        args.jobs as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );

    // 2. Metric ingestion: each worker holds one job and streams batches.
    submit(addr, "metrics", args.workers).await;
    let mut holders = Vec::new();
    for i in 0..args.workers {
        let mut client =
            WorkerServiceClient::new(channel(addr).await).max_encoding_message_size(256 << 20);
        let worker_id = register(&mut client, 1000 + i).await;
        let lease = client
            .lease_job(pb::LeaseRequest {
                worker_id: worker_id.clone(),
                wait_ms: 2000,
            })
            .await
            .unwrap()
            .into_inner()
            .lease
            .expect("a metrics job");
        holders.push((client, worker_id, lease));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut client, worker_id, lease) in holders {
        let (calls, batches, points) = (args.metric_calls, args.batches, args.points);
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
                                .map(|p| pb::MetricPoint {
                                    name: "train/loss".into(),
                                    step: seq * points as u64 + p as u64,
                                    value: p as f64,
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
            acked
        }));
    }
    let mut points = 0u64;
    for task in tasks {
        points += task.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "metrics: {points} points acknowledged durably in {:.2} s = {:.0} points/s ({} workers x {} calls x {} batches x {} points)",
        elapsed.as_secs_f64(),
        points as f64 / elapsed.as_secs_f64(),
        args.workers,
        args.metric_calls,
        args.batches,
        args.points
    );
    println!(
        "in-process RSS after dispatch + metrics (coordinator and {} clients): {:.1} MiB",
        args.workers,
        rss_mib()
    );
    running.shutdown().await.unwrap();

    // 3. Memory with many jobs stored: fill a store, then measure a fresh coordinator process opening it.
    let store = root.join("stored");
    let running = start(options(&store)).await.unwrap();
    let chunk = 10_000;
    let started = Instant::now();
    let mut submitted = 0;
    while submitted < args.stored_jobs {
        let n = chunk.min(args.stored_jobs - submitted);
        submit(running.addr, &format!("fill{submitted}"), n).await;
        submitted += n;
    }
    println!(
        "stored {submitted} jobs in {:.2} s ({:.0} jobs/s submitted); RSS of this process now {:.1} MiB",
        started.elapsed().as_secs_f64(),
        submitted as f64 / started.elapsed().as_secs_f64(),
        rss_mib()
    );
    running.shutdown().await.unwrap();
    (root, store)
}
