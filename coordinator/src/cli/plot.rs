//! `tandem plot ID --out DIR [--sweep]`: training loss, validation loss and validation perplexity curves of an
//! experiment's training jobs as SVG and PNG (stage 2 drawn as mean ± std bands over folds by the report code).
//! Points come from the train jobs' metric series; a job's stage and fold from its config (the coordinator
//! sends them as placements with the results). `--sweep` draws the training sweep instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tandem_experiments::manifest::Stage;
use tandem_experiments::report::{
    CurvePoint, Series, curves_png, curves_svg, series_png, series_svg, sweep_svg,
};
use tandem_proto as pb;

use super::client::{ClientArgs, block_on, fetch_results};
use super::results::fetch_selections;

#[derive(Debug, Args)]
pub struct PlotArgs {
    pub experiment: String,
    /// Folder to write curves.svg, curves.png and one SVG and PNG per series into.
    #[arg(long)]
    pub out: PathBuf,
    /// Draw the training sweep instead: the selection metric against each swept field (sweep-<stage>.svg).
    #[arg(long)]
    pub sweep: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Parses a placement's stage (`stage1`, `stage2`).
fn parse_stage(text: &str) -> Option<Stage> {
    Stage::ALL.into_iter().find(|s| s.as_str() == text)
}

/// The curve points of every training series (`train_loss`, `val_loss`, `val_perplexity`) of a job with a
/// placement. Series of other jobs and other names are not curves; a placement with an unknown stage is
/// reported in the returned notes.
pub fn curve_points(
    series: &[pb::MetricSeries],
    placements: &[pb::JobPlacement],
) -> (Vec<CurvePoint>, Vec<String>) {
    let mut notes = Vec::new();
    let mut by_job: HashMap<&str, (Stage, Option<usize>)> = HashMap::new();
    for p in placements {
        match parse_stage(&p.stage) {
            Some(stage) => {
                by_job.insert(p.job_id.as_str(), (stage, p.fold.map(|f| f as usize)));
            }
            None => notes.push(format!(
                "job {}: unknown stage {:?} (expected stage1 or stage2); its curves are not drawn",
                p.job_id, p.stage
            )),
        }
    }
    let mut points = Vec::new();
    for s in series {
        let (Some(kind), Some(&(stage, fold))) =
            (Series::parse(&s.name), by_job.get(s.job_id.as_str()))
        else {
            continue;
        };
        points.extend(
            s.steps
                .iter()
                .zip(&s.values)
                .map(|(&step, &value)| CurvePoint {
                    stage,
                    fold,
                    step,
                    series: kind,
                    value,
                }),
        );
    }
    (points, notes)
}

/// Writes `curves.svg`, `curves.png` and, per series with points, `<series>.svg` and `<series>.png` into
/// `dir`; returns the paths written.
pub fn write_plots(points: &[CurvePoint], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut write = |name: String, bytes: &[u8]| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    write("curves.svg".into(), curves_svg(points).as_bytes())?;
    write("curves.png".into(), &curves_png(points))?;
    for series in Series::ALL {
        if points.iter().any(|p| p.series == series) {
            write(
                format!("{}.svg", series.as_str()),
                series_svg(points, series).as_bytes(),
            )?;
            write(
                format!("{}.png", series.as_str()),
                &series_png(points, series),
            )?;
        }
    }
    Ok(written)
}

/// The experiment's curve points, or an error saying why there are none.
pub fn experiment_points(reply: &pb::ResultsReply) -> anyhow::Result<Vec<CurvePoint>> {
    // A training sweep's points are drawn by `--sweep`; here only the stages' own training runs are curves.
    let points_jobs: std::collections::HashSet<&str> = reply
        .status
        .iter()
        .flat_map(|s| &s.jobs)
        .filter(|j| j.name.contains(", point "))
        .map(|j| j.id.as_str())
        .collect();
    let series: Vec<pb::MetricSeries> = reply
        .series
        .iter()
        .filter(|s| !points_jobs.contains(s.job_id.as_str()))
        .cloned()
        .collect();
    let (points, notes) = curve_points(&series, &reply.placements);
    for note in &notes {
        eprintln!("{note}");
    }
    let experiment = reply
        .status
        .as_ref()
        .and_then(|s| s.summary.as_ref())
        .map(|s| s.id.as_str())
        .unwrap_or("");
    anyhow::ensure!(
        !points.is_empty(),
        "experiment {experiment} has no training curves yet: no train job (with a stage in its config) has \
         streamed {}, {} or {}",
        Series::TrainLoss.as_str(),
        Series::ValLoss.as_str(),
        Series::ValPerplexity.as_str()
    );
    Ok(points)
}

pub fn run(args: PlotArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        let reply = fetch_results(&mut client, &args.experiment).await?;
        if args.sweep {
            let (records, notes) = fetch_selections(&mut client, &reply).await?;
            for note in &notes {
                eprintln!("{note}");
            }
            anyhow::ensure!(
                !records.is_empty(),
                "experiment {} has no finished training-sweep selection to plot",
                args.experiment
            );
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            for stage in Stage::ALL {
                let of_stage: Vec<_> = records
                    .iter()
                    .filter(|r| r.stage == stage)
                    .cloned()
                    .collect();
                if of_stage.is_empty() {
                    continue;
                }
                let path = args.out.join(format!("sweep-{}.svg", stage.as_str()));
                std::fs::write(&path, sweep_svg(&of_stage))
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("{}", path.display());
            }
            return anyhow::Ok(ExitCode::SUCCESS);
        }
        let points = experiment_points(&reply)?;
        for path in write_plots(&points, &args.out)? {
            println!("{}", path.display());
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(job: &str, name: &str, steps: &[u64], values: &[f64]) -> pb::MetricSeries {
        pb::MetricSeries {
            job_id: job.into(),
            name: name.into(),
            steps: steps.to_vec(),
            values: values.to_vec(),
            times_ms: vec![0; values.len()],
        }
    }

    fn placement(job: &str, stage: &str, fold: Option<u32>) -> pb::JobPlacement {
        pb::JobPlacement {
            job_id: job.into(),
            stage: stage.into(),
            fold,
            ..Default::default()
        }
    }

    #[test]
    fn points_come_from_training_series_of_placed_jobs() {
        let all = [
            series("s1", "train_loss", &[1, 2], &[3.0, 2.5]),
            series("s1", "val_perplexity", &[2], &[12.0]),
            series("s1", "tokens_per_s", &[1, 2], &[100.0, 110.0]),
            series("f0", "val_loss", &[2], &[2.25]),
            series("f1", "val_loss", &[2], &[2.0]),
            series("eval", "eval/bleu1", &[0], &[0.3]),
            series("unplaced", "train_loss", &[1], &[9.0]),
        ];
        let placements = [
            placement("s1", "stage1", None),
            placement("f0", "stage2", Some(0)),
            placement("f1", "stage2", Some(1)),
            placement("odd", "stage3", None),
        ];
        let (points, notes) = curve_points(&all, &placements);
        assert_eq!(
            points,
            vec![
                CurvePoint {
                    stage: Stage::Stage1,
                    fold: None,
                    step: 1,
                    series: Series::TrainLoss,
                    value: 3.0
                },
                CurvePoint {
                    stage: Stage::Stage1,
                    fold: None,
                    step: 2,
                    series: Series::TrainLoss,
                    value: 2.5
                },
                CurvePoint {
                    stage: Stage::Stage1,
                    fold: None,
                    step: 2,
                    series: Series::ValPerplexity,
                    value: 12.0
                },
                CurvePoint {
                    stage: Stage::Stage2,
                    fold: Some(0),
                    step: 2,
                    series: Series::ValLoss,
                    value: 2.25
                },
                CurvePoint {
                    stage: Stage::Stage2,
                    fold: Some(1),
                    step: 2,
                    series: Series::ValLoss,
                    value: 2.0
                },
            ]
        );
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("job odd: unknown stage \"stage3\""));
    }

    #[test]
    fn plots_are_written_per_series_present() {
        let (points, _) = curve_points(
            &[
                series("s1", "train_loss", &[1, 2, 3], &[3.0, 2.5, 2.2]),
                series("f0", "train_loss", &[1, 2], &[2.0, 1.8]),
                series("f1", "train_loss", &[1, 2], &[2.2, 1.9]),
            ],
            &[
                placement("s1", "stage1", None),
                placement("f0", "stage2", Some(0)),
                placement("f1", "stage2", Some(1)),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let written = write_plots(&points, dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "curves.svg",
                "curves.png",
                "train_loss.svg",
                "train_loss.png"
            ]
        );
        let svg = std::fs::read_to_string(dir.path().join("train_loss.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") || svg.starts_with("<?xml"),
            "{svg:.80}"
        );
        let png = std::fs::read(dir.path().join("curves.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }

    #[test]
    fn no_curves_is_an_error_naming_the_experiment() {
        let reply = pb::ResultsReply {
            status: Some(pb::ExperimentStatus {
                summary: Some(pb::ExperimentSummary {
                    id: "e000042".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = experiment_points(&reply).unwrap_err().to_string();
        assert!(
            err.contains("experiment e000042 has no training curves"),
            "{err}"
        );
    }
}
