//! `tandem plot ID --out DIR [--sweep]`: the experiment's figures as SVG and PNG, titles, axis labels, ticks and
//! legends included: the training loss, validation loss and validation perplexity curves of its training jobs
//! (stage 2 drawn as mean ± std bands over folds by the report code), and for every swept generation parameter
//! each metric (x100) against the parameter's value. Points come from the train jobs' metric series; a job's
//! stage and fold from its config (the coordinator sends them as placements with the results); the generation
//! sweeps from the eval jobs' results, the tables of `tandem results`. `--sweep` draws the training sweep
//! instead.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tandem_experiments::manifest::Stage;
use tandem_experiments::planner::artifacts::SelectionRecord;
use tandem_experiments::report::{
    CurvePoint, EvalResult, Results, Series, build_results, curves_png, curves_svg,
    generation_sweep_png, generation_sweep_svg, series_png, series_svg, sweep_png, sweep_svg,
};
use tandem_proto as pb;

pub use tandem_coordinator::results::curve_points;

use super::client::{ClientArgs, block_on, fetch_results};
use super::results::{fetch_evals, fetch_selections};

#[derive(Debug, Args)]
pub struct PlotArgs {
    pub experiment: String,
    /// Folder to write curves.svg/.png, one SVG and PNG per series and per swept generation parameter
    /// (sweep-<parameter>.svg/.png) into.
    #[arg(long)]
    pub out: PathBuf,
    /// Draw the training sweep instead: the selection metric against each swept field (sweep-<stage>.svg/.png).
    #[arg(long)]
    pub sweep: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The files written into one folder, in order.
struct Written<'a> {
    dir: &'a Path,
    paths: Vec<PathBuf>,
}

impl<'a> Written<'a> {
    fn into(dir: &'a Path) -> anyhow::Result<Written<'a>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Written {
            dir,
            paths: Vec::new(),
        })
    }

    fn write(&mut self, name: String, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        self.paths.push(path);
        Ok(())
    }
}

/// Writes `curves.svg`, `curves.png` and, per series with points, `<series>.svg` and `<series>.png` into
/// `dir`; returns the paths written.
pub fn write_plots(points: &[CurvePoint], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Written::into(dir)?;
    out.write("curves.svg".into(), curves_svg(points).as_bytes())?;
    out.write("curves.png".into(), &curves_png(points))?;
    for series in Series::ALL {
        if points.iter().any(|p| p.series == series) {
            let name = series.as_str();
            out.write(format!("{name}.svg"), series_svg(points, series).as_bytes())?;
            out.write(format!("{name}.png"), &series_png(points, series))?;
        }
    }
    Ok(out.paths)
}

/// Writes one `sweep-<parameter>.svg` and `.png` per swept generation parameter of `results` into `dir`
/// (nothing when nothing was swept); returns the paths written.
pub fn write_generation_sweeps(results: &Results, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let svgs = generation_sweep_svg(results);
    if svgs.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Written::into(dir)?;
    for ((stem, svg), (_, png)) in svgs.iter().zip(generation_sweep_png(results)) {
        out.write(format!("{stem}.svg"), svg.as_bytes())?;
        out.write(format!("{stem}.png"), &png)?;
    }
    Ok(out.paths)
}

/// Writes `sweep-<stage>.svg` and `.png` per stage with a training-sweep selection into `dir`.
pub fn write_training_sweeps(
    records: &[SelectionRecord],
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Written::into(dir)?;
    for stage in Stage::ALL {
        let of_stage: Vec<_> = records
            .iter()
            .filter(|r| r.stage == stage)
            .cloned()
            .collect();
        if of_stage.is_empty() {
            continue;
        }
        let name = format!("sweep-{}", stage.as_str());
        out.write(format!("{name}.svg"), sweep_svg(&of_stage).as_bytes())?;
        out.write(format!("{name}.png"), &sweep_png(&of_stage))?;
    }
    Ok(out.paths)
}

/// The experiment's curve points: the training series of its stages' own training runs (a training sweep's
/// points are drawn by `--sweep`). Notes about series that cannot be placed go to stderr.
pub fn experiment_points(reply: &pb::ResultsReply) -> Vec<CurvePoint> {
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
    points
}

/// Writes every figure of an experiment into `dir`: its training curves (when a train job streamed any) and
/// its generation sweeps (when `evals` has any; evaluation results that make no tables are reported on
/// stderr and leave the curves alone). An error when there is nothing to draw.
pub fn write_experiment_plots(
    reply: &pb::ResultsReply,
    evals: &[EvalResult],
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let points = experiment_points(reply);
    let results = match build_results(evals) {
        Ok(results) => Some(results),
        Err(err) => {
            eprintln!("generation sweeps not drawn: {err}");
            None
        }
    };
    let swept = results.as_ref().is_some_and(|r| !r.sweeps.is_empty());
    let experiment = reply
        .status
        .as_ref()
        .and_then(|s| s.summary.as_ref())
        .map(|s| s.id.as_str())
        .unwrap_or("");
    anyhow::ensure!(
        !points.is_empty() || swept,
        "experiment {experiment} has no training curves yet: no train job (with a stage in its config) has \
         streamed {}, {} or {}; nor a generation sweep with evaluation results",
        Series::TrainLoss.as_str(),
        Series::ValLoss.as_str(),
        Series::ValPerplexity.as_str()
    );
    let mut written = Vec::new();
    if !points.is_empty() {
        written.extend(write_plots(&points, dir)?);
    }
    if let Some(results) = results.filter(|_| swept) {
        written.extend(write_generation_sweeps(&results, dir)?);
    }
    Ok(written)
}

pub fn run(args: PlotArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        let reply = fetch_results(&mut client, &args.experiment).await?;
        let written = if args.sweep {
            let (records, notes) = fetch_selections(&mut client, &reply).await?;
            for note in &notes {
                eprintln!("{note}");
            }
            anyhow::ensure!(
                !records.is_empty(),
                "experiment {} has no finished training-sweep selection to plot",
                args.experiment
            );
            write_training_sweeps(&records, &args.out)?
        } else {
            // The curves are drawn even when an evaluation result cannot be read; the sweeps are not.
            let evals = match fetch_evals(&mut client, &reply).await {
                Ok((evals, _)) => evals,
                Err(err) => {
                    eprintln!("generation sweeps not drawn: {err:#}");
                    Vec::new()
                }
            };
            write_experiment_plots(&reply, &evals, &args.out)?
        };
        for path in written {
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
        assert_eq!(
            names(&written),
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

    fn reply(
        id: &str,
        series: Vec<pb::MetricSeries>,
        placements: Vec<pb::JobPlacement>,
    ) -> pb::ResultsReply {
        pb::ResultsReply {
            status: Some(pb::ExperimentStatus {
                summary: Some(pb::ExperimentSummary {
                    id: id.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            series,
            placements,
            ..Default::default()
        }
    }

    /// A temperature sweep of the two-stage LLaMA: one evaluation per value, 0.6 the configured one.
    fn temperature_evals(bleu1: f64) -> Vec<EvalResult> {
        [0.2, 0.6, 1.0]
            .into_iter()
            .map(|t| EvalResult {
                family: tandem_experiments::manifest::ModelFamily::Llama,
                model: tandem_experiments::manifest::ModelStage::TwoStage,
                task: Stage::Stage2,
                fold: None,
                sweep: Some((tandem_experiments::manifest::SweepParameter::Temperature, t)),
                configured: t == 0.6,
                scores: [("bleu1".to_owned(), Some(bleu1 * t))]
                    .into_iter()
                    .collect(),
            })
            .collect()
    }

    fn names(written: &[PathBuf]) -> Vec<String> {
        written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn generation_sweeps_are_drawn_beside_the_curves() {
        let reply = reply(
            "e000007",
            vec![series("s1", "val_loss", &[1, 2], &[3.0, 2.5])],
            vec![placement("s1", "stage1", None)],
        );
        let dir = tempfile::tempdir().unwrap();
        let written = write_experiment_plots(&reply, &temperature_evals(0.5), dir.path()).unwrap();
        assert_eq!(
            names(&written),
            [
                "curves.svg",
                "curves.png",
                "val_loss.svg",
                "val_loss.png",
                "sweep-temperature.svg",
                "sweep-temperature.png"
            ]
        );
        let svg = std::fs::read_to_string(dir.path().join("sweep-temperature.svg")).unwrap();
        assert!(
            svg.contains("Generation sweep of temperature"),
            "{svg:.400}"
        );
        let png = std::fs::read(dir.path().join("sweep-temperature.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

        // A sweep without curves is still something to draw; results that make no tables leave the curves be.
        let no_curves = reply_without_series("e000008");
        let dir = tempfile::tempdir().unwrap();
        let written =
            write_experiment_plots(&no_curves, &temperature_evals(0.5), dir.path()).unwrap();
        assert_eq!(
            names(&written),
            ["sweep-temperature.svg", "sweep-temperature.png"]
        );
        let dir = tempfile::tempdir().unwrap();
        let written = write_experiment_plots(&reply, &temperature_evals(3.0), dir.path()).unwrap();
        assert_eq!(names(&written)[..2], ["curves.svg", "curves.png"]);
        assert!(!dir.path().join("sweep-temperature.svg").exists());
    }

    fn reply_without_series(id: &str) -> pb::ResultsReply {
        reply(id, Vec::new(), Vec::new())
    }

    #[test]
    fn no_curves_and_no_sweep_is_an_error_naming_the_experiment() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_experiment_plots(&reply_without_series("e000042"), &[], dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("experiment e000042 has no training curves"),
            "{err}"
        );
        // Evaluations without a sweep draw nothing either.
        let mut evals = temperature_evals(0.5);
        evals.retain(|e| e.configured);
        evals[0].sweep = None;
        assert!(
            write_experiment_plots(&reply_without_series("e000042"), &evals, dir.path()).is_err()
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
