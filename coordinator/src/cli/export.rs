//! `tandem export ID --out DIR [--format files|mlflow|tensorboard]`: the manifest, the status, every metric series as CSV, the inputs and every
//! output artifact (verified against its hash), the results tables (results.md/.csv/.json) and the figures
//! (plots/: training curves, generation sweeps; SVG and PNG), in plain files; or the runs for MLflow or
//! TensorBoard (`export_tracking`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tandem_experiments::report::build_results;

use super::client::{Client, ClientArgs, block_on, download, fetch_results, safe_file_name};
use super::export_tracking::Tracking;
use super::plot::{curve_points, write_generation_sweeps, write_plots};
use super::results::{self, ResultsFormat, fetch_evals};
use super::status::status_json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Plain files: manifest, status, metrics.csv, inputs, artifacts, tables, plots.
    Files,
    /// An MLflow file store (DIR/mlruns): one run per job with params, tags, metrics and artifacts.
    Mlflow,
    /// TensorBoard event files (DIR/tensorboard): one run folder per job, a scalar per metric point.
    Tensorboard,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    pub experiment: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = ExportFormat::Files)]
    pub format: ExportFormat,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct Exported {
    pub series: usize,
    pub artifacts: usize,
    /// The results tables (results.md, .csv, .json), when the experiment has evaluation results.
    pub tables: Vec<PathBuf>,
    /// The figures: training curves when the experiment has any, generation sweeps when it swept one.
    pub plots: Vec<PathBuf>,
}

async fn download_to(client: &mut Client, sha256: &str, dest: &Path) -> anyhow::Result<()> {
    let data = download(client, sha256).await?;
    std::fs::write(dest, data).with_context(|| format!("writing {}", dest.display()))
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        let tracking = match args.format {
            ExportFormat::Files => None,
            ExportFormat::Mlflow => Some(Tracking::Mlflow),
            ExportFormat::Tensorboard => Some(Tracking::Tensorboard),
        };
        if let Some(format) = tracking {
            let line =
                super::export_tracking::export(&mut client, &args.experiment, &args.out, format)
                    .await?;
            println!("{line}");
            return anyhow::Ok(ExitCode::SUCCESS);
        }
        let done = export(&mut client, &args.experiment, &args.out).await?;
        println!(
            "exported {} to {} ({} series, {} artifacts, {} table files, {} plots)",
            args.experiment,
            args.out.display(),
            done.series,
            done.artifacts,
            done.tables.len(),
            done.plots.len()
        );
        anyhow::Ok(ExitCode::SUCCESS)
    })?
}

/// Writes the experiment's manifest, status, metrics, inputs, output artifacts, results tables and plots
/// under `out`.
pub async fn export(client: &mut Client, experiment: &str, out: &Path) -> anyhow::Result<Exported> {
    let reply = fetch_results(client, experiment).await?;
    let status = reply.status.clone().unwrap_or_default();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ext = if reply.manifest_format == "toml" {
        "toml"
    } else {
        "json"
    };
    std::fs::write(out.join(format!("manifest.{ext}")), &reply.manifest)?;
    std::fs::write(
        out.join("status.json"),
        serde_json::to_string_pretty(&status_json(&status))?,
    )?;
    let names: std::collections::HashMap<&str, &str> = status
        .jobs
        .iter()
        .map(|j| (j.id.as_str(), j.name.as_str()))
        .collect();
    let mut csv = String::from("job_id,job_name,series,step,value,time_ms\n");
    for s in &reply.series {
        let job_name = names
            .get(s.job_id.as_str())
            .copied()
            .unwrap_or("")
            .replace(['"', ','], "_");
        for (i, (step, value)) in s.steps.iter().zip(&s.values).enumerate() {
            // An empty time where the worker did not record one (points stored before times were kept).
            let time = s
                .times_ms
                .get(i)
                .filter(|t| **t > 0)
                .map_or(String::new(), u64::to_string);
            csv.push_str(&format!(
                "{},{job_name},{},{step},{value},{time}\n",
                s.job_id,
                s.name.replace(',', "_")
            ));
        }
    }
    std::fs::write(out.join("metrics.csv"), csv)?;
    let inputs_dir = out.join("inputs");
    std::fs::create_dir_all(&inputs_dir)?;
    for input in &status.inputs {
        download_to(
            client,
            &input.sha256,
            &inputs_dir.join(safe_file_name(&input.name)),
        )
        .await?;
    }
    let mut count = 0;
    for artifact in reply.artifacts.iter().filter(|a| a.role == "output") {
        let job_name = names
            .get(artifact.job_id.as_str())
            .copied()
            .unwrap_or("job");
        let dir = out.join("artifacts").join(safe_file_name(&format!(
            "{job_name}-{}",
            &artifact.job_id[..artifact.job_id.len().min(8)]
        )));
        std::fs::create_dir_all(&dir)?;
        download_to(
            client,
            &artifact.sha256,
            &dir.join(safe_file_name(&artifact.name)),
        )
        .await?;
        count += 1;
    }
    let mut done = Exported {
        series: reply.series.len(),
        artifacts: count,
        ..Exported::default()
    };
    // The files above are exported even when an evaluation result cannot be read; the tables are not.
    let (evals, missing) = match fetch_evals(client, &reply).await {
        Ok(found) => found,
        Err(err) => {
            eprintln!("results tables not written: {err:#}");
            (Vec::new(), Vec::new())
        }
    };
    if !evals.is_empty() {
        for (format, ext) in [
            (ResultsFormat::Md, "md"),
            (ResultsFormat::Csv, "csv"),
            (ResultsFormat::Json, "json"),
        ] {
            let report = results::report(&reply, &evals, &missing, format)?;
            let path = out.join(format!("results.{ext}"));
            std::fs::write(&path, &report.text)
                .with_context(|| format!("writing {}", path.display()))?;
            done.tables.push(path);
        }
    }
    let (points, _) = curve_points(&reply.series, &reply.placements);
    if !points.is_empty() {
        done.plots = write_plots(&points, &out.join("plots"))?;
    }
    if !evals.is_empty() {
        // The tables above were built from the same evaluations, so this cannot fail where they did not.
        let results = build_results(&evals).context("building the generation sweeps")?;
        done.plots
            .extend(write_generation_sweeps(&results, &out.join("plots"))?);
    }
    Ok(done)
}
