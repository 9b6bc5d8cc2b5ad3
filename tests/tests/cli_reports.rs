//! End-to-end reports on loopback: `tandem results` (the thesis tables from eval jobs' `eval_result.json`, partial
//! while evaluations are missing), `tandem plot` and `tandem export` (training curves as SVG and PNG), and
//! `tandem audit --replay` (a finished job re-run on a real worker, compared bitwise; a tampered record fails).
//!
//! The results/plot test drives the coordinator with an in-test worker speaking the worker protocol, so the
//! scores and curves are known exactly; the replay test uses real `tandem-worker` processes and `test.emit`.

use serde_json::json;
use sha2::{Digest, Sha256};
use tandem_proto as pb;
use tandem_proto::worker_service_client::WorkerServiceClient;
use tandem_tests::{LONG, Lab, Worker, status_json, tandem, wait_for};
use tonic::Request;

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An in-test worker: runs `train` jobs by streaming the loss curves named in their config and `eval` jobs by
/// uploading the `eval_result.json` their config holds. Runs until no job of `kinds` is ready.
fn fake_worker(url: &str, token: &str, name: &str, kinds: &[&str]) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut worker = WorkerServiceClient::connect(url.to_string()).await.unwrap();
        let worker_id = worker
            .register(with_token(
                pb::RegisterRequest {
                    name: name.into(),
                    resources: Some(pb::Resources {
                        gpus: 0,
                        gpu_memory_mib: 0,
                        cpu_threads: 4,
                    }),
                    kinds: kinds.iter().map(|k| k.to_string()).collect(),
                    version: "fake".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        let mut done = 0;
        loop {
            let Some(lease) = worker
                .lease_job(with_token(
                    pb::LeaseRequest {
                        worker_id: worker_id.clone(),
                        wait_ms: 300,
                    },
                    token,
                ))
                .await
                .unwrap()
                .into_inner()
                .lease
            else {
                return done;
            };
            let job = lease.job.clone().unwrap();
            let config: serde_json::Value = serde_json::from_slice(&job.config).unwrap();
            if job.kind == "train" {
                let mut points = Vec::new();
                for (series, values) in config["curves"].as_object().unwrap() {
                    for (i, v) in values.as_array().unwrap().iter().enumerate() {
                        points.push(pb::MetricPoint {
                            name: series.clone(),
                            step: (i as u64 + 1) * 10,
                            value: v.as_f64().unwrap(),
                        });
                    }
                }
                let batch = pb::MetricBatch {
                    job_id: job.id.clone(),
                    attempt: lease.attempt,
                    seq: 0,
                    points,
                    worker_id: worker_id.clone(),
                    time_ms: 0,
                };
                worker
                    .stream_metrics(with_token(tokio_stream::iter(vec![batch]), token))
                    .await
                    .unwrap();
            }
            if job.kind == "eval" {
                let data = serde_json::to_vec_pretty(&config["result"]).unwrap();
                let header = pb::ArtifactHeader {
                    job_id: job.id.clone(),
                    attempt: lease.attempt,
                    name: "eval_result.json".into(),
                    sha256: sha256(&data),
                    size: data.len() as u64,
                    role: "output".into(),
                    metric_seq: 0,
                    worker_id: worker_id.clone(),
                };
                let chunks = vec![pb::ArtifactChunk {
                    header: Some(header),
                    data,
                }];
                worker
                    .upload_artifact(with_token(tokio_stream::iter(chunks), token))
                    .await
                    .unwrap();
            }
            worker
                .complete_job(with_token(
                    pb::CompleteRequest {
                        worker_id: worker_id.clone(),
                        job_id: job.id.clone(),
                        attempt: lease.attempt,
                    },
                    token,
                ))
                .await
                .unwrap();
            done += 1;
        }
    })
}

fn eval_job(
    name: &str,
    model: &str,
    task: &str,
    fold: Option<u32>,
    bleu1: f64,
    deps: &[&str],
) -> serde_json::Value {
    json!({"name": name, "kind": "eval", "deps": deps, "config": {"result": {
        "family": "llama", "model": model, "task": task, "fold": fold, "sweep": null,
        "scores": {"bleu1": bleu1, "rougeL": bleu1 / 2.0, "radgraph_partial": null}
    }}})
}

fn train_job(name: &str, stage: &str, fold: Option<u32>, shift: f64) -> serde_json::Value {
    json!({"name": name, "kind": "train", "config": {"stage": stage, "fold": fold, "curves": {
        "train_loss": [3.0 + shift, 2.5 + shift, 2.1 + shift],
        "val_loss": [2.8 + shift, 2.4 + shift],
        "val_perplexity": [16.4 + shift, 11.0 + shift],
        "tokens_per_s": [100.0, 120.0]
    }}})
}

#[test]
fn results_show_the_thesis_tables_and_plots_draw_the_curves() {
    let lab = Lab::start();
    let url = lab.coordinator.url.clone();
    let experiment = lab.submit(
        "tables.json",
        json!({"name": "tables", "jobs": [
            train_job("train(stage1)", "stage1", None, 0.0),
            train_job("train(stage2, fold 0)", "stage2", Some(0), -0.5),
            train_job("train(stage2, fold 1)", "stage2", Some(1), -0.4),
            eval_job("eval(base on stage1)", "base", "stage1", None, 0.10, &[]),
            eval_job("eval(stage1 on stage1)", "stage1", "stage1", None, 0.30, &["train(stage1)"]),
            eval_job("eval(two-stage on stage2, fold 0)", "two-stage", "stage2", Some(0), 0.50, &["train(stage2, fold 0)"]),
            eval_job("eval(two-stage on stage2, fold 1)", "two-stage", "stage2", Some(1), 0.70, &["gate"]),
            {"name": "gate", "kind": "gate", "deps": ["train(stage2, fold 1)"]}
        ]}),
    );
    // Everything but the gated evaluation runs.
    assert_eq!(
        fake_worker(&url, &lab.worker_token, "fake-a", &["train", "eval"]),
        6
    );

    let partial = lab.tandem_ok(&["results", &experiment]);
    assert!(partial.contains("B-1"), "{partial}");
    assert!(partial.contains("200.00% increase"), "{partial}");
    assert!(
        partial.contains(
            "partial results: 1 of 4 evaluations still missing: eval(two-stage on stage2, fold 1) (blocked)"
        ),
        "{partial}"
    );
    // The metric-series summary stays available.
    let series = lab.tandem_ok(&["results", &experiment, "--series"]);
    assert!(
        series.contains("| train(stage1) | succeeded | train_loss | 3 | 30 | 2.1000 |"),
        "{series}"
    );

    assert_eq!(
        fake_worker(&url, &lab.worker_token, "fake-gate", &["gate"]),
        1
    );
    assert_eq!(fake_worker(&url, &lab.worker_token, "fake-b", &["eval"]), 1);
    let status = status_json(&url, Some(&lab.team), &experiment);
    assert_eq!(status["state"], "succeeded", "{status}");

    let md = lab.tandem_ok(&["results", &experiment]);
    assert!(!md.contains("missing"), "{md}");
    // Two folds of the two-stage row: B-1 mean 60.00, sample std 14.14.
    assert!(md.contains("60.00"), "{md}");
    assert!(md.contains("14.14"), "{md}");
    let json_out = lab.tandem(&["results", &experiment, "--format", "json"]);
    assert!(json_out.status.success());
    let tables: serde_json::Value = serde_json::from_slice(&json_out.stdout).unwrap();
    let rows: Vec<(String, String, usize)> = tables["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["rows"].as_array().unwrap().clone())
        .map(|r| {
            (
                r["model"].as_str().unwrap().to_string(),
                r["family"].as_str().unwrap().to_string(),
                r["n"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("base".to_string(), "llama".to_string(), 1),
            ("stage1".to_string(), "llama".to_string(), 1),
            ("two-stage".to_string(), "llama".to_string(), 2)
        ]
    );
    let csv = lab.tandem_ok(&["results", &experiment, "--format", "csv"]);
    assert!(csv.lines().count() > 3, "{csv}");

    // Plots: the combined figure and one file per series, as SVG and PNG.
    let plots = lab.dir.path().join("plots");
    let printed = lab.tandem_ok(&["plot", &experiment, "--out", plots.to_str().unwrap()]);
    for name in [
        "curves.svg",
        "curves.png",
        "train_loss.svg",
        "train_loss.png",
        "val_loss.svg",
        "val_loss.png",
        "val_perplexity.svg",
        "val_perplexity.png",
    ] {
        let path = plots.join(name);
        assert!(printed.contains(path.to_str().unwrap()), "{printed}");
        let bytes = std::fs::read(&path).unwrap();
        if name.ends_with(".png") {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name}");
        } else {
            let text = String::from_utf8(bytes).unwrap();
            assert!(
                text.contains("<svg") && text.trim_end().ends_with("</svg>"),
                "{name}"
            );
        }
    }
    assert!(
        !plots.join("tokens_per_s.svg").exists(),
        "throughput is not a curve"
    );
    let svg = std::fs::read_to_string(plots.join("curves.svg")).unwrap();
    assert!(svg.contains("Validation perplexity"), "{svg:.400}");

    // Export writes the tables and the plots too.
    let out = lab.dir.path().join("export");
    lab.tandem_ok(&["export", &experiment, "--out", out.to_str().unwrap()]);
    let exported_md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(exported_md.contains("60.00"), "{exported_md}");
    assert!(out.join("results.csv").is_file() && out.join("results.json").is_file());
    assert!(out.join("plots/curves.png").is_file());

    // An experiment of generic job kinds has no evaluation results: said, with the series summary.
    let generic = lab.submit(
        "generic.json",
        json!({"name": "generic", "jobs": [{"name": "only", "kind": "train", "config": {"curves": {"train_loss": [1.0]}}}]}),
    );
    assert_eq!(
        fake_worker(&url, &lab.worker_token, "fake-c", &["train"]),
        1
    );
    let text = lab.tandem_ok(&["results", &generic]);
    assert!(text.contains("no evaluation results"), "{text}");
    assert!(
        text.contains("| only | succeeded | train_loss | 1 |"),
        "{text}"
    );
    let no_plot = lab.tandem(&["plot", &generic, "--out", plots.to_str().unwrap()]);
    assert!(!no_plot.status.success());
    assert!(
        String::from_utf8_lossy(&no_plot.stderr).contains("no training curves"),
        "{}",
        String::from_utf8_lossy(&no_plot.stderr)
    );
}

#[test]
fn a_replay_matches_its_original_bitwise_and_a_tampered_record_fails() {
    let mut lab = Lab::start();
    std::fs::write(
        lab.dir.path().join("reports.csv"),
        "id,text\n1,clear lungs\n",
    )
    .unwrap();
    let experiment = lab.submit(
        "replay.json",
        json!({"name": "replay", "files": ["reports.csv"], "jobs": [
            {"name": "prep", "kind": "test.emit", "inputs": ["reports.csv"], "config": {"steps": 2}},
            {"name": "train", "kind": "test.emit", "deps": ["prep"], "inputs": ["reports.csv"],
             "config": {"steps": 12, "points_per_step": 2, "checkpoint_every": 4, "seed": 5}}
        ]}),
    );
    let worker = Worker::start(
        &lab.coordinator.url,
        Some(&lab.worker_token),
        "w1",
        lab.dir.path(),
    );
    let url = lab.coordinator.url.clone();
    wait_for("experiment succeeded", LONG, || {
        (status_json(&url, Some(&lab.team), &experiment)["state"] == "succeeded").then_some(())
    });
    let before = status_json(&url, Some(&lab.team), &experiment);

    // Another team may not replay this experiment's jobs.
    let denied = tandem(
        &url,
        Some(&lab.other_team),
        &["audit", &experiment, "--replay", "train"],
    );
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("PermissionDenied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    let out = lab.tandem(&["audit", &experiment, "--replay", "train", "--log"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\nworker:\n{}",
        worker.log()
    );
    for subject in [
        "replay run replay-",
        "replay artifact output.bin",
        "replay series train/loss",
        "replay series train/aux1",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("PASS") && l.contains(subject)),
            "{subject}:\n{stdout}"
        );
    }
    assert!(stdout.contains("12 points, bitwise equal"), "{stdout}");
    assert!(!stdout.lines().any(|l| l.starts_with("FAIL")), "{stdout}");
    // The replay worker's environment (the worker token's name is "node").
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("replay ") && l.contains("-node")),
        "{stdout}"
    );
    assert!(stderr.contains("replay: succeeded"), "{stderr}");
    // The request is in the audit log, with who asked.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("team:radiology") && l.contains("replay")),
        "{stdout}"
    );
    // The original job is untouched: same attempts, same state; the replay is not one of its jobs.
    let after = status_json(&url, Some(&lab.team), &experiment);
    assert_eq!(before["jobs"], after["jobs"]);
    let report = assert_audit_json_and_csv(&lab, &experiment, &after);
    assert!(
        report["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "team:radiology" && e["action"] == "replay"),
        "{report:#}"
    );

    // Tamper with the stored record of the original's output (a valid blob, but not what the job makes): the
    // hash checks pass, the replay does not.
    let train_id = after["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "train")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    lab.coordinator.kill();
    {
        use tandem_coordinator::store::{SledStore, Store};
        let store = SledStore::open(&lab.coordinator.store).unwrap();
        let mut record = store
            .artifacts(&train_id)
            .unwrap()
            .into_iter()
            .find(|a| a.name == "output.bin")
            .unwrap();
        let forged = b"not what the job computes".to_vec();
        record.sha256 = store.blobs().put_bytes(&forged).unwrap();
        record.size = forged.len() as u64;
        store.put_artifact(&record).unwrap();
        store.flush_now().unwrap();
    }
    lab.coordinator.restart();
    let failed = lab.tandem(&["audit", &experiment, "--replay", &train_id[..12]]);
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{stdout}");
    let fails: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 2, "{stdout}");
    assert!(
        fails[0].contains("replay artifact output.bin") && fails[0].contains("different bytes"),
        "{stdout}"
    );
    assert!(fails[1].starts_with("FAIL:"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("PASS") && l.contains("artifact train/output.bin")),
        "the stored blob still matches its (forged) record: {stdout}"
    );
    // The same failure as JSON: exit code 1, `ok` false, the replay named, the failing check in full.
    let failed = lab.tandem(&[
        "audit",
        &experiment,
        "--replay",
        "train",
        "--format",
        "json",
    ]);
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("audit JSON");
    assert_eq!(report["ok"], false, "{report:#}");
    assert!(
        report["replay"]["replay_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("replay-")),
        "{report:#}"
    );
    assert_eq!(report["replay"]["job_id"], train_id.as_str(), "{report:#}");
    let failing: Vec<&serde_json::Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    assert_eq!(failing.len(), 1, "{report:#}");
    assert_eq!(failing[0]["subject"], "replay artifact output.bin");
    assert_eq!(failing[0]["detail"], "different bytes");
    assert!(is_sha256(&failing[0]["expected"]) && is_sha256(&failing[0]["actual"]));
}

fn is_sha256(value: &serde_json::Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `tandem audit ID --format json --log` and `--format csv` of a finished, untampered experiment whose
/// status is `status`: every check passes, hashes are in full, the manifest hash is the recorded one, every
/// job has its environment, and the CSV has one row per JSON check. Returns the JSON report.
fn assert_audit_json_and_csv(
    lab: &Lab,
    experiment: &str,
    status: &serde_json::Value,
) -> serde_json::Value {
    let json_out = lab.tandem_ok(&["audit", experiment, "--format", "json", "--log"]);
    let report: serde_json::Value = serde_json::from_str(&json_out).expect("audit JSON");
    assert_eq!(report["experiment_id"], experiment, "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["replay"], serde_json::Value::Null, "{report:#}");
    assert_eq!(report["manifest_sha256"], status["manifest_sha256"]);
    assert!(is_sha256(&report["manifest_sha256"]), "{report:#}");
    assert!(
        report["coordinator_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    let checks = report["checks"].as_array().expect("checks");
    for check in checks {
        assert_eq!(check["ok"], true, "{check}");
        assert!(is_sha256(&check["expected"]), "a full hash: {check}");
        assert_eq!(check["expected"], check["actual"], "{check}");
    }
    for subject in [
        "manifest ",
        "input reports.csv",
        "artifact train/output.bin",
    ] {
        assert!(
            checks
                .iter()
                .any(|c| c["subject"].as_str().unwrap().starts_with(subject)),
            "{subject}: {report:#}"
        );
    }
    let environments = report["environments"].as_array().expect("environments");
    for job in status["jobs"].as_array().unwrap() {
        let environment = environments
            .iter()
            .find(|e| e["job_id"] == job["id"])
            .unwrap_or_else(|| panic!("no environment for job {}: {report:#}", job["name"]));
        assert!(
            environment["worker"].as_str().unwrap().ends_with("-node"),
            "{environment}"
        );
        assert!(environment["devices"].is_array(), "{environment}");
    }
    // Without --log there is no log.
    let plain: serde_json::Value =
        serde_json::from_str(&lab.tandem_ok(&["audit", experiment, "--format", "json"])).unwrap();
    assert_eq!(plain["log"], serde_json::Value::Null);

    let csv = lab.tandem_ok(&["audit", experiment, "--format", "csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "result,subject,expected,actual,detail", "{csv}");
    assert_eq!(lines.len(), checks.len() + 1, "one row per check: {csv}");
    let manifest = report["manifest_sha256"].as_str().unwrap();
    assert!(lines[1..].iter().all(|l| l.starts_with("PASS,")), "{csv}");
    assert!(
        lines[1..]
            .iter()
            .any(|l| l.starts_with("PASS,manifest ")
                && l.contains(&format!(",{manifest},{manifest},"))),
        "{csv}"
    );
    report
}
