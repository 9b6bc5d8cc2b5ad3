//! `tandem summarize M HISTORIES.csv [--fold K] [--out DIR]`: longitudinal summaries of patient histories (the
//! thesis's future work). Plans manifest M (its finished jobs come from the cache; what is missing is trained),
//! adds one `summarize` job per patient of the history CSV, submits them as the experiment `<name>-summaries`,
//! follows it, and writes `DIR/summaries.csv` (one final summary per patient) and `DIR/summaries.jsonl` (every
//! patient's chain of intermediate summaries).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tandem_experiments::data::patients::load_histories;
use tandem_experiments::planner::summarize::{
    PATIENT_SUMMARY, PatientSummary, plan_summaries, summaries_csv,
};
use tandem_experiments::planner::{self, wire};
use tandem_proto as pb;

use super::client::{ClientArgs, block_on, download, fetch_results};
use super::validate::{Overrides, load_or_report};
use super::watch::follow;

#[derive(Debug, Args)]
pub struct SummarizeArgs {
    /// The experiment manifest whose stage-1 and two-stage models summarise.
    pub manifest: PathBuf,
    /// The patient histories: subject_id, study_id, date (YYYY-MM-DD), findings, impression (may be empty).
    pub histories: PathBuf,
    /// The stage-2 fold whose two-stage model summarises (default 0 for a k-fold stage 2).
    #[arg(long)]
    pub fold: Option<usize>,
    /// Where summaries.csv and summaries.jsonl go.
    #[arg(long, short, default_value = "summaries")]
    pub out: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The job kind of one patient's summary.
const SUMMARIZE_KIND: &str = "summarize";

pub fn run(args: SummarizeArgs) -> anyhow::Result<ExitCode> {
    let (manifest, text) = match load_or_report(&args.manifest, &args.overrides, true) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let histories = match load_histories(&args.histories) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let plan = planner::plan(&manifest)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.manifest.display()))?;
    let plan = match plan_summaries(&manifest, &plan, &args.histories, &histories, args.fold) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {}: {e}", args.manifest.display());
            return Ok(ExitCode::from(2));
        }
    };
    let request = pb::SubmitRequest {
        manifest: text.into_bytes(),
        format: tandem_coordinator::planning::FORMAT_TOML.into(),
        manifest_name: args
            .manifest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        priority: 0,
        jobs: plan.jobs.iter().map(wire::encode).collect(),
        inputs: plan
            .inputs
            .iter()
            .map(|(role, input)| wire::input_to_pb(role, input))
            .collect(),
        experiment_name: plan.experiment.clone(),
    };
    let blobs = plan.blobs.clone();
    let patients = histories.len();
    block_on(async move {
        let mut client = args.client.connect().await?;
        let reply = super::submit::send(&mut client, request, &blobs).await?;
        eprintln!(
            "submitted {} ({} jobs, {} served from the cache): {patients} patients",
            reply.experiment_id, reply.jobs, reply.cached
        );
        let state = follow(&mut client, &reply.experiment_id).await?;
        let results = fetch_results(&mut client, &reply.experiment_id).await?;
        let status = results.status.clone().unwrap_or_default();
        let mut summaries = Vec::new();
        for job in status.jobs.iter().filter(|j| j.kind == SUMMARIZE_KIND) {
            let Some(artifact) = results
                .artifacts
                .iter()
                .find(|a| a.job_id == job.id && a.name == PATIENT_SUMMARY)
            else {
                eprintln!(
                    "{}: no summary ({})",
                    job.name,
                    super::status::job_state(job)
                );
                continue;
            };
            let bytes = download(&mut client, &artifact.sha256)
                .await
                .with_context(|| format!("downloading the summary of {}", job.name))?;
            let summary: PatientSummary = serde_json::from_slice(&bytes)
                .with_context(|| format!("{PATIENT_SUMMARY} of {}", job.name))?;
            summaries.push(summary);
        }
        write_out(&args.out, &summaries)?;
        println!("| patient | visits | impressions written by stage 1 | summary words |");
        println!("|---|---:|---:|---:|");
        for s in &summaries {
            let written = s.steps.iter().filter(|v| v.impression_generated).count();
            let words = s.summary.split_whitespace().count();
            println!(
                "| {} | {} | {written} | {words} |",
                s.subject_id,
                s.steps.len()
            );
        }
        eprintln!(
            "{} of {patients} patients summarised -> {}",
            summaries.len(),
            args.out.display()
        );
        anyhow::Ok(match state.as_str() {
            "succeeded" if summaries.len() == patients => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        })
    })?
}

/// `summaries.csv` (subject_id, visits, impressions_generated, summary) and `summaries.jsonl` (every chain).
fn write_out(dir: &std::path::Path, summaries: &[PatientSummary]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let csv_path = dir.join("summaries.csv");
    std::fs::write(&csv_path, summaries_csv(summaries))
        .with_context(|| format!("writing {}", csv_path.display()))?;
    let jsonl_path = dir.join("summaries.jsonl");
    let mut file = std::fs::File::create(&jsonl_path)
        .with_context(|| format!("writing {}", jsonl_path.display()))?;
    for s in summaries {
        serde_json::to_writer(&mut file, s)?;
        file.write_all(b"\n")?;
    }
    Ok(())
}
