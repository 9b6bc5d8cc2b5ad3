//! The training curves as PNG, drawn from the same geometry as the SVG: frames, grid lines, ticks, mean +- std
//! bands and lines, legend swatches. No text: rasterising glyphs needs a font, and a fresh machine may have
//! none, so the PNG is the quick-look picture and the SVG the labelled figure. Deterministic bytes.

use std::io::Write as _;

use flate2::Compression;
use flate2::write::ZlibEncoder;

use super::input::{CurvePoint, Series};
use super::plot::{LEGEND_H, PANEL_H, PANEL_W, geometry, legend_entries};
use crate::manifest::Stage;

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const FRAME: Rgb = [0x44, 0x44, 0x44];
const GRID: Rgb = [0xdd, 0xdd, 0xdd];

fn colour(stage: Stage) -> Rgb {
    match stage {
        Stage::Stage1 => [0x1f, 0x77, 0xb4],
        Stage::Stage2 => [0xd6, 0x27, 0x28],
    }
}

/// An RGB raster.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            pixels: WHITE.repeat(width * height),
        }
    }

    /// Blends `rgb` with opacity `alpha` over the pixel at (x, y); outside the canvas is ignored.
    fn blend(&mut self, x: i64, y: i64, rgb: Rgb, alpha: f64) {
        if x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        for (pixel, &target) in self.pixels[i..i + 3].iter_mut().zip(&rgb) {
            let old = f64::from(*pixel);
            let new = old + (f64::from(target) - old) * alpha;
            *pixel = new.round().clamp(0.0, 255.0) as u8;
        }
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, rgb: Rgb, alpha: f64) {
        let (x0, y0) = (x.round() as i64, y.round() as i64);
        let (x1, y1) = ((x + w).round() as i64, (y + h).round() as i64);
        for py in y0..y1 {
            for px in x0..x1 {
                self.blend(px, py, rgb, alpha);
            }
        }
    }

    /// An opaque segment `width` pixels thick.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), rgb: Rgb, width: i64) {
        let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) * 2.0)
            .ceil()
            .max(1.0) as i64;
        let half = (width - 1) / 2;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let x = (a.0 + (b.0 - a.0) * t).floor() as i64;
            let y = (a.1 + (b.1 - a.1) * t).floor() as i64;
            for dy in -half..width - half {
                for dx in -half..width - half {
                    self.blend(x + dx, y + dy, rgb, 1.0);
                }
            }
        }
    }

    /// Fills a polygon (even-odd rule, pixel centres) with `rgb` at opacity `alpha`; each pixel once.
    fn polygon(&mut self, outline: &[(f64, f64)], rgb: Rgb, alpha: f64) {
        if outline.len() < 3 {
            return;
        }
        let ymin = outline.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let ymax = outline
            .iter()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max);
        let (first, last) = (ymin.floor().max(0.0) as i64, ymax.ceil() as i64);
        for py in first..=last.min(self.height as i64 - 1) {
            let yc = py as f64 + 0.5;
            let mut xs: Vec<f64> = Vec::new();
            for (i, &(x1, y1)) in outline.iter().enumerate() {
                let (x2, y2) = outline[(i + 1) % outline.len()];
                if (y1 <= yc && yc < y2) || (y2 <= yc && yc < y1) {
                    xs.push(x1 + (yc - y1) / (y2 - y1) * (x2 - x1));
                }
            }
            xs.sort_by(f64::total_cmp);
            for pair in xs.chunks_exact(2) {
                let (from, to) = (
                    (pair[0] - 0.5).ceil() as i64,
                    (pair[1] - 0.5).floor() as i64,
                );
                for px in from..=to {
                    self.blend(px, py, rgb, alpha);
                }
            }
        }
    }

    /// The PNG file: 8-bit RGB, no interlace, filter 0 on every row, zlib at the default level.
    fn encode(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity((self.width * 3 + 1) * self.height);
        for row in self.pixels.chunks_exact(self.width * 3) {
            raw.push(0);
            raw.extend_from_slice(row);
        }
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        // Writing into a Vec cannot fail.
        let _ = z.write_all(&raw);
        let idat = z.finish().unwrap_or_default();
        let mut ihdr = Vec::with_capacity(13);
        ihdr.extend_from_slice(&(self.width as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.height as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        for (kind, data) in [
            (b"IHDR", &ihdr[..]),
            (b"IDAT", &idat[..]),
            (b"IEND", &[][..]),
        ] {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let mut crc = flate2::Crc::new();
            crc.update(&out[start..]);
            out.extend_from_slice(&crc.sum().to_be_bytes());
        }
        out
    }
}

fn png(points: &[CurvePoint], series: &[Series]) -> Vec<u8> {
    let width = (PANEL_W * series.len() as f64) as usize;
    let height = (PANEL_H + LEGEND_H) as usize;
    let mut canvas = Canvas::new(width, height);
    for (x, stage, band) in legend_entries(points) {
        if band {
            canvas.rect(x, 10.0, 24.0, 12.0, colour(stage), 0.2);
        }
        canvas.line((x, 16.0), (x + 24.0, 16.0), colour(stage), 2);
    }
    for (i, s) in series.iter().enumerate() {
        let g = geometry(points, *s, PANEL_W * i as f64, LEGEND_H);
        let (px, py, pw, ph) = g.frame;
        for (y, _) in &g.y_ticks {
            canvas.line((px, *y), (px + pw, *y), GRID, 1);
            canvas.line((px - 5.0, *y), (px, *y), FRAME, 1);
        }
        for (x, _) in &g.x_ticks {
            canvas.line((*x, py + ph), (*x, py + ph + 5.0), FRAME, 1);
        }
        for (stage, outline) in &g.bands {
            canvas.polygon(outline, colour(*stage), 0.2);
        }
        for (stage, line) in &g.lines {
            for pair in line.windows(2) {
                canvas.line(pair[0], pair[1], colour(*stage), 2);
            }
            if let [only] = line[..] {
                canvas.line(only, only, colour(*stage), 3);
            }
        }
        let corners = [
            (px, py),
            (px + pw, py),
            (px + pw, py + ph),
            (px, py + ph),
            (px, py),
        ];
        for pair in corners.windows(2) {
            canvas.line(pair[0], pair[1], FRAME, 1);
        }
    }
    canvas.encode()
}

/// The three panels side by side as PNG (same layout as [`super::curves_svg`], without text).
pub fn curves_png(points: &[CurvePoint]) -> Vec<u8> {
    png(points, &Series::ALL)
}

/// One panel as PNG.
pub fn series_png(points: &[CurvePoint], series: Series) -> Vec<u8> {
    png(points, &[series])
}
