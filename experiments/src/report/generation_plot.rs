//! The generation sweeps as the thesis plots them: per swept generation parameter (e.g. temperature) one
//! figure, every metric of the tables (x100, the mean over the evaluations at each value) against the
//! parameter's value, one panel per model and task that swept it, the configured value marked by a grey rule.
//! A metric not available at a value is left out of its line there (the line breaks) and named under the
//! panel's title, never drawn as 0. Built from [`Results::sweeps`], the same tables `tandem results` prints.
//! SVG and PNG are the same drawing; deterministic.

use std::collections::BTreeMap;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::figure::{self, Axis, DrawResult, Figure, Glyph, PALETTE};
use super::table::{Results, SweepTable};
use super::{family_label, model_label};
use crate::manifest::SweepParameter;

const PANEL_W: u32 = 560;
const PANEL_H: u32 = 420;

/// The figure of one swept parameter: its tables, one panel each.
struct GenerationSweep<'a> {
    parameter: SweepParameter,
    columns: &'a [&'static str],
    tables: Vec<&'a SweepTable>,
}

impl GenerationSweep<'_> {
    fn width(&self) -> u32 {
        PANEL_W * self.tables.len().max(1) as u32
    }

    fn legend(&self) -> Vec<(Glyph, String)> {
        let mut entries: Vec<(Glyph, String)> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| (Glyph::Marked(PALETTE[i % PALETTE.len()]), (*c).to_owned()))
            .collect();
        if self
            .tables
            .iter()
            .flat_map(|t| &t.rows)
            .any(|r| r.configured)
        {
            entries.push((Glyph::Rule(figure::MUTED), "configured value".to_owned()));
        }
        entries
    }
}

impl Figure for GenerationSweep<'_> {
    fn size(&self) -> (u32, u32) {
        let legend = figure::legend_height(&self.legend(), self.width());
        (self.width(), PANEL_H + 40 + legend)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let title = format!(
            "Generation sweep of {}: scores × 100",
            self.parameter.as_str()
        );
        let root = root
            .margin(8, 0, 0, 0)
            .titled(&title, figure::text(figure::TITLE_SIZE, figure::INK))?;
        let (panels, legend) = root.split_vertically(PANEL_H);
        let areas = panels.split_evenly((1, self.tables.len().max(1)));
        for (area, table) in areas.iter().zip(&self.tables) {
            panel(area, table, self.columns)?;
        }
        figure::legend(&legend, &self.legend())
    }
}

/// The panel's title: model, family and task, and what each value's scores are the mean of.
fn panel_title(table: &SweepTable) -> String {
    let mut title = format!(
        "{} {} on {}",
        model_label(table.model),
        family_label(table.family),
        table.task.as_str()
    );
    let (lo, hi) = figure::extent(table.rows.iter().map(|r| r.n as f64)).unwrap_or((1.0, 1.0));
    if lo == hi && hi > 1.0 {
        title.push_str(&format!(", mean of {hi} folds"));
    } else if hi > lo {
        title.push_str(&format!(", mean of {lo}-{hi} evaluations"));
    }
    title
}

/// Names the metrics missing at some (or every) value: `not available: RG, M at 2 of 5 values`.
fn missing_note(table: &SweepTable, columns: &[&'static str]) -> String {
    let rows = table.rows.len();
    let missing: Vec<String> = columns
        .iter()
        .enumerate()
        .filter_map(|(i, label)| {
            let n = table
                .rows
                .iter()
                .filter(|r| r.cells.get(i).is_none_or(|c| c.mean.is_none()))
                .count();
            match n {
                0 => None,
                n if n == rows => Some((*label).to_owned()),
                n => Some(format!("{label} at {n} of {rows} values")),
            }
        })
        .collect();
    if missing.is_empty() {
        String::new()
    } else {
        format!("not available: {}", missing.join(", "))
    }
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    table: &SweepTable,
    columns: &[&'static str],
) -> DrawResult<DB> {
    let area = figure::panel(area, &panel_title(table), &missing_note(table, columns))?;
    let values: Vec<f64> = table
        .rows
        .iter()
        .map(|r| r.value)
        .filter(|v| v.is_finite())
        .collect();
    let means = table
        .rows
        .iter()
        .filter(|r| r.value.is_finite())
        .flat_map(|r| r.cells.iter().filter_map(|c| c.mean));
    let Some((y_lo, y_hi)) = figure::extent(means.filter(|m| m.is_finite())) else {
        return figure::no_points(&area);
    };
    let x = Axis::numeric(&values, 0.05);
    let y = Axis::linear(y_lo, y_hi, 0.08, false);
    let parameter = table.parameter.as_str();
    let mut chart = figure::chart(&area, &x, &y, parameter, "score × 100")?;
    let rules = table
        .rows
        .iter()
        .filter(|r| r.configured && r.value.is_finite());
    chart.draw_series(rules.map(|r| {
        let at = x.at(r.value);
        PathElement::new(
            vec![(at, y.range.start), (at, y.range.end)],
            figure::MUTED.stroke_width(2),
        )
    }))?;
    for (i, _) in columns.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        // Runs of values where the metric is available: a missing value breaks the line.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for row in table.rows.iter().filter(|r| r.value.is_finite()) {
            match row
                .cells
                .get(i)
                .and_then(|c| c.mean)
                .filter(|m| m.is_finite())
            {
                Some(mean) => runs
                    .last_mut()
                    .expect("runs start with one")
                    .push((x.at(row.value), mean)),
                None => runs.push(Vec::new()),
            }
        }
        for run in runs.into_iter().filter(|r| !r.is_empty()) {
            chart
                .draw_series(LineSeries::new(run, colour.filled().stroke_width(2)).point_size(3))?;
        }
    }
    Ok(())
}

/// The figures of every swept generation parameter in `results`, in parameter order: `(file stem, figure)`
/// with stems `sweep-<parameter>` (e.g. `sweep-temperature`). Empty when nothing was swept.
fn figures(results: &Results) -> Vec<(String, GenerationSweep<'_>)> {
    let mut by_parameter: BTreeMap<SweepParameter, Vec<&SweepTable>> = BTreeMap::new();
    for table in &results.sweeps {
        by_parameter.entry(table.parameter).or_default().push(table);
    }
    by_parameter
        .into_iter()
        .map(|(parameter, tables)| {
            let stem = format!("sweep-{}", parameter.as_str());
            let figure = GenerationSweep {
                parameter,
                columns: &results.columns,
                tables,
            };
            (stem, figure)
        })
        .collect()
}

/// The generation-sweep figures of `results` as SVG: `(file stem, SVG)` per swept parameter, stems
/// `sweep-<parameter>` (e.g. `sweep-temperature`), in parameter order; empty when nothing was swept.
pub fn generation_sweep_svg(results: &Results) -> Vec<(String, String)> {
    figures(results)
        .into_iter()
        .map(|(stem, f)| (stem, figure::svg(&f)))
        .collect()
}

/// The same figures as [`generation_sweep_svg`], as PNG.
pub fn generation_sweep_png(results: &Results) -> Vec<(String, Vec<u8>)> {
    figures(results)
        .into_iter()
        .map(|(stem, f)| (stem, figure::png(&f)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ModelFamily, ModelStage, Stage};
    use crate::report::table::{Cell, SweepRow};

    fn cell(mean: Option<f64>) -> Cell {
        Cell {
            mean,
            std: None,
            relative_change: None,
        }
    }

    fn table(rows: Vec<(f64, usize, Vec<Option<f64>>)>) -> SweepTable {
        SweepTable {
            family: ModelFamily::T5,
            model: ModelStage::Stage1,
            task: Stage::Stage1,
            parameter: SweepParameter::NumBeams,
            rows: rows
                .into_iter()
                .map(|(value, n, means)| SweepRow {
                    value,
                    configured: false,
                    n,
                    cells: means.into_iter().map(cell).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_note_names_what_is_missing_and_where() {
        let columns = ["B-1", "M", "RG"];
        let t = table(vec![
            (1.0, 1, vec![Some(10.0), None, None]),
            (4.0, 1, vec![Some(12.0), None, Some(3.0)]),
        ]);
        assert_eq!(
            missing_note(&t, &columns),
            "not available: M, RG at 1 of 2 values"
        );
        let full = table(vec![(1.0, 1, vec![Some(1.0), Some(2.0), Some(3.0)])]);
        assert_eq!(missing_note(&full, &columns), "");
    }

    #[test]
    fn the_title_says_what_each_value_is_the_mean_of() {
        let one = table(vec![(1.0, 1, vec![]), (4.0, 1, vec![])]);
        assert_eq!(panel_title(&one), "stage-1 T5 on stage1");
        let folds = table(vec![(1.0, 5, vec![]), (4.0, 5, vec![])]);
        assert_eq!(panel_title(&folds), "stage-1 T5 on stage1, mean of 5 folds");
        let uneven = table(vec![(1.0, 2, vec![]), (4.0, 5, vec![])]);
        assert_eq!(
            panel_title(&uneven),
            "stage-1 T5 on stage1, mean of 2-5 evaluations"
        );
    }
}
