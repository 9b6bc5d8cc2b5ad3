//! `tandem-worker agent` as a user meets it: `--help` documents the token's variable but never prints a
//! token found in the environment.

use std::process::Command;

#[test]
fn agent_help_never_prints_the_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-worker"))
        .args(["agent", "--coordinator", "http://127.0.0.1:1", "--help"])
        .env("TANDEM_WORKER_TOKEN", "secret-token-value")
        .output()
        .expect("tandem-worker runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(help.contains("TANDEM_WORKER_TOKEN"), "{help}");
    assert!(!help.contains("secret-token-value"), "{help}");
}
