//! Dashboard benchmark (a program, not a test): the web dashboard's reads on a store the size of the scale
//! benchmark's, and the coordinator's dispatch rate while browsers watch. Prints:
//! - the experiment list (`/api/experiments`) with 100,000 jobs stored: median and p95 of 10 requests (each read
//!   afresh: requests are spaced beyond the second within which the dashboard shares a reply among pages),
//! - one curve of 100,000 points served downsampled (min/max per pixel bucket, 600 buckets), and the whole
//!   curves experiment (99 more jobs of 100,000 points each: 10 million points in the store),
//! - jobs dispatched per second with no watcher and with 10 watchers, interleaved over rounds. A watcher does
//!   what the page does: it follows the experiment's event stream and, 300 ms after an event (and at least three
//!   times as long as its last redraw took after that redraw), fetches what the page fetches: the series, the
//!   jobs changed since its last read, the curves, and the tables and selections when a job has ended since.
//!
//! `cargo run --release -p tandem-coordinator --example dashboard_scale -- [--stored-jobs 100000]
//!  [--curve-jobs 100] [--points 100000] [--dispatch-jobs 3000] [--workers 16] [--watchers 10] [--rounds 3]
//!  [--dir DIR]`

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{dispatch, lease_holders, options, percentile, stream_points, submit};
use tandem_coordinator::server::start;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    stored_jobs: usize,
    curve_jobs: usize,
    points: usize,
    dispatch_jobs: usize,
    workers: usize,
    watchers: usize,
    rounds: usize,
    dir: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args {
        stored_jobs: 100_000,
        curve_jobs: 100,
        points: 100_000,
        dispatch_jobs: 3_000,
        workers: 16,
        watchers: 10,
        rounds: 3,
        dir: std::env::temp_dir(),
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        let number = || {
            value
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("{} expects a number, got {value:?}", pair[0]))
        };
        match pair[0].as_str() {
            "--stored-jobs" => args.stored_jobs = number(),
            "--curve-jobs" => args.curve_jobs = number().max(1),
            "--points" => args.points = number(),
            "--dispatch-jobs" => args.dispatch_jobs = number(),
            "--workers" => args.workers = number(),
            "--watchers" => args.watchers = number(),
            "--rounds" => args.rounds = number().max(1),
            "--dir" => args.dir = PathBuf::from(&value),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// `GET path` on the dashboard: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let status = String::from_utf8_lossy(&raw[..head_end])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, raw.split_off(head_end + 4))
}

/// `n` timed requests of `path`, `gap` apart: (median, p95, bytes of the last reply).
async fn timed_apart(
    addr: SocketAddr,
    path: &str,
    n: usize,
    gap: Duration,
) -> (Duration, Duration, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        tokio::time::sleep(gap).await;
        let started = Instant::now();
        let (status, body) = get(addr, path).await;
        times.push(started.elapsed());
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        bytes = body.len();
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.95), bytes)
}

/// Requests further apart than this are each read afresh: the dashboard shares a reply among the pages asking
/// the same within a second (`dashboard/snapshot.rs`).
const UNSHARED: Duration = Duration::from_millis(1100);

/// `n` timed requests of `path`, each read afresh.
async fn timed(addr: SocketAddr, path: &str, n: usize) -> (Duration, Duration, usize) {
    timed_apart(addr, path, n, UNSHARED).await
}

/// The id of the experiment named `name`, from the list the dashboard serves.
async fn experiment_id(addr: SocketAddr, name: &str) -> String {
    let (_, body) = get(addr, "/api/experiments").await;
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["id"].as_str())
        .unwrap_or_else(|| panic!("no experiment {name}"))
        .to_string()
}

/// The fields of an experiment reply a watching page keeps.
#[derive(serde::Deserialize, Default)]
struct Reply {
    seq: Option<u64>,
    state: String,
    jobs: Vec<JobState>,
}

#[derive(serde::Deserialize)]
struct JobState {
    id: String,
    state: String,
}

/// One watching browser: follows the experiment's events and refreshes as the page does (at most every 300 ms
/// after an event). Returns how many refreshes it made once `stop` is set.
async fn watch(addr: SocketAddr, id: String, stop: Arc<AtomicBool>) -> usize {
    let pending = Arc::new(AtomicBool::new(false));
    let mut events = TcpStream::connect(addr).await.unwrap();
    events
        .write_all(
            format!("GET /api/experiments/{id}/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let flag = pending.clone();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(events).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("event: job") {
                flag.store(true, Ordering::SeqCst);
            }
        }
    });
    let mut refreshes = 0;
    let mut ended_key = String::new();
    let mut seq: Option<u64> = None;
    let mut states: std::collections::HashMap<String, String> = Default::default();
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !pending.swap(false, Ordering::SeqCst) {
            continue;
        }
        let started = Instant::now();
        get(addr, &format!("/api/experiments/{id}/series")).await;
        let since = seq.map_or_else(String::new, |s| format!("?since={s}"));
        let (_, body) = get(addr, &format!("/api/experiments/{id}{since}")).await;
        // Only what the page keeps of the reply: the change number and each job's state.
        let view: Reply = serde_json::from_slice(&body).unwrap_or_default();
        seq = view.seq;
        for job in view.jobs {
            states.insert(job.id, job.state);
        }
        let ended = states
            .values()
            .filter(|s| ["succeeded", "failed", "cancelled"].contains(&s.as_str()))
            .count();
        let key = format!("{}/{ended}", view.state);
        if key != ended_key {
            for part in ["tables", "selections"] {
                get(addr, &format!("/api/experiments/{id}/{part}")).await;
            }
            ended_key = key;
        }
        get(
            addr,
            &format!("/api/experiments/{id}/curves?series=train_loss&buckets=400"),
        )
        .await;
        refreshes += 1;
        tokio::time::sleep(started.elapsed() * 3).await;
    }
    reader.abort();
    refreshes
}

fn main() {
    let args = parse_args();
    let runtime = common::runtime();
    runtime.block_on(run(&args));
}

async fn run(args: &Args) {
    let root = args
        .dir
        .join(format!("tandem-dashboard-scale-{}", std::process::id()));
    let store = root.join("store");
    println!(
        "tandem dashboard benchmark: {} stored jobs, {} curve jobs x {} points, {} cores, store under {}",
        args.stored_jobs,
        args.curve_jobs,
        args.points,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        root.display()
    );

    // 1. The store: 100,000 finished jobs, one experiment with one curve of 100,000 points, one with 99 more.
    let started = Instant::now();
    let mut serve = options(&store);
    serve.http = Some("127.0.0.1:0".parse().unwrap());
    let running = start(serve).await.unwrap();
    let http = running.http_addr.expect("the dashboard's address");
    let mut submitted = 0;
    while submitted < args.stored_jobs {
        let n = 10_000.min(args.stored_jobs - submitted);
        submit(running.addr, &format!("fill{submitted}"), n).await;
        submitted += n;
    }
    // A store of finished work: every stored job runs (trivially) to completion.
    dispatch(running.addr, args.workers, submitted).await;
    // Batches of 1,000 points, 10 per call.
    let calls = args.points.div_ceil(10_000);
    let mut points = 0;
    for (name, jobs) in [("one-curve", 1), ("curves", args.curve_jobs - 1)] {
        if jobs == 0 {
            continue;
        }
        submit(running.addr, name, jobs).await;
        let holders = lease_holders(running.addr, jobs, points as usize).await;
        points += stream_points(holders, calls, 10, 1_000, true).await;
    }
    println!(
        "store: {submitted} jobs and {points} metric points written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 2. The dashboard's reads on that store.
    let (p50, p95, bytes) = timed(http, "/api/experiments", 10).await;
    println!(
        "experiment list ({} experiments, {submitted}+ jobs): median {:.1} ms, p95 {:.1} ms, {bytes} bytes",
        submitted.div_ceil(10_000) + 2,
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3
    );
    let one = experiment_id(http, "one-curve").await;
    let path = format!("/api/experiments/{one}/curves?series=train_loss&buckets=600");
    let (p50, p95, bytes) = timed(http, &path, 10).await;
    println!(
        "one curve of {} points, 600 buckets: median {:.1} ms, p95 {:.1} ms, {bytes} bytes",
        args.points,
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3
    );
    if args.curve_jobs > 1 {
        let many = experiment_id(http, "curves").await;
        let path = format!("/api/experiments/{many}/curves?series=train_loss&buckets=600");
        let (p50, p95, bytes) = timed(http, &path, 5).await;
        println!(
            "{} curves of {} points each, 600 buckets: median {:.1} ms, p95 {:.1} ms, {bytes} bytes",
            args.curve_jobs - 1,
            args.points,
            p50.as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3
        );
    }
    let fill = experiment_id(http, "fill0").await;
    let path = format!("/api/experiments/{fill}");
    let (p50, _, bytes) = timed(http, &path, 5).await;
    let (shared, _, _) = timed_apart(http, &path, 5, Duration::ZERO).await;
    println!(
        "one experiment of 10,000 jobs (its job list): median {:.1} ms read, {:.1} ms shared within 1 s, {bytes} bytes",
        p50.as_secs_f64() * 1e3,
        shared.as_secs_f64() * 1e3
    );

    for part in ["series", "tables", "selections", "audit"] {
        let (p50, _, bytes) = timed(http, &format!("/api/experiments/{fill}/{part}"), 3).await;
        println!(
            "  its {part}: median {:.1} ms, {bytes} bytes",
            p50.as_secs_f64() * 1e3
        );
    }

    // 3. Dispatch with and without watchers, alternating which goes first.
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut refreshes = 0;
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for watched in order {
            let name = format!("dispatch-{round}-{watched}");
            submit(running.addr, &name, args.dispatch_jobs).await;
            let id = experiment_id(http, &name).await;
            let stop = Arc::new(AtomicBool::new(false));
            let watchers: Vec<_> = (0..if watched == 1 { args.watchers } else { 0 })
                .map(|_| tokio::spawn(watch(http, id.clone(), stop.clone())))
                .collect();
            let (elapsed, _) = dispatch(running.addr, args.workers, args.dispatch_jobs).await;
            stop.store(true, Ordering::SeqCst);
            for w in watchers {
                refreshes += w.await.unwrap();
            }
            let rate = args.dispatch_jobs as f64 / elapsed.as_secs_f64();
            println!(
                "round {round}: {} watchers: {:.0} jobs/s",
                if watched == 1 { args.watchers } else { 0 },
                rate
            );
            rates[watched].push(rate);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (alone, watched) = (median(&mut rates[0]), median(&mut rates[1]));
    println!(
        "dispatch: median {alone:.0} jobs/s with no watcher, {watched:.0} jobs/s with {} watchers ({:.2}x; {refreshes} page refreshes)",
        args.watchers,
        watched / alone
    );
    running.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
