//! `tandem audit ID [--replay JOB]`: re-hash the manifest, every input and every stored artifact against what
//! was recorded, show the code version and worker environment each job ran with; with `--replay`, re-run one
//! finished job on a worker and compare its outputs with the stored ones (every output artifact by SHA-256,
//! every metric series value by value, bitwise; timing series skipped). Exit code 1 on any mismatch.
//!
//! `--format table` (the default) prints the report for people; `json` one object with every check (full
//! hashes), the job environments, the replay and the log; `csv` one row per check.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tandem_proto as pb;

use super::client::{Client, ClientArgs, block_on, rpc, utc};
use super::output::{OutputFormat, Table, aligned};
use tandem_coordinator::replay_verdict::{ReplayChecks, compare_replay};

#[derive(Debug, Args)]
pub struct AuditArgs {
    pub experiment: String,
    /// Also print the experiment's audit log (every state change and who caused it).
    #[arg(long)]
    pub log: bool,
    /// Re-run this finished job (its id, a unique id prefix, or its name) on a worker and compare its
    /// outputs and metrics with the stored ones.
    #[arg(long, value_name = "JOB")]
    pub replay: Option<String>,
    /// Give up waiting for the replay after this many seconds (0: wait until it ends).
    #[arg(long, default_value_t = 0)]
    pub replay_timeout: u64,
    /// table (the report for people), json (experiment_id, ok, manifest_sha256, coordinator_version, checks,
    /// environments, replay, log) or csv (one row per check: result, subject, expected, actual, detail).
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(16)]
}

/// Resolves `wanted` (a job id, a unique id prefix, or a job name) among the experiment's jobs.
pub fn resolve_job<'a>(
    jobs: &'a [pb::JobStatus],
    wanted: &str,
) -> anyhow::Result<&'a pb::JobStatus> {
    if let Some(job) = jobs.iter().find(|j| j.id == wanted || j.name == wanted) {
        return Ok(job);
    }
    let matches: Vec<&pb::JobStatus> = jobs.iter().filter(|j| j.id.starts_with(wanted)).collect();
    match matches.as_slice() {
        [job] if !wanted.is_empty() => Ok(job),
        [] | [_] => anyhow::bail!(
            "--replay {wanted:?}: no job of this experiment has that id, id prefix or name; jobs: {}",
            jobs.iter()
                .map(|j| format!("{} ({})", j.name, short(&j.id)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        many => anyhow::bail!(
            "--replay {wanted:?}: the prefix matches {} jobs ({}); give more of the id",
            many.len(),
            many.iter()
                .map(|j| short(&j.id))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Queues the replay and waits for it, printing a progress line whenever it changes.
async fn run_replay(
    client: &mut Client,
    experiment: &str,
    wanted: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<pb::ReplayStatus> {
    let status = client
        .get_experiment(pb::GetExperimentRequest {
            experiment_id: experiment.to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let job = resolve_job(&status.jobs, wanted)?;
    let replay_id = client
        .replay_job(pb::ReplayJobRequest {
            experiment_id: experiment.to_string(),
            job_id: job.id.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .replay_id;
    eprintln!("replay {replay_id} of {} ({}) queued", job.name, job.kind);
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let reply = client
            .get_replay(pb::GetReplayRequest {
                replay_id: replay_id.clone(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        let run = reply.replay.clone().unwrap_or_default();
        let mut line = format!("replay: {}", super::status::job_state(&run));
        if !run.worker.is_empty() {
            line.push_str(&format!(" on {}", run.worker));
        }
        if run.progress_total > 0 {
            line.push_str(&format!(
                " step {}/{}",
                run.progress_step, run.progress_total
            ));
        }
        if run.attempts > 1 {
            line.push_str(&format!(" (attempt {})", run.attempts));
        }
        if line != last {
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        if reply.done {
            if tty {
                eprintln!();
            }
            return Ok(reply);
        }
        if let Some(limit) = timeout
            && started.elapsed() > limit
        {
            anyhow::bail!(
                "replay {replay_id} did not finish within {}s (it stays queued; no worker may run kind {})",
                limit.as_secs(),
                job.kind
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The columns of a job environment in the report.
const ENVIRONMENT: [&str; 7] = [
    "job",
    "worker",
    "version",
    "git commit",
    "Cargo.lock",
    "host",
    "devices found",
];

fn environment_row(label: &str, e: &pb::JobEnvironment) -> Vec<String> {
    vec![
        label.to_owned(),
        e.worker.clone(),
        e.worker_version.clone(),
        e.git_commit[..e.git_commit.len().min(12)].to_owned(),
        short(&e.cargo_lock_sha256).to_owned(),
        e.host.clone(),
        pb::devices_summary(&e.devices),
    ]
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        // The replay first, so the hash checks and the log that follow include it.
        let mut replay = None;
        if let Some(wanted) = &args.replay {
            let timeout =
                (args.replay_timeout > 0).then(|| Duration::from_secs(args.replay_timeout));
            let status = run_replay(&mut client, &args.experiment, wanted, timeout).await?;
            let comparison = compare_replay(&status);
            replay = Some((status, comparison));
        }
        let reply = client
            .audit(pb::AuditRequest {
                experiment_id: args.experiment.clone(),
                include_log: args.log,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        let mut checks = reply.checks.clone();
        if let Some((_, comparison)) = &replay {
            checks.extend(comparison.checks.iter().cloned());
        }
        let report = Report {
            experiment: &args.experiment,
            reply: &reply,
            checks: &checks,
            replay: replay.as_ref(),
            log: args.log,
        };
        match args.format {
            OutputFormat::Table => print_report(&report),
            OutputFormat::Json => {
                println!("{}", serde_json::to_string_pretty(&report_json(&report))?)
            }
            OutputFormat::Csv => print!("{}", checks_table(&checks).render(OutputFormat::Csv)),
        }
        let failed = checks.iter().filter(|c| !c.ok).count();
        anyhow::Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })?
}

/// What one audit found: the coordinator's reply, every check (the replay's included) and the replay.
struct Report<'a> {
    experiment: &'a str,
    reply: &'a pb::AuditReply,
    checks: &'a [pb::AuditCheck],
    replay: Option<&'a (pb::ReplayStatus, ReplayChecks)>,
    /// Whether the log was asked for (`--log`).
    log: bool,
}

fn result_label(check: &pb::AuditCheck) -> &'static str {
    if check.ok { "PASS" } else { "FAIL" }
}

/// The checks for `--format csv`, hashes in full.
fn checks_table(checks: &[pb::AuditCheck]) -> Table {
    let mut table = Table::new(&["result", "subject", "expected", "actual", "detail"]);
    for c in checks {
        table.row(
            vec![
                result_label(c).into(),
                c.subject.clone(),
                c.expected.clone(),
                c.actual.clone(),
                c.detail.clone(),
            ],
            None,
        );
    }
    table
}

fn environment_json(e: &pb::JobEnvironment) -> Value {
    json!({
        "job_id": e.job_id,
        "worker": e.worker,
        "worker_version": e.worker_version,
        "git_commit": e.git_commit,
        "cargo_lock_sha256": e.cargo_lock_sha256,
        "host": e.host,
        "devices": e.devices.iter().map(|d| json!({"ordinal": d.ordinal, "name": d.name,
            "memory_mib": d.memory_mib, "compute_capability": d.compute_capability}))
            .collect::<Vec<_>>(),
    })
}

/// `--format json`: stable keys, hashes in full; `replay` is null without `--replay`, `log` null without
/// `--log`; `ok` is false when any check (the replay's included) failed.
fn report_json(report: &Report<'_>) -> Value {
    let reply = report.reply;
    let manifest_sha256 = reply
        .checks
        .iter()
        .find(|c| c.subject.starts_with("manifest"))
        .map(|c| c.expected.clone());
    let replay = report.replay.map(|(status, comparison)| {
        json!({
            "replay_id": status.replay_id,
            "job_id": status.job_id,
            "original_environment": status.original_environment.as_ref().map(environment_json),
            "replay_environment": status.replay_environment.as_ref().map(environment_json),
            "skipped_series": comparison.skipped,
        })
    });
    let log = report.log.then(|| {
        reply
            .log
            .iter()
            .map(|e| {
                json!({"time_ms": e.time_ms, "actor": e.actor, "action": e.action,
                       "experiment_id": e.experiment_id, "job_id": e.job_id, "detail": e.detail})
            })
            .collect::<Vec<_>>()
    });
    json!({
        "experiment_id": report.experiment,
        "ok": report.checks.iter().all(|c| c.ok),
        "manifest_sha256": manifest_sha256,
        "coordinator_version": reply.coordinator_version,
        "checks": report.checks.iter().map(|c| json!({"subject": c.subject, "expected": c.expected,
            "actual": c.actual, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
        "environments": reply.environments.iter().map(environment_json).collect::<Vec<_>>(),
        "replay": replay,
        "log": log,
    })
}

/// `--format table`: the report for people (hashes shortened), in columns sized to their contents.
fn print_report(report: &Report<'_>) {
    print!("{}", report_text(report));
}

fn report_text(report: &Report<'_>) -> String {
    let (reply, checks) = (report.reply, report.checks);
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            vec![
                result_label(c).to_owned(),
                c.subject.clone(),
                short(&c.expected).to_owned(),
                short(&c.actual).to_owned(),
                c.detail.clone(),
            ]
        })
        .collect();
    let mut out = aligned(
        &["result", "subject", "expected", "actual", "detail"],
        &rows,
    );
    out.push_str(&format!(
        "\ncoordinator version {}\n",
        reply.coordinator_version
    ));
    let environments: Vec<Vec<String>> = reply
        .environments
        .iter()
        .map(|e| environment_row(short(&e.job_id), e))
        .collect();
    out.push_str(&aligned(&ENVIRONMENT, &environments));
    if let Some((status, comparison)) = report.replay {
        out.push_str(&format!(
            "\nreplay {} of job {}:\n",
            status.replay_id,
            short(&status.job_id)
        ));
        let mut rows = Vec::new();
        if let Some(e) = &status.original_environment {
            rows.push(environment_row("original", e));
        }
        rows.push(match &status.replay_environment {
            Some(e) => environment_row("replay", e),
            None => vec!["replay".to_owned(), "(no worker ran the replay)".to_owned()]
                .into_iter()
                .chain(std::iter::repeat_n(String::new(), ENVIRONMENT.len() - 2))
                .collect(),
        });
        out.push_str(&aligned(&ENVIRONMENT, &rows));
        if !comparison.skipped.is_empty() {
            out.push_str(&format!(
                "skipped timing series (differ run to run by nature): {}\n",
                comparison.skipped.join(", ")
            ));
        }
    }
    if report.log {
        let rows: Vec<Vec<String>> = reply
            .log
            .iter()
            .map(|entry| {
                vec![
                    utc(entry.time_ms),
                    entry.actor.clone(),
                    entry.action.clone(),
                    short(&entry.job_id).to_owned(),
                    entry.detail.clone(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&aligned(
            &["time", "actor", "action", "job", "detail"],
            &rows,
        ));
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    out.push_str(&format!(
        "\n{}: {} checks, {failed} failed\n",
        if failed == 0 { "PASS" } else { "FAIL" },
        checks.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_coordinator::replay_verdict::check;

    #[test]
    fn json_and_csv_keep_full_hashes_and_every_check() {
        let manifest = "ab".repeat(32);
        let reply = pb::AuditReply {
            checks: vec![
                check(
                    "manifest m.json".into(),
                    manifest.clone(),
                    manifest.clone(),
                    String::new(),
                ),
                check(
                    "input data, v2".into(),
                    "cd".repeat(32),
                    String::new(),
                    "blob missing".into(),
                ),
            ],
            environments: vec![pb::JobEnvironment {
                job_id: "j1".into(),
                worker: "w1-node".into(),
                ..Default::default()
            }],
            coordinator_version: "0.1.0".into(),
            ok: false,
            ..Default::default()
        };
        let report = Report {
            experiment: "e1",
            reply: &reply,
            checks: &reply.checks,
            replay: None,
            log: false,
        };
        let json = report_json(&report);
        assert_eq!(json["ok"], false);
        assert_eq!(json["manifest_sha256"], manifest.as_str());
        assert_eq!(json["checks"][1]["expected"], "cd".repeat(32).as_str());
        assert_eq!(json["checks"][1]["detail"], "blob missing");
        assert_eq!(json["environments"][0]["worker"], "w1-node");
        assert_eq!(json["environments"][0]["devices"], serde_json::json!([]));
        assert_eq!(json["replay"], Value::Null);
        assert_eq!(json["log"], Value::Null);
        let csv = checks_table(&reply.checks).render(OutputFormat::Csv);
        assert_eq!(
            csv,
            format!(
                "result,subject,expected,actual,detail\nPASS,manifest m.json,{manifest},{manifest},\n\
                 FAIL,\"input data, v2\",{},,blob missing\n",
                "cd".repeat(32)
            )
        );
    }

    #[test]
    fn jobs_resolve_by_id_prefix_or_name() {
        let jobs: Vec<pb::JobStatus> = [("abc123", "train"), ("abd456", "eval")]
            .into_iter()
            .map(|(id, name)| pb::JobStatus {
                id: id.into(),
                name: name.into(),
                ..Default::default()
            })
            .collect();
        assert_eq!(resolve_job(&jobs, "abc123").unwrap().name, "train");
        assert_eq!(resolve_job(&jobs, "eval").unwrap().id, "abd456");
        assert_eq!(resolve_job(&jobs, "abc").unwrap().id, "abc123");
        assert!(
            resolve_job(&jobs, "ab")
                .unwrap_err()
                .to_string()
                .contains("matches 2 jobs")
        );
        assert!(
            resolve_job(&jobs, "zz")
                .unwrap_err()
                .to_string()
                .contains("no job")
        );
        assert!(resolve_job(&jobs, "").is_err());
    }

    #[test]
    fn the_report_aligns_long_subjects_and_keeps_its_line_starts() {
        let long = format!(
            "artifact train(stage2, fold 3)/{}",
            "adapter_model".repeat(4)
        );
        assert!(long.len() > 60);
        let check = |subject: &str, ok: bool, actual: &str, detail: &str| pb::AuditCheck {
            subject: subject.into(),
            expected: "ab".repeat(32),
            actual: actual.into(),
            ok,
            detail: detail.into(),
        };
        let checks = vec![
            check(&long, true, &"ab".repeat(32), "same bytes"),
            check("input data", false, "", "blob missing"),
        ];
        let device = pb::Device {
            name: "NVIDIA H100".into(),
            memory_mib: 81_559,
            ..Default::default()
        };
        let environment = pb::JobEnvironment {
            job_id: "j1".into(),
            worker: "w1-node".into(),
            host: "gpu-host".into(),
            devices: vec![device],
            ..Default::default()
        };
        let devices = pb::devices_summary(&environment.devices);
        let reply = pb::AuditReply {
            checks: checks.clone(),
            environments: vec![environment],
            log: vec![pb::AuditLogEntry {
                time_ms: 0,
                actor: "team:radiology-with-a-long-name".into(),
                action: "replay".into(),
                job_id: "j1".into(),
                detail: "asked".into(),
                ..Default::default()
            }],
            coordinator_version: "0.1.0".into(),
            ..Default::default()
        };
        let report = Report {
            experiment: "e1",
            reply: &reply,
            checks: &checks,
            replay: None,
            log: true,
        };
        let text = report_text(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("result  subject "), "{text}");
        assert!(
            lines[1].starts_with("PASS    artifact") && lines[1].contains(&long),
            "{text}"
        );
        assert!(lines[2].starts_with("FAIL    input data "), "{text}");
        // The long subject widens its column; every column after it still starts at one offset.
        let detail = lines[0].find("detail").expect("detail header");
        assert_eq!(lines[1].find("same bytes"), Some(detail), "{text}");
        assert_eq!(lines[2].find("blob missing"), Some(detail), "{text}");
        assert!(detail > long.len(), "{text}");
        // The environments: a header ending in the devices column, one row per job ending in its devices.
        let header = lines
            .iter()
            .position(|l| l.ends_with("devices found"))
            .expect("environment header");
        assert!(lines[header].starts_with("job "), "{text}");
        assert!(lines[header + 1].starts_with("j1 "), "{text}");
        assert!(lines[header + 1].ends_with(&devices), "{text}");
        assert_eq!(lines[header + 2], "", "{text}");
        let log = lines
            .iter()
            .find(|l| l.contains("team:radiology-with-a-long-name"))
            .expect("log line");
        assert!(log.starts_with("1970-01-01 00:00:00  team:"), "{text}");
        assert_eq!(lines.last(), Some(&"FAIL: 2 checks, 1 failed"), "{text}");
        assert!(!lines.iter().any(|l| l.ends_with(' ')), "{text}");
    }
}
