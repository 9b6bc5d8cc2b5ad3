//! Builds the tables from evaluations: one [`ResultsTable`] per task (4.1: stage-1 task, 4.3/4.4: stage-2
//! task), one [`SweepTable`] per swept parameter and model. Scores are shown x100; over folds a cell holds the
//! mean and the sample standard deviation (n - 1 in the denominator, as pandas' `std` and numpy's `ddof=1`),
//! and the relative change of the mean against the base row of the same family and task.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::input::{COLUMNS, EvalResult};
use super::{ReportError, eval_name, family_rank};
use crate::manifest::{ModelFamily, ModelStage, Stage, SweepParameter};

/// Everything `tandem results` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    /// The column headers, in order (B-1 .. RG).
    pub columns: Vec<&'static str>,
    /// One table per task that has evaluations, stage 1 first.
    pub tables: Vec<ResultsTable>,
    pub sweeps: Vec<SweepTable>,
}

/// The rows of one task: Table 4.1 (stage-1 task) or 4.3 with 4.4 (stage-2 task).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultsTable {
    pub task: Stage,
    /// Rows in the thesis's order: per family (LLaMA, T5), base, stage-1, two-stage.
    pub rows: Vec<TableRow>,
}

/// One model x stage row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableRow {
    pub family: ModelFamily,
    pub model: ModelStage,
    /// Evaluations (folds) behind the row.
    pub n: usize,
    /// One cell per column of [`COLUMNS`].
    pub cells: Vec<Cell>,
}

/// One metric of one row, x100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cell {
    /// Mean over the row's evaluations; `None` = not available (in at least one of them).
    pub mean: Option<f64>,
    /// Sample standard deviation (n - 1); `None` with fewer than two evaluations or when not available.
    pub std: Option<f64>,
    /// Relative change of `mean` against the base row's mean, in percent (+ = increase); `None` for the base
    /// row itself, or when either mean is not available or the base mean is 0.
    pub relative_change: Option<f64>,
}

/// Evaluations of one model over the values of a swept generation parameter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepTable {
    pub family: ModelFamily,
    pub model: ModelStage,
    pub task: Stage,
    pub parameter: SweepParameter,
    /// Rows by increasing value.
    pub rows: Vec<SweepRow>,
}

/// One value of a sweep (relative change left empty: there is no base row).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepRow {
    pub value: f64,
    /// Whether this is the configured value (the one the main tables use).
    pub configured: bool,
    pub n: usize,
    pub cells: Vec<Cell>,
}

/// Checks the evaluations and builds every table. Errors: a score outside [0, 1] or not finite, the same
/// evaluation twice.
pub fn build_results(evals: &[EvalResult]) -> Result<Results, ReportError> {
    let mut seen = BTreeSet::new();
    for e in evals {
        let name = eval_name(e.family, e.model, e.task, e.fold, e.sweep);
        for (key, value) in &e.scores {
            if let Some(v) = *value
                && !(v.is_finite() && (0.0..=1.0).contains(&v))
            {
                return Err(ReportError::ScoreOutOfRange {
                    eval: name,
                    key: key.clone(),
                    value: v,
                });
            }
        }
        let identity = (
            family_rank(e.family),
            e.model,
            e.task,
            e.fold,
            e.sweep.map(|(p, v)| (p, v.to_bits())),
        );
        if !seen.insert(identity) {
            return Err(ReportError::DuplicateEval { eval: name });
        }
    }

    // Main tables: the configured evaluations, grouped by task and row.
    let mut by_task: BTreeMap<Stage, BTreeMap<(u8, ModelStage), Vec<&EvalResult>>> =
        BTreeMap::new();
    for e in evals.iter().filter(|e| e.configured) {
        by_task
            .entry(e.task)
            .or_default()
            .entry((family_rank(e.family), e.model))
            .or_default()
            .push(e);
    }
    let mut tables = Vec::new();
    for (task, groups) in by_task {
        let mut rows: Vec<TableRow> = groups
            .into_values()
            .map(|group| TableRow {
                family: group[0].family,
                model: group[0].model,
                n: group.len(),
                cells: cells(&group),
            })
            .collect();
        fill_relative_change(&mut rows);
        tables.push(ResultsTable { task, rows });
    }

    // Sweep tables: every evaluation with a sweep point.
    type SweepKey = (u8, ModelStage, Stage, SweepParameter);
    let mut by_sweep: BTreeMap<SweepKey, Vec<&EvalResult>> = BTreeMap::new();
    for e in evals {
        if let Some((parameter, _)) = e.sweep {
            by_sweep
                .entry((family_rank(e.family), e.model, e.task, parameter))
                .or_default()
                .push(e);
        }
    }
    let mut sweeps = Vec::new();
    for ((_, model, task, parameter), group) in by_sweep {
        let mut values: Vec<f64> = group.iter().filter_map(|e| e.sweep.map(|s| s.1)).collect();
        values.sort_by(f64::total_cmp);
        values.dedup();
        let rows = values
            .into_iter()
            .map(|value| {
                let at: Vec<&EvalResult> = group
                    .iter()
                    .copied()
                    .filter(|e| e.sweep.map(|s| s.1) == Some(value))
                    .collect();
                SweepRow {
                    value,
                    configured: at.iter().any(|e| e.configured),
                    n: at.len(),
                    cells: cells(&at),
                }
            })
            .collect();
        sweeps.push(SweepTable {
            family: group[0].family,
            model,
            task,
            parameter,
            rows,
        });
    }

    Ok(Results {
        columns: COLUMNS.iter().map(|c| c.label).collect(),
        tables,
        sweeps,
    })
}

/// Mean and sample std (x100) per column over `group`; a metric missing from any evaluation is not available.
fn cells(group: &[&EvalResult]) -> Vec<Cell> {
    COLUMNS
        .iter()
        .map(|column| {
            let values: Option<Vec<f64>> = group
                .iter()
                .map(|e| {
                    e.scores
                        .get(column.key)
                        .copied()
                        .flatten()
                        .map(|v| v * 100.0)
                })
                .collect();
            match values {
                Some(values) if !values.is_empty() => {
                    let (mean, std) = mean_std(&values);
                    Cell {
                        mean: Some(mean),
                        std,
                        relative_change: None,
                    }
                }
                _ => Cell {
                    mean: None,
                    std: None,
                    relative_change: None,
                },
            }
        })
        .collect()
}

/// Mean and sample standard deviation (n - 1 denominator; `None` for a single value) of `values` (not empty).
pub fn mean_std(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, None);
    }
    let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
    (mean, Some((ss / (n - 1.0)).sqrt()))
}

/// Relative change of `value` against `base`, in percent: (value - base) / base x 100; `None` when base is 0.
pub fn relative_change(value: f64, base: f64) -> Option<f64> {
    (base != 0.0).then(|| (value - base) / base * 100.0)
}

fn fill_relative_change(rows: &mut [TableRow]) {
    let bases: Vec<(ModelFamily, Vec<Option<f64>>)> = rows
        .iter()
        .filter(|r| r.model == ModelStage::Base)
        .map(|r| (r.family, r.cells.iter().map(|c| c.mean).collect()))
        .collect();
    for row in rows.iter_mut().filter(|r| r.model != ModelStage::Base) {
        let Some((_, base)) = bases.iter().find(|(f, _)| *f == row.family) else {
            continue;
        };
        for (cell, base) in row.cells.iter_mut().zip(base) {
            cell.relative_change = match (cell.mean, *base) {
                (Some(v), Some(b)) => relative_change(v, b),
                _ => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_std_uses_n_minus_one() {
        let (mean, std) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(mean, 5.0);
        // Population std is 2; the sample std is sqrt(32 / 7).
        let std = std.expect("eight values");
        assert!((std - (32.0f64 / 7.0).sqrt()).abs() < 1e-12, "{std}");
        assert_eq!(mean_std(&[3.0]), (3.0, None));
    }

    #[test]
    fn relative_change_is_against_the_base() {
        assert_eq!(relative_change(150.0, 100.0), Some(50.0));
        assert_eq!(relative_change(50.0, 100.0), Some(-50.0));
        assert_eq!(relative_change(5.0, 0.0), None);
        // Table 4.3, B-1, two-stage LLaMA against base LLaMA: 57.91 vs 14.75.
        let rc = relative_change(57.91, 14.75).expect("nonzero base");
        assert!((rc - 292.6102).abs() < 1e-3, "{rc}");
    }
}
