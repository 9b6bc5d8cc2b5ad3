//! `select`: picks the best point of a training sweep by its selection metric (the lowest validation loss from
//! each point's `train_summary.json`, or the highest score in its `val_result.json`), hands the chosen point's
//! adapter on as this job's own output, and records every point in `selection.json`.

use tandem_experiments::manifest::Selection;
use tandem_experiments::planner::JobConfig;
use tandem_experiments::planner::artifacts::{
    SELECTION, SelectedPoint, SelectionRecord, TRAIN_SUMMARY, TrainOutcome, VAL_RESULT,
};
use tandem_experiments::report::EvalResult;

use super::{ADAPTER_FILES, engine_error, io_error, job_spec, parent_file};
use crate::agent::{JobContext, JobRunner, RunError};
use crate::engine::files;

pub struct SelectRunner;

fn read_json<T: serde::de::DeserializeOwned>(
    ctx: &JobContext,
    job: &str,
    name: &str,
) -> Result<T, RunError> {
    let path = parent_file(ctx, job, name)?;
    let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        RunError::permanent(format!(
            "{name} of job {job}: line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })
}

impl JobRunner for SelectRunner {
    fn run(&self, ctx: &mut JobContext) -> Result<(), RunError> {
        let spec = job_spec(ctx)?;
        let JobConfig::Select(config) = &spec.config else {
            return Err(RunError::permanent(format!(
                "job {}: kind select with a {:?} config",
                spec.id,
                spec.config.kind()
            )));
        };
        let mut points = Vec::with_capacity(config.candidates.len());
        for candidate in &config.candidates {
            let outcome: TrainOutcome = read_json(ctx, &candidate.train_job, TRAIN_SUMMARY)?;
            let metric = match (&config.select, &candidate.val_eval_job) {
                (Selection::ValLoss, _) => outcome.best_val_loss,
                (Selection::Score(key), Some(eval)) => {
                    let result: EvalResult = read_json(ctx, eval, VAL_RESULT)?;
                    result.scores.get(key).copied().flatten()
                }
                (Selection::Score(key), None) => {
                    return Err(RunError::permanent(format!(
                        "point {}: selecting by {key} needs an evaluation on the validation rows, and none was planned",
                        candidate.point
                    )));
                }
            };
            points.push(SelectedPoint {
                point: candidate.point,
                values: candidate.values.clone(),
                train_job: candidate.train_job.clone(),
                metric,
                outcome,
            });
        }
        let maximise = config.select.maximise();
        let Some(chosen) = SelectionRecord::best(&points, maximise) else {
            return Err(RunError::permanent(format!(
                "no point of the sweep has a {} (validation rows empty, or every score not available)",
                config.select.name()
            )));
        };
        let record = SelectionRecord {
            stage: config.stage,
            fold: config.fold,
            metric: config.select.name().to_owned(),
            maximise,
            points,
            chosen,
        };
        let winner = &record
            .points
            .iter()
            .find(|p| p.point == chosen)
            .expect("chosen is a point");
        tracing::info!(
            stage = config.stage.as_str(),
            fold = config.fold,
            chosen,
            metric = winner.metric,
            points = record.points.len(),
            "sweep point selected"
        );
        let train_job = winner.train_job.clone();
        for name in ADAPTER_FILES {
            let path = parent_file(ctx, &train_job, name)?;
            ctx.put_artifact(name, &path)?;
        }
        let out = ctx.work_dir().join("select");
        std::fs::create_dir_all(&out).map_err(|e| io_error(&out, e))?;
        let path = out.join(SELECTION);
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| RunError::permanent(format!("{SELECTION}: {e}")))?;
        files::write(&path, &bytes).map_err(engine_error)?;
        ctx.put_artifact(SELECTION, &path)?;
        Ok(())
    }
}
