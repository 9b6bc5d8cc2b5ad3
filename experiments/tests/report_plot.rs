//! The figures: training curves (three panels, each with title, axis labels, ticks and legend; a mean +- std band
//! for the stage with folds and a plain line for stage 1; non-finite points counted; "no points" when empty), the
//! training sweep (a panel per field, log or category axes, ASHA-stopped points orange, the choice ringed) and the
//! generation sweeps (each metric x100 against the swept value, a missing metric left out of its line), as
//! well-formed SVG with the text as `<text>` elements and as PNG that decodes to the figure's size with text
//! pixels where the titles and axis labels are. Same points in any order -> same bytes.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tandem_experiments::manifest::{
    FieldValue, ModelFamily, ModelStage, Stage, SweepParameter, TrainField, TrainPoint,
};
use tandem_experiments::planner::artifacts::{
    RungStop, SelectedPoint, SelectionRecord, TrainOutcome,
};
use tandem_experiments::report::{
    COLUMNS, Cell, CurvePoint, EvalResult, Results, Series, SweepRow, SweepTable, build_results,
    curves_png, curves_svg, generation_sweep_png, generation_sweep_svg, series_png, series_svg,
    sweep_png, sweep_svg,
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
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
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

/// The text of every `<text>` element, in order, trimmed and unescaped.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .map(|t| {
            let (_, rest) = t.split_once('>').expect("<text> tag closes");
            let (text, _) = rest.split_once("</text>").expect("</text>");
            text.trim()
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        })
        .collect()
}

/// How many `<text>` elements say exactly `text`.
fn count(texts: &[String], text: &str) -> usize {
    texts.iter().filter(|t| *t == text).count()
}

/// The elements `<{tag} ...>` of an SVG that carry every one of `attributes` (e.g. `fill="#D62728"`).
fn elements<'a>(svg: &'a str, tag: &str, attributes: &[&str]) -> Vec<&'a str> {
    svg.lines()
        .filter(|l| l.starts_with(&format!("<{tag} ")))
        .filter(|l| attributes.iter().all(|a| l.contains(a)))
        .collect()
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

const STAGE1: &str = r##"fill="#1F77B4""##;
const STAGE2: &str = r##"fill="#D62728""##;
const BAND: &str = r#"opacity="0.2""#;

#[test]
fn svg_panels_have_titles_axis_labels_ticks_and_legends() {
    let svg = curves_svg(&points());
    assert!(svg.starts_with("<svg "), "{svg:.80}");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_well_formed(&svg);
    let texts = texts(&svg);
    for s in Series::ALL {
        assert_eq!(count(&texts, s.title()), 1, "{} in {texts:?}", s.title());
    }
    assert_eq!(count(&texts, "optimizer step"), 3, "{texts:?}");
    assert_eq!(count(&texts, "cross-entropy loss"), 2, "{texts:?}");
    assert_eq!(count(&texts, "perplexity"), 1, "{texts:?}");
    // Legends: stage 1 has no perplexity points here; stage 2 is in all three panels.
    assert_eq!(count(&texts, "stage 1"), 2, "{texts:?}");
    assert_eq!(
        count(&texts, "stage 2: mean ± std over 3 folds"),
        3,
        "{texts:?}"
    );
    // Tick labels: the steps 0..100 under each panel, and numbers up the y axes.
    for step in ["0", "20", "40", "60", "80", "100"] {
        assert_eq!(count(&texts, step), 3, "x tick {step} in {texts:?}");
    }
    let numbers = texts.iter().filter(|t| t.parse::<f64>().is_ok()).count();
    assert!(numbers >= 3 * 6 + 3 * 3, "{texts:?}");
    assert!(count(&texts, "2.0") >= 1, "a loss tick: {texts:?}");
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn a_band_for_the_stage_with_folds_only() {
    let svg = curves_svg(&points());
    // One band per panel for stage 2 (mean +- std over folds); none for stage 1, a single curve.
    assert_eq!(elements(&svg, "polygon", &[STAGE2, BAND]).len(), 3);
    assert!(elements(&svg, "polygon", &[STAGE1]).is_empty());
    let lines = |colour: &str| {
        elements(&svg, "polyline", &[&colour.replace("fill", "stroke")])
            .iter()
            .filter(|l| l.contains(r#"stroke-width="2""#))
            .count()
    };
    assert_eq!(lines(STAGE1), 2);
    assert_eq!(lines(STAGE2), 3);
    // Stage 1 alone: lines, no band at all.
    let stage1: Vec<CurvePoint> = points()
        .into_iter()
        .filter(|p| p.stage == Stage::Stage1)
        .collect();
    let svg = curves_svg(&stage1);
    assert!(elements(&svg, "polygon", &[]).is_empty(), "{svg}");
    assert_eq!(count(&texts(&svg), "stage 1"), 2);
    assert_eq!(count(&texts(&svg), "stage 2: mean ± std over 3 folds"), 0);
}

#[test]
fn band_is_the_mean_plus_minus_the_spread_of_the_folds() {
    let svg = series_svg(&points(), Series::ValPerplexity);
    let band = elements(&svg, "polygon", &[STAGE2, BAND]);
    assert_eq!(band.len(), 1, "{svg}");
    let coords: Vec<(i32, i32)> = band[0]
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
    let mut reversed = p.clone();
    reversed.reverse();
    let svg = curves_svg(&p);
    assert_eq!(svg, curves_svg(&p));
    assert_eq!(svg, curves_svg(&reversed));
    let png = curves_png(&p);
    assert_eq!(png, curves_png(&p));
    assert_eq!(png, curves_png(&reversed));
    // A different curve is a different picture.
    assert_ne!(svg, curves_svg(&reversed[1..]));
}

#[test]
fn empty_series_and_non_finite_values_are_shown_not_hidden() {
    let mut p: Vec<CurvePoint> = points()
        .into_iter()
        .filter(|p| p.series != Series::ValPerplexity)
        .collect();
    let svg = curves_svg(&p);
    let before = texts(&svg);
    assert_eq!(count(&before, "no points"), 1, "{before:?}");
    assert!(!before.iter().any(|t| t.contains("non-finite")));
    for value in [f64::NAN, f64::INFINITY] {
        p.push(CurvePoint {
            stage: Stage::Stage1,
            fold: None,
            step: 110,
            series: Series::TrainLoss,
            value,
        });
    }
    let svg = curves_svg(&p);
    assert_well_formed(&svg);
    let after = texts(&svg);
    assert_eq!(
        count(&after, "2 non-finite points left out"),
        1,
        "{after:?}"
    );
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
    let empty = curves_svg(&[]);
    assert_well_formed(&empty);
    assert_eq!(count(&texts(&empty), "no points"), 3);
    assert_eq!(count(&texts(&empty), "Training loss"), 1);
}

/// Decodes a PNG with the `png` crate: (width, height, RGB pixels).
fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sane size")];
    let info = reader.next_frame(&mut pixels).expect("the image decodes");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    pixels.truncate(info.buffer_size());
    (info.width, info.height, pixels)
}

/// Pixels darker than mid-grey (text and axes are #222222) in the rectangle [x0, x1) x [y0, y1).
fn dark_pixels(image: &(u32, u32, Vec<u8>), (x0, y0): (u32, u32), (x1, y1): (u32, u32)) -> usize {
    let (width, _, pixels) = image;
    (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| ((y * width + x) * 3) as usize))
        .filter(|&i| pixels[i..i + 3].iter().all(|&c| c < 0x80))
        .count()
}

#[test]
fn png_decodes_and_carries_its_text() {
    let p = points();
    let image = decode(&curves_png(&p));
    let (width, height, pixels) = &image;
    assert_eq!((*width, *height), (3 * 520, 420));
    // Text where each panel's title is (top centre), its x-axis label (bottom centre) and its y-axis label
    // (left edge, rotated); nothing dark in the top margin left of the first title.
    for panel in 0..3 {
        let centre = panel * 520 + 260;
        assert!(dark_pixels(&image, (centre - 80, 0), (centre + 80, 32)) > 100);
        assert!(dark_pixels(&image, (centre - 60, 395), (centre + 80, 420)) > 100);
        let left = panel * 520;
        assert!(dark_pixels(&image, (left, 150), (left + 30, 300)) > 50);
    }
    assert_eq!(dark_pixels(&image, (0, 0), (150, 8)), 0);
    // The band's colour (#d62728 at 20 % over white) and both line colours.
    let count = |rgb: [u8; 3]| {
        let near = |px: &[u8]| px.iter().zip(rgb).all(|(&p, c)| p.abs_diff(c) <= 2);
        pixels.chunks_exact(3).filter(|px| near(px)).count()
    };
    let band = count([247, 212, 212]);
    assert!(band > 1000, "band pixels: {band}");
    assert!(count([0xd6, 0x27, 0x28]) > 500);
    assert!(count([0x1f, 0x77, 0xb4]) > 300);
    let (w, h, _) = decode(&series_png(&p, Series::ValLoss));
    assert_eq!((w, h), (520, 420));
    // An empty figure still has its titles and says "no points" in each panel.
    let empty = decode(&curves_png(&[]));
    assert!(dark_pixels(&empty, (180, 0), (340, 32)) > 100);
    assert!(dark_pixels(&empty, (200, 200), (320, 260)) > 0);
}

fn eval(value: f64, fold: usize, configured: bool, missing: &[&str]) -> EvalResult {
    let scores = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let score = 0.1 + 0.05 * i as f64 + 0.1 * value - 0.01 * fold as f64;
            (
                c.key.to_owned(),
                (!missing.contains(&c.key)).then_some(score),
            )
        })
        .collect::<BTreeMap<_, _>>();
    EvalResult {
        family: ModelFamily::Llama,
        model: ModelStage::TwoStage,
        task: Stage::Stage2,
        fold: Some(fold),
        sweep: Some((SweepParameter::Temperature, value)),
        configured,
        scores,
    }
}

/// A temperature sweep over five values and two folds: RadGraph is not available at 0.6, METEOR nowhere.
fn temperature_sweep() -> Vec<EvalResult> {
    let mut evals = Vec::new();
    for value in [0.2, 0.4, 0.6, 0.8, 1.0] {
        for fold in 0..2 {
            let mut missing = vec!["meteor"];
            if value == 0.6 {
                missing.push("radgraph_partial");
            }
            evals.push(eval(value, fold, value == 0.6, &missing));
        }
    }
    evals
}

#[test]
fn generation_sweep_draws_every_metric_against_the_swept_value() {
    let results = build_results(&temperature_sweep()).unwrap();
    let figures = generation_sweep_svg(&results);
    let stems: Vec<&str> = figures.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(stems, ["sweep-temperature"]);
    let svg = &figures[0].1;
    assert_well_formed(svg);
    let texts = texts(svg);
    for text in [
        "Generation sweep of temperature: scores × 100",
        "two-stage LLaMA on stage2, mean of 2 folds",
        "temperature",
        "score × 100",
        "configured value",
        "not available: M, RG at 1 of 5 values",
        "0.2",
        "1.0",
    ] {
        assert_eq!(count(&texts, text), 1, "{text} in {texts:?}");
    }
    for c in COLUMNS {
        assert_eq!(count(&texts, c.label), 1, "legend entry {}", c.label);
    }
    // Scores x100 run from about 11 to 67: the y axis does not reach 0 (nothing is drawn as 0).
    assert_eq!(count(&texts, "0"), 0, "{texts:?}");
    // B-1 (blue): one line through five markers, and its legend glyph's marker.
    let markers = |fill: &str| elements(svg, "circle", &[fill]).len();
    let lines = |stroke: &str| elements(svg, "polyline", &[stroke]).len();
    assert_eq!(markers(r##"fill="#1F77B4""##), 5 + 1);
    assert_eq!(lines(r##"stroke="#1F77B4""##), 1);
    // RG (cyan): missing at 0.6, so two pieces of line and four markers; M (grey) is drawn nowhere.
    assert_eq!(markers(r##"fill="#17BECF""##), 4 + 1);
    assert_eq!(lines(r##"stroke="#17BECF""##), 2);
    assert_eq!(markers(r##"fill="#7F7F7F""##), 1);
    assert_eq!(lines(r##"stroke="#7F7F7F""##), 0);
    // The configured value's rule, from the bottom of the plot to the top.
    assert_eq!(lines(r##"stroke="#666666""##), 1);
}

#[test]
fn generation_sweep_png_matches_and_nothing_swept_is_no_figure() {
    let evals = temperature_sweep();
    let results = build_results(&evals).unwrap();
    let pngs = generation_sweep_png(&results);
    assert_eq!(pngs.len(), 1);
    assert_eq!(pngs[0].0, "sweep-temperature");
    let image = decode(&pngs[0].1);
    let (width, height, _) = image;
    assert_eq!(width, 560);
    assert!(height > 420, "{height}");
    // The figure's title, the panel's title and the x-axis label are there as pixels.
    assert!(dark_pixels(&image, (130, 0), (430, 60)) > 200);
    assert!(dark_pixels(&image, (200, 415), (400, 450)) > 50);
    let mut shuffled = evals.clone();
    shuffled.reverse();
    assert_eq!(
        pngs,
        generation_sweep_png(&build_results(&shuffled).unwrap()),
        "deterministic"
    );
    let configured_only: Vec<EvalResult> = evals
        .into_iter()
        .map(|mut e| {
            e.sweep = None;
            e
        })
        .filter(|e| e.configured)
        .collect();
    let results = build_results(&configured_only).unwrap();
    assert!(generation_sweep_svg(&results).is_empty());
    assert!(generation_sweep_png(&results).is_empty());
}

#[test]
fn a_generation_sweep_without_any_score_says_no_points() {
    let row = SweepRow {
        value: 4.0,
        configured: false,
        n: 1,
        cells: vec![
            Cell {
                mean: None,
                std: None,
                relative_change: None,
            };
            2
        ],
    };
    let results = Results {
        columns: vec!["B-1", "RG"],
        tables: Vec::new(),
        sweeps: vec![SweepTable {
            family: ModelFamily::T5,
            model: ModelStage::Stage1,
            task: Stage::Stage1,
            parameter: SweepParameter::NumBeams,
            rows: vec![row],
        }],
    };
    let figures = generation_sweep_svg(&results);
    assert_eq!(figures.len(), 1);
    assert_eq!(figures[0].0, "sweep-num_beams");
    let texts = texts(&figures[0].1);
    assert_eq!(count(&texts, "no points"), 1, "{texts:?}");
    assert_eq!(count(&texts, "not available: B-1, RG"), 1, "{texts:?}");
    assert_eq!(count(&texts, "stage-1 T5 on stage1"), 1, "{texts:?}");
}

fn point(n: usize, lr: f64, second: FieldValue, metric: f64, stopped: bool) -> SelectedPoint {
    let field = match second {
        FieldValue::Number(_) => TrainField::LoraR,
        FieldValue::Modules(_) => TrainField::LoraTargetModules,
    };
    SelectedPoint {
        point: n,
        values: TrainPoint {
            values: vec![(TrainField::Lr, FieldValue::Number(lr)), (field, second)],
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

/// Three learning rates (1e-5 stopped by ASHA, 1e-3 chosen) and a second field, values `second`.
fn record(second: [FieldValue; 3]) -> SelectionRecord {
    let [a, b, c] = second;
    SelectionRecord {
        stage: Stage::Stage1,
        fold: None,
        metric: "val_loss".into(),
        maximise: false,
        points: vec![
            point(0, 1e-5, a, 2.0, true),
            point(1, 1e-3, b, 1.0, false),
            point(2, 1e-4, c, 1.5, false),
        ],
        chosen: 1,
    }
}

fn ranks() -> [FieldValue; 3] {
    [8.0, 16.0, 8.0].map(FieldValue::Number)
}

#[test]
fn sweep_has_a_panel_per_field_a_marker_per_point_and_the_choice_ringed() {
    let record = record(ranks());
    let svg = sweep_svg(std::slice::from_ref(&record));
    assert_well_formed(&svg);
    // Two panels of three markers: one stopped (orange) and two completed (blue) each, the choice ringed in
    // both; the legend adds one of each (its ring around a blue marker).
    let circles = |colour: &str| elements(&svg, "circle", &[colour]).len();
    assert_eq!(circles(r##"fill="#FF7F0E""##), 2 + 1);
    assert_eq!(circles(r##"fill="#1F77B4""##), 4 + 2);
    assert_eq!(circles(r##"stroke="#D62728""##), 2 + 1);
    let texts = texts(&svg);
    for (text, n) in [
        // A log axis for the learning rate; the field names its panel and its x axis.
        ("1e-5", 1),
        ("1e-4", 1),
        ("1e-3", 1),
        ("training.lr", 2),
        ("lora.r", 2),
        ("val_loss", 2),
        (
            "Training sweep of stage1: val_loss (lower is better), 1 fold(s)",
            1,
        ),
        ("completed", 1),
        ("stopped by ASHA", 1),
        ("chosen", 1),
        // lora.r spans 8..16: a linear axis with round ticks.
        ("10", 1),
    ] {
        assert_eq!(count(&texts, text), n, "{text} in {texts:?}");
    }
    assert_eq!(svg, sweep_svg(&[record]), "deterministic");
}

#[test]
fn sweep_target_modules_are_categories_and_the_png_has_the_same_figure() {
    let modules = |m: &[&str]| FieldValue::Modules(m.iter().map(|s| s.to_string()).collect());
    let record = record([
        modules(&["q_proj", "v_proj"]),
        modules(&["q_proj"]),
        modules(&["q_proj", "v_proj"]),
    ]);
    let texts = texts(&sweep_svg(std::slice::from_ref(&record)));
    for (text, n) in [
        ("[q_proj,v_proj]", 1),
        ("[q_proj]", 1),
        ("lora.target_modules", 2),
    ] {
        assert_eq!(count(&texts, text), n, "{text} in {texts:?}");
    }
    let png = sweep_png(std::slice::from_ref(&record));
    let image = decode(&png);
    assert_eq!(image.0, 2 * 480);
    assert!(image.1 > 380, "{}", image.1);
    // The figure's title across the top middle, the x-axis label of the first panel.
    assert!(dark_pixels(&image, (330, 0), (630, 30)) > 100);
    assert!(dark_pixels(&image, (140, 380), (340, 420)) > 50);
    assert_eq!(dark_pixels(&image, (0, 0), (120, 6)), 0);
    assert_eq!(png, sweep_png(&[record]), "deterministic");
}

#[test]
fn no_sweep_records_say_no_points() {
    let svg = sweep_svg(&[]);
    assert_well_formed(&svg);
    assert_eq!(count(&texts(&svg), "no points"), 1, "{svg}");
    let (width, _, _) = decode(&sweep_png(&[]));
    assert_eq!(width, 480);
}

fn any_point() -> impl Strategy<Value = CurvePoint> {
    (
        prop::bool::ANY,
        0usize..3,
        0u64..1_000_000,
        0usize..3,
        prop_oneof![
            8 => -1e9f64..1e9,
            1 => Just(f64::NAN),
            1 => Just(0.0),
        ],
    )
        .prop_map(|(stage2, fold, step, series, value)| CurvePoint {
            stage: if stage2 { Stage::Stage2 } else { Stage::Stage1 },
            fold: stage2.then_some(fold),
            step,
            series: Series::ALL[series],
            value,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any points draw (no panic), as well-formed SVG, the same in any order (one point per stage, fold, step
    /// and series: of duplicates the last wins, so their order matters).
    #[test]
    fn any_points_draw_the_same_in_any_order(p in prop::collection::vec(any_point(), 0..40)) {
        let mut p: Vec<CurvePoint> = p
            .into_iter()
            .map(|c| ((c.stage, c.fold, c.step, c.series), c))
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();
        let svg = curves_svg(&p);
        assert_well_formed(&svg);
        prop_assert!(!svg.contains("NaN"));
        p.reverse();
        prop_assert_eq!(&svg, &curves_svg(&p));
        let png = series_png(&p, Series::TrainLoss);
        prop_assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
