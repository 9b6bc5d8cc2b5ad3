//! Training curves as hand-written SVG: one panel per series (training loss, validation loss, validation
//! perplexity) against the optimizer step; a stage without folds (stage 1) is a line, a stage with folds
//! (stage 2) is the mean over the folds that logged each step with a band of +- one sample standard deviation.
//! Output is deterministic: same points (in any order) -> same bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::input::{CurvePoint, Series};
use super::table::mean_std;
use crate::manifest::Stage;

pub(crate) const PANEL_W: f64 = 380.0;
pub(crate) const PANEL_H: f64 = 280.0;
pub(crate) const LEGEND_H: f64 = 34.0;
const MARGIN_L: f64 = 64.0;
const MARGIN_R: f64 = 14.0;
const MARGIN_T: f64 = 28.0;
const MARGIN_B: f64 = 44.0;

fn colour(stage: Stage) -> &'static str {
    match stage {
        Stage::Stage1 => "#1f77b4",
        Stage::Stage2 => "#d62728",
    }
}

/// What one stage draws in one panel: per step the mean, the sample std over folds (`None`: a single curve or
/// a single fold at that step) and how many folds logged it.
#[derive(Debug, Clone, PartialEq)]
struct Trace {
    stage: Stage,
    has_folds: bool,
    folds: usize,
    points: Vec<(u64, f64, Option<f64>)>,
}

/// Groups the finite points of `series` per stage; the last of duplicate (stage, fold, step) points wins.
/// Returns the traces and how many non-finite points were left out.
fn traces(points: &[CurvePoint], series: Series) -> (Vec<Trace>, usize) {
    let mut skipped = 0;
    let mut by_stage: BTreeMap<Stage, BTreeMap<Option<usize>, BTreeMap<u64, f64>>> =
        BTreeMap::new();
    for p in points.iter().filter(|p| p.series == series) {
        if !p.value.is_finite() {
            skipped += 1;
            continue;
        }
        by_stage
            .entry(p.stage)
            .or_default()
            .entry(p.fold)
            .or_default()
            .insert(p.step, p.value);
    }
    let traces = by_stage
        .into_iter()
        .map(|(stage, folds)| {
            let has_folds = folds.keys().any(Option::is_some);
            let mut at: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
            for curve in folds.values() {
                for (&step, &v) in curve {
                    at.entry(step).or_default().push(v);
                }
            }
            let points = at
                .into_iter()
                .map(|(step, values)| {
                    let (mean, std) = mean_std(&values);
                    (step, mean, std)
                })
                .collect();
            Trace {
                stage,
                has_folds,
                folds: folds.len(),
                points,
            }
        })
        .collect();
    (traces, skipped)
}

/// Tick positions 1, 2 or 5 x 10^k apart covering [lo, hi], and the decimals to print them with.
pub(crate) fn ticks(lo: f64, hi: f64) -> (Vec<f64>, usize) {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let ticks = (first..=last).map(|i| i as f64 * step).collect();
    (ticks, decimals)
}

pub(crate) fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Where everything of one panel goes, in figure coordinates (SVG and PNG draw the same geometry).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PanelGeometry {
    pub series: Series,
    pub x0: f64,
    pub y0: f64,
    /// The plot area: x, y, width, height.
    pub frame: (f64, f64, f64, f64),
    /// Tick positions along the x axis with their labels.
    pub x_ticks: Vec<(f64, String)>,
    /// Tick positions along the y axis with their labels.
    pub y_ticks: Vec<(f64, String)>,
    /// Closed mean +- std outlines of the stages with folds.
    pub bands: Vec<(Stage, Vec<(f64, f64)>)>,
    /// Mean (or single) curves.
    pub lines: Vec<(Stage, Vec<(f64, f64)>)>,
    /// Non-finite points left out.
    pub skipped: usize,
}

pub(crate) fn geometry(points: &[CurvePoint], series: Series, x0: f64, y0: f64) -> PanelGeometry {
    let (traces, skipped) = traces(points, series);
    let plot_x = x0 + MARGIN_L;
    let plot_y = y0 + MARGIN_T;
    let plot_w = PANEL_W - MARGIN_L - MARGIN_R;
    let plot_h = PANEL_H - MARGIN_T - MARGIN_B;
    let mut geometry = PanelGeometry {
        series,
        x0,
        y0,
        frame: (plot_x, plot_y, plot_w, plot_h),
        x_ticks: Vec::new(),
        y_ticks: Vec::new(),
        bands: Vec::new(),
        lines: Vec::new(),
        skipped,
    };
    let all = traces.iter().flat_map(|t| t.points.iter());
    let (mut xmin, mut xmax, mut ymin, mut ymax) =
        (u64::MAX, 0u64, f64::INFINITY, f64::NEG_INFINITY);
    for &(step, mean, std) in all {
        xmin = xmin.min(step);
        xmax = xmax.max(step);
        let s = std.unwrap_or(0.0);
        ymin = ymin.min(mean - s);
        ymax = ymax.max(mean + s);
    }
    if xmin > xmax {
        return geometry;
    }
    let (xlo, xhi) = if xmin == xmax {
        (xmin as f64 - 0.5, xmax as f64 + 0.5)
    } else {
        (xmin as f64, xmax as f64)
    };
    let pad = if ymax > ymin {
        (ymax - ymin) * 0.05
    } else {
        ymin.abs().max(1.0) * 0.05
    };
    let (ylo, yhi) = (ymin - pad, ymax + pad);
    let sx = |x: f64| plot_x + (x - xlo) / (xhi - xlo) * plot_w;
    let sy = |y: f64| plot_y + plot_h - (y - ylo) / (yhi - ylo) * plot_h;
    let (xt, xd) = ticks(xlo, xhi);
    geometry.x_ticks = xt
        .into_iter()
        .map(|t| (sx(t), format!("{t:.xd$}")))
        .collect();
    let (yt, yd) = ticks(ylo, yhi);
    geometry.y_ticks = yt
        .into_iter()
        .map(|t| (sy(t), format!("{t:.yd$}")))
        .collect();
    for t in traces.iter().filter(|t| t.has_folds) {
        let upper = t
            .points
            .iter()
            .map(|&(s, m, d)| (sx(s as f64), sy(m + d.unwrap_or(0.0))));
        let lower = t
            .points
            .iter()
            .rev()
            .map(|&(s, m, d)| (sx(s as f64), sy(m - d.unwrap_or(0.0))));
        geometry.bands.push((t.stage, upper.chain(lower).collect()));
    }
    for t in &traces {
        let line = t.points.iter().map(|&(s, m, _)| (sx(s as f64), sy(m)));
        geometry.lines.push((t.stage, line.collect()));
    }
    geometry
}

fn coords(points: &[(f64, f64)]) -> String {
    let all: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.2},{y:.2}"))
        .collect();
    all.join(" ")
}

/// Draws one panel with its top-left corner at (`x0`, `y0`).
fn panel(out: &mut String, points: &[CurvePoint], series: Series, x0: f64, y0: f64) {
    let g = geometry(points, series, x0, y0);
    let (plot_x, plot_y, plot_w, plot_h) = g.frame;
    let _ = writeln!(
        out,
        r#"<g class="panel" data-series="{}">"#,
        series.as_str()
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.2}" y="{:.2}" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"#,
        plot_x + plot_w / 2.0,
        y0 + 18.0,
        esc(series.title())
    );
    let _ = writeln!(
        out,
        r##"<rect x="{plot_x:.2}" y="{plot_y:.2}" width="{plot_w:.2}" height="{plot_h:.2}" fill="none" stroke="#444" stroke-width="1"/>"##
    );
    if g.lines.is_empty() {
        let _ = writeln!(
            out,
            r##"<text x="{:.2}" y="{:.2}" font-size="12" text-anchor="middle" fill="#666">no data</text>"##,
            plot_x + plot_w / 2.0,
            plot_y + plot_h / 2.0
        );
        out.push_str("</g>\n");
        return;
    }
    for (x, label) in &g.x_ticks {
        let _ = writeln!(
            out,
            r##"<line class="tick" x1="{x:.2}" y1="{:.2}" x2="{x:.2}" y2="{:.2}" stroke="#444" stroke-width="1"/>"##,
            plot_y + plot_h,
            plot_y + plot_h + 5.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.2}" y="{:.2}" font-size="11" text-anchor="middle">{label}</text>"#,
            plot_y + plot_h + 17.0
        );
    }
    for (y, label) in &g.y_ticks {
        let _ = writeln!(
            out,
            r##"<line class="grid" x1="{plot_x:.2}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}" stroke="#ddd" stroke-width="1"/>"##,
            plot_x + plot_w
        );
        let _ = writeln!(
            out,
            r##"<line class="tick" x1="{:.2}" y1="{y:.2}" x2="{plot_x:.2}" y2="{y:.2}" stroke="#444" stroke-width="1"/>"##,
            plot_x - 5.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.2}" y="{:.2}" font-size="11" text-anchor="end">{label}</text>"#,
            plot_x - 8.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.2}" y="{:.2}" font-size="12" text-anchor="middle">optimizer step</text>"#,
        plot_x + plot_w / 2.0,
        y0 + PANEL_H - 8.0
    );
    let (lx, ly) = (x0 + 14.0, plot_y + plot_h / 2.0);
    let _ = writeln!(
        out,
        r#"<text x="{lx:.2}" y="{ly:.2}" font-size="12" text-anchor="middle" transform="rotate(-90 {lx:.2} {ly:.2})">{}</text>"#,
        esc(series.as_str())
    );
    // Bands first, lines on top.
    for (stage, outline) in &g.bands {
        let _ = writeln!(
            out,
            r#"<polygon class="band" data-stage="{}" points="{}" fill="{}" fill-opacity="0.2" stroke="none"/>"#,
            stage.as_str(),
            coords(outline),
            colour(*stage)
        );
    }
    for (stage, line) in &g.lines {
        let _ = writeln!(
            out,
            r#"<polyline class="line" data-stage="{}" points="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
            stage.as_str(),
            coords(line),
            colour(*stage)
        );
    }
    if g.skipped > 0 {
        let _ = writeln!(
            out,
            r##"<text x="{:.2}" y="{:.2}" font-size="10" text-anchor="end" fill="#a00">{} non-finite point(s) left out</text>"##,
            plot_x + plot_w - 4.0,
            plot_y + 12.0,
            g.skipped
        );
    }
    out.push_str("</g>\n");
}

/// The legend's entries: where each starts, its stage, whether it has folds (a band), and its label.
fn legend_items(points: &[CurvePoint]) -> Vec<(f64, Stage, bool, String)> {
    let mut stages: BTreeMap<Stage, Vec<Option<usize>>> = BTreeMap::new();
    for p in points {
        let folds = stages.entry(p.stage).or_default();
        if !folds.contains(&p.fold) {
            folds.push(p.fold);
        }
    }
    let mut x = MARGIN_L;
    let mut out = Vec::new();
    for (stage, folds) in stages {
        let has_folds = folds.iter().any(Option::is_some);
        let name = stage.as_str().replace("stage", "stage ");
        let label = if has_folds {
            format!("{name}: mean ± std over {} folds", folds.len())
        } else {
            name
        };
        let width = 40.0 + 7.0 * label.chars().count() as f64;
        out.push((x, stage, has_folds, label));
        x += width;
    }
    out
}

/// The legend's swatches (x, stage, band) for the PNG.
pub(crate) fn legend_entries(points: &[CurvePoint]) -> Vec<(f64, Stage, bool)> {
    legend_items(points)
        .into_iter()
        .map(|(x, stage, band, _)| (x, stage, band))
        .collect()
}

fn legend(out: &mut String, points: &[CurvePoint]) {
    out.push_str("<g class=\"legend\">\n");
    for (x, stage, has_folds, label) in legend_items(points) {
        let c = colour(stage);
        if has_folds {
            let _ = writeln!(
                out,
                r#"<rect x="{x:.2}" y="10.00" width="24.00" height="12.00" fill="{c}" fill-opacity="0.2"/>"#
            );
        }
        let _ = writeln!(
            out,
            r#"<line x1="{x:.2}" y1="16.00" x2="{:.2}" y2="16.00" stroke="{c}" stroke-width="1.5"/>"#,
            x + 24.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.2}" y="20.00" font-size="12">{}</text>"#,
            x + 30.0,
            esc(&label)
        );
    }
    out.push_str("</g>\n");
}

fn svg(points: &[CurvePoint], series: &[Series]) -> String {
    let width = PANEL_W * series.len() as f64;
    let height = PANEL_H + LEGEND_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r#"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    legend(&mut out, points);
    for (i, s) in series.iter().enumerate() {
        panel(&mut out, points, *s, PANEL_W * i as f64, LEGEND_H);
    }
    out.push_str("</svg>\n");
    out
}

/// The three panels side by side (training loss, validation loss, validation perplexity) with one legend.
pub fn curves_svg(points: &[CurvePoint]) -> String {
    svg(points, &Series::ALL)
}

/// One panel for `series`, with the legend.
pub fn series_svg(points: &[CurvePoint], series: Series) -> String {
    svg(points, &[series])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        let (t, d) = ticks(0.0, 10.0);
        assert_eq!(t, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(d, 0);
        let (t, d) = ticks(1.03, 1.97);
        assert_eq!(d, 1);
        assert!(t.iter().all(|v| (1.03..=1.97).contains(v)), "{t:?}");
        assert!(t.len() >= 3);
    }

    #[test]
    fn folds_make_mean_and_sample_std_per_step() {
        let p = |fold, step, value| CurvePoint {
            stage: Stage::Stage2,
            fold: Some(fold),
            step,
            series: Series::ValLoss,
            value,
        };
        let points = [
            p(0, 10, 1.0),
            p(1, 10, 3.0),
            p(0, 20, 0.5),
            p(1, 20, f64::NAN),
        ];
        let (traces, skipped) = traces(&points, Series::ValLoss);
        assert_eq!(skipped, 1);
        assert_eq!(traces.len(), 1);
        assert!(traces[0].has_folds);
        assert_eq!(traces[0].points[0].0, 10);
        assert_eq!(traces[0].points[0].1, 2.0);
        let std = traces[0].points[0].2.expect("two folds");
        assert!((std - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(traces[0].points[1], (20, 0.5, None));
    }
}
