//! End-to-end: a worker offering two GPUs runs two 1-GPU jobs side by side, each pinned to its own ordinal. On a
//! machine without a CUDA driver the offer (`--gpus 2 --gpu-memory-mib 40000`) is taken as given, with a
//! warning; the jobs are `test.emit` runs that report the ordinals they were given and when they started and
//! ended (their own clock readings, so the check is only that the two runs overlap).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tandem_tests::{
    Coordinator, FAST, Worker, create_token, status_json, tandem_ok, wait_for, write_manifest,
};

/// Generous: the machine running the tests may be busy.
const LONG: Duration = Duration::from_secs(180);

/// What one job reported: its GPU ordinals and its start and end (Unix ms).
#[derive(Debug, Default)]
struct Placement {
    gpus: Vec<u32>,
    started_ms: f64,
    ended_ms: f64,
}

/// The `placement/*` series of every job in an exported `metrics.csv`, by job name.
fn placements(csv: &str) -> BTreeMap<String, Placement> {
    let mut out: BTreeMap<String, Placement> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let [_, job, series, _, value, _] = fields[..] else {
            panic!("a metrics.csv line has six fields: {line}")
        };
        let value: f64 = value.parse().unwrap();
        let placement = out.entry(job.to_string()).or_default();
        match series {
            "placement/gpu" => placement.gpus.push(value as u32),
            "placement/started_ms" => placement.started_ms = value,
            "placement/ended_ms" => placement.ended_ms = value,
            _ => {}
        }
    }
    out
}

#[test]
fn a_two_gpu_worker_runs_two_one_gpu_jobs_at_once_on_different_ordinals() {
    let found = tandem_kernels::cuda::list_devices().map_or(0, |d| d.len());
    if found == 1 {
        println!(
            "skipped: this machine has one CUDA device, and a worker may not offer more than it finds"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let team = create_token(&store, "--team", Some("radiology"));
    let worker_token = create_token(&store, "--worker", Some("node"));
    let coordinator = Coordinator::start(&store, FAST);
    let worker = Worker::start_with(
        &coordinator.url,
        Some(&worker_token),
        "gpu-node",
        dir.path(),
        &["--gpus", "2", "--gpu-memory-mib", "40000"],
    );
    // No CPU threads asked for: the worker offers one thread, and only the GPUs should limit the jobs.
    let job = |name: &str, seed: u64| {
        json!({"name": name, "kind": "test.emit",
               "resources": {"gpus": 1, "gpu_memory_mib": 30000, "cpu_threads": 0},
               "config": {"steps": 60, "step_ms": 100, "seed": seed, "report_placement": true}})
    };
    let graph = json!({"name": "side-by-side", "jobs": [job("first", 1), job("second", 2)]});
    let path = write_manifest(dir.path(), "gpus.json", &graph);
    let experiment = tandem_ok(
        &coordinator.url,
        Some(&team),
        &["submit", path.to_str().unwrap()],
    )
    .trim()
    .to_string();
    let status = wait_for("the experiment to end", LONG, || {
        let status = status_json(&coordinator.url, Some(&team), &experiment);
        (status["state"] != "running").then_some(status)
    });
    assert_eq!(
        status["state"],
        "succeeded",
        "{status:#}\nworker log:\n{}",
        worker.log()
    );
    let jobs = status["jobs"].as_array().unwrap();
    assert_eq!(
        jobs[0]["worker"], jobs[1]["worker"],
        "one worker ran both: {status:#}"
    );
    let workers: serde_json::Value = serde_json::from_str(&tandem_ok(
        &coordinator.url,
        Some(&team),
        &["workers", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(workers[0]["gpus"], 2, "{workers:#}");
    if found == 0 {
        assert!(
            worker
                .log()
                .contains("offering --gpus 2 without checking them"),
            "{}",
            worker.log()
        );
    }

    let out = dir.path().join("export");
    tandem_ok(
        &coordinator.url,
        Some(&team),
        &["export", &experiment, "--out", out.to_str().unwrap()],
    );
    let reported = placements(&std::fs::read_to_string(out.join("metrics.csv")).unwrap());
    let (first, second) = (&reported["first"], &reported["second"]);
    assert_eq!(first.gpus.len(), 1, "{reported:?}");
    assert_eq!(second.gpus.len(), 1, "{reported:?}");
    let mut ordinals = [first.gpus[0], second.gpus[0]];
    ordinals.sort();
    assert_eq!(ordinals, [0, 1], "each job its own GPU: {reported:?}");
    assert!(
        first.started_ms < second.ended_ms && second.started_ms < first.ended_ms,
        "the two runs overlap: {reported:?}"
    );
}
