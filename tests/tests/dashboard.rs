//! The web dashboard over real HTTP: the page is served, every API route refuses a missing, unknown or worker
//! token (401/403) and another team's experiment (no data), curves come downsampled, and the event stream
//! delivers a job's changes while it runs, without polling.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_tests::browser::dechunk;
use tandem_tests::{FAST, Lab};

/// A free loopback port for the dashboard.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `GET path` with an optional bearer token: (status, headers, body).
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

fn json_of(addr: &str, path: &str, token: &str) -> Value {
    let (status, _, body) = get(addr, path, Some(token));
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_dashboard_serves_each_team_its_own_experiments_and_streams_changes() {
    let http = free_addr();
    let mut args = FAST.to_vec();
    args.extend(["--http", http.as_str()]);
    let lab = Lab::start_with(&args);

    // The page, with a content security policy.
    let (status, head, page) = get(&http, "/", None);
    assert_eq!(status, 200);
    assert!(page.contains("<title>Tandem</title>"), "{page}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy"),
        "{head}"
    );

    // Radiology's experiment; its job name carries markup, which the API returns as data.
    let id = lab.submit(
        "dash.json",
        json!({"name": "dash", "jobs": [
            {"name": "<script>alert(1)</script>", "kind": "test.emit",
             "config": {"steps": 40, "points_per_step": 1, "step_ms": 150}}
        ]}),
    );

    // Who may read what.
    for path in [
        "/api/experiments".to_string(),
        format!("/api/experiments/{id}"),
        format!("/api/experiments/{id}/curves?series=train/loss"),
        format!("/api/experiments/{id}/events"),
        format!("/api/experiments/{id}/series"),
        format!("/api/experiments/{id}/tables"),
        format!("/api/experiments/{id}/selections"),
        format!("/api/experiments/{id}/audit"),
        format!("/api/experiments/{id}/verify"),
        format!("/api/experiments/{id}/figures"),
        "/api/workers".to_string(),
    ] {
        let (status, _, body) = get(&http, &path, None);
        assert_eq!(status, 401, "{path} without a token: {body}");
        let (status, _, _) = get(&http, &path, Some("not-a-token"));
        assert_eq!(status, 401, "{path} with an unknown token");
        let (status, _, body) = get(&http, &path, Some(&lab.worker_token));
        assert_eq!(status, 403, "{path} with a worker token: {body}");
    }
    let listed = json_of(&http, "/api/experiments", &lab.team);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "dash");
    let other = json_of(&http, "/api/experiments", &lab.other_team);
    assert_eq!(other, json!([]), "cardiology sees nothing of radiology's");
    let (status, _, body) = get(
        &http,
        &format!("/api/experiments/{id}"),
        Some(&lab.other_team),
    );
    assert!(status == 403 || status == 404, "{status}");
    assert!(!body.contains("script"), "no data of another team: {body}");

    // The event stream delivers the job's changes as they happen (no polling; at most one event a second): open
    // it, then start a worker. The job runs 6 s.
    let mut stream = TcpStream::connect(&http).unwrap();
    write!(
        stream,
        "GET /api/experiments/{id}/events HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {}\r\n\r\n",
        lab.team
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    assert!(status_line.contains(" 200 "), "{status_line}");
    let _worker = lab.worker("w0");
    let started = Instant::now();
    let mut events = 0;
    let mut line = String::new();
    while events < 3 && started.elapsed() < Duration::from_secs(30) {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.starts_with("event: job") {
            events += 1;
        }
    }
    assert!(events >= 3, "events from the stream: {events}");

    // Curves gain points while the job runs; the detail view has the job's name as data.
    let first = json_of(
        &http,
        &format!("/api/experiments/{id}/curves?series=train/loss"),
        &lab.team,
    );
    let count = |v: &Value| v["jobs"][0]["points_total"].as_u64().unwrap_or(0);
    let n0 = count(&first);
    lab.wait_state(&id, "succeeded");
    let last = json_of(
        &http,
        &format!("/api/experiments/{id}/curves?series=train/loss&buckets=5"),
        &lab.team,
    );
    assert_eq!(count(&last), 40);
    assert!(
        n0 < 40,
        "the first read came while the job ran ({n0} points)"
    );
    let sent = last["jobs"][0]["points"].as_array().unwrap().len();
    assert!(
        sent <= 10,
        "40 points in 5 buckets are sent as at most 10, got {sent}"
    );
    let detail = json_of(&http, &format!("/api/experiments/{id}"), &lab.team);
    assert_eq!(detail["jobs"][0]["name"], "<script>alert(1)</script>");
    assert_eq!(detail["jobs"][0]["state"], "succeeded");
    // No evaluation jobs, so no tables (a two-stage run shows Tables 4.1/4.3 there: docs/dashboard).
    let tables = json_of(&http, &format!("/api/experiments/{id}/tables"), &lab.team);
    assert_eq!(tables, json!({"results": null, "missing": []}));
    let selections = json_of(
        &http,
        &format!("/api/experiments/{id}/selections"),
        &lab.team,
    );
    assert_eq!(selections, json!([]));
    let series = json_of(&http, &format!("/api/experiments/{id}/series"), &lab.team);
    assert_eq!(series, json!(["train/loss"]));
    // A redraw asks only for what changed since the reply it last read.
    let seq = detail["seq"].as_u64().unwrap();
    assert!(seq > 0 && detail["partial"] == false, "{detail}");
    let unchanged = json_of(
        &http,
        &format!("/api/experiments/{id}?since={seq}"),
        &lab.team,
    );
    assert_eq!(
        (&unchanged["partial"], &unchanged["jobs"]),
        (&json!(true), &json!([]))
    );
    let everything = json_of(&http, &format!("/api/experiments/{id}?since=0"), &lab.team);
    assert_eq!(everything["jobs"].as_array().unwrap().len(), 1);
    let restarted = json_of(
        &http,
        &format!("/api/experiments/{id}?since={}", seq + 1_000_000),
        &lab.team,
    );
    assert_eq!(
        restarted["partial"], false,
        "a number from before a restart gets the whole list"
    );
    assert_eq!(restarted["jobs"].as_array().unwrap().len(), 1);
    // The audit view: the worker the job ran on, and every stored file re-hashed on demand.
    let audit = json_of(&http, &format!("/api/experiments/{id}/audit"), &lab.team);
    assert_eq!(
        audit["environments"].as_array().unwrap().len(),
        1,
        "{audit}"
    );
    assert_eq!(
        audit["environments"][0]["worker"], detail["jobs"][0]["worker"],
        "the worker the job ran on: {audit}"
    );
    assert_eq!(audit["replays"], json!([]));
    assert!(
        audit["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "submit"),
        "{audit}"
    );
    let verify = json_of(&http, &format!("/api/experiments/{id}/verify"), &lab.team);
    assert_eq!(verify["ok"], true, "{verify}");
    assert!(!verify["checks"].as_array().unwrap().is_empty());
    let workers = json_of(&http, "/api/workers", &lab.team);
    assert!(
        workers
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["alive"] == true),
        "{workers}"
    );
}
