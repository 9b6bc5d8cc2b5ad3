//! The chaos suite: a real coordinator and real workers on loopback with a real sled store, faults injected at
//! chosen or seeded points (the coordinator SIGKILLed at crash points, a worker frozen with SIGSTOP past its
//! lease, the network between a worker and the coordinator cut, a full disk, a flipped byte in a stored blob),
//! and what the store holds afterwards compared with what an uninterrupted run stores.
//!
//! A worker SIGKILLed mid-training is in `orchestrator.rs` (it resumes bit for bit on another worker).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_coordinator::chaos::{CRASH_AT_VAR, POINTS};
use tandem_proto as pb;
use tandem_proto::client_service_client::ClientServiceClient;
use tandem_tests::{
    CRASH_LINE, LONG, Lab, Series, Worker, job, runtime, series, series_of, tandem, try_results,
    wait_for, with_token, write_manifest,
};

/// The seed that orders the crash points and picks how often each is passed before it fires.
const CHAOS_SEED: u64 = 0x5eed_c4a0_5000_0020;
/// Coordinator crashes injected by the seeded run.
const CRASHES: usize = 20;

/// splitmix64: a seeded stream for the fault plan (no dependency, the same on every machine).
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `CRASHES` crash specs `POINT:N`: every point once in a seeded order, then seeded picks; N in 1..=3.
fn crash_plan(seed: u64) -> Vec<String> {
    let mut state = seed;
    let mut points: Vec<&str> = POINTS.to_vec();
    for i in (1..points.len()).rev() {
        points.swap(i, (next(&mut state) % (i as u64 + 1)) as usize);
    }
    while points.len() < CRASHES {
        points.push(POINTS[(next(&mut state) % POINTS.len() as u64) as usize]);
    }
    points
        .into_iter()
        .take(CRASHES)
        .map(|p| format!("{p}:{}", 1 + next(&mut state) % 3))
        .collect()
}

/// Steps of each job of a chaos experiment.
const STEPS: [(&str, u64); 3] = [("a", 24), ("b", 24), ("c", 8)];

/// The `n`-th experiment of a chaos run: two trainings with checkpoints feeding a third (their seeds differ
/// per experiment, so nothing is served from the cache).
fn chaos_graph(n: u64) -> serde_json::Value {
    json!({"name": format!("chaos-{n}"), "jobs": [
        {"name": "a", "kind": "test.emit",
         "config": {"steps": 24, "points_per_step": 2, "step_ms": 25, "checkpoint_every": 4, "seed": n * 3 + 1}},
        {"name": "b", "kind": "test.emit",
         "config": {"steps": 24, "step_ms": 25, "checkpoint_every": 6, "seed": n * 3 + 2}},
        {"name": "c", "kind": "test.emit", "deps": ["a", "b"],
         "config": {"steps": 8, "step_ms": 25, "seed": n * 3 + 3}}
    ]})
}

fn client_call<T>(
    url: &str,
    call: impl AsyncFnOnce(
        &mut ClientServiceClient<tonic::transport::Channel>,
    ) -> Result<T, tonic::Status>,
) -> Result<T, String> {
    runtime().block_on(async {
        let mut client = ClientServiceClient::connect(url.to_string())
            .await
            .map_err(|e| e.to_string())?;
        call(&mut client).await.map_err(|e| e.to_string())
    })
}

/// The team's experiments, or why the coordinator could not say.
fn try_list(url: &str, token: &str) -> Result<Vec<pb::ExperimentSummary>, String> {
    client_call(url, async |c| {
        let request = with_token(pb::ListExperimentsRequest::default(), token);
        Ok(c.list_experiments(request).await?.into_inner().experiments)
    })
}

fn audit(url: &str, token: &str, experiment: &str) -> pb::AuditReply {
    client_call(url, async |c| {
        let request = pb::AuditRequest {
            experiment_id: experiment.into(),
            include_log: true,
        };
        Ok(c.audit(with_token(request, token)).await?.into_inner())
    })
    .unwrap_or_else(|e| panic!("audit of {experiment}: {e}"))
}

/// Submits without waiting for the outcome (the coordinator may die while answering).
fn submit_quietly(lab: &Lab, n: u64) {
    let path = write_manifest(lab.dir.path(), &format!("chaos-{n}.json"), &chaos_graph(n));
    let _ = tandem(
        &lab.coordinator.url,
        Some(&lab.team),
        &["submit", path.to_str().unwrap()],
    );
}

/// Each series holds each of its job's steps exactly once; returns the number of duplicated points.
fn assert_exactly_once(experiment: &str, series: &Series) -> usize {
    let mut duplicated = 0;
    for ((job, name), points) in series {
        let steps = STEPS.iter().find(|(j, _)| j == job).map(|s| s.1).unwrap();
        let seen: BTreeSet<u64> = points.iter().map(|p| p.0).collect();
        duplicated += points.len() - seen.len();
        assert_eq!(
            seen,
            (0..steps).collect(),
            "{experiment} {job}/{name}: every step once"
        );
        assert_eq!(points.len() as u64, steps, "{experiment} {job}/{name}");
    }
    duplicated
}

/// Output digests of an experiment by (job name, artifact name).
fn outputs(reply: &pb::ResultsReply) -> BTreeMap<(String, String), String> {
    let names: BTreeMap<&str, &str> = reply
        .status
        .as_ref()
        .unwrap()
        .jobs
        .iter()
        .map(|j| (j.id.as_str(), j.name.as_str()))
        .collect();
    reply
        .artifacts
        .iter()
        .filter(|a| a.role == "output")
        .map(|a| {
            (
                (names[a.job_id.as_str()].to_string(), a.name.clone()),
                a.sha256.clone(),
            )
        })
        .collect()
}

/// Series and outputs of every experiment of a lab, by experiment name, once all have succeeded.
fn finished(lab: &Lab) -> BTreeMap<String, (String, Series, pb::ResultsReply)> {
    let list = wait_for("every experiment to succeed", LONG, || {
        let list = try_list(&lab.coordinator.url, &lab.team).ok()?;
        list.iter().all(|e| e.state == "succeeded").then_some(list)
    });
    list.into_iter()
        .map(|e| {
            let reply = try_results(&lab.coordinator.url, &lab.team, &e.id).unwrap();
            let series = series_of(reply.clone());
            (e.name, (e.id, series, reply))
        })
        .collect()
}

#[test]
fn the_coordinator_killed_at_twenty_seeded_crash_points_loses_and_repeats_nothing() {
    let plan = crash_plan(CHAOS_SEED);
    let mut lab = Lab::start();
    let _workers = [lab.worker("w1"), lab.worker("w2")];
    let mut submitted = 0u64;
    // Points read back from the coordinator before each crash: they were stored, so they must survive.
    let mut acknowledged: BTreeMap<String, Series> = BTreeMap::new();
    let mut crashed_in_startup = 0;
    for spec in &plan {
        if !lab
            .coordinator
            .restart_with_env(&[(CRASH_AT_VAR, spec.as_str())])
        {
            crashed_in_startup += 1;
            continue;
        }
        if let Ok(list) = try_list(&lab.coordinator.url, &lab.team) {
            for experiment in list {
                if let Ok(reply) = try_results(&lab.coordinator.url, &lab.team, &experiment.id) {
                    // Every snapshot counts: a point seen once must be there at the end.
                    let seen = acknowledged.entry(experiment.name).or_default();
                    for (key, points) in series_of(reply) {
                        let known = seen.entry(key).or_default();
                        for point in points {
                            if !known.contains(&point) {
                                known.push(point);
                            }
                        }
                    }
                }
            }
        }
        if spec.starts_with("submit.") {
            submitted += 1;
            submit_quietly(&lab, submitted);
        }
        // Keep work queued until the armed point is reached.
        let start = Instant::now();
        while !lab.coordinator.exited() {
            assert!(
                start.elapsed() < LONG,
                "crash point {spec} not reached in {LONG:?}"
            );
            let idle = try_list(&lab.coordinator.url, &lab.team)
                .is_ok_and(|l| l.iter().all(|e| e.state != "running"));
            if idle && !lab.coordinator.exited() {
                submitted += 1;
                submit_quietly(&lab, submitted);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let crashes = lab.coordinator.log().matches(CRASH_LINE).count();
    assert_eq!(crashes, CRASHES, "every planned crash point fired");
    lab.coordinator.restart();
    let chaotic = finished(&lab);

    // Every job ended once, every stored point is there once, and the audit re-hashes everything.
    let mut points = 0;
    let mut duplicated = 0;
    let mut lost = 0;
    for (name, (id, series, _)) in &chaotic {
        duplicated += assert_exactly_once(name, series);
        points += series.values().map(Vec::len).sum::<usize>();
        for (key, before) in acknowledged.get(name).into_iter().flatten() {
            lost += before.iter().filter(|p| !series[key].contains(p)).count();
        }
        let audit = audit(&lab.coordinator.url, &lab.team, id);
        assert!(audit.ok, "audit of {name}: {:?}", audit.checks);
        let mut completions: BTreeMap<&str, usize> = BTreeMap::new();
        for entry in audit.log.iter().filter(|e| e.action == "complete") {
            *completions.entry(entry.job_id.as_str()).or_default() += 1;
        }
        assert_eq!(completions.len(), STEPS.len(), "{name}: {completions:?}");
        assert!(
            completions.values().all(|n| *n == 1),
            "{name}: a job completed twice: {completions:?}"
        );
    }
    assert_eq!(lost, 0, "acknowledged points lost");

    // The same experiments without faults store the same points and the same outputs.
    let reference = Lab::start();
    let _workers = [reference.worker("r1"), reference.worker("r2")];
    for name in chaotic.keys() {
        let n: u64 = name.trim_start_matches("chaos-").parse().unwrap();
        submit_fresh(&reference, n);
    }
    let calm = finished(&reference);
    assert_eq!(
        chaotic.keys().collect::<Vec<_>>(),
        calm.keys().collect::<Vec<_>>()
    );
    for (name, (_, series, reply)) in &chaotic {
        let (_, calm_series, calm_reply) = &calm[name];
        assert_eq!(series, calm_series, "{name}: metric series differ");
        assert_eq!(
            outputs(reply),
            outputs(calm_reply),
            "{name}: outputs differ"
        );
    }
    println!(
        "chaos: {crashes} coordinator crashes injected ({crashed_in_startup} during start-up recovery), \
         {} experiments completed, {points} points stored, {lost} lost, {duplicated} duplicated",
        chaotic.len()
    );
}

fn submit_fresh(lab: &Lab, n: u64) -> String {
    lab.submit(&format!("chaos-{n}.json"), chaos_graph(n))
}

/// A one-job experiment of `steps` steps (two points each) with a checkpoint every 5.
fn training(name: &str, steps: u64, step_ms: u64) -> serde_json::Value {
    json!({"name": name, "jobs": [
        {"name": "train", "kind": "test.emit",
         "config": {"steps": steps, "points_per_step": 2, "step_ms": step_ms, "checkpoint_every": 5}}
    ]})
}

/// Every series of the one-job experiment holds each of `steps` steps once.
fn assert_each_step_once(lab: &Lab, experiment: &str, steps: u64) {
    let series = series(&lab.coordinator.url, &lab.team, experiment);
    assert!(!series.is_empty());
    for ((job, name), points) in &series {
        let mut seen: Vec<u64> = points.iter().map(|p| p.0).collect();
        seen.sort();
        assert_eq!(seen, (0..steps).collect::<Vec<_>>(), "{job}/{name}");
    }
}

fn wait_progress(lab: &Lab, experiment: &str, at_least: u64) {
    wait_for("training progress", LONG, || {
        let status = lab.status(experiment);
        (job(&status, "train")["progress_step"].as_u64()? >= at_least).then_some(())
    });
}

#[test]
fn a_zombie_worker_is_fenced_off_once_its_lease_has_moved() {
    let lab = Lab::start();
    let zombie = lab.worker("zombie");
    let experiment = lab.submit("zombie.json", training("zombie", 60, 40));
    wait_progress(&lab, &experiment, 8);
    let zombie_id = job(&lab.status(&experiment), "train")["worker"]
        .as_str()
        .unwrap()
        .to_string();
    // Frozen past its lease (1.5 s): the job moves to a second worker.
    zombie.signal("STOP");
    let _second = lab.worker("second");
    let second_id = wait_for("the job to move to the second worker", LONG, || {
        let status = lab.status(&experiment);
        let train = job(&status, "train");
        let worker = train["worker"].as_str()?;
        (train["attempts"] == 2 && worker != zombie_id).then(|| worker.to_string())
    });
    wait_progress(&lab, &experiment, 20);
    // Thawed, the zombie's heartbeat, metrics and uploads carry a stale attempt: it is told to drop the job.
    zombie.signal("CONT");
    wait_for("the zombie to drop the job", LONG, || {
        let log = zombie.log();
        (log.contains("coordinator says stop") || log.contains("metrics refused")).then_some(())
    });
    let status = lab.wait_state(&experiment, "succeeded");
    let train = job(&status, "train");
    assert_eq!(train["attempts"], 2, "{train}");
    assert_eq!(train["worker"], second_id.as_str(), "{train}");
    assert_each_step_once(&lab, &experiment, 60);
    let audit = audit(&lab.coordinator.url, &lab.team, &experiment);
    assert!(audit.ok, "{:?}", audit.checks);
    let completions: Vec<_> = audit
        .log
        .iter()
        .filter(|e| e.action == "complete")
        .collect();
    assert_eq!(completions.len(), 1, "{completions:?}");
    assert_eq!(completions[0].actor, format!("worker:{second_id}"));
}

/// A TCP proxy between a worker and the coordinator whose link can be cut: while cut it resets every open
/// connection and every new one.
struct Proxy {
    url: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (upstream, accept_cut, accept_open) = (upstream.to_string(), cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if accept_cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut open = accept_open.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        Proxy { url, cut, open }
    }

    /// Resets every connection and refuses new ones until [`Proxy::heal`].
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies bytes from `from` to `to` on a thread until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

#[test]
fn a_network_cut_shorter_than_the_lease_keeps_the_lease_and_loses_no_point() {
    // A 3 s lease, heartbeats every 100 ms; the link is cut for 1 s.
    let lab = Lab::start_with(&[
        "--lease-ttl-ms",
        "3000",
        "--heartbeat-ms",
        "100",
        "--backoff-ms",
        "100",
    ]);
    let proxy = Proxy::start(&lab.coordinator.addr);
    let worker = Worker::start(
        &proxy.url,
        Some(&lab.worker_token),
        "behind-proxy",
        lab.dir.path(),
    );
    let experiment = lab.submit("cut.json", training("cut", 60, 40));
    wait_progress(&lab, &experiment, 10);
    proxy.cut();
    std::thread::sleep(Duration::from_millis(1000));
    proxy.heal();
    let status = lab.wait_state(&experiment, "succeeded");
    let train = job(&status, "train");
    assert_eq!(train["attempts"], 1, "the lease was kept: {train}");
    assert_each_step_once(&lab, &experiment, 60);
    let log = worker.log();
    assert!(
        log.contains("heartbeat failed") || log.contains("coordinator unreachable"),
        "the worker never noticed the cut: {log}"
    );
}

/// A tmpfs of `bytes` mounted on `path` (the test runs as root, as CI does); unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &std::path::Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a {bytes}-byte tmpfs on {} needs root: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[test]
fn a_full_scratch_disk_fails_the_attempt_naming_path_and_bytes_then_the_retry_succeeds() {
    // A 2 s back-off leaves time to free the disk between the attempts.
    let lab = Lab::start_with(&["--heartbeat-ms", "100", "--backoff-ms", "2000"]);
    // The worker's scratch folder is `<dir>/<name>`: a 2 MiB disk, all but 64 KiB taken by a filler file.
    let disk = SmallDisk::mount(&lab.dir.path().join("cramped"), 2 << 20);
    let filler = disk.path.join("filler");
    std::fs::write(&filler, vec![0u8; (2 << 20) - (64 << 10)]).unwrap();
    let _worker = lab.worker("cramped");
    let experiment = lab.submit(
        "full.json",
        json!({"name": "full", "jobs": [
            {"name": "train", "kind": "test.emit", "config": {"steps": 3, "output_bytes": 1_048_576}}
        ]}),
    );
    let error = wait_for("the first attempt to fail", LONG, || {
        let status = lab.status(&experiment);
        job(&status, "train")["last_error"]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        error.contains("1048576 bytes")
            && error.contains("output.bin")
            && error.contains("No space left on device"),
        "{error}"
    );
    // The coordinator kept serving and its store reads back; free the space and the retry succeeds.
    std::fs::remove_file(&filler).unwrap();
    let status = lab.wait_state(&experiment, "succeeded");
    assert_eq!(job(&status, "train")["attempts"], 2);
    let outputs = tandem_tests::artifacts(&lab.coordinator.url, &lab.team, &experiment);
    assert!(
        outputs
            .iter()
            .any(|a| a.name == "output.bin" && a.size == 1_048_576),
        "{outputs:?}"
    );
}

#[test]
fn a_flipped_byte_in_a_stored_artifact_is_caught_on_read_and_never_used() {
    let lab = Lab::start();
    let _worker = lab.worker("w1");
    let producer = json!({"name": "a", "kind": "test.emit", "config": {"steps": 2, "seed": 5}});
    let first = lab.submit(
        "first.json",
        json!({"name": "first", "jobs": [producer.clone()]}),
    );
    lab.wait_state(&first, "succeeded");
    let output = tandem_tests::artifacts(&lab.coordinator.url, &lab.team, &first)
        .into_iter()
        .find(|a| a.name == "output.bin")
        .unwrap();
    // Flip one byte of the stored blob.
    let blob = lab
        .coordinator
        .store
        .join("blobs")
        .join(&output.sha256[..2])
        .join(&output.sha256);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[7] ^= 0x20;
    std::fs::write(&blob, &bytes).unwrap();

    // The audit names it.
    let first_audit = audit(&lab.coordinator.url, &lab.team, &first);
    assert!(!first_audit.ok);
    let bad: Vec<_> = first_audit.checks.iter().filter(|c| !c.ok).collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].subject.contains("a/output.bin"), "{bad:?}");

    // A consumer of the damaged output never gets the bad bytes: each attempt's download is refused with the
    // blob named, and the consumer fails naming the artifact (the producer's cached success is not re-run).
    let second = lab.submit(
        "second.json",
        json!({"name": "second", "jobs": [producer,
            {"name": "b", "kind": "test.emit", "deps": ["a"], "config": {"steps": 2}}]}),
    );
    let status = lab.wait_state(&second, "failed");
    let consumer = job(&status, "b");
    let error = consumer["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("parent artifact output.bin")
            && error.contains(&format!("blob {} is corrupt", output.sha256)),
        "{consumer}"
    );
    let stored = tandem_tests::artifacts(&lab.coordinator.url, &lab.team, &second);
    assert!(
        !stored
            .iter()
            .any(|a| a.job_id == consumer["id"].as_str().unwrap()),
        "the consumer stored something: {stored:?}"
    );
}
