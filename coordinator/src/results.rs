//! Experiment results as the CLI reports them: the metric series decoded from the stored batches, where each
//! training job sits (stage, fold), the artifacts and the manifest; and a replay beside the job it replays.

use std::collections::BTreeMap;

use prost::Message;
use tandem_experiments::report::CurvePoint;
use tandem_proto as pb;

use crate::audit::{JobEnvironment, environment};
use crate::scheduler::{
    ExperimentView, JobView, Scheduler, SchedulerError, SchedulerResult, TeamScope,
};
use crate::store::{ArtifactRecord, JobRecord};

/// The planner's training job kind, whose stage and fold the results carry for plots.
pub const TRAIN_KIND: &str = "train";

/// One named metric of a job, points in the order the batches were stored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricSeries {
    pub job_id: String,
    pub name: String,
    pub steps: Vec<u64>,
    pub values: Vec<f64>,
    /// When each point's batch was emitted, Unix ms (0 where the worker did not record it).
    pub times_ms: Vec<u64>,
}

/// Where a training job sits in its experiment, read from its config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPlacement {
    pub job_id: String,
    pub stage: String,
    pub fold: Option<u32>,
}

/// Everything the results of an experiment show.
#[derive(Clone, Debug)]
pub struct ExperimentResults {
    pub view: ExperimentView,
    pub series: Vec<MetricSeries>,
    pub artifacts: Vec<ArtifactRecord>,
    pub placements: Vec<JobPlacement>,
    pub manifest: Vec<u8>,
}

/// A replay run next to the job it replays: artifacts, metrics and where each ran.
#[derive(Clone, Debug)]
pub struct ReplayComparison {
    pub replay: JobView,
    pub original: JobRecord,
    pub original_artifacts: Vec<ArtifactRecord>,
    pub replay_artifacts: Vec<ArtifactRecord>,
    pub original_series: Vec<MetricSeries>,
    pub replay_series: Vec<MetricSeries>,
    pub original_environment: Option<JobEnvironment>,
    pub replay_environment: Option<JobEnvironment>,
}

/// Decodes a job's stored metric batches (in sequence order) into one series per metric name, by name.
pub fn series_from_batches(
    job_id: &str,
    batches: Vec<(u64, Vec<u8>)>,
) -> SchedulerResult<Vec<MetricSeries>> {
    let mut by_name: BTreeMap<String, MetricSeries> = BTreeMap::new();
    for (_, encoded) in batches {
        let batch = pb::MetricBatch::decode(encoded.as_slice()).map_err(|e| {
            SchedulerError::DataLoss(format!("stored metric batch of {job_id} undecodable: {e}"))
        })?;
        for point in batch.points {
            let series = by_name
                .entry(point.name)
                .or_insert_with_key(|name| MetricSeries {
                    job_id: job_id.to_string(),
                    name: name.clone(),
                    ..MetricSeries::default()
                });
            series.steps.push(point.step);
            series.values.push(point.value);
            series.times_ms.push(batch.time_ms);
        }
    }
    Ok(by_name.into_values().collect())
}

/// Every stored metric series of `job_id`.
pub fn metric_series(scheduler: &Scheduler, job_id: &str) -> SchedulerResult<Vec<MetricSeries>> {
    series_from_batches(job_id, scheduler.metric_batches(job_id)?)
}

/// Where a training job sits (stage, fold), as planned; `None` when its placement names no stage.
pub fn placement(job: &JobRecord) -> Option<JobPlacement> {
    let placement = job.placement.as_ref().filter(|p| !p.stage.is_empty())?;
    Some(JobPlacement {
        job_id: job.id.clone(),
        stage: placement.stage.clone(),
        fold: placement.fold,
    })
}

/// The results of experiment `experiment_id`, if `scope` may see it.
pub fn experiment_results(
    scheduler: &Scheduler,
    scope: TeamScope<'_>,
    experiment_id: &str,
) -> SchedulerResult<ExperimentResults> {
    let view = scheduler.experiment(scope, experiment_id)?;
    let mut series = Vec::new();
    let mut artifacts = Vec::new();
    let mut placements = Vec::new();
    for job in &view.jobs {
        series.extend(metric_series(scheduler, &job.job.id)?);
        artifacts.extend(scheduler.artifacts(&job.job.id)?);
        if job.job.kind == TRAIN_KIND {
            placements.extend(placement(&job.job));
        }
    }
    let manifest = scheduler.manifest(&view.record.id)?;
    Ok(ExperimentResults {
        view,
        series,
        artifacts,
        placements,
        manifest,
    })
}

/// Replay `replay_id` beside the job it replays, if `scope` may see its experiment.
pub fn replay_comparison(
    scheduler: &Scheduler,
    scope: TeamScope<'_>,
    replay_id: &str,
) -> SchedulerResult<ReplayComparison> {
    let (replay, original) = scheduler.replay_view(scope, replay_id)?;
    let worker = |worker_id: &str| scheduler.worker(worker_id);
    Ok(ReplayComparison {
        original_artifacts: scheduler.artifacts(&original.id)?,
        replay_artifacts: scheduler.artifacts(replay_id)?,
        original_series: metric_series(scheduler, &original.id)?,
        replay_series: metric_series(scheduler, replay_id)?,
        original_environment: environment(&original, worker),
        replay_environment: environment(&replay.job, worker),
        replay,
        original,
    })
}

/// The curve points (for the report's figures) of the training series in `series`, placed by `placements`; a
/// placement with an unknown stage is reported in the returned notes.
pub fn curve_points(
    series: &[pb::MetricSeries],
    placements: &[pb::JobPlacement],
) -> (Vec<CurvePoint>, Vec<String>) {
    tandem_experiments::report::curve_points(
        series.iter().map(|s| {
            (
                s.job_id.as_str(),
                s.name.as_str(),
                &s.steps[..],
                &s.values[..],
            )
        }),
        placements.iter().map(|p| {
            (
                p.job_id.as_str(),
                p.stage.as_str(),
                p.fold.map(|f| f as usize),
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(time_ms: u64, points: &[(&str, u64, f64)]) -> Vec<u8> {
        pb::MetricBatch {
            time_ms,
            points: points
                .iter()
                .map(|&(name, step, value)| pb::MetricPoint {
                    name: name.into(),
                    step,
                    value,
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn series_gather_each_metric_across_batches_in_batch_order() {
        let batches = vec![
            (0, batch(1000, &[("loss", 1, 2.0), ("lr", 1, 0.1)])),
            (1, batch(1001, &[("loss", 2, 1.5)])),
        ];
        let series = series_from_batches("j", batches).unwrap();
        assert_eq!(
            series,
            vec![
                MetricSeries {
                    job_id: "j".into(),
                    name: "loss".into(),
                    steps: vec![1, 2],
                    values: vec![2.0, 1.5],
                    times_ms: vec![1000, 1001],
                },
                MetricSeries {
                    job_id: "j".into(),
                    name: "lr".into(),
                    steps: vec![1],
                    values: vec![0.1],
                    times_ms: vec![1000],
                },
            ]
        );
        let err = series_from_batches("j", vec![(0, vec![0xff])]).unwrap_err();
        assert!(matches!(err, SchedulerError::DataLoss(ref m) if m.contains("undecodable")));
    }
}
