//! Training-curve SVG: well-formed XML, one panel per series, a mean +- std band for the stage with folds and a
//! plain line for stage 1, the same bytes for the same points in any order; the PNG decodes (chunk CRCs, zlib)
//! to the picture's size and shows the band's blended colour and the lines.

use std::io::Read as _;
use tandem_experiments::manifest::Stage;

use tandem_experiments::report::{
    CurvePoint, Series, curves_png, curves_svg, series_png, series_svg,
};

/// A minimal XML check: every tag closes in order, attributes are quoted, text has no raw `<` or `&`.
fn assert_well_formed(svg: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        assert!(!text.contains('>'), "stray '>' in text {text:?}");
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;"]
                    .iter()
                    .any(|e| entity.starts_with(e)),
                "raw '&' in {text:?}"
            );
        }
        let close = rest[open..].find('>').expect("unclosed tag") + open;
        let tag = &rest[open + 1..close];
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack
                .pop()
                .unwrap_or_else(|| panic!("</{name}> without an opening tag"));
            assert_eq!(top, name.trim(), "</{name}> closes <{top}>");
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().expect("tag name").to_owned();
            stack.push(name);
        }
        rest = &rest[close + 1..];
    }
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

fn points() -> Vec<CurvePoint> {
    let mut out = Vec::new();
    for step in (0..=100).step_by(10) {
        let s = step as f64;
        out.push(CurvePoint {
            stage: Stage::Stage1,
            fold: None,
            step,
            series: Series::TrainLoss,
            value: 3.0 - s / 50.0,
        });
        if step % 20 == 0 {
            out.push(CurvePoint {
                stage: Stage::Stage1,
                fold: None,
                step,
                series: Series::ValLoss,
                value: 2.8 - s / 60.0,
            });
        }
        for fold in 0..3 {
            let f = fold as f64;
            let loss = 2.0 - s / (80.0 + 10.0 * f);
            out.push(CurvePoint {
                stage: Stage::Stage2,
                fold: Some(fold),
                step,
                series: Series::TrainLoss,
                value: loss,
            });
            out.push(CurvePoint {
                stage: Stage::Stage2,
                fold: Some(fold),
                step,
                series: Series::ValLoss,
                value: loss + 0.1,
            });
            out.push(CurvePoint {
                stage: Stage::Stage2,
                fold: Some(fold),
                step,
                series: Series::ValPerplexity,
                value: (loss + 0.1).exp(),
            });
        }
    }
    out
}

#[test]
fn svg_is_well_formed_with_three_panels_bands_and_lines() {
    let svg = curves_svg(&points());
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_well_formed(&svg);
    assert_eq!(svg.matches("<g class=\"panel\"").count(), 3);
    for s in Series::ALL {
        assert!(svg.contains(&format!("data-series=\"{}\"", s.as_str())));
        assert!(svg.contains(s.title()));
    }
    // Stage 2 has folds: one band per panel; stage 1 never gets a band, and has no perplexity points here.
    assert_eq!(
        svg.matches("class=\"band\" data-stage=\"stage2\"").count(),
        3
    );
    assert!(!svg.contains("class=\"band\" data-stage=\"stage1\""));
    assert_eq!(
        svg.matches("class=\"line\" data-stage=\"stage1\"").count(),
        2
    );
    assert_eq!(
        svg.matches("class=\"line\" data-stage=\"stage2\"").count(),
        3
    );
    assert!(svg.contains("mean ± std over 3 folds"));
    assert!(svg.contains("optimizer step"));
    assert!(svg.matches("class=\"tick\"").count() >= 12);
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn band_is_the_mean_plus_minus_the_spread_of_the_folds() {
    let svg = series_svg(&points(), Series::ValPerplexity);
    let band = svg
        .lines()
        .find(|l| l.contains("class=\"band\""))
        .expect("band");
    let coords: Vec<(f64, f64)> = band
        .split("points=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("points")
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').expect("x,y");
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    // 11 steps along the top, 11 back along the bottom.
    assert_eq!(coords.len(), 22);
    // At step 0 the folds agree (std 0): top and bottom meet; at the last step they differ, so the band is open.
    assert_eq!(coords[0], coords[21]);
    assert!(
        coords[10].1 < coords[11].1,
        "upper edge above lower edge: {coords:?}"
    );
    assert_eq!(coords[10].0, coords[11].0);
}

#[test]
fn output_is_deterministic_and_independent_of_input_order() {
    let p = points();
    let a = curves_svg(&p);
    assert_eq!(a, curves_svg(&p));
    let mut reversed = p.clone();
    reversed.reverse();
    assert_eq!(a, curves_svg(&reversed));
}

#[test]
fn empty_series_and_non_finite_values_are_shown_not_hidden() {
    let mut p: Vec<CurvePoint> = points()
        .into_iter()
        .filter(|p| p.series != Series::ValPerplexity)
        .collect();
    p.push(CurvePoint {
        stage: Stage::Stage1,
        fold: None,
        step: 110,
        series: Series::TrainLoss,
        value: f64::NAN,
    });
    let svg = curves_svg(&p);
    assert_well_formed(&svg);
    assert!(svg.contains("no data"));
    assert!(svg.contains("1 non-finite point(s) left out"));
    assert_well_formed(&curves_svg(&[]));
}

/// Decodes an 8-bit RGB PNG written with filter 0: checks the signature and every chunk's CRC, returns
/// (width, height, pixels).
fn decode_png(png: &[u8]) -> (usize, usize, Vec<u8>) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (mut at, mut width, mut height, mut idat) = (8, 0, 0, Vec::new());
    let mut kinds = Vec::new();
    while at < png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        let data = &png[at + 8..at + 8 + len];
        let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
        let mut check = flate2::Crc::new();
        check.update(&png[at + 4..at + 8 + len]);
        assert_eq!(
            check.sum(),
            crc,
            "CRC of {:?}",
            String::from_utf8_lossy(kind)
        );
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                height = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                assert_eq!(&data[8..], &[8, 2, 0, 0, 0]);
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        kinds.push(String::from_utf8_lossy(kind).into_owned());
        at += 12 + len;
    }
    assert_eq!(kinds, ["IHDR", "IDAT", "IEND"]);
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .expect("zlib");
    assert_eq!(raw.len(), (width * 3 + 1) * height);
    let pixels = raw
        .chunks_exact(width * 3 + 1)
        .flat_map(|row| {
            assert_eq!(row[0], 0, "filter type");
            row[1..].to_vec()
        })
        .collect();
    (width, height, pixels)
}

#[test]
fn png_decodes_and_shows_band_and_lines() {
    let p = points();
    let png = curves_png(&p);
    let (width, height, pixels) = decode_png(&png);
    assert_eq!((width, height), (3 * 380, 280 + 34));
    let count = |rgb: [u8; 3]| pixels.chunks_exact(3).filter(|px| *px == rgb).count();
    // #d62728 at 20 % over white, the band; the two line colours, opaque.
    let band = count([247, 212, 212]);
    assert!(band > 1000, "band pixels: {band}");
    assert!(count([0xd6, 0x27, 0x28]) > 500);
    assert!(count([0x1f, 0x77, 0xb4]) > 500);
    assert_eq!(png, curves_png(&p), "deterministic");
    let mut reversed = p.clone();
    reversed.reverse();
    assert_eq!(png, curves_png(&reversed), "independent of input order");
    let (w, h, _) = decode_png(&series_png(&p, Series::ValLoss));
    assert_eq!((w, h), (380, 280 + 34));
    decode_png(&curves_png(&[]));
}
