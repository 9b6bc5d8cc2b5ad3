//! `tandem status [ID] [--format json]`: experiments, or one experiment's jobs.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::json;
use tandem_proto as pb;

use super::client::{ClientArgs, block_on, rpc, utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Experiment id (omit to list your experiments).
    pub experiment: Option<String>,
    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn job_state(job: &pb::JobStatus) -> &'static str {
    pb::JobState::try_from(job.state)
        .unwrap_or(pb::JobState::Unspecified)
        .label()
}

pub fn status_json(status: &pb::ExperimentStatus) -> serde_json::Value {
    let summary = status.summary.clone().unwrap_or_default();
    json!({
        "id": summary.id,
        "name": summary.name,
        "team": summary.team,
        "state": summary.state,
        "manifest_sha256": status.manifest_sha256,
        "jobs": status.jobs.iter().map(|j| json!({
            "id": j.id,
            "kind": j.kind,
            "name": j.name,
            "state": job_state(j),
            "attempts": j.attempts,
            "worker": j.worker,
            "cached": j.cached,
            "last_error": if j.last_error.is_empty() { serde_json::Value::Null } else { j.last_error.clone().into() },
            "waiting_reason": if j.waiting_reason.is_empty() { serde_json::Value::Null } else { j.waiting_reason.clone().into() },
        })).collect::<Vec<_>>(),
    })
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        match &args.experiment {
            None => {
                let list = client
                    .list_experiments(pb::ListExperimentsRequest {})
                    .await
                    .map_err(rpc)?
                    .into_inner();
                if args.format == StatusFormat::Json {
                    let rows: Vec<_> = list
                        .experiments
                        .iter()
                        .map(|e| json!({"id": e.id, "name": e.name, "team": e.team, "state": e.state,
                                        "jobs": e.jobs, "jobs_done": e.jobs_done, "created_ms": e.created_ms}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    println!(
                        "{:<10} {:<24} {:<12} {:<10} {:>9}  created (UTC)",
                        "id", "name", "team", "state", "done"
                    );
                    for e in list.experiments {
                        println!(
                            "{:<10} {:<24} {:<12} {:<10} {:>4}/{:<4}  {}",
                            e.id,
                            e.name,
                            e.team,
                            e.state,
                            e.jobs_done,
                            e.jobs,
                            utc(e.created_ms)
                        );
                    }
                }
            }
            Some(id) => {
                let status = client
                    .get_experiment(pb::GetExperimentRequest {
                        experiment_id: id.clone(),
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                if args.format == StatusFormat::Json {
                    println!("{}", serde_json::to_string_pretty(&status_json(&status))?);
                } else {
                    let s = status.summary.clone().unwrap_or_default();
                    println!(
                        "experiment {} ({}) team {}: {} ({}/{} jobs done)",
                        s.id, s.name, s.team, s.state, s.jobs_done, s.jobs
                    );
                    println!(
                        "{:<16} {:<28} {:<12} {:<10} {:>8}  worker",
                        "job", "name", "kind", "state", "attempts"
                    );
                    for j in &status.jobs {
                        let state = if j.cached {
                            format!("{} (cached)", job_state(j))
                        } else {
                            job_state(j).to_string()
                        };
                        println!(
                            "{:<16} {:<28} {:<12} {:<10} {:>8}  {}",
                            &j.id[..j.id.len().min(16)],
                            j.name,
                            j.kind,
                            state,
                            j.attempts,
                            j.worker
                        );
                        if !j.last_error.is_empty() {
                            println!("{:<16} last error: {}", "", j.last_error);
                        }
                        if !j.waiting_reason.is_empty() {
                            println!("{:<16} waiting: {}", "", j.waiting_reason);
                        }
                    }
                }
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })?
}
