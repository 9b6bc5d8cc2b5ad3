//! Running a data-prep job from its config alone (what a worker does): check the dataset's digest, convert a
//! MIMIC-CXR tree to CSV, load, drop bad rows, cap, split with the planned seed, and check the result against
//! the indices the planner recorded.

use std::path::{Path, PathBuf};

use super::{DataPrepConfig, PlanError, PreparedRows, prepare_csv};
use crate::data::{CsvOptions, mimic};
use crate::manifest::DatasetFormat;
use crate::manifest::hash::digest_path;

/// The artifacts of a data-prep job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedData {
    /// The CSV that train and eval jobs read (the dataset itself, or the converted MIMIC-CXR reports).
    pub csv: PathBuf,
    pub rows: PreparedRows,
}

/// Runs the data-prep job `config` on the dataset at `dataset` (its digest must match), writing any converted
/// CSV into `out_dir`.
pub fn run_data_prep(
    config: &DataPrepConfig,
    dataset: &Path,
    out_dir: &Path,
) -> Result<PreparedData, PlanError> {
    let stage = config.stage.as_str();
    let io = |source| PlanError::Io {
        stage,
        path: dataset.to_path_buf(),
        source,
    };
    let found = digest_path(dataset, false).map_err(io)?;
    if found != config.dataset.sha256 {
        return Err(PlanError::DigestMismatch {
            stage,
            path: dataset.to_path_buf(),
            expected: config.dataset.sha256.clone(),
            found,
        });
    }
    let csv = match config.dataset.format {
        DatasetFormat::Csv => dataset.to_path_buf(),
        DatasetFormat::Mimic => {
            let (reports, _) =
                mimic::read_reports(dataset).map_err(|source| PlanError::Data { stage, source })?;
            std::fs::create_dir_all(out_dir).map_err(io)?;
            let out = out_dir.join(format!("{stage}-mimic-cxr.csv"));
            mimic::write_csv(&reports, &out).map_err(|source| PlanError::Data { stage, source })?;
            out
        }
    };
    let options = CsvOptions {
        input_column: config.dataset.input_column.clone(),
        target_column: config.dataset.target_column.clone(),
        group_column: config.dataset.group_column.clone(),
        bad_rows: config.dataset.bad_rows,
    };
    let rows = prepare_csv(
        &csv,
        &options,
        config.dataset.max_rows,
        &config.split,
        config.seed,
        config.stage,
    )?;
    if config.rows.as_ref().is_some_and(|planned| *planned != rows) {
        return Err(PlanError::RowsMismatch { stage });
    }
    Ok(PreparedData { csv, rows })
}
