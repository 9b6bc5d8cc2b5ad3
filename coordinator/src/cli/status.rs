//! `tandem status [ID] [--format table|json|csv]`: experiments, or one experiment's jobs.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use tandem_proto as pb;

use super::client::{ClientArgs, block_on, rpc, utc};
use super::output::{OutputFormat, Table};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Experiment id (omit to list your experiments).
    pub experiment: Option<String>,
    /// table, json (a stable object per experiment, or the experiment with its jobs) or csv.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
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
            "progress_step": j.progress_step,
            "progress_total": j.progress_total,
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
                let mut table =
                    Table::new(&["id", "name", "team", "state", "done", "created (UTC)"]);
                for e in &list.experiments {
                    table.row(
                        vec![
                            e.id.clone(),
                            e.name.clone(),
                            e.team.clone(),
                            e.state.clone(),
                            format!("{}/{}", e.jobs_done, e.jobs),
                            utc(e.created_ms),
                        ],
                        Some(json!({"id": e.id, "name": e.name, "team": e.team, "state": e.state,
                                    "jobs": e.jobs, "jobs_done": e.jobs_done, "created_ms": e.created_ms})),
                    );
                }
                print!("{}", table.render(args.format));
            }
            Some(id) => {
                let status = client
                    .get_experiment(pb::GetExperimentRequest {
                        experiment_id: id.clone(),
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                if args.format == OutputFormat::Json {
                    println!("{}", serde_json::to_string_pretty(&status_json(&status))?);
                    return anyhow::Ok(ExitCode::SUCCESS);
                }
                let mut table =
                    Table::new(&["job", "name", "kind", "state", "attempts", "worker", "note"]);
                for j in &status.jobs {
                    let state = if j.cached {
                        format!("{} (cached)", job_state(j))
                    } else {
                        job_state(j).to_string()
                    };
                    let note = if !j.last_error.is_empty() {
                        format!("last error: {}", j.last_error)
                    } else if !j.waiting_reason.is_empty() {
                        format!("waiting: {}", j.waiting_reason)
                    } else {
                        String::new()
                    };
                    let id = if args.format == OutputFormat::Table {
                        j.id[..j.id.len().min(16)].to_string()
                    } else {
                        j.id.clone()
                    };
                    table.row(
                        vec![
                            id,
                            j.name.clone(),
                            j.kind.clone(),
                            state,
                            j.attempts.to_string(),
                            j.worker.clone(),
                            note,
                        ],
                        None,
                    );
                }
                if args.format == OutputFormat::Table {
                    let s = status.summary.clone().unwrap_or_default();
                    println!(
                        "experiment {} ({}) team {}: {} ({}/{} jobs done)",
                        s.id, s.name, s.team, s.state, s.jobs_done, s.jobs
                    );
                }
                print!("{}", table.render(args.format));
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })?
}
