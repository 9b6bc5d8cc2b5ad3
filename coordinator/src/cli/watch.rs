//! `tandem watch ID`: live progress per job (bars on a terminal, plain lines otherwise) until the experiment
//! ends; exit code 0 when it succeeded.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tandem_proto as pb;
use tokio_stream::StreamExt;

use super::client::{Client, ClientArgs, block_on, rpc};
use super::status::job_state;

#[derive(Debug, Args)]
pub struct WatchArgs {
    pub experiment: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn describe(job: &pb::JobStatus) -> String {
    let mut s = format!("{} [{}]", job_state(job), job.attempts);
    if !job.last_metric.is_empty() {
        s.push_str(&format!(" {}={:.4}", job.last_metric, job.last_value));
    }
    if job.cached {
        s.push_str(" (cached)");
    }
    if !job.waiting_reason.is_empty() {
        s.push_str(&format!(" waiting: {}", job.waiting_reason));
    }
    s
}

pub fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        let state = follow(&mut client, &args.experiment).await?;
        anyhow::Ok(if state == "succeeded" {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })?
}

/// Shows an experiment's progress until it ends (bars on a terminal, plain lines otherwise), prints a
/// summary, and returns the final state.
pub async fn follow(client: &mut Client, experiment: &str) -> anyhow::Result<String> {
    let mut stream = client
        .watch(pb::WatchRequest {
            experiment_id: experiment.to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let tty = std::io::stderr().is_terminal();
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:32} {bar:30} {pos}/{len} {eta:>5} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut by_job: HashMap<String, ProgressBar> = HashMap::new();
    let mut last_line: HashMap<String, String> = HashMap::new();
    let mut final_state = String::from("running");
    let mut jobs: HashMap<String, pb::JobStatus> = HashMap::new();
    while let Some(event) = stream.next().await {
        let event = event.map_err(rpc)?;
        if event.experiment_done {
            final_state = event.experiment_state.clone();
            break;
        }
        let Some(job) = event.job else { continue };
        if tty {
            let bar = by_job.entry(job.id.clone()).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(1));
                bar.set_style(style.clone());
                bar.set_prefix(job.name.chars().take(32).collect::<String>());
                bar
            });
            if job.progress_total > 0 {
                bar.set_length(job.progress_total);
                bar.set_position(job.progress_step);
            }
            if job_state(&job) == "succeeded" {
                let len = bar.length().unwrap_or(1).max(1);
                bar.set_length(len);
                bar.set_position(len);
            }
            bar.set_message(describe(&job));
        } else {
            let line = format!(
                "{} {} step {}/{}",
                job.name,
                describe(&job),
                job.progress_step,
                job.progress_total
            );
            if last_line.get(&job.id) != Some(&line) {
                println!("{line}");
                last_line.insert(job.id.clone(), line);
            }
        }
        jobs.insert(job.id.clone(), job);
    }
    for bar in by_job.values() {
        bar.finish();
    }
    let count = |s: &str| jobs.values().filter(|j| job_state(j) == s).count();
    println!(
        "experiment {experiment} {final_state}: {} succeeded ({} cached), {} failed, {} cancelled, {} jobs",
        count("succeeded"),
        jobs.values().filter(|j| j.cached).count(),
        count("failed"),
        count("cancelled"),
        jobs.len()
    );
    for job in jobs
        .values()
        .filter(|j| !j.last_error.is_empty() && job_state(j) == "failed")
    {
        println!("  {} failed: {}", job.name, job.last_error);
    }
    Ok(final_state)
}
