//! The training sweep: one panel per swept field, the selection metric against the field's value (a log axis
//! where a positive field spans a factor of 10 or more, categories for target-module lists), one marker per
//! point and fold: blue for points that completed, orange for points ASHA stopped, ringed for the chosen one;
//! a title naming the stage, metric, direction and folds, and a legend. SVG and PNG are the same drawing;
//! deterministic: the same records give the same bytes.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::figure::{self, Axis, DrawResult, Figure, Glyph};
use crate::manifest::FieldValue;
use crate::planner::artifacts::SelectionRecord;

const PANEL_W: u32 = 480;
const PANEL_H: u32 = 380;

/// One marker: x value (or category index), metric, whether ASHA stopped it, whether it was chosen.
struct Marker {
    x: f64,
    y: f64,
    stopped: bool,
    chosen: bool,
}

fn legend_entries() -> Vec<(Glyph, String)> {
    vec![
        (Glyph::Dot(figure::BLUE), "completed".to_owned()),
        (Glyph::Dot(figure::ORANGE), "stopped by ASHA".to_owned()),
        (Glyph::Ring(figure::RED), "chosen".to_owned()),
    ]
}

struct Sweep<'a> {
    records: &'a [SelectionRecord],
    fields: usize,
}

impl<'a> Sweep<'a> {
    fn new(records: &'a [SelectionRecord]) -> Sweep<'a> {
        let fields = records
            .iter()
            .find_map(|r| r.points.first())
            .map_or(0, |p| p.values.values.len());
        Sweep { records, fields }
    }

    fn title(&self) -> String {
        match self.records.first() {
            Some(r) => {
                let direction = if r.maximise { "higher" } else { "lower" };
                format!(
                    "Training sweep of {}: {} ({direction} is better), {} fold(s)",
                    r.stage.as_str(),
                    r.metric,
                    self.records.len()
                )
            }
            None => "Training sweep".to_owned(),
        }
    }

    fn width(&self) -> u32 {
        PANEL_W * self.fields.max(1) as u32
    }
}

impl Figure for Sweep<'_> {
    fn size(&self) -> (u32, u32) {
        let legend = figure::legend_height(&legend_entries(), self.width());
        (self.width(), PANEL_H + 40 + legend)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let root = root
            .margin(8, 0, 0, 0)
            .titled(&self.title(), figure::text(figure::TITLE_SIZE, figure::INK))?;
        let (panels, legend) = root.split_vertically(PANEL_H);
        if self.fields == 0 {
            figure::no_points(&panels.margin(10, 10, 14, 14))?;
        }
        let areas = panels.split_evenly((1, self.fields.max(1)));
        for (at, area) in areas.iter().enumerate().take(self.fields) {
            panel(area, self.records, at)?;
        }
        figure::legend(&legend, &legend_entries())
    }
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    records: &[SelectionRecord],
    field_at: usize,
) -> DrawResult<DB> {
    let Some((field, first)) = records
        .iter()
        .find_map(|r| r.points.first())
        .and_then(|p| p.values.values.get(field_at))
    else {
        return Ok(());
    };
    let categorical = matches!(first, FieldValue::Modules(_));
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
                FieldValue::Number(v) if v.is_finite() => *v,
                FieldValue::Number(_) => continue,
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
    let metric = &records[0].metric;
    let area = figure::panel(area, field.as_str(), "")?;
    let Some((y_lo, y_hi)) = figure::extent(markers.iter().map(|m| m.y)) else {
        return figure::no_points(&area);
    };
    let x = if categorical {
        Axis::categories(&categories)
    } else {
        let xs: Vec<f64> = markers.iter().map(|m| m.x).collect();
        Axis::numeric(&xs, 0.08)
    };
    let y = Axis::linear(y_lo, y_hi, 0.08, false);
    let mut chart = figure::chart(&area, &x, &y, field.as_str(), metric)?;
    let at = |m: &Marker| (x.at(m.x), m.y);
    chart.draw_series(markers.iter().map(|m| {
        let fill = if m.stopped {
            figure::ORANGE
        } else {
            figure::BLUE
        };
        Circle::new(at(m), 5, fill.filled())
    }))?;
    chart.draw_series(
        markers
            .iter()
            .filter(|m| m.chosen)
            .map(|m| Circle::new(at(m), 9, figure::RED.stroke_width(2))),
    )?;
    Ok(())
}

/// The sweep figure of `records` (every fold's selection of one stage), one panel per swept field, as SVG.
pub fn sweep_svg(records: &[SelectionRecord]) -> String {
    figure::svg(&Sweep::new(records))
}

/// The same figure as [`sweep_svg`], as PNG.
pub fn sweep_png(records: &[SelectionRecord]) -> Vec<u8> {
    figure::png(&Sweep::new(records))
}
