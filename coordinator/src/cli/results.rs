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
        let table = rows(&reply);
        match args.format {
            ResultsFormat::Json => {
                let rows: Vec<_> = table
                    .iter()
                    .map(|(job, state, series, n, step, value)| {
                        json!({"job": job, "state": state, "series": series, "points": n, "last_step": step, "last_value": value})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            }
            ResultsFormat::Csv => {
                println!("job,state,series,points,last_step,last_value");
                for (job, state, series, n, step, value) in &table {
                    println!("{job},{state},{series},{n},{step},{value}");
                }
            }
            ResultsFormat::Md => {
                println!("| job | state | series | points | last step | last value |");
                println!("|---|---|---|---:|---:|---:|");
                for (job, state, series, n, step, value) in &table {
                    println!("| {job} | {state} | {series} | {n} | {step} | {value:.4} |");
                }
                if table.is_empty() {
                    println!("| (no metrics recorded) | | | | | |");
                }
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })?
}
