//! Scale benchmark (a program, not a test): an in-process coordinator on a real store and N simulated workers
//! over loopback gRPC, running trivial jobs. Prints:
//! - jobs dispatched per second with durable state (lease + complete, each acknowledged after a flush),
//! - lease latency p50/p99 (a LeaseJob call that returns a job),
//! - metric points ingested per second with durable acks,
//! - coordinator RSS with 100,000 jobs in the store (a fresh process opening that store).
//!
//! `cargo run --release -p tandem-coordinator --example scale -- [--workers 64] [--jobs 20000]
//!  [--metric-calls 10] [--batches 10] [--points 500] [--stored-jobs 100000] [--dir DIR]`

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{dispatch, lease_holders, options, percentile, rss_mib, stream_points, submit};
use tandem_coordinator::server::start;

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

fn main() {
    let args = parse_args();
    let runtime = common::runtime();
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
    let (elapsed, latencies) = dispatch(addr, args.workers, args.jobs).await;
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
    let holders = lease_holders(addr, args.workers, 1000).await;
    let started = Instant::now();
    let points = stream_points(holders, args.metric_calls, args.batches, args.points, false).await;
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
