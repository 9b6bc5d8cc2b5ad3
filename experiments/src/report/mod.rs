//! Result tables and training curves of an experiment, as the thesis shows them: Tables 4.1, 4.3 and 4.4
//! (rows model x stage, columns B-1..B-4, R-1, R-2, R-L, M, BS, RG, x100, mean and sample std over folds,
//! relative change against the base row), the sweep tables, and the figures as SVG and PNG with their text
//! (loss/perplexity curves, training sweeps, generation sweeps; drawn with plotters from an embedded font). Pure
//! functions over plain inputs; the CLI fetches [`EvalResult`]s and [`CurvePoint`]s and calls [`build_results`],
//! [`render_markdown`] / [`render_csv`] / [`render_json`], [`curves_svg`] / [`curves_png`], [`sweep_svg`] /
//! [`sweep_png`] and [`generation_sweep_svg`] / [`generation_sweep_png`].

mod figure;
pub mod generation_plot;
pub mod input;
pub mod plot;
pub mod render;
pub mod sweep_plot;
pub mod table;
pub mod training_sweep;

pub use generation_plot::{generation_sweep_png, generation_sweep_svg};
pub use input::{COLUMNS, Column, CurvePoint, EvalResult, Series, curve_points};
pub use plot::{curves_png, curves_svg, series_png, series_svg};
pub use render::{Format, render, render_csv, render_json, render_markdown};
pub use sweep_plot::{sweep_png, sweep_svg};
pub use table::{Cell, Results, ResultsTable, SweepRow, SweepTable, TableRow, build_results};
pub use training_sweep::render_sweep;

use crate::manifest::{ModelFamily, ModelStage, Stage, SweepParameter};

/// Errors of the report: inputs that cannot make an honest table.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReportError {
    #[error(
        "evaluation {eval}: score {key:?} is {value}, accepted: a finite number in [0, 1] or null (not \
         available)"
    )]
    ScoreOutOfRange {
        eval: String,
        key: String,
        value: f64,
    },
    #[error("evaluation {eval} appears twice (same family, model, task, fold and sweep point)")]
    DuplicateEval { eval: String },
    #[error("json: {0}")]
    Json(String),
    #[error("csv: {0}")]
    Csv(String),
}

/// How a table names a model family: `LLaMA`, `T5`.
pub fn family_label(family: ModelFamily) -> &'static str {
    match family {
        ModelFamily::Llama => "LLaMA",
        ModelFamily::T5 => "T5",
    }
}

/// How a table names a model stage: `base`, `stage-1`, `two-stage`.
pub fn model_label(model: ModelStage) -> &'static str {
    match model {
        ModelStage::Base => "base",
        ModelStage::Stage1 => "stage-1",
        ModelStage::TwoStage => "two-stage",
    }
}

/// Row order of the thesis's tables: LLaMA before T5.
pub(crate) fn family_rank(family: ModelFamily) -> u8 {
    match family {
        ModelFamily::Llama => 0,
        ModelFamily::T5 => 1,
    }
}

/// Identifies one evaluation in error messages, e.g. `two-stage LLaMA on stage2, fold 3, temperature=0.6`.
pub(crate) fn eval_name(
    family: ModelFamily,
    model: ModelStage,
    task: Stage,
    fold: Option<usize>,
    sweep: Option<(SweepParameter, f64)>,
) -> String {
    let mut out = format!(
        "{} {} on {}",
        model_label(model),
        family_label(family),
        task.as_str()
    );
    if let Some(k) = fold {
        out.push_str(&format!(", fold {k}"));
    }
    if let Some((p, v)) = sweep {
        out.push_str(&format!(", {}={v}", p.as_str()));
    }
    out
}
