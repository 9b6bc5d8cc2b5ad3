//! The training sweep as SVG: one panel per swept field, the selection metric against the field's value (a log
//! axis where a positive field spans a factor of 10 or more, categories for target-module lists), one marker per
//! point and fold: filled for points that completed, orange for points ASHA stopped, ringed for the chosen one.
//! Deterministic: the same records give the same bytes.

use std::fmt::Write as _;

use super::plot::{esc, ticks};
use crate::manifest::FieldValue;
use crate::planner::artifacts::SelectionRecord;

const W: f64 = 380.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 64.0;

/// One marker: x value (or category index), metric, whether ASHA stopped it, whether it was chosen.
struct Marker {
    x: f64,
    y: f64,
    stopped: bool,
    chosen: bool,
}

/// The x axis of one field: numeric (`log` or linear) or categorical with labels.
enum Axis {
    Numeric { log: bool },
    Categories(Vec<String>),
}

fn panel(out: &mut String, records: &[SelectionRecord], field_at: usize, x0: f64) {
    let Some(first) = records.iter().find_map(|r| r.points.first()) else {
        return;
    };
    let Some((field, _)) = first.values.values.get(field_at) else {
        return;
    };
    let categorical = first
        .values
        .values
        .get(field_at)
        .is_some_and(|(_, v)| matches!(v, FieldValue::Modules(_)));
    let mut categories: Vec<String> = Vec::new();
    let mut markers = Vec::new();
    for r in records {
        for p in &r.points {
            let (Some(y), Some((_, value))) = (p.metric, p.values.values.get(field_at)) else {
                continue;
            };
            if !y.is_finite() {
                continue;
            }
            let x = match value {
                FieldValue::Number(v) => *v,
                FieldValue::Modules(_) => {
                    let label = value.to_string();
                    match categories.iter().position(|c| *c == label) {
                        Some(i) => i as f64,
                        None => {
                            categories.push(label);
                            (categories.len() - 1) as f64
                        }
                    }
                }
            };
            markers.push(Marker {
                x,
                y,
                stopped: p.outcome.asha_stop.is_some(),
                chosen: p.point == r.chosen,
            });
        }
    }
    let (px, py, pw, ph) = (x0 + LEFT, TOP, W - LEFT - RIGHT, H - TOP - BOTTOM);
    let _ = writeln!(out, r#"<g class="panel" data-field="{}">"#, field.as_str());
    let _ = writeln!(
        out,
        r##"<rect x="{px:.2}" y="{py:.2}" width="{pw:.2}" height="{ph:.2}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.2}" y="{:.2}" font-size="12" text-anchor="middle">{}</text>"#,
        px + pw / 2.0,
        H - 22.0,
        esc(field.as_str())
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.2}" y="{:.2}" font-size="12" text-anchor="middle" transform="rotate(-90 {:.2} {:.2})">{}</text>"#,
        x0 + 16.0,
        py + ph / 2.0,
        x0 + 16.0,
        py + ph / 2.0,
        esc(&records[0].metric)
    );
    if markers.is_empty() {
        let _ = writeln!(
            out,
            r##"<text x="{:.2}" y="{:.2}" font-size="12" text-anchor="middle" fill="#666">no values</text>"##,
            px + pw / 2.0,
            py + ph / 2.0
        );
        out.push_str("</g>\n");
        return;
    }
    let axis = if categorical {
        Axis::Categories(categories)
    } else {
        let lo = markers.iter().map(|m| m.x).fold(f64::INFINITY, f64::min);
        let hi = markers
            .iter()
            .map(|m| m.x)
            .fold(f64::NEG_INFINITY, f64::max);
        Axis::Numeric {
            log: lo > 0.0 && hi / lo >= 10.0,
        }
    };
    let tx = |x: f64| match axis {
        Axis::Numeric { log: true } => x.log10(),
        _ => x,
    };
    let xs: Vec<f64> = markers.iter().map(|m| tx(m.x)).collect();
    let (mut xlo, mut xhi) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let (mut ylo, mut yhi) = markers
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), m| {
            (a.min(m.y), b.max(m.y))
        });
    let xpad = if xhi > xlo { (xhi - xlo) * 0.08 } else { 0.5 };
    let ypad = if yhi > ylo {
        (yhi - ylo) * 0.08
    } else {
        ylo.abs().max(1.0) * 0.05
    };
    (xlo, xhi, ylo, yhi) = (xlo - xpad, xhi + xpad, ylo - ypad, yhi + ypad);
    let sx = |x: f64| px + (x - xlo) / (xhi - xlo) * pw;
    let sy = |y: f64| py + ph - (y - ylo) / (yhi - ylo) * ph;
    let x_ticks: Vec<(f64, String)> = match &axis {
        Axis::Categories(labels) => labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i as f64, l.clone()))
            .collect(),
        Axis::Numeric { log: true } => {
            let (t, _) = ticks(xlo, xhi);
            t.into_iter()
                .filter(|e| e.fract() == 0.0)
                .map(|e| (e, format!("1e{}", e as i64)))
                .collect()
        }
        Axis::Numeric { log: false } => {
            let (t, d) = ticks(xlo, xhi);
            t.into_iter().map(|v| (v, format!("{v:.d$}"))).collect()
        }
    };
    for (x, label) in x_ticks {
        let _ = writeln!(
            out,
            r##"<line class="tick" x1="{0:.2}" y1="{1:.2}" x2="{0:.2}" y2="{2:.2}" stroke="#444"/><text x="{0:.2}" y="{3:.2}" font-size="10" text-anchor="middle">{4}</text>"##,
            sx(x),
            py + ph,
            py + ph + 5.0,
            py + ph + 17.0,
            esc(&label)
        );
    }
    let (yt, yd) = ticks(ylo, yhi);
    for y in yt {
        let _ = writeln!(
            out,
            r##"<line class="grid" x1="{px:.2}" y1="{0:.2}" x2="{1:.2}" y2="{0:.2}" stroke="#ddd"/><text x="{2:.2}" y="{3:.2}" font-size="10" text-anchor="end">{4:.yd$}</text>"##,
            sy(y),
            px + pw,
            px - 6.0,
            sy(y) + 4.0,
            y
        );
    }
    for (m, x) in markers.iter().zip(&xs) {
        let fill = if m.stopped { "#ff7f0e" } else { "#1f77b4" };
        let _ = writeln!(
            out,
            r##"<circle class="point" cx="{:.2}" cy="{:.2}" r="4" fill="{fill}"/>"##,
            sx(*x),
            sy(m.y)
        );
        if m.chosen {
            let _ = writeln!(
                out,
                r##"<circle class="chosen" cx="{:.2}" cy="{:.2}" r="8" fill="none" stroke="#d62728" stroke-width="2"/>"##,
                sx(*x),
                sy(m.y)
            );
        }
    }
    out.push_str("</g>\n");
}

/// The sweep figure of `records` (every fold's selection of one stage), one panel per swept field.
pub fn sweep_svg(records: &[SelectionRecord]) -> String {
    let fields = records
        .iter()
        .find_map(|r| r.points.first())
        .map_or(0, |p| p.values.values.len());
    let width = W * fields.max(1) as f64;
    let height = H + 28.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    if let Some(r) = records.first() {
        let direction = if r.maximise { "higher" } else { "lower" };
        let _ = writeln!(
            out,
            r#"<text x="{:.2}" y="18" font-size="14" font-weight="bold" text-anchor="middle">Training sweep of {}: {} ({direction} is better), {} fold(s)</text>"#,
            width / 2.0,
            r.stage.as_str(),
            esc(&r.metric),
            records.len()
        );
    }
    for at in 0..fields {
        panel(&mut out, records, at, at as f64 * W);
    }
    let _ = writeln!(
        out,
        r##"<g class="legend" font-size="11"><circle cx="20" cy="{0:.2}" r="4" fill="#1f77b4"/><text x="28" y="{1:.2}">completed</text><circle cx="110" cy="{0:.2}" r="4" fill="#ff7f0e"/><text x="118" y="{1:.2}">stopped by ASHA</text><circle cx="240" cy="{0:.2}" r="7" fill="none" stroke="#d62728" stroke-width="2"/><text x="252" y="{1:.2}">chosen</text></g>"##,
        H + 12.0,
        H + 16.0
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Stage, TrainField, TrainPoint};
    use crate::planner::artifacts::{RungStop, SelectedPoint, TrainOutcome};

    fn point(n: usize, lr: f64, r: f64, metric: f64, stopped: bool) -> SelectedPoint {
        SelectedPoint {
            point: n,
            values: TrainPoint {
                values: vec![
                    (TrainField::Lr, FieldValue::Number(lr)),
                    (TrainField::LoraR, FieldValue::Number(r)),
                ],
            },
            train_job: format!("job{n}"),
            metric: Some(metric),
            outcome: TrainOutcome {
                steps: if stopped { 1 } else { 9 },
                best_step: Some(1),
                best_val_loss: Some(metric),
                last_val_loss: Some(metric),
                stopped_early: false,
                asha_stop: stopped.then_some(RungStop {
                    rung: 0,
                    step: 1,
                    val_loss: metric,
                    cutoff: 1.0,
                }),
            },
        }
    }

    #[test]
    fn a_panel_per_field_a_marker_per_point_and_the_choice_ringed() {
        let record = SelectionRecord {
            stage: Stage::Stage1,
            fold: None,
            metric: "val_loss".into(),
            maximise: false,
            points: vec![
                point(0, 1e-5, 8.0, 2.0, true),
                point(1, 1e-3, 16.0, 1.0, false),
                point(2, 1e-4, 8.0, 1.5, false),
            ],
            chosen: 1,
        };
        let svg = sweep_svg(std::slice::from_ref(&record));
        assert_eq!(svg.matches(r#"class="panel""#).count(), 2);
        assert_eq!(svg.matches(r#"class="point""#).count(), 6);
        assert_eq!(svg.matches(r#"class="chosen""#).count(), 2);
        let stopped = svg
            .lines()
            .filter(|l| l.contains(r#"class="point""#) && l.contains("#ff7f0e"))
            .count();
        assert_eq!(stopped, 2, "the stopped point in both panels");
        assert!(svg.contains(">1e-4<"), "a log axis for lr: {svg}");
        assert!(svg.contains(">training.lr<") && svg.contains(">lora.r<"));
        assert_eq!(svg, sweep_svg(&[record]), "deterministic");
    }
}
