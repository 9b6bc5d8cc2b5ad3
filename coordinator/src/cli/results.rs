//! `tandem results ID [--format md|csv|json]`: per job, the final value and length of every metric series.
//! (The thesis tables 4.1/4.3/4.4 need the metrics crate's evaluation jobs; until then this is what a
//! generic experiment yields.)

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::json;
use tandem_proto as pb;

use super::client::{ClientArgs, block_on, rpc};
use super::status::job_state;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResultsFormat {
    Md,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    pub experiment: String,
    #[arg(long, value_enum, default_value_t = ResultsFormat::Md)]
    pub format: ResultsFormat,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One row per (job, series): job name, state, series, points, last step, last value.
pub fn rows(reply: &pb::ResultsReply) -> Vec<(String, String, String, usize, u64, f64)> {
    let status = reply.status.clone().unwrap_or_default();
    let jobs: HashMap<&str, &pb::JobStatus> =
        status.jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    let mut out = Vec::new();
    for s in &reply.series {
        let Some(job) = jobs.get(s.job_id.as_str()) else {
            continue;
        };
        let (Some(step), Some(value)) = (s.steps.last(), s.values.last()) else {
            continue;
        };
        out.push((
            job.name.clone(),
            job_state(job).to_string(),
            s.name.clone(),
            s.values.len(),
            *step,
            *value,
        ));
    }
    out
}

pub fn run(args: ResultsArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        let reply = client
            .results(pb::ResultsRequest {
                experiment_id: args.experiment.clone(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        print!("{}", render(&reply, args.format)?);
        anyhow::Ok(ExitCode::SUCCESS)
    })?
}

/// The results table in `format`.
pub fn render(reply: &pb::ResultsReply, format: ResultsFormat) -> anyhow::Result<String> {
    let table = rows(reply);
    let mut out = String::new();
    match format {
        ResultsFormat::Json => {
            let rows: Vec<_> = table
                .iter()
                .map(|(job, state, series, n, step, value)| {
                    json!({"job": job, "state": state, "series": series, "points": n, "last_step": step, "last_value": value})
                })
                .collect();
            out.push_str(&serde_json::to_string_pretty(&rows)?);
            out.push('\n');
        }
        ResultsFormat::Csv => {
            out.push_str("job,state,series,points,last_step,last_value\n");
            for (job, state, series, n, step, value) in &table {
                out.push_str(&format!("{job},{state},{series},{n},{step},{value}\n"));
            }
        }
        ResultsFormat::Md => {
            out.push_str("| job | state | series | points | last step | last value |\n|---|---|---|---:|---:|---:|\n");
            for (job, state, series, n, step, value) in &table {
                out.push_str(&format!(
                    "| {job} | {state} | {series} | {n} | {step} | {value:.4} |\n"
                ));
            }
            if table.is_empty() {
                out.push_str("| (no metrics recorded) | | | | | |\n");
            }
        }
    }
    Ok(out)
}
