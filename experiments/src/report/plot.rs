//! Training curves: one panel per series (training loss, validation loss, validation perplexity) against the
//! optimizer step, each with its title, axis labels, ticks and legend. A stage without folds (stage 1) is a
//! line; a stage with folds (stage 2) is the mean over the folds that logged each step with a shaded band of
//! +- one sample standard deviation. Non-finite points are left out and counted under the panel's title. SVG
//! and PNG are the same drawing; output is deterministic: same points (in any order) -> same bytes.

use std::collections::BTreeMap;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::figure::{self, Axis, BAND_OPACITY, DrawResult, Figure, Glyph};
use super::input::{CurvePoint, Series};
use super::table::mean_std;
use crate::manifest::Stage;

const PANEL_W: u32 = 520;
const PANEL_H: u32 = 420;

fn colour(stage: Stage) -> RGBColor {
    match stage {
        Stage::Stage1 => figure::BLUE,
        Stage::Stage2 => figure::RED,
    }
}

/// The y-axis label of a series' panel.
fn y_label(series: Series) -> &'static str {
    match series {
        Series::TrainLoss | Series::ValLoss => "cross-entropy loss",
        Series::ValPerplexity => "perplexity",
    }
}

/// What one stage draws in one panel: per step the mean, the sample std over folds (`None`: a single curve or
/// a single fold at that step), and how many curves (folds) it has.
#[derive(Debug, Clone, PartialEq)]
struct Trace {
    stage: Stage,
    has_folds: bool,
    folds: usize,
    points: Vec<(u64, f64, Option<f64>)>,
}

impl Trace {
    fn label(&self) -> String {
        let name = self.stage.as_str().replace("stage", "stage ");
        if self.has_folds {
            format!("{name}: mean ± std over {} folds", self.folds)
        } else {
            name
        }
    }
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

/// The panels of `series` side by side.
struct Curves<'a> {
    points: &'a [CurvePoint],
    series: &'a [Series],
}

impl Figure for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        (PANEL_W * self.series.len().max(1) as u32, PANEL_H)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let areas = root.split_evenly((1, self.series.len().max(1)));
        for (area, series) in areas.iter().zip(self.series) {
            panel(area, self.points, *series)?;
        }
        Ok(())
    }
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    points: &[CurvePoint],
    series: Series,
) -> DrawResult<DB> {
    let (traces, skipped) = traces(points, series);
    let note = match skipped {
        0 => String::new(),
        1 => "1 non-finite point left out".to_owned(),
        n => format!("{n} non-finite points left out"),
    };
    let area = figure::panel(area, series.title(), &note)?;
    let all = traces.iter().flat_map(|t| &t.points);
    let (Some((x_lo, x_hi)), Some((y_lo, y_hi))) = (
        figure::extent(all.clone().map(|&(step, _, _)| step as f64)),
        figure::extent(all.flat_map(|&(_, mean, std)| {
            let s = std.unwrap_or(0.0);
            [mean - s, mean + s]
        })),
    ) else {
        return figure::no_points(&area);
    };
    let x = Axis::linear(x_lo, x_hi, 0.0, true);
    let y = Axis::linear(y_lo, y_hi, 0.05, false);
    let mut chart = figure::chart(&area, &x, &y, "optimizer step", y_label(series))?;
    // Bands first, lines on top.
    for t in traces.iter().filter(|t| t.has_folds) {
        let upper = t
            .points
            .iter()
            .map(|&(step, mean, std)| (step as f64, mean + std.unwrap_or(0.0)));
        let lower = t
            .points
            .iter()
            .rev()
            .map(|&(step, mean, std)| (step as f64, mean - std.unwrap_or(0.0)));
        chart.draw_series(std::iter::once(Polygon::new(
            upper.chain(lower).collect::<Vec<_>>(),
            colour(t.stage).mix(BAND_OPACITY).filled(),
        )))?;
    }
    for t in &traces {
        let c = colour(t.stage);
        let line = t.points.iter().map(|&(step, mean, _)| (step as f64, mean));
        // A single step has no line to draw: a marker shows it.
        let marker = if t.points.len() == 1 { 4 } else { 0 };
        let glyph = if t.has_folds {
            Glyph::Band(c)
        } else {
            Glyph::Line(c)
        };
        chart
            .draw_series(LineSeries::new(line, c.filled().stroke_width(2)).point_size(marker))?
            .label(t.label())
            .legend(move |at| glyph.element(at));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(8)
        .legend_area_size(30)
        .label_font(figure::text(figure::TICK_SIZE, figure::INK))
        .background_style(WHITE.mix(0.85))
        .border_style(figure::MUTED)
        .draw()
}

/// The three panels side by side (training loss, validation loss, validation perplexity), as SVG.
pub fn curves_svg(points: &[CurvePoint]) -> String {
    figure::svg(&Curves {
        points,
        series: &Series::ALL,
    })
}

/// One panel for `series`, as SVG.
pub fn series_svg(points: &[CurvePoint], series: Series) -> String {
    figure::svg(&Curves {
        points,
        series: &[series],
    })
}

/// The three panels side by side as PNG: the same drawing as [`curves_svg`], text included.
pub fn curves_png(points: &[CurvePoint]) -> Vec<u8> {
    figure::png(&Curves {
        points,
        series: &Series::ALL,
    })
}

/// One panel for `series`, as PNG.
pub fn series_png(points: &[CurvePoint], series: Series) -> Vec<u8> {
    figure::png(&Curves {
        points,
        series: &[series],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(traces[0].label(), "stage 2: mean ± std over 2 folds");
        assert_eq!(traces[0].points[0].0, 10);
        assert_eq!(traces[0].points[0].1, 2.0);
        let std = traces[0].points[0].2.expect("two folds");
        assert!((std - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(traces[0].points[1], (20, 0.5, None));
    }

    #[test]
    fn the_last_duplicate_point_wins() {
        let p = |value| CurvePoint {
            stage: Stage::Stage1,
            fold: None,
            step: 5,
            series: Series::TrainLoss,
            value,
        };
        let (traces, skipped) = traces(&[p(1.0), p(2.0)], Series::TrainLoss);
        assert_eq!(skipped, 0);
        assert_eq!(traces[0].points, vec![(5, 2.0, None)]);
        assert!(!traces[0].has_folds);
        assert_eq!(traces[0].label(), "stage 1");
    }
}
