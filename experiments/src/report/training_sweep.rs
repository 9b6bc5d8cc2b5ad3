//! The training-sweep table of `tandem results --sweep`: one row per point (its swept values, the selection
//! metric, updates run, how it ended), one table per stage and fold, and for k-fold sweeps a summary with the
//! metric's mean and sample standard deviation over folds and how often each point was chosen.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::json;

use super::render::Format;
use crate::planner::artifacts::{SelectedPoint, SelectionRecord};

/// How a point ended, in words.
pub fn point_state(point: &SelectedPoint, chosen: bool) -> String {
    let mut state = match (&point.outcome.asha_stop, point.outcome.stopped_early) {
        (Some(stop), _) => format!(
            "stopped by ASHA at rung {} (step {}: val_loss {:.4} > cutoff {:.4})",
            stop.rung, stop.step, stop.val_loss, stop.cutoff
        ),
        (None, true) => "early stopping (patience)".to_owned(),
        (None, false) => "completed".to_owned(),
    };
    if chosen {
        state.push_str(", chosen");
    }
    state
}

fn metric_text(value: Option<f64>) -> String {
    value.map_or_else(|| "not available".to_owned(), |v| format!("{v:.4}"))
}

fn title(record: &SelectionRecord) -> String {
    let fold = record
        .fold
        .map_or_else(String::new, |k| format!(", fold {k}"));
    let direction = if record.maximise { "higher" } else { "lower" };
    format!(
        "Training sweep: {}{fold}, selected by {} ({direction} is better)",
        record.stage.as_str(),
        record.metric
    )
}

/// The swept field names of a record, in sweep order.
fn fields(record: &SelectionRecord) -> Vec<&'static str> {
    record
        .points
        .first()
        .map(|p| p.values.values.iter().map(|(f, _)| f.as_str()).collect())
        .unwrap_or_default()
}

/// Per point number over every fold's record: (values, metric per fold, times chosen).
fn across_folds(records: &[SelectionRecord]) -> BTreeMap<usize, (String, Vec<f64>, usize)> {
    let mut out: BTreeMap<usize, (String, Vec<f64>, usize)> = BTreeMap::new();
    for record in records {
        for p in &record.points {
            let entry = out
                .entry(p.point)
                .or_insert_with(|| (p.values.describe(), Vec::new(), 0));
            entry.1.extend(p.metric.filter(|m| m.is_finite()));
            entry.2 += usize::from(p.point == record.chosen);
        }
    }
    out
}

fn mean_std(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, std)
}

/// The sweep tables of `records` in `format`.
pub fn render_sweep(records: &[SelectionRecord], format: Format) -> String {
    match format {
        Format::Json => {
            let value = json!(records);
            serde_json::to_string_pretty(&value).expect("records serialise") + "\n"
        }
        Format::Csv => {
            let mut out = String::from("stage,fold,point,values,metric,value,steps,state\n");
            for r in records {
                for p in &r.points {
                    let _ = writeln!(
                        out,
                        "{},{},{},\"{}\",{},{},{},\"{}\"",
                        r.stage.as_str(),
                        r.fold.map_or_else(String::new, |k| k.to_string()),
                        p.point,
                        p.values.describe().replace('"', "\"\""),
                        r.metric,
                        p.metric.map_or_else(String::new, |v| v.to_string()),
                        p.outcome.steps,
                        point_state(p, p.point == r.chosen)
                    );
                }
            }
            out
        }
        Format::Markdown => {
            let mut out = String::new();
            for r in records {
                let names = fields(r);
                let _ = writeln!(out, "## {}\n", title(r));
                let _ = writeln!(
                    out,
                    "| point | {} | {} | updates | state |",
                    names.join(" | "),
                    r.metric
                );
                let _ = writeln!(out, "|---:|{}---:|---:|---|", "---|".repeat(names.len()));
                for p in &r.points {
                    let values: Vec<String> =
                        p.values.values.iter().map(|(_, v)| v.to_string()).collect();
                    let marker = if p.point == r.chosen { " *" } else { "" };
                    let _ = writeln!(
                        out,
                        "| {}{marker} | {} | {} | {} | {} |",
                        p.point,
                        values.join(" | "),
                        metric_text(p.metric),
                        p.outcome.steps,
                        point_state(p, p.point == r.chosen)
                    );
                }
                let spent: usize = r.points.iter().map(|p| p.outcome.steps).sum();
                let _ = writeln!(
                    out,
                    "\n{spent} optimizer updates over {} points.\n",
                    r.points.len()
                );
            }
            if records.len() > 1 {
                let metric = &records[0].metric;
                let _ = writeln!(out, "## Training sweep over {} folds\n", records.len());
                let _ = writeln!(
                    out,
                    "| point | values | {metric} mean | std | folds | chosen |"
                );
                out.push_str("|---:|---|---:|---:|---:|---:|\n");
                for (point, (values, metrics, chosen)) in across_folds(records) {
                    let (mean, std) = if metrics.is_empty() {
                        ("not available".to_owned(), "-".to_owned())
                    } else {
                        let (m, s) = mean_std(&metrics);
                        (
                            format!("{m:.4}"),
                            s.map_or_else(|| "-".to_owned(), |s| format!("{s:.4}")),
                        )
                    };
                    let _ = writeln!(
                        out,
                        "| {point} | {values} | {mean} | {std} | {} | {chosen} |",
                        metrics.len()
                    );
                }
            }
            out
        }
    }
}
