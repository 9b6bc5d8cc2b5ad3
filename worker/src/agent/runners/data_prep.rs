//! `data-prep`: runs the planned data preparation from the job config and the dataset (fetched by digest into
//! the machine's input cache), and uploads the split with the rows it names.

use std::collections::BTreeSet;

use tandem_experiments::data::{CsvOptions, table};
use tandem_experiments::planner::{self, JobConfig, input_role};
use tandem_proto as pb;

use super::{
    PREPARED_ARTIFACT, PreparedArtifact, PreparedRow, engine_error, input_path, io_error, job_spec,
};
use crate::agent::{JobContext, JobRunner, RunError};
use crate::engine::files;

pub struct DataPrepRunner;

impl JobRunner for DataPrepRunner {
    fn run(&self, ctx: &mut JobContext) -> Result<(), RunError> {
        let spec = job_spec(ctx)?;
        let JobConfig::DataPrep(config) = &spec.config else {
            return Err(RunError::permanent(format!(
                "job {}: kind data-prep with a {:?} config",
                spec.id,
                spec.config.kind()
            )));
        };
        let dataset_path = input_path(ctx, input_role::DATASET)?;
        let out_dir = ctx.work_dir().join("prep");
        let prepared = planner::prep::run_data_prep(config, &dataset_path, &out_dir)
            .map_err(|e| RunError::permanent(e.to_string()))?;
        let options = CsvOptions {
            input_column: config.dataset.input_column.clone(),
            target_column: config.dataset.target_column.clone(),
            group_column: config.dataset.group_column.clone(),
            bad_rows: config.dataset.bad_rows,
        };
        let mut dataset = table::load_csv(&prepared.csv, &options)
            .map_err(|e| RunError::permanent(e.to_string()))?;
        dataset.truncate(config.dataset.max_rows);
        let named: BTreeSet<usize> = prepared
            .rows
            .parts
            .iter()
            .flat_map(|p| p.train.iter().chain(&p.val).chain(&p.test).copied())
            .collect();
        let mut examples: Vec<PreparedRow> = dataset
            .examples
            .into_iter()
            .filter(|e| named.contains(&e.row))
            .map(|e| PreparedRow {
                row: e.row,
                input: e.input,
                target: e.target,
            })
            .collect();
        examples.sort_by_key(|e| e.row);
        let artifact = PreparedArtifact {
            rows: prepared.rows,
            examples,
        };
        tracing::info!(
            stage = config.stage.as_str(),
            total_rows = artifact.rows.total_rows,
            usable_rows = artifact.rows.usable_rows,
            parts = artifact.rows.parts.len(),
            "data prepared"
        );
        ctx.emit(vec![
            pb::MetricPoint {
                name: "total_rows".into(),
                step: 0,
                value: artifact.rows.total_rows as f64,
            },
            pb::MetricPoint {
                name: "usable_rows".into(),
                step: 0,
                value: artifact.rows.usable_rows as f64,
            },
        ]);
        std::fs::create_dir_all(&out_dir).map_err(|e| io_error(&out_dir, e))?;
        let path = out_dir.join(PREPARED_ARTIFACT);
        let bytes = serde_json::to_vec(&artifact)
            .map_err(|e| RunError::permanent(format!("{PREPARED_ARTIFACT}: {e}")))?;
        files::write(&path, &bytes).map_err(engine_error)?;
        ctx.put_artifact(PREPARED_ARTIFACT, &path)?;
        Ok(())
    }
}
