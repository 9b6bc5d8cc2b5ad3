//! What the report's figures share: the embedded font, one drawing per figure for SVG and PNG alike (a
//! [`Figure`] draws on any plotters backend), axes with round ticks (a log axis where positive values span a
//! factor of 10 or more, categories for labels), panel frames with title, notes and "no points", and legends.
//! Output is deterministic: the same figure gives the same bytes.

use std::ops::Range;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendCoord, DrawingErrorKind};

/// DejaVu Sans (see `experiments/assets/fonts/`): text renders the same on a machine without system fonts.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The family every text asks for; SVG viewers get it as `font-family`.
const FAMILY: &str = "sans-serif";

pub(crate) const TITLE_SIZE: f64 = 20.0;
pub(crate) const TEXT_SIZE: f64 = 16.0;
pub(crate) const TICK_SIZE: f64 = 14.0;
/// Height of the strip under a panel's title that carries its note (e.g. points left out).
const NOTE_H: u32 = 20;

pub(crate) const INK: RGBColor = RGBColor(0x22, 0x22, 0x22);
pub(crate) const MUTED: RGBColor = RGBColor(0x66, 0x66, 0x66);
pub(crate) const WARN: RGBColor = RGBColor(0xaa, 0x00, 0x00);
const GRID: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
pub(crate) const BLUE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
pub(crate) const ORANGE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
pub(crate) const RED: RGBColor = RGBColor(0xd6, 0x27, 0x28);
/// Ten distinguishable line colours (matplotlib's tab10).
pub(crate) const PALETTE: [RGBColor; 10] = [
    BLUE,
    ORANGE,
    RGBColor(0x2c, 0xa0, 0x2c),
    RED,
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];
/// Opacity of a mean +- std band.
pub(crate) const BAND_OPACITY: f64 = 0.2;

pub(crate) type DrawResult<DB> =
    Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;
/// A panel's chart: x and y are plain numbers (log10 of the value on a log axis) with our own ticks.
pub(crate) type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<Ticked, Ticked>>;

/// A linear range whose key points (ticks and grid lines) are ours; labels come from [`Axis`].
pub(crate) struct Ticked {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
}

/// A figure, drawn by one function for every backend (SVG and PNG).
pub(crate) trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws the figure on `root` (already filled white).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The embedded bytes are a valid TrueType font (`the_embedded_font_loads` checks it).
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            panic!("the embedded DejaVu Sans does not parse as a font");
        }
    });
}

/// Fills `root` white, draws `figure` and finishes. Drawing into memory cannot fail but for a missing font,
/// and the font is embedded and registered first, so an error here is a bug.
fn paint<DB: DrawingBackend, F: Figure>(root: &DrawingArea<DB, Shift>, figure: &F) {
    let done = root
        .fill(&WHITE)
        .and_then(|()| figure.draw(root))
        .and_then(|()| root.present());
    if let Err(err) = done {
        panic!("drawing a figure in memory failed: {err}");
    }
}

/// `figure` as an SVG document (text as `<text>` elements in `sans-serif`).
pub(crate) fn svg<F: Figure>(figure: &F) -> String {
    register_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, figure.size()).into_drawing_area();
        paint(&root, figure);
    }
    out
}

/// `figure` as an 8-bit RGB PNG, text rasterised from the embedded font.
pub(crate) fn png<F: Figure>(figure: &F) -> Vec<u8> {
    register_font();
    let (width, height) = figure.size();
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        paint(&root, figure);
    }
    let mut out = Vec::new();
    let mut encoder = ::png::Encoder::new(&mut out, width, height);
    encoder.set_color(::png::ColorType::Rgb);
    encoder.set_depth(::png::BitDepth::Eight);
    // Writing a well-sized image into a Vec cannot fail.
    let written = encoder
        .write_header()
        .and_then(|mut writer| writer.write_image_data(&rgb).and_then(|()| writer.finish()));
    if let Err(err) = written {
        panic!("encoding a {width}x{height} PNG in memory failed: {err}");
    }
    out
}

/// Text of `size` pixels in `colour`.
pub(crate) fn text(size: f64, colour: RGBColor) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&colour)
}

/// Draws `label` centred on (`x`, `y`) of `area`.
pub(crate) fn centred<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    label: &str,
    style: &TextStyle<'_>,
    (x, y): (i32, i32),
) -> DrawResult<DB> {
    area.draw_text(
        label,
        &style.pos(Pos::new(HPos::Center, VPos::Center)),
        (x, y),
    )
}

/// Frames a panel: its title on top, then a strip with `note` (in red; empty: nothing); returns the area left.
pub(crate) fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    note: &str,
) -> Result<DrawingArea<DB, Shift>, DrawingAreaErrorKind<DB::ErrorType>> {
    let area = area
        .margin(6, 6, 6, 14)
        .titled(title, text(TITLE_SIZE, INK))?;
    let (strip, rest) = area.split_vertically(NOTE_H);
    if !note.is_empty() {
        let (w, h) = strip.dim_in_pixel();
        centred(
            &strip,
            note,
            &text(TICK_SIZE, WARN),
            (w as i32 / 2, h as i32 / 2),
        )?;
    }
    Ok(rest)
}

/// Says "no points" in the middle of a panel with nothing to draw.
pub(crate) fn no_points<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Rectangle::new(
        [(0, 0), (w as i32 - 1, h as i32 - 1)],
        MUTED.stroke_width(1),
    ))?;
    centred(
        area,
        "no points",
        &text(TEXT_SIZE, MUTED),
        (w as i32 / 2, h as i32 / 2),
    )
}

/// Builds a panel's chart on `area` and draws its frame, grid, ticks with labels, and axis labels.
pub(crate) fn chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    x: &Axis,
    y: &Axis,
    x_label: &str,
    y_label: &str,
) -> Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let tick_style = text(TICK_SIZE, INK);
    let mut widest = 0;
    for (_, label) in &y.ticks {
        widest = widest.max(area.estimate_text_size(label, &tick_style)?.0);
    }
    let mut chart = ChartBuilder::on(area)
        .margin_right(12)
        .margin_top(4)
        .x_label_area_size(48)
        .y_label_area_size(widest + 36)
        .build_cartesian_2d(x.coord(), y.coord())?;
    let (x_fmt, y_fmt) = (|v: &f64| x.label(*v), |v: &f64| y.label(*v));
    chart
        .configure_mesh()
        .bold_line_style(GRID.stroke_width(1))
        .axis_style(INK.stroke_width(1))
        .label_style(tick_style)
        .axis_desc_style(text(TEXT_SIZE, INK))
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .draw()?;
    Ok(chart)
}

/// What a legend entry shows before its label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Glyph {
    /// A line.
    Line(RGBColor),
    /// A line over a shaded band (mean +- std).
    Band(RGBColor),
    /// A line through a marker.
    Marked(RGBColor),
    /// A filled marker.
    Dot(RGBColor),
    /// A ring around a marker.
    Ring(RGBColor),
    /// A vertical rule.
    Rule(RGBColor),
}

/// Width of a legend glyph.
const GLYPH_W: i32 = 24;

impl Glyph {
    /// The glyph with its left middle at `at`.
    pub(crate) fn element(self, at: (i32, i32)) -> GlyphElement {
        GlyphElement { glyph: self, at }
    }
}

/// A [`Glyph`] placed on a drawing area (plotters' legends take any element).
pub(crate) struct GlyphElement {
    glyph: Glyph,
    at: (i32, i32),
}

impl<'a> PointCollection<'a, (i32, i32)> for &'a GlyphElement {
    type Point = &'a (i32, i32);
    type IntoIter = std::iter::Once<&'a (i32, i32)>;

    fn point_iter(self) -> Self::IntoIter {
        std::iter::once(&self.at)
    }
}

impl<DB: DrawingBackend> Drawable<DB> for GlyphElement {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut pos: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        let Some((x, y)) = pos.next() else {
            return Ok(());
        };
        let mid = x + GLYPH_W / 2;
        let line = |backend: &mut DB, c: RGBColor| {
            backend.draw_line((x, y), (x + GLYPH_W, y), &c.stroke_width(2))
        };
        match self.glyph {
            Glyph::Line(c) => line(backend, c),
            Glyph::Band(c) => {
                let band = c.mix(BAND_OPACITY).filled();
                backend.draw_rect((x, y - 7), (x + GLYPH_W, y + 7), &band, true)?;
                line(backend, c)
            }
            Glyph::Marked(c) => {
                line(backend, c)?;
                backend.draw_circle((mid, y), 4, &c.filled(), true)
            }
            Glyph::Dot(c) => backend.draw_circle((mid, y), 5, &c.filled(), true),
            Glyph::Ring(c) => {
                backend.draw_circle((mid, y), 5, &BLUE.filled(), true)?;
                backend.draw_circle((mid, y), 9, &c.stroke_width(2), false)
            }
            Glyph::Rule(c) => backend.draw_line((mid, y - 8), (mid, y + 8), &c.stroke_width(2)),
        }
    }
}

/// A legend below or beside panels: entries left to right, wrapped to the width of `area`.
pub(crate) fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(Glyph, String)],
) -> DrawResult<DB> {
    let style = text(TEXT_SIZE, INK).pos(Pos::new(HPos::Left, VPos::Center));
    let (width, _) = area.dim_in_pixel();
    let (mut x, mut y) = (16, 14);
    for (glyph, label) in entries {
        let (w, _) = area.estimate_text_size(label, &style)?;
        let entry = GLYPH_W + 8 + w as i32 + 24;
        if x > 16 && x + entry > width as i32 {
            (x, y) = (16, y + 24);
        }
        area.draw(&glyph.element((x, y)))?;
        area.draw_text(label, &style, (x + GLYPH_W + 8, y))?;
        x += entry;
    }
    Ok(())
}

/// Height a [`legend`] of `entries` takes at `width` pixels (the same wrapping, estimated from the label
/// lengths at about 0.6 em per character).
pub(crate) fn legend_height(entries: &[(Glyph, String)], width: u32) -> u32 {
    let (mut x, mut rows) = (16, 1);
    for (_, label) in entries {
        let entry = GLYPH_W + 8 + (label.chars().count() as f64 * TEXT_SIZE * 0.6) as i32 + 24;
        if x > 16 && x + entry > width as i32 {
            (x, rows) = (16, rows + 1);
        }
        x += entry;
    }
    rows * 24 + 8
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
    let ticks = (first..=last)
        .map(|i| i as f64 * step)
        .filter(|t| t.is_finite())
        .collect();
    (ticks, decimals)
}

/// One axis of a panel: where it is drawn (in positions: the value, or its log10 on a log axis) and its ticks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Axis {
    /// Positions are log10 of the values.
    pub log: bool,
    /// The drawn range, in positions.
    pub range: Range<f64>,
    /// Tick positions with their labels.
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis over `lo..=hi` with `pad` (a fraction of the span) of room at either end; a single value
    /// gets 5 % of its size (at least 0.05) either side. `whole`: ticks only at whole numbers (optimizer steps).
    pub(crate) fn linear(lo: f64, hi: f64, pad: f64, whole: bool) -> Axis {
        let room = if hi > lo {
            (hi - lo) * pad
        } else {
            lo.abs().max(1.0) * 0.05
        };
        let (lo, hi) = (lo - room, hi + room);
        let (mut at, mut decimals) = ticks(lo, hi);
        if whole && decimals > 0 {
            at.retain(|t| t.fract() == 0.0);
            decimals = 0;
        }
        Axis {
            log: false,
            range: lo..hi,
            ticks: at
                .into_iter()
                .map(|t| (t, format!("{t:.decimals$}")))
                .collect(),
        }
    }

    /// An axis for `values` (finite, not empty): log10 where all are positive and span a factor of 10 or more,
    /// else linear; `pad` of room at either end.
    pub(crate) fn numeric(values: &[f64], pad: f64) -> Axis {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !(lo > 0.0 && hi / lo >= 10.0) {
            return Axis::linear(lo, hi, pad, false);
        }
        let (a, b) = (lo.log10(), hi.log10());
        let room = (b - a) * pad;
        let (a, b) = (a - room, b + room);
        let decades = (a.ceil() as i64)..=(b.floor() as i64);
        // Fewer than three decades in view: 2 and 5 times each power of ten too.
        let multiples: &[f64] = if decades.clone().count() < 3 {
            &[1.0, 2.0, 5.0]
        } else {
            &[1.0]
        };
        let plain = decades.clone().all(|k| (-3..=3).contains(&k));
        let mut at = Vec::new();
        for k in (a.floor() as i64)..=(b.ceil() as i64) {
            for &m in multiples {
                let position = m.log10() + k as f64;
                if !(a..=b).contains(&position) {
                    continue;
                }
                let label = if plain {
                    let decimals = usize::try_from(-k).unwrap_or(0);
                    format!("{:.decimals$}", m * 10f64.powi(k as i32))
                } else {
                    format!("{m}e{k}")
                };
                at.push((position, label));
            }
        }
        Axis {
            log: true,
            range: a..b,
            ticks: at,
        }
    }

    /// Evenly spaced categories at positions 0, 1, ...
    pub(crate) fn categories(labels: &[String]) -> Axis {
        Axis {
            log: false,
            range: -0.5..(labels.len().max(1) as f64 - 0.5),
            ticks: labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i as f64, l.clone()))
                .collect(),
        }
    }

    /// Where `value` is drawn.
    pub(crate) fn at(&self, value: f64) -> f64 {
        if self.log { value.log10() } else { value }
    }

    fn coord(&self) -> Ticked {
        Ticked {
            inner: self.range.clone().into(),
            ticks: self.ticks.iter().map(|(t, _)| *t).collect(),
        }
    }

    fn label(&self, position: f64) -> String {
        self.ticks
            .iter()
            .find(|(t, _)| *t == position)
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }
}

/// Lowest and highest of `values` (`None` when empty).
pub(crate) fn extent(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values.into_iter().fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_font_loads() {
        register_font();
        let size = text(TEXT_SIZE, INK)
            .font
            .box_size("optimizer step")
            .expect("the registered font lays out text");
        assert!(size.0 > 50 && size.1 > 5, "{size:?}");
    }

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
    fn whole_axes_tick_at_whole_numbers_only() {
        let axis = Axis::linear(3.0, 3.0, 0.0, true);
        let labels: Vec<&str> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["3"]);
        assert!(axis.range.start < 3.0 && axis.range.end > 3.0);
    }

    #[test]
    fn a_tenfold_positive_span_is_a_log_axis() {
        let axis = Axis::numeric(&[1e-5, 1e-4, 1e-3], 0.08);
        assert!(axis.log);
        let labels: Vec<&str> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1e-5", "1e-4", "1e-3"]);
        assert_eq!(axis.at(1e-4), -4.0);
        // Two decades in view: 2 and 5 times each power too, printed plainly.
        let axis = Axis::numeric(&[1.0, 10.0], 0.05);
        let labels: Vec<&str> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1", "2", "5", "10"]);
        assert!(!Axis::numeric(&[0.1, 0.9], 0.05).log);
        assert!(!Axis::numeric(&[-1.0, 100.0], 0.05).log);
    }
}
