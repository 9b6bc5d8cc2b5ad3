//! `report`: reads the eval results of the experiment's evaluations (the parents' `eval_result.json`) and writes
//! the tables (Markdown, CSV, JSON) with `tandem_experiments::report`, one artifact each.

use tandem_experiments::planner::JobConfig;
use tandem_experiments::report::{EvalResult, Format, build_results, render};

use super::{EVAL_RESULT_ARTIFACT, engine_error, io_error, job_spec, parent_file};
use crate::agent::{JobContext, JobRunner, RunError};
use crate::engine::files;

pub struct ReportRunner;

impl JobRunner for ReportRunner {
    fn run(&self, ctx: &mut JobContext) -> Result<(), RunError> {
        let spec = job_spec(ctx)?;
        let JobConfig::Report(config) = &spec.config else {
            return Err(RunError::permanent(format!(
                "job {}: kind report with a {:?} config",
                spec.id,
                spec.config.kind()
            )));
        };
        let mut evals = Vec::with_capacity(config.evals.len());
        for eval in &config.evals {
            let path = parent_file(ctx, eval, EVAL_RESULT_ARTIFACT)?;
            let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
            let result: EvalResult = serde_json::from_slice(&bytes)
                .map_err(|e| RunError::permanent(format!("{}: {e}", path.display())))?;
            evals.push(result);
        }
        let results = build_results(&evals).map_err(|e| RunError::permanent(e.to_string()))?;
        let out = ctx.work_dir().join("report");
        std::fs::create_dir_all(&out).map_err(|e| io_error(&out, e))?;
        for (format, name) in [
            (Format::Markdown, "results.md"),
            (Format::Csv, "results.csv"),
            (Format::Json, "results.json"),
        ] {
            let text = render(&results, format).map_err(|e| RunError::permanent(e.to_string()))?;
            let path = out.join(name);
            files::write(&path, text.as_bytes()).map_err(engine_error)?;
            ctx.put_artifact(name, &path)?;
        }
        tracing::info!(
            experiment = config.experiment.as_str(),
            evals = evals.len(),
            "report written"
        );
        Ok(())
    }
}
