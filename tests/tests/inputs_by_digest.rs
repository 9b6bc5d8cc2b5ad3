//! End-to-end: models and datasets travel by digest. The submitter's copy of the tiny model and datasets is
//! uploaded to the coordinator's blob store and then deleted; a worker with its own empty machine cache (and no
//! access to the submitter's folder, which no longer exists) fetches them by digest and runs the experiment. A
//! second submission of the same files uploads nothing; another team must send the bytes itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_tests::{
    Coordinator, FAST, Worker, create_token, status_json, tandem, tiny_manifest, wait_for,
};

/// Copies the tiny model and the two fixture datasets into `dir` and writes a manifest naming those copies.
fn submitter_copy(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let model = repo.join("worker/tests/fixtures/tiny-llama");
    let copied_model = dir.join("model");
    std::fs::create_dir_all(&copied_model).unwrap();
    for entry in std::fs::read_dir(&model).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), copied_model.join(entry.file_name())).unwrap();
        }
    }
    let stage1 = repo.join("tests/fixtures/runners/iu-20.csv");
    let stage2 = repo.join("tests/fixtures/runners/synthetic-12.csv");
    std::fs::copy(&stage1, dir.join("stage1.csv")).unwrap();
    std::fs::copy(&stage2, dir.join("stage2.csv")).unwrap();
    let manifest = tiny_manifest(
        "by-digest",
        "nf4",
        tandem_tests::TINY_STAGE1_TRAINING,
        r#""base:stage1""#,
    )
    .replace(
        &model.display().to_string(),
        &copied_model.display().to_string(),
    )
    .replace(
        &stage1.display().to_string(),
        &dir.join("stage1.csv").display().to_string(),
    )
    .replace(
        &stage2.display().to_string(),
        &dir.join("stage2.csv").display().to_string(),
    );
    let path = dir.join("by-digest.toml");
    std::fs::write(&path, manifest).unwrap();
    path
}

/// `tandem submit`: (experiment id, the upload summary line).
fn submit(url: &str, team: &str, manifest: &Path) -> (String, String) {
    let out = tandem(url, Some(team), &["submit", manifest.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "submit failed: {stderr}");
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("inputs: "))
        .unwrap_or_else(|| panic!("no upload summary in: {stderr}"))
        .to_string();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        summary,
    )
}

#[test]
fn a_worker_without_the_submitters_files_runs_from_the_digest_store() {
    let lab = tempfile::tempdir().unwrap();
    let store = lab.path().join("store");
    let team = create_token(&store, "--team", Some("radiology"));
    let worker_token = create_token(&store, "--worker", Some("node"));
    let coordinator = Coordinator::start(&store, FAST);

    let submitter = lab.path().join("submitter");
    std::fs::create_dir_all(&submitter).unwrap();
    let manifest = submitter_copy(&submitter);
    let (experiment, summary) = submit(&coordinator.url, &team, &manifest);
    // The model folder's files (config, tokenizer, weights) and listing, and the two datasets.
    assert!(
        summary.contains("already in the store") && !summary.contains("uploaded 0 "),
        "{summary}"
    );
    // The submitter's files are gone before any worker starts: whatever runs must come from the store.
    std::fs::remove_dir_all(&submitter).unwrap();

    let worker_dir = lab.path().join("elsewhere");
    std::fs::create_dir_all(&worker_dir).unwrap();
    let worker = Worker::start(&coordinator.url, Some(&worker_token), "remote", &worker_dir);
    let status = wait_for("the experiment to finish", Duration::from_secs(240), || {
        let status = status_json(&coordinator.url, Some(&team), &experiment);
        (status["state"] == "succeeded" || status["state"] == "failed").then_some(status)
    });
    assert_eq!(
        status["state"],
        "succeeded",
        "{status:#}\nworker:\n{}",
        worker.log()
    );
    // The inputs were laid out in the worker's machine cache, by digest.
    let cache = worker_dir.join("input-cache/inputs");
    let laid_out: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        laid_out
            .iter()
            .any(|p| p.join("config.json").is_file() && p.join("tokenizer.json").is_file()),
        "no model folder in {laid_out:?}"
    );
    assert!(
        laid_out.iter().any(|p| p.join("stage1.csv").is_file()),
        "no stage-1 dataset in {laid_out:?}"
    );

    // The same bytes submitted again (from a new copy, another path): nothing is uploaded, every job is cached.
    let again = lab.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    let manifest = submitter_copy(&again);
    let (second, summary) = submit(&coordinator.url, &team, &manifest);
    assert!(summary.contains("uploaded 0 (0 bytes)"), "{summary}");
    let status = status_json(&coordinator.url, Some(&team), &second);
    assert_eq!(status["state"], "succeeded", "{status:#}");

    // Another team is not told the store has these blobs: a digest proves nothing, so it sends the bytes
    // itself (which proves it holds them) before it may name them.
    drop(coordinator);
    let other = create_token(&store, "--team", Some("cardiology"));
    let coordinator = Coordinator::start(&store, FAST);
    let (third, summary) = submit(&coordinator.url, &other, &manifest);
    assert!(
        !summary.contains("uploaded 0 ") && summary.contains(", 0 already in the store"),
        "{summary}"
    );
    let status = status_json(&coordinator.url, Some(&other), &third);
    assert_eq!(status["state"], "succeeded", "{status:#}");
}
