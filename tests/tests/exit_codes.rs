//! The exit-code table (`coordinator/src/cli/exit.rs`, README) as a user meets it: one real coordinator, the
//! `tandem` binary, one command per kind of failure.

use tandem_tests::{Coordinator, FAST, create_token, tandem};

fn code(out: &std::process::Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

#[test]
fn each_kind_of_failure_exits_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let team = create_token(&store, "--team", Some("radiology"));
    let coordinator = Coordinator::start(&store, FAST);
    let url = coordinator.url.as_str();

    let ok = tandem(url, Some(&team), &["status"]);
    assert_eq!(code(&ok), 0, "{}", String::from_utf8_lossy(&ok.stderr));
    // Every read command's --format: table (alias text), json, csv.
    for (format, first_line) in [
        ("csv", "id,name,team,state,done,created (UTC)"),
        ("text", "id  name  team  state  done  created (UTC)"),
        ("json", "[]"),
    ] {
        let out = tandem(url, Some(&team), &["status", "--format", format]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.lines().next(),
            Some(first_line),
            "{format}: {stdout}"
        );
    }

    let missing = tandem(url, Some(&team), &["status", "no-such-experiment"]);
    assert_eq!(
        code(&missing),
        3,
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    for token in [None, Some("tdm_not_a_real_token")] {
        let denied = tandem(url, token, &["status"]);
        assert_eq!(
            code(&denied),
            4,
            "{}",
            String::from_utf8_lossy(&denied.stderr)
        );
    }

    let unreachable = tandem("http://127.0.0.1:1", Some(&team), &["status"]);
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(code(&unreachable), 5, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot reach the coordinator at http://127.0.0.1:1: "),
        "{stderr}"
    );

    let usage = tandem(url, Some(&team), &["status", "--no-such-flag"]);
    assert_eq!(code(&usage), 2);
    let manifest = dir.path().join("bad.toml");
    std::fs::write(&manifest, "name = \"x\"\nseed = \"seven\"\n").unwrap();
    let invalid = tandem(url, Some(&team), &["submit", manifest.to_str().unwrap()]);
    assert_eq!(
        code(&invalid),
        2,
        "{}",
        String::from_utf8_lossy(&invalid.stderr)
    );
}
