//! End-to-end: a manifest that asks for the GPU (`model.device = "cuda"`, one GPU per train and eval job) runs on
//! a worker offering one GPU, through the GPU job path: the worker pins each job to its ordinal, the backend is
//! the kernel engine, and training, adapters and evaluation go through it. `TANDEM_KERNEL_DEVICE=reference` runs
//! the kernel engine on its reference device, so the path is tested on machines without a GPU; on a GPU machine
//! the same manifest runs on CUDA.

use std::time::Duration;

use tandem_tests::{
    Coordinator, FAST, TINY_STAGE1_TRAINING, Worker, create_token, status_json, tandem_ok,
    tiny_manifest, wait_for,
};

#[test]
fn a_cuda_manifest_trains_and_evaluates_through_the_kernel_engine_on_a_pinned_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tiny_manifest(
        "gpu-path",
        "nf4",
        TINY_STAGE1_TRAINING,
        r#""base:stage1", "stage1:stage1""#,
    )
    .replace("[model]\n", "[model]\ndevice = \"cuda\"\n")
    .replace(
        "[resources.train]\ngpus = 0",
        "[resources.train]\ngpus = 1\ngpu_memory_gb = 8",
    )
    .replace(
        "[resources.eval]\ngpus = 0",
        "[resources.eval]\ngpus = 1\ngpu_memory_gb = 8",
    );
    assert!(manifest.contains("device = \"cuda\"") && manifest.matches("gpus = 1").count() == 2);
    let path = dir.path().join("gpu.toml");
    std::fs::write(&path, manifest).unwrap();

    let store = dir.path().join("store");
    let team = create_token(&store, "--team", Some("radiology"));
    let worker_token = create_token(&store, "--worker", Some("node"));
    let coordinator = Coordinator::start(&store, FAST);
    let worker = Worker::start_with_env(
        &coordinator.url,
        Some(&worker_token),
        "gpu-node",
        dir.path(),
        &["--gpus", "1", "--gpu-memory-mib", "16000"],
        &[("TANDEM_KERNEL_DEVICE", "reference")],
    );
    let experiment = tandem_ok(
        &coordinator.url,
        Some(&team),
        &["submit", path.to_str().unwrap()],
    )
    .trim()
    .to_string();
    let status = wait_for("the experiment to end", Duration::from_secs(600), || {
        let status = status_json(&coordinator.url, Some(&team), &experiment);
        (status["state"] != "running").then_some(status)
    });
    let log = worker.log();
    assert_eq!(
        status["state"], "succeeded",
        "{status:#}\nworker log:\n{log}"
    );
    let jobs = status["jobs"].as_array().unwrap();
    let gpu_jobs = jobs
        .iter()
        .filter(|j| j["kind"] == "train" || j["kind"] == "eval")
        .count();
    assert_eq!(
        gpu_jobs, 3,
        "the stage-1 train job and two eval jobs: {status:#}"
    );
    // Every train and eval job chose the GPU, pinned to ordinal 0, and ran on the kernel engine.
    assert_eq!(log.matches("backend chosen").count(), gpu_jobs, "{log}");
    assert!(log.contains("backend=cuda:0"), "{log}");
    assert!(!log.contains("backend=cpu"), "{log}");
    assert!(
        log.contains("model loaded on the kernel engine") && log.contains("reference (CPU)"),
        "{log}"
    );
    // The results table came out of the kernel engine's generations.
    let results = tandem_ok(&coordinator.url, Some(&team), &["results", &experiment]);
    assert!(
        results.contains("stage-1 LLaMA") && results.contains("base LLaMA"),
        "{results}"
    );
}
