//! Text forms of [`Results`]: aligned Markdown like the thesis's tables (means, std, relative change, sweeps;
//! "n/a" where a value is not available), a long-format CSV (one line per row x metric, empty = not
//! available) and JSON (the structures as they are).

use std::fmt::Write as _;

use super::input::COLUMNS;
use super::table::{Cell, Results, ResultsTable};
use super::{ReportError, family_label, model_label};
use crate::manifest::{ModelStage, Stage};

/// The output formats of `tandem results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Csv,
    Json,
}

impl Format {
    /// Parses `md`, `csv` or `json`.
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "md" | "markdown" => Some(Format::Markdown),
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Renders `results` in `format`.
pub fn render(results: &Results, format: Format) -> Result<String, ReportError> {
    match format {
        Format::Markdown => Ok(render_markdown(results)),
        Format::Csv => render_csv(results),
        Format::Json => render_json(results),
    }
}

const NA: &str = "n/a";

/// A number with two decimals, never "-0.00".
fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    if s == "-0.00" { "0.00".to_owned() } else { s }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| NA.to_owned(), num)
}

/// "292.61% increase", "5.93% decrease", "no change".
fn change(v: Option<f64>) -> String {
    match v {
        None => NA.to_owned(),
        Some(v) => {
            let magnitude = num(v.abs());
            if magnitude == "0.00" {
                "no change".to_owned()
            } else if v > 0.0 {
                format!("{magnitude}% increase")
            } else {
                format!("{magnitude}% decrease")
            }
        }
    }
}

fn table_names(task: Stage) -> (&'static str, &'static str, &'static str) {
    match task {
        Stage::Stage1 => (
            "Table 4.1",
            "Table 4.1 (std)",
            "stage-1 task (stage-1 test set)",
        ),
        Stage::Stage2 => (
            "Table 4.3",
            "Table 4.4",
            "stage-2 task (impression summarization, test folds)",
        ),
    }
}

/// An aligned Markdown table: first column left-aligned, the others right-aligned.
fn markdown_grid(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count().max(3)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::from("|");
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(out, " {cell:<w$} |");
            } else {
                let _ = write!(out, " {cell:>w$} |");
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header);
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        if i == 0 {
            let _ = write!(out, " {} |", "-".repeat(*w));
        } else {
            let _ = write!(out, " {}: |", "-".repeat(w - 1));
        }
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn row_label(table: &ResultsTable, i: usize) -> String {
    let row = &table.rows[i];
    format!("{} {}", model_label(row.model), family_label(row.family))
}

fn header(first: &str) -> Vec<String> {
    let mut h = vec![first.to_owned(), "n".to_owned()];
    h.extend(COLUMNS.iter().map(|c| c.label.to_owned()));
    h
}

fn grid_of(table: &ResultsTable, value: impl Fn(&Cell) -> String) -> String {
    let rows: Vec<Vec<String>> = (0..table.rows.len())
        .map(|i| {
            let mut cells = vec![row_label(table, i), table.rows[i].n.to_string()];
            cells.extend(table.rows[i].cells.iter().map(&value));
            cells
        })
        .collect();
    markdown_grid(&header("model"), &rows)
}

/// The Markdown tables: per task the means, the standard deviations (always for the stage-2 task, Table 4.4;
/// for the stage-1 task only where a row has several evaluations) and the relative change against the base row;
/// then the sweeps.
pub fn render_markdown(results: &Results) -> String {
    let mut out = String::new();
    out.push_str(
        "Scores x100. n = evaluations (folds) per row; a cell is their mean, std is the sample standard \
         deviation (n - 1) and needs n >= 2. n/a = not available.\n",
    );
    for table in &results.tables {
        let (means, stds, what) = table_names(table.task);
        let _ = write!(out, "\n## {means}: {what}, mean\n\n");
        out.push_str(&grid_of(table, |c| opt(c.mean)));
        let any_std = table
            .rows
            .iter()
            .any(|r| r.cells.iter().any(|c| c.std.is_some()));
        if table.task == Stage::Stage2 || any_std {
            let _ = write!(out, "\n## {stds}: {what}, std\n\n");
            out.push_str(&grid_of(table, |c| opt(c.std)));
        }
        if table.rows.iter().any(|r| r.model != ModelStage::Base) {
            let _ = write!(
                out,
                "\n## {means}: relative change of the mean against the base row of the same family\n\n"
            );
            let rows: Vec<Vec<String>> = (0..table.rows.len())
                .filter(|&i| table.rows[i].model != ModelStage::Base)
                .map(|i| {
                    let mut cells = vec![row_label(table, i), table.rows[i].n.to_string()];
                    cells.extend(
                        table.rows[i]
                            .cells
                            .iter()
                            .map(|c| change(c.relative_change)),
                    );
                    cells
                })
                .collect();
            out.push_str(&markdown_grid(&header("model"), &rows));
        }
    }
    for sweep in &results.sweeps {
        let _ = write!(
            out,
            "\n## Sweep of {} ({} {} on the {} task), mean ± std; * = configured value\n\n",
            sweep.parameter.as_str(),
            model_label(sweep.model),
            family_label(sweep.family),
            sweep.task.as_str()
        );
        let rows: Vec<Vec<String>> = sweep
            .rows
            .iter()
            .map(|r| {
                let star = if r.configured { "*" } else { "" };
                let mut cells = vec![format!("{}{star}", r.value), r.n.to_string()];
                cells.extend(r.cells.iter().map(|c| match (c.mean, c.std) {
                    (None, _) => NA.to_owned(),
                    (Some(m), None) => num(m),
                    (Some(m), Some(s)) => format!("{} ± {}", num(m), num(s)),
                }));
                cells
            })
            .collect();
        out.push_str(&markdown_grid(&header(sweep.parameter.as_str()), &rows));
    }
    out
}

/// Long-format CSV: `table,task,family,model,sweep_parameter,sweep_value,configured,n,metric,mean,std,
/// relative_change_pct`, one line per row x metric; an empty field = not available or not applicable.
pub fn render_csv(results: &Results) -> Result<String, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| ReportError::Csv(e.to_string());
    w.write_record([
        "table",
        "task",
        "family",
        "model",
        "sweep_parameter",
        "sweep_value",
        "configured",
        "n",
        "metric",
        "mean",
        "std",
        "relative_change_pct",
    ])
    .map_err(err)?;
    let f = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.4}"));
    for table in &results.tables {
        let name = table_names(table.task).0;
        for row in &table.rows {
            for (column, cell) in COLUMNS.iter().zip(&row.cells) {
                w.write_record([
                    name,
                    table.task.as_str(),
                    family_label(row.family),
                    model_label(row.model),
                    "",
                    "",
                    "true",
                    &row.n.to_string(),
                    column.label,
                    &f(cell.mean),
                    &f(cell.std),
                    &f(cell.relative_change),
                ])
                .map_err(err)?;
            }
        }
    }
    for sweep in &results.sweeps {
        for row in &sweep.rows {
            for (column, cell) in COLUMNS.iter().zip(&row.cells) {
                w.write_record([
                    "sweep",
                    sweep.task.as_str(),
                    family_label(sweep.family),
                    model_label(sweep.model),
                    sweep.parameter.as_str(),
                    &row.value.to_string(),
                    if row.configured { "true" } else { "false" },
                    &row.n.to_string(),
                    column.label,
                    &f(cell.mean),
                    &f(cell.std),
                    "",
                ])
                .map_err(err)?;
            }
        }
    }
    let bytes = w
        .into_inner()
        .map_err(|e| ReportError::Csv(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| ReportError::Csv(e.to_string()))
}

/// Pretty JSON of the structures (scores x100, `null` = not available).
pub fn render_json(results: &Results) -> Result<String, ReportError> {
    serde_json::to_string_pretty(results).map_err(|e| ReportError::Json(e.to_string()))
}
