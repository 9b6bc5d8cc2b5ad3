//! End-to-end: a real `tandem serve` and real `tandem-worker` processes on loopback, driven through the CLI
//! (and the raw gRPC API where a test needs to misbehave on purpose). Every test uses the deterministic
//! `test.emit` job kind.

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use tandem_proto as pb;
use tandem_proto::worker_service_client::WorkerServiceClient;
use tandem_tests::{
    Coordinator, FAST, LONG, Lab, artifacts, create_token, job, long_training_manifest, runtime,
    series, status_json, tandem, tandem_ok, wait_for, with_token, write_manifest,
};

/// Asserts each of the `steps` steps appears exactly once in a series.
fn assert_each_step_once(points: &[(u64, f64)], steps: u64) {
    let mut seen: Vec<u64> = points.iter().map(|p| p.0).collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..steps).collect::<Vec<_>>(),
        "every step exactly once"
    );
}

/// How `tandem workers` should summarise a real worker's devices on this machine: "none" without CUDA.
fn expected_devices() -> String {
    let devices: Vec<pb::Device> = tandem_kernels::cuda::list_devices()
        .unwrap_or_default()
        .into_iter()
        .map(|d| pb::Device {
            ordinal: d.ordinal,
            name: d.name,
            memory_mib: d.memory_mib,
            compute_capability: d.compute_capability,
        })
        .collect();
    pb::devices_summary(&devices)
}

fn expected_device_count() -> usize {
    tandem_kernels::cuda::list_devices()
        .map(|d| d.len())
        .unwrap_or(0)
}

#[test]
fn two_workers_run_an_experiment_with_folds_to_the_end() {
    let lab = Lab::start();
    std::fs::write(
        lab.dir.path().join("reports.csv"),
        "id,text\n1,clear lungs\n",
    )
    .unwrap();
    let _w1 = lab.worker("w1");
    let _w2 = lab.worker("w2");
    let experiment = lab.submit(
        "small.json",
        json!({"name": "small", "files": ["reports.csv"], "jobs": [
            {"name": "prep", "kind": "test.emit", "inputs": ["reports.csv"], "config": {"steps": 3}},
            {"name": "train fold 0", "kind": "test.emit", "deps": ["prep"], "config": {"steps": 8, "seed": 0, "step_ms": 10}},
            {"name": "train fold 1", "kind": "test.emit", "deps": ["prep"], "config": {"steps": 8, "seed": 1, "step_ms": 10}},
            {"name": "report", "kind": "test.emit", "deps": ["train fold 0", "train fold 1"], "config": {"steps": 1}}
        ]}),
    );
    let watch = tandem(
        &lab.coordinator.url,
        Some(&lab.team),
        &["watch", &experiment],
    );
    let watch_out = String::from_utf8_lossy(&watch.stdout);
    assert!(watch.status.success(), "watch: {watch_out}");
    assert!(
        watch_out.contains(&format!("experiment {experiment} succeeded")),
        "{watch_out}"
    );
    let status = lab.status(&experiment);
    for j in status["jobs"].as_array().unwrap() {
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["attempts"], 1, "{j}");
    }
    let metrics = series(&lab.coordinator.url, &lab.team, &experiment);
    assert_each_step_once(&metrics[&("train fold 1".into(), "train/loss".into())], 8);
    assert_eq!(
        artifacts(&lab.coordinator.url, &lab.team, &experiment)
            .iter()
            .filter(|a| a.role == "output")
            .count(),
        4
    );
    // Results, audit and export work on the finished experiment.
    let results = tandem_ok(
        &lab.coordinator.url,
        Some(&lab.team),
        &["results", &experiment, "--format", "csv"],
    );
    assert!(
        results.contains("train fold 0,succeeded,train/loss,8,7,"),
        "{results}"
    );
    let audit = tandem_ok(
        &lab.coordinator.url,
        Some(&lab.team),
        &["audit", &experiment],
    );
    assert!(
        audit.contains("PASS: ") && !audit.contains("FAIL"),
        "{audit}"
    );
    // Each worker reported the CUDA devices it found (none on a machine without the driver), as facts, and
    // offers them (no --gpus flag).
    let expected = expected_devices();
    let environments: Vec<&str> = audit
        .lines()
        .skip_while(|l| !l.ends_with("devices found"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(environments.len(), 4, "one line per job: {audit}");
    assert!(
        environments.iter().all(|l| l.ends_with(&expected)),
        "{audit}"
    );
    let workers = tandem_ok(&lab.coordinator.url, Some(&lab.team), &["workers"]);
    let rows: Vec<&str> = workers.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{workers}");
    assert!(rows.iter().all(|r| r.ends_with(&expected)), "{workers}");
    let listed: serde_json::Value = serde_json::from_str(&tandem_ok(
        &lab.coordinator.url,
        Some(&lab.team),
        &["workers", "--format", "json"],
    ))
    .unwrap();
    for w in listed.as_array().unwrap() {
        assert_eq!(w["gpus"], expected_device_count(), "{w}");
        let devices = w["devices"].as_array().unwrap();
        assert_eq!(devices.len(), expected_device_count(), "{w}");
    }
    let out = lab.dir.path().join("export");
    tandem_ok(
        &lab.coordinator.url,
        Some(&lab.team),
        &["export", &experiment, "--out", out.to_str().unwrap()],
    );
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 + 8 + 8 + 1);
    // Each point carries the wall-clock time its batch was emitted (Unix ms, within this test's run).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for line in csv.lines().skip(1) {
        let time_ms: u64 = line.rsplit(',').next().unwrap().parse().unwrap();
        assert!(time_ms > now_ms - 600_000 && time_ms <= now_ms, "{line}");
    }
    assert_eq!(
        std::fs::read_to_string(out.join("inputs").join("reports.csv")).unwrap(),
        "id,text\n1,clear lungs\n"
    );
}

#[test]
fn a_worker_killed_mid_job_resumes_from_its_checkpoint_on_the_other_worker() {
    let lab = Lab::start();
    let mut first = lab.worker("first");
    let experiment = lab.submit(
        "train.json",
        json!({"name": "crash", "jobs": [
            {"name": "train", "kind": "test.emit",
             "config": {"steps": 40, "points_per_step": 2, "step_ms": 40, "checkpoint_every": 5}}
        ]}),
    );
    // Wait for a checkpoint past step 5, then kill the worker without warning.
    wait_for("a checkpoint", LONG, || {
        artifacts(&lab.coordinator.url, &lab.team, &experiment)
            .iter()
            .any(|a| a.role == "checkpoint")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(150));
    first.kill();
    let second = lab.worker("second");
    let status = lab.wait_state(&experiment, "succeeded");
    let train = job(&status, "train");
    assert_eq!(train["attempts"], 2, "{train}");
    assert!(
        train["worker"].as_str().unwrap().ends_with("node"),
        "{train}"
    );
    let log = second.log();
    assert!(
        log.contains("resuming from checkpoint"),
        "second worker did not resume: {log}"
    );
    let metrics = series(&lab.coordinator.url, &lab.team, &experiment);
    assert_each_step_once(&metrics[&("train".into(), "train/loss".into())], 40);
    assert_each_step_once(&metrics[&("train".into(), "train/aux1".into())], 40);
}

#[test]
fn a_coordinator_killed_and_restarted_completes_with_every_acknowledged_point() {
    let mut lab = Lab::start();
    let _w1 = lab.worker("w1");
    let _w2 = lab.worker("w2");
    let experiment = lab.submit(
        "restart.json",
        json!({"name": "restart", "jobs": [
            {"name": "a", "kind": "test.emit", "config": {"steps": 30, "step_ms": 40, "checkpoint_every": 10}},
            {"name": "b", "kind": "test.emit", "config": {"steps": 30, "step_ms": 40, "seed": 9}},
            {"name": "c", "kind": "test.emit", "deps": ["a", "b"], "config": {"steps": 5}}
        ]}),
    );
    // Some points acknowledged before the crash.
    let before = wait_for("metric points", LONG, || {
        let m = series(&lab.coordinator.url, &lab.team, &experiment);
        let a = m
            .get(&("a".into(), "train/loss".into()))
            .map_or(0, Vec::len);
        (a >= 5).then_some(m)
    });
    lab.coordinator.kill();
    std::thread::sleep(Duration::from_millis(300));
    lab.coordinator.restart();
    let status = lab.wait_state(&experiment, "succeeded");
    let metrics = series(&lab.coordinator.url, &lab.team, &experiment);
    for (key, points) in &before {
        for point in points {
            assert!(
                metrics[key].contains(point),
                "acknowledged point {point:?} of {key:?} lost"
            );
        }
    }
    assert_each_step_once(&metrics[&("a".into(), "train/loss".into())], 30);
    assert_each_step_once(&metrics[&("b".into(), "train/loss".into())], 30);
    assert_each_step_once(&metrics[&("c".into(), "train/loss".into())], 5);
    assert_eq!(job(&status, "c")["state"], "succeeded");
    assert!(lab.coordinator.log().contains("coordinator serving"));
}

#[test]
fn cancel_mid_run_stops_the_worker_within_a_heartbeat() {
    let lab = Lab::start();
    let worker = lab.worker("w1");
    let experiment = lab.submit(
        "long.json",
        json!({"name": "long", "jobs": [{"name": "forever", "kind": "test.emit", "config": {"steps": 100000, "step_ms": 10}}]}),
    );
    wait_for("the job running", LONG, || {
        (job(&lab.status(&experiment), "forever")["state"] == "running").then_some(())
    });
    let out = tandem_ok(
        &lab.coordinator.url,
        Some(&lab.team),
        &["cancel", &experiment],
    );
    assert!(out.contains("cancelled 1 jobs"), "{out}");
    assert_eq!(lab.status(&experiment)["state"], "cancelled");
    wait_for("the worker to stop the job", LONG, || {
        worker.log().contains("outcome=\"cancelled\"").then_some(())
    });
    // The worker is free again.
    let next = lab.submit("next.json", json!({"name": "next", "jobs": [{"name": "quick", "kind": "test.emit", "config": {"steps": 2}}]}));
    lab.wait_state(&next, "succeeded");
    // Retry requeues the cancelled job.
    let out = tandem_ok(
        &lab.coordinator.url,
        Some(&lab.team),
        &["retry", &experiment],
    );
    assert!(out.contains("requeued 1 jobs"), "{out}");
    wait_for("the retried job running", LONG, || {
        (job(&lab.status(&experiment), "forever")["state"] == "running").then_some(())
    });
    tandem_ok(
        &lab.coordinator.url,
        Some(&lab.team),
        &["cancel", &experiment],
    );
}

#[test]
fn sigterm_checkpoints_and_hands_the_lease_back() {
    let lab = Lab::start();
    let mut first = lab.worker("first");
    let experiment = lab.submit(
        "term.json",
        json!({"name": "term", "jobs": [{"name": "train", "kind": "test.emit",
              "config": {"steps": 30, "step_ms": 40, "checkpoint_every": 100}}]}),
    );
    wait_for("the job past step 3", LONG, || {
        let m = series(&lab.coordinator.url, &lab.team, &experiment);
        (m.get(&("train".into(), "train/loss".into()))
            .map_or(0, Vec::len)
            >= 3)
            .then_some(())
    });
    assert!(
        first.terminate(),
        "worker exits cleanly on SIGTERM: {}",
        first.log()
    );
    assert!(first.log().contains("handed back"), "{}", first.log());
    let status = lab.status(&experiment);
    assert_eq!(job(&status, "train")["state"], "ready");
    assert_eq!(
        job(&status, "train")["attempts"],
        0,
        "a handed-back lease is not a failed attempt"
    );
    let second = lab.worker("second");
    lab.wait_state(&experiment, "succeeded");
    assert!(
        second.log().contains("resuming from checkpoint"),
        "{}",
        second.log()
    );
    assert_each_step_once(
        &series(&lab.coordinator.url, &lab.team, &experiment)
            [&("train".into(), "train/loss".into())],
        30,
    );
}

#[test]
fn a_second_submit_of_the_same_jobs_is_served_from_the_cache() {
    let lab = Lab::start();
    let worker = lab.worker("w1");
    let graph = json!({"name": "cache", "jobs": [
        {"name": "stage1", "kind": "test.emit", "config": {"steps": 4}},
        {"name": "stage2", "kind": "test.emit", "deps": ["stage1"], "config": {"steps": 4}}
    ]});
    let first = lab.submit("a.json", graph.clone());
    lab.wait_state(&first, "succeeded");
    let leases_before = worker.log().matches("job leased").count();
    let second = lab.submit("b.json", graph);
    assert_ne!(first, second);
    let status = lab.status(&second);
    assert_eq!(status["state"], "succeeded");
    for j in status["jobs"].as_array().unwrap() {
        assert_eq!(j["cached"], true, "{j}");
        assert_eq!(j["attempts"], 1, "{j}");
    }
    // Metrics and artifacts are shared, and nothing ran again.
    assert_eq!(
        series(&lab.coordinator.url, &lab.team, &second),
        series(&lab.coordinator.url, &lab.team, &first)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(worker.log().matches("job leased").count(), leases_before);
    // A changed stage 2 reuses stage 1 and runs only stage 2.
    let third = lab.submit(
        "c.json",
        json!({"name": "cache", "jobs": [
            {"name": "stage1", "kind": "test.emit", "config": {"steps": 4}},
            {"name": "stage2", "kind": "test.emit", "deps": ["stage1"], "config": {"steps": 5}}
        ]}),
    );
    let status = lab.wait_state(&third, "succeeded");
    assert_eq!(job(&status, "stage1")["cached"], true);
    assert_eq!(job(&status, "stage2")["cached"], false);
    assert_eq!(
        worker.log().matches("job leased").count(),
        leases_before + 1
    );
}

#[test]
fn a_bad_manifest_is_rejected_with_the_field_named_and_nothing_queued() {
    let lab = Lab::start();
    let path = write_manifest(
        lab.dir.path(),
        "bad.json",
        &json!({"name": "bad", "jobs": [
            {"name": "a", "kind": "test.emit"},
            {"name": "b", "kind": "test.emit", "deps": ["nope"]}
        ]}),
    );
    let out = tandem(
        &lab.coordinator.url,
        Some(&lab.team),
        &["submit", path.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json: jobs[1] (b).deps[0]: unknown job \"nope\""),
        "{err}"
    );
    let list = tandem_ok(
        &lab.coordinator.url,
        Some(&lab.team),
        &["status", "--format", "json"],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list).unwrap(),
        json!([])
    );
}

#[test]
fn wrong_team_missing_and_worker_tokens_are_denied() {
    let lab = Lab::start();
    let other = {
        // Tokens can also be created through the running coordinator with an admin token.
        let admin = {
            let out = tandem(
                &lab.coordinator.url,
                Some(&lab.team),
                &["token", "create", "--team", "intruders"],
            );
            assert!(!out.status.success(), "a team token cannot create tokens");
            assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"));
            lab.worker_token.clone()
        };
        let out = tandem(
            &lab.coordinator.url,
            Some(&admin),
            &["token", "create", "--team", "intruders"],
        );
        assert!(!out.status.success(), "a worker token cannot create tokens");
        // Stop, add a token offline, and serve again.
        drop(lab.coordinator);
        let store = lab.dir.path().join("store");
        let other = create_token(&store, "--team", Some("intruders"));
        (other, Coordinator::start(&store, FAST))
    };
    let (other_token, coordinator) = other;
    let path = write_manifest(
        lab.dir.path(),
        "mine.json",
        &json!({"name": "mine", "jobs": [{"name": "a", "kind": "test.emit"}]}),
    );
    let experiment = tandem_ok(
        &coordinator.url,
        Some(&lab.team),
        &["submit", path.to_str().unwrap()],
    )
    .trim()
    .to_string();
    let denied = tandem(
        &coordinator.url,
        Some(&other_token),
        &["status", &experiment],
    );
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("PermissionDenied"),
        "{denied:?}"
    );
    let denied = tandem(
        &coordinator.url,
        Some(&other_token),
        &["cancel", &experiment],
    );
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("PermissionDenied"),
        "{denied:?}"
    );
    let listed = tandem_ok(
        &coordinator.url,
        Some(&other_token),
        &["status", "--format", "json"],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listed).unwrap(),
        json!([]),
        "other teams' experiments are invisible"
    );
    let anonymous = tandem(&coordinator.url, None, &["status", &experiment]);
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("Unauthenticated"),
        "{anonymous:?}"
    );
    let forged = tandem(&coordinator.url, Some("tdm_0000"), &["status"]);
    assert!(
        String::from_utf8_lossy(&forged.stderr).contains("Unauthenticated"),
        "{forged:?}"
    );
    let as_worker = tandem(&coordinator.url, Some(&lab.worker_token), &["status"]);
    assert!(
        String::from_utf8_lossy(&as_worker.stderr).contains("PermissionDenied"),
        "{as_worker:?}"
    );
    assert_eq!(
        status_json(&coordinator.url, Some(&lab.team), &experiment)["state"],
        "running"
    );
}

#[test]
fn a_corrupted_or_escaping_artifact_upload_is_rejected() {
    let lab = Lab::start();
    let experiment = lab.submit(
        "one.json",
        json!({"name": "one", "jobs": [{"name": "a", "kind": "test.emit"}]}),
    );
    let url = lab.coordinator.url.clone();
    let token = lab.worker_token.clone();
    runtime().block_on(async move {
        let mut worker = WorkerServiceClient::connect(url.clone()).await.unwrap();
        let registered = worker
            .register(with_token(
                pb::RegisterRequest {
                    name: "ignored".into(),
                    resources: Some(pb::Resources {
                        gpus: 0,
                        gpu_memory_mib: 0,
                        cpu_threads: 1,
                    }),
                    kinds: vec!["test.emit".into()],
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let lease = worker
            .lease_job(with_token(
                pb::LeaseRequest {
                    worker_id: registered.worker_id.clone(),
                    wait_ms: 2000,
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
            .lease
            .expect("a lease");
        let job_id = lease.job.unwrap().id;
        let data = b"adapter weights".to_vec();
        let good_sha: String = Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let upload = |name: &str, sha: &str, bytes: Vec<u8>| {
            let header = pb::ArtifactHeader {
                job_id: job_id.clone(),
                attempt: lease.attempt,
                name: name.into(),
                sha256: sha.into(),
                size: data.len() as u64,
                role: "output".into(),
                metric_seq: 0,
                worker_id: registered.worker_id.clone(),
            };
            let chunks = vec![pb::ArtifactChunk {
                header: Some(header),
                data: bytes,
            }];
            with_token(tokio_stream::iter(chunks), &token)
        };
        let mut corrupted = data.clone();
        corrupted[0] ^= 1;
        let err = worker
            .upload_artifact(upload("adapter.bin", &good_sha, corrupted))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("hash mismatch"), "{err:?}");
        let err = worker
            .upload_artifact(upload("../../escape", &good_sha, data.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        let ok = worker
            .upload_artifact(upload("adapter.bin", &good_sha, data.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.artifact.unwrap().sha256, good_sha);
        // A team token cannot act as a worker.
        let err = worker
            .heartbeat(with_token(
                pb::HeartbeatRequest {
                    worker_id: registered.worker_id.clone(),
                    jobs: vec![],
                },
                "tdm_x",
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    });
    let listed = artifacts(&lab.coordinator.url, &lab.team, &experiment);
    assert_eq!(
        listed.len(),
        1,
        "only the verified upload is recorded: {listed:?}"
    );
    assert!(lab.coordinator.store.join("blobs").exists());
}

#[test]
fn tandem_run_drives_an_experiment_with_local_workers_and_refuses_unknown_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let graph = write_manifest(
        dir.path(),
        "local.json",
        &json!({"name": "local", "jobs": [
            {"name": "prep", "kind": "test.emit", "config": {"steps": 3}},
            {"name": "train", "kind": "test.emit", "deps": ["prep"], "config": {"steps": 6, "checkpoint_every": 2}}
        ]}),
    );
    let store = dir.path().join(".tandem").join("store");
    let out = std::process::Command::new(&tandem_tests::bins().tandem)
        .args([
            "run",
            graph.to_str().unwrap(),
            "--workers",
            "2",
            "--enable-test-kinds",
            "--store",
            store.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| train | succeeded | train/loss | 6 | 5 |"),
        "{stdout}"
    );
    let runs = dir.path().join(".tandem").join("runs");
    let exported: Vec<_> = std::fs::read_dir(&runs).unwrap().collect();
    assert_eq!(
        exported.len(),
        1,
        "one export folder under {}",
        runs.display()
    );

    let unknown = write_manifest(
        dir.path(),
        "unknown.json",
        &json!({"name": "x", "jobs": [{"name": "t", "kind": "no.such.kind"}]}),
    );
    let out = std::process::Command::new(&tandem_tests::bins().tandem)
        .args([
            "run",
            unknown.to_str().unwrap(),
            "--workers",
            "1",
            "--enable-test-kinds",
            "--store",
            store.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no local worker runs job kind(s) no.such.kind (workers offer: "),
        "{stderr}"
    );
}

#[test]
fn a_worker_killed_mid_real_training_resumes_on_the_other_worker_bit_for_bit() {
    let lab = Lab::start();
    let mut first = lab.worker("first");
    let manifest = long_training_manifest(lab.dir.path());
    let experiment = tandem_ok(
        &lab.coordinator.url,
        Some(&lab.team),
        &["submit", manifest.to_str().unwrap()],
    )
    .trim()
    .to_string();
    // The training job (QLoRA on the tiny LLaMA) uploads a checkpoint every 10 steps: kill the worker once one
    // is stored, without warning.
    wait_for("a training checkpoint", LONG, || {
        artifacts(&lab.coordinator.url, &lab.team, &experiment)
            .iter()
            .any(|a| a.role == "checkpoint")
            .then_some(())
    });
    first.kill();
    let second = lab.worker("second");
    let started = std::time::Instant::now();
    let status = loop {
        let status = lab.status(&experiment);
        if status["state"] == "succeeded" {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300) && status["state"] != "failed",
            "experiment not done: {status:#}\nsecond worker:\n{}",
            second.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let train = job(&status, "train(stage1)");
    assert_eq!(train["attempts"], 2, "{train}");
    assert!(
        second.log().contains("resuming from checkpoint"),
        "second worker did not resume: {}",
        second.log()
    );
    // Every step's loss exactly once (steps 1..=400), none lost and none duplicated by the resume.
    let metrics = series(&lab.coordinator.url, &lab.team, &experiment);
    let losses = &metrics[&("train(stage1)".into(), "train_loss".into())];
    let mut steps: Vec<u64> = losses.iter().map(|p| p.0).collect();
    steps.sort();
    assert_eq!(steps, (1..=400).collect::<Vec<_>>());

    // The resumed run's adapter is the one an uninterrupted run makes: replay the job on the second worker.
    let audit = tandem(
        &lab.coordinator.url,
        Some(&lab.team),
        &["audit", &experiment, "--replay", "train(stage1)"],
    );
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success(),
        "replay differs: {text}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    assert!(text.contains("adapter_model.safetensors"), "{text}");
}
