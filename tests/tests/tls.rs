//! End-to-end over TLS: `tandem serve --tls-cert/--tls-key` with the committed loopback certificate
//! (`tests/fixtures/tls/make-certs.sh`), a worker and the CLI trusting its CA, and clients that must be refused:
//! one trusting another CA, one speaking plaintext to the TLS port.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tandem_tests::{Coordinator, FAST, Worker, bins, create_token, wait_for, write_manifest};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

/// `tandem ARGS` against `url`, trusting `ca` through `TANDEM_CA_CERT` (as a user would set it once).
fn tandem_tls(url: &str, token: &str, ca: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(&bins().tandem);
    command
        .args(args)
        .env("TANDEM_COORDINATOR", url)
        .env("TANDEM_TOKEN", token)
        .env_remove("TANDEM_CA_CERT");
    if let Some(ca) = ca {
        command.env("TANDEM_CA_CERT", ca);
    }
    command.output().expect("running tandem")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn an_experiment_runs_over_tls_and_untrusted_or_plaintext_clients_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let team = create_token(&store, "--team", Some("radiology"));
    let worker_token = create_token(&store, "--worker", Some("node"));
    let (cert, key, ca) = (
        fixture("server.pem"),
        fixture("server.key"),
        fixture("ca.pem"),
    );
    let mut args = FAST.to_vec();
    args.extend(["--tls-cert", &cert, "--tls-key", &key]);
    let coordinator = Coordinator::start(&store, &args);
    assert!(
        coordinator.url.starts_with("https://127.0.0.1:"),
        "a TLS listener announces an https URL: {}",
        coordinator.url
    );
    let worker = Worker::start_with(
        &coordinator.url,
        Some(&worker_token),
        "w1",
        dir.path(),
        &["--ca-cert", &ca],
    );

    let manifest = write_manifest(
        dir.path(),
        "tls.json",
        &json!({"name": "tls", "jobs": [
            {"name": "train", "kind": "test.emit", "config": {"steps": 5}},
            {"name": "report", "kind": "test.emit", "deps": ["train"], "config": {"steps": 1}}
        ]}),
    );
    let submitted = tandem_tls(
        &coordinator.url,
        &team,
        Some(&ca),
        &["submit", manifest.to_str().unwrap()],
    );
    assert!(
        submitted.status.success(),
        "submit over TLS: {}",
        text(&submitted)
    );
    let experiment = String::from_utf8_lossy(&submitted.stdout).trim().to_owned();
    wait_for("the experiment over TLS", Duration::from_secs(60), || {
        let out = tandem_tls(
            &coordinator.url,
            &team,
            Some(&ca),
            &["status", &experiment, "--format", "json"],
        );
        assert!(out.status.success(), "status over TLS: {}", text(&out));
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_ne!(status["state"], "failed", "{status}\n{}", worker.log());
        (status["state"] == "succeeded").then_some(())
    });
    // The metrics streamed back over the TLS channel.
    let results = tandem_tls(
        &coordinator.url,
        &team,
        Some(&ca),
        &["results", &experiment, "--format", "csv"],
    );
    assert!(
        text(&results).contains("train,succeeded,train/loss,5,4,"),
        "{}",
        text(&results)
    );

    // A client that trusts another CA fails the handshake, and says so.
    let other = tandem_tls(
        &coordinator.url,
        &team,
        Some(&fixture("other-ca.pem")),
        &["status", &experiment],
    );
    assert!(!other.status.success(), "{}", text(&other));
    assert!(
        text(&other).to_lowercase().contains("certificate"),
        "the error names the certificate: {}",
        text(&other)
    );
    // A client with no CA to trust cannot reach an https coordinator either.
    let none = tandem_tls(&coordinator.url, &team, None, &["status", &experiment]);
    assert!(!none.status.success(), "{}", text(&none));
    // Plaintext HTTP/2 to the TLS port gets nothing.
    let plain_url = coordinator.url.replace("https://", "http://");
    let plain = tandem_tls(&plain_url, &team, None, &["status", &experiment]);
    assert!(!plain.status.success(), "{}", text(&plain));
}
