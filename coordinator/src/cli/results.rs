//! `tandem results ID [--format md|csv|json] [--series | --sweep]`: the thesis's tables for an experiment (Tables 4.1,
//! 4.3 and 4.4, rows model x stage, columns B-1..RG, mean and std over folds, relative change against the base
//! row, and the sweep tables), built from the `eval_result.json` artifact each eval job uploads. A partial
//! experiment shows what is there and names the evaluations still missing. `--series` (and any experiment
//! without evaluation results, e.g. one of generic job kinds) shows the per-job metric-series summary instead;
//! `--sweep` shows the training sweep's points from each select job's `selection.json`.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;
use tandem_experiments::planner::artifacts::{ArtifactRole, SELECTION, SelectionRecord};
use tandem_experiments::report::{
    EvalResult, Format, build_results, render as render_tables, render_sweep,
};
use tandem_proto as pb;

use super::client::{Client, ClientArgs, block_on, download, fetch_results};
use super::status::job_state;

/// The artifact an eval job uploads with its corpus scores (one name, shared with the worker's runners).
pub use tandem_experiments::planner::artifacts::EVAL_RESULT as EVAL_RESULT_ARTIFACT;
/// The planner's evaluation job kind.
pub const EVAL_KIND: &str = "eval";
/// The planner's job kind that picks a training sweep's best point.
pub const SELECT_KIND: &str = "select";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResultsFormat {
    Md,
    Csv,
    Json,
}

impl ResultsFormat {
    fn table_format(self) -> Format {
        match self {
            ResultsFormat::Md => Format::Markdown,
            ResultsFormat::Csv => Format::Csv,
            ResultsFormat::Json => Format::Json,
        }
    }
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    pub experiment: String,
    #[arg(long, value_enum, default_value_t = ResultsFormat::Md)]
    pub format: ResultsFormat,
    /// Show the per-job metric-series summary (final value and length of every series) instead of the tables.
    #[arg(long)]
    pub series: bool,
    /// Show the training sweep instead: one row per point (swept values, selection metric, updates run, how it
    /// ended, which was chosen), per stage and fold.
    #[arg(long, conflicts_with = "series")]
    pub sweep: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The evaluation results an experiment has, and the eval jobs that have none yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalArtifacts {
    /// (job name, its `eval_result.json` artifact), in job order.
    pub found: Vec<(String, pb::ArtifactRef)>,
    /// Eval jobs without a result, as `name (state)`.
    pub missing: Vec<String>,
}

/// Finds every job's `eval_result.json` output and the eval jobs that have not produced one.
pub fn eval_artifacts(reply: &pb::ResultsReply) -> EvalArtifacts {
    let status = reply.status.clone().unwrap_or_default();
    let mut by_job: HashMap<&str, &pb::ArtifactRef> = HashMap::new();
    for a in &reply.artifacts {
        if a.name == EVAL_RESULT_ARTIFACT && a.role == ArtifactRole::Output.as_str() {
            by_job.insert(a.job_id.as_str(), a);
        }
    }
    let mut out = EvalArtifacts::default();
    for job in &status.jobs {
        match by_job.get(job.id.as_str()) {
            Some(artifact) => out.found.push((job.name.clone(), (*artifact).clone())),
            None if job.kind == EVAL_KIND => {
                out.missing
                    .push(format!("{} ({})", job.name, job_state(job)))
            }
            None => {}
        }
    }
    out
}

/// Parses downloaded `eval_result.json` files; an error names the job and where the JSON is wrong.
pub fn parse_evals(downloaded: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<EvalResult>> {
    downloaded
        .iter()
        .map(|(job, bytes)| {
            serde_json::from_slice(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{EVAL_RESULT_ARTIFACT} of job {job}: line {} column {}: {e}",
                    e.line(),
                    e.column()
                )
            })
        })
        .collect()
}

/// Downloads (verifying each hash) and parses every evaluation result of the experiment.
pub async fn fetch_evals(
    client: &mut Client,
    reply: &pb::ResultsReply,
) -> anyhow::Result<(Vec<EvalResult>, Vec<String>)> {
    let found = eval_artifacts(reply);
    let mut downloaded = Vec::with_capacity(found.found.len());
    for (job, artifact) in &found.found {
        let bytes = download(client, &artifact.sha256)
            .await
            .with_context(|| format!("downloading {EVAL_RESULT_ARTIFACT} of job {job}"))?;
        downloaded.push((job.clone(), bytes));
    }
    Ok((parse_evals(&downloaded)?, found.missing))
}

/// What `tandem results` prints: the text (tables or series summary) and notes about what is missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub text: String,
    pub notes: Vec<String>,
}

impl Report {
    /// Markdown carries its notes in the text; CSV and JSON keep stdout machine-readable (notes to stderr).
    pub fn print(&self, format: ResultsFormat) {
        print!("{}", self.text);
        for note in &self.notes {
            match format {
                ResultsFormat::Md => println!("\n> {note}"),
                _ => eprintln!("{note}"),
            }
        }
    }
}

/// The thesis tables from `evals` (with a note naming `missing` evaluations), or, when there are no
/// evaluation results, a note saying so and the metric-series summary.
pub fn report(
    reply: &pb::ResultsReply,
    evals: &[EvalResult],
    missing: &[String],
    format: ResultsFormat,
) -> anyhow::Result<Report> {
    if evals.is_empty() {
        let mut notes = vec![if missing.is_empty() {
            "no evaluation results: this experiment has no eval jobs; showing the metric-series summary"
                .to_string()
        } else {
            format!(
                "no evaluation results yet ({} evaluations missing: {}); showing the metric-series summary",
                missing.len(),
                missing.join(", ")
            )
        }];
        let text = render(reply, format)?;
        if rows(reply).is_empty() {
            notes.push("no metrics recorded yet".into());
        }
        return Ok(Report { text, notes });
    }
    let results = build_results(evals).context("building the results tables")?;
    let text = render_tables(&results, format.table_format())?;
    let notes = if missing.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "partial results: {} of {} evaluations still missing: {}",
            missing.len(),
            missing.len() + evals.len(),
            missing.join(", ")
        )]
    };
    Ok(Report { text, notes })
}

/// Fetches what is needed and builds the report of `experiment`.
pub async fn fetch_report(
    client: &mut Client,
    reply: &pb::ResultsReply,
    format: ResultsFormat,
) -> anyhow::Result<Report> {
    let (evals, missing) = fetch_evals(client, reply).await?;
    report(reply, &evals, &missing, format)
}

/// The training-sweep tables from every select job's `selection.json`, with notes naming the selections that
/// have not finished.
pub async fn fetch_sweep(
    client: &mut Client,
    reply: &pb::ResultsReply,
    format: ResultsFormat,
) -> anyhow::Result<Report> {
    let (records, mut notes) = fetch_selections(client, reply).await?;
    if records.is_empty() && notes.is_empty() {
        notes.push("this experiment has no training sweep".into());
    }
    Ok(Report {
        text: render_sweep(&records, format.table_format()),
        notes,
    })
}

/// Every finished select job's `selection.json` (by stage and fold), and notes naming those not finished.
pub async fn fetch_selections(
    client: &mut Client,
    reply: &pb::ResultsReply,
) -> anyhow::Result<(Vec<SelectionRecord>, Vec<String>)> {
    let status = reply.status.clone().unwrap_or_default();
    let mut records = Vec::new();
    let mut notes = Vec::new();
    for job in status.jobs.iter().filter(|j| j.kind == SELECT_KIND) {
        let artifact = reply.artifacts.iter().find(|a| {
            a.job_id == job.id && a.name == SELECTION && a.role == ArtifactRole::Output.as_str()
        });
        let Some(artifact) = artifact else {
            notes.push(format!(
                "{} has not finished ({})",
                job.name,
                job_state(job)
            ));
            continue;
        };
        let bytes = download(client, &artifact.sha256)
            .await
            .with_context(|| format!("downloading {SELECTION} of job {}", job.name))?;
        let record: SelectionRecord = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{SELECTION} of job {}: line {} column {}: {e}",
                job.name,
                e.line(),
                e.column()
            )
        })?;
        records.push(record);
    }
    records.sort_by_key(|r| (r.stage, r.fold));
    Ok((records, notes))
}

pub fn run(args: ResultsArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        let reply = fetch_results(&mut client, &args.experiment).await?;
        if args.series {
            print!("{}", render(&reply, args.format)?);
        } else if args.sweep {
            fetch_sweep(&mut client, &reply, args.format)
                .await?
                .print(args.format);
        } else {
            fetch_report(&mut client, &reply, args.format)
                .await?
                .print(args.format);
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })?
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

/// The metric-series summary in `format`.
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tandem_experiments::manifest::{ModelFamily, ModelStage, Stage};

    use super::*;

    fn job(id: &str, kind: &str, name: &str, state: pb::JobState) -> pb::JobStatus {
        pb::JobStatus {
            id: id.into(),
            kind: kind.into(),
            name: name.into(),
            state: state as i32,
            ..Default::default()
        }
    }

    fn artifact(job_id: &str, name: &str, role: &str) -> pb::ArtifactRef {
        pb::ArtifactRef {
            job_id: job_id.into(),
            name: name.into(),
            sha256: format!("{job_id:0>64}"),
            size: 1,
            role: role.into(),
        }
    }

    fn eval(model: ModelStage, task: Stage, fold: Option<usize>, bleu1: f64) -> EvalResult {
        EvalResult {
            family: ModelFamily::Llama,
            model,
            task,
            fold,
            sweep: None,
            configured: true,
            scores: BTreeMap::from([
                ("bleu1".to_string(), Some(bleu1)),
                ("radgraph_partial".to_string(), None),
            ]),
        }
    }

    fn reply() -> pb::ResultsReply {
        pb::ResultsReply {
            status: Some(pb::ExperimentStatus {
                jobs: vec![
                    job("t1", "train", "train(stage1)", pb::JobState::Succeeded),
                    job(
                        "e1",
                        "eval",
                        "eval(base on stage1)",
                        pb::JobState::Succeeded,
                    ),
                    job(
                        "e2",
                        "eval",
                        "eval(stage1 on stage1)",
                        pb::JobState::Succeeded,
                    ),
                    job(
                        "e3",
                        "eval",
                        "eval(two-stage, fold 0)",
                        pb::JobState::Running,
                    ),
                ],
                ..Default::default()
            }),
            artifacts: vec![
                artifact("t1", "adapter_model.safetensors", "output"),
                artifact("e1", EVAL_RESULT_ARTIFACT, "output"),
                artifact("e1", "predictions.csv", "output"),
                artifact("e2", EVAL_RESULT_ARTIFACT, "output"),
                // A checkpoint of the same name is not a result.
                artifact("e3", EVAL_RESULT_ARTIFACT, "checkpoint"),
            ],
            series: vec![pb::MetricSeries {
                job_id: "t1".into(),
                name: "train_loss".into(),
                steps: vec![1, 2],
                values: vec![2.5, 2.0],
                times_ms: vec![0, 0],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn finds_eval_results_and_names_the_missing_evaluations() {
        let found = eval_artifacts(&reply());
        let names: Vec<_> = found
            .found
            .iter()
            .map(|(n, a)| (n.as_str(), a.job_id.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("eval(base on stage1)", "e1"),
                ("eval(stage1 on stage1)", "e2")
            ]
        );
        assert_eq!(found.missing, vec!["eval(two-stage, fold 0) (running)"]);
    }

    #[test]
    fn downloaded_results_make_the_thesis_table_with_a_missing_note() {
        let evals = [
            eval(ModelStage::Base, Stage::Stage1, None, 0.10),
            eval(ModelStage::Stage1, Stage::Stage1, None, 0.30),
        ];
        let downloaded: Vec<(String, Vec<u8>)> = evals
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("e{i}"), serde_json::to_vec(e).unwrap()))
            .collect();
        let parsed = parse_evals(&downloaded).unwrap();
        assert_eq!(parsed, evals);
        let missing = vec!["eval(two-stage, fold 0) (running)".to_string()];
        let report = report(&reply(), &parsed, &missing, ResultsFormat::Md).unwrap();
        assert!(report.text.contains("B-1"), "{}", report.text);
        assert!(
            report.text.contains("10.00"),
            "base B-1 x100: {}",
            report.text
        );
        assert!(
            report.text.contains("30.00"),
            "stage-1 B-1 x100: {}",
            report.text
        );
        assert!(report.text.contains("200.00% increase"), "{}", report.text);
        assert!(
            !report.text.contains("train_loss"),
            "tables, not the series summary"
        );
        assert_eq!(report.notes.len(), 1);
        assert!(
            report.notes[0].contains("1 of 3 evaluations still missing: eval(two-stage, fold 0)"),
            "{:?}",
            report.notes
        );
        let csv = super::report(&reply(), &parsed, &[], ResultsFormat::Csv).unwrap();
        assert!(csv.notes.is_empty());
        assert!(csv.text.lines().count() > 2, "{}", csv.text);
        let json = super::report(&reply(), &parsed, &[], ResultsFormat::Json).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json.text).unwrap();
        assert!(value["tables"].is_array(), "{value}");
    }

    #[test]
    fn without_eval_results_the_series_summary_is_shown_and_said() {
        let report = report(&reply(), &[], &[], ResultsFormat::Md).unwrap();
        assert!(
            report
                .text
                .contains("| train(stage1) | succeeded | train_loss | 2 | 2 | 2.0000 |")
        );
        assert!(
            report.notes[0].contains("no eval jobs"),
            "{:?}",
            report.notes
        );
        let waiting =
            super::report(&reply(), &[], &["e (running)".into()], ResultsFormat::Md).unwrap();
        assert!(waiting.notes[0].contains("1 evaluations missing: e (running)"));
    }

    #[test]
    fn a_broken_eval_result_names_the_job() {
        let err = parse_evals(&[("eval(x)".into(), b"{\"family\": 3}".to_vec())])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("eval_result.json of job eval(x): line 1"),
            "{err}"
        );
    }
}
