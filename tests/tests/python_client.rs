//! The gRPC API from Python, as a lab's notebook would use it: `scripts/python-client/setup.sh` installs the
//! pinned grpcio packages and generates stubs from `proto/tandem.proto`; `tandem_client.py` submits a job graph
//! to a real coordinator, follows the Watch stream to the end and reads the results.

use std::path::Path;
use std::process::Command;

use serde_json::json;
use tandem_tests::{Coordinator, FAST, Worker, create_token, write_manifest};

/// Runs the setup script; returns the environment's python.
fn python() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/python-client/setup.sh"))
        .output()
        .expect("running scripts/python-client/setup.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "setting up the Python client failed (it needs python3 and pip):\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = stdout
        .lines()
        .last()
        .expect("setup prints the python")
        .trim();
    root.join(python).display().to_string()
}

#[test]
fn a_python_grpcio_client_submits_watches_and_reads_results() {
    let python = python();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let team = create_token(&store, "--team", Some("radiology"));
    let worker_token = create_token(&store, "--worker", Some("node"));
    let coordinator = Coordinator::start(&store, FAST);
    let _worker = Worker::start(&coordinator.url, Some(&worker_token), "w", dir.path());
    let graph = write_manifest(
        dir.path(),
        "py.json",
        &json!({"name": "from-python", "jobs": [
            {"name": "prep", "kind": "test.emit", "config": {"steps": 2}},
            {"name": "train", "kind": "test.emit", "deps": ["prep"], "config": {"steps": 5, "seed": 3}}
        ]}),
    );
    let client = |token: &str| {
        Command::new(&python)
            .arg(root.join("scripts/python-client/tandem_client.py"))
            .arg(&graph)
            .env("PYTHONPATH", root.join(".cache/python-client/gen"))
            .env("TANDEM_COORDINATOR", &coordinator.url)
            .env("TANDEM_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = client(&team);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(reply["state"], "succeeded", "{reply:#}");
    assert_eq!(reply["jobs"], 2);
    assert_eq!(reply["succeeded"], json!(["prep", "train"]), "{reply:#}");
    assert_eq!(reply["manifest_format"], "jobgraph+json");
    let steps: Vec<u64> = reply["series"]["train/train/loss"]
        .as_array()
        .unwrap_or_else(|| panic!("no train/loss series: {reply:#}"))
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [0, 1, 2, 3, 4]);

    // A bad token is the coordinator's refusal, through Python's grpc error.
    let out = client("tdm_not_a_token");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: submit: UNAUTHENTICATED"),
        "{stderr}"
    );
}
