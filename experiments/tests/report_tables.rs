//! Result tables: reproducing cells of the thesis's Table 4.3 (means), 4.4 (std) and the relative change, "n/a"
//! for metrics that are not available, sweeps, CSV and JSON forms, and the errors on bad scores.

use std::collections::BTreeMap;

use tandem_experiments::manifest::{ModelFamily, ModelStage, Stage, SweepParameter};
use tandem_experiments::report::{
    COLUMNS, EvalResult, Format, ReportError, build_results, render, render_csv, render_json,
    render_markdown,
};

/// Table 4.3 rows (x100) for LLaMA: base and two-stage.
const BASE_LLAMA: [f64; 10] = [
    14.75, 11.79, 10.00, 8.14, 23.13, 16.22, 20.88, 47.05, 78.78, 32.17,
];
const TWO_STAGE_LLAMA: [f64; 10] = [
    57.91, 52.97, 49.31, 45.33, 66.05, 55.72, 64.55, 73.90, 90.75, 43.64,
];

/// Offsets of five folds around the mean: sum 0, sum of squares 10, so the sample std is spread x sqrt(2.5).
const OFFSETS: [f64; 5] = [-2.0, -1.0, 0.0, 1.0, 2.0];

fn eval(
    model: ModelStage,
    task: Stage,
    fold: Option<usize>,
    scores: &[(&str, Option<f64>)],
) -> EvalResult {
    EvalResult {
        family: ModelFamily::Llama,
        model,
        task,
        fold,
        sweep: None,
        configured: true,
        scores: scores
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Five folds whose mean is `row` (x100) and whose spread per fold is `spread` (x100).
fn folds(model: ModelStage, row: &[f64; 10], spread: f64) -> Vec<EvalResult> {
    OFFSETS
        .iter()
        .enumerate()
        .map(|(k, off)| {
            let scores: Vec<(&str, Option<f64>)> = COLUMNS
                .iter()
                .zip(row)
                .map(|(c, v)| (c.key, Some((v + off * spread) / 100.0)))
                .collect();
            eval(model, Stage::Stage2, Some(k), &scores)
        })
        .collect()
}

/// The trimmed cells of the Markdown line of `table_heading`'s table that starts with `label`.
fn md_row(md: &str, heading: &str, label: &str) -> Vec<String> {
    let start = md
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in\n{md}"));
    let section = &md[start..];
    let end = section[1..].find("\n## ").map_or(section.len(), |e| e + 1);
    let line = section[..end]
        .lines()
        .find(|l| l.starts_with(&format!("| {label} ")))
        .unwrap_or_else(|| panic!("no row {label:?} under {heading:?} in\n{md}"));
    line.trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect()
}

fn thesis_results() -> Vec<EvalResult> {
    let mut evals = folds(ModelStage::Base, &BASE_LLAMA, 0.1);
    evals.extend(folds(ModelStage::TwoStage, &TWO_STAGE_LLAMA, 0.4));
    evals
}

#[test]
fn reproduces_table_4_3_means_std_and_relative_change() {
    let results = build_results(&thesis_results()).expect("valid");
    assert_eq!(results.tables.len(), 1);
    let md = render_markdown(&results);

    let base = md_row(&md, "## Table 4.3", "base LLaMA");
    let mut expected = vec!["base LLaMA".to_owned(), "5".to_owned()];
    expected.extend(BASE_LLAMA.iter().map(|v| format!("{v:.2}")));
    assert_eq!(base, expected, "{md}");
    let two = md_row(&md, "## Table 4.3", "two-stage LLaMA");
    assert_eq!(two[2], "57.91");
    assert_eq!(two[11], "43.64");

    // Table 4.4: sample std of the offsets x spread = spread x sqrt(10 / 4).
    let std = md_row(&md, "## Table 4.4", "two-stage LLaMA");
    let expected_std = format!("{:.2}", 0.4 * 2.5f64.sqrt());
    assert_eq!(expected_std, "0.63");
    assert!(std[2..].iter().all(|c| *c == expected_std), "{std:?}");
    let std = md_row(&md, "## Table 4.4", "base LLaMA");
    assert!(std[2..].iter().all(|c| c == "0.16"), "{std:?}");

    // Relative change, B-1: (57.91 - 14.75) / 14.75 = 292.61 %; M: (73.90 - 47.05) / 47.05 = 57.07 %.
    let change = md_row(&md, "relative change", "two-stage LLaMA");
    assert_eq!(change[2], "292.61% increase");
    assert_eq!(change[9], "57.07% increase");
    assert!(md.contains("sample standard deviation (n - 1)"));
}

#[test]
fn decrease_is_worded_and_signed() {
    let mut evals = vec![eval(
        ModelStage::Base,
        Stage::Stage2,
        None,
        &[("bleu1", Some(0.4065))],
    )];
    evals.push(eval(
        ModelStage::Stage1,
        Stage::Stage2,
        None,
        &[("bleu1", Some(0.3824))],
    ));
    let results = build_results(&evals).expect("valid");
    let rc = results.tables[0].rows[1].cells[0]
        .relative_change
        .expect("both present");
    assert!((rc - (38.24 - 40.65) / 40.65 * 100.0).abs() < 1e-9);
    let md = render_markdown(&results);
    assert_eq!(
        md_row(&md, "relative change", "stage-1 LLaMA")[2],
        "5.93% decrease"
    );
}

#[test]
fn missing_metrics_render_as_not_available() {
    let evals = vec![
        // RadGraph not available (no extractor configured), BERTScore not asked for at all.
        eval(
            ModelStage::Base,
            Stage::Stage1,
            None,
            &[("bleu1", Some(0.0855)), ("radgraph_partial", None)],
        ),
        eval(
            ModelStage::Stage1,
            Stage::Stage1,
            Some(0),
            &[("bleu1", Some(0.4444)), ("radgraph_partial", Some(0.39))],
        ),
        // One fold lacks RG: the mean over the others would be a different number; the cell is n/a.
        eval(
            ModelStage::Stage1,
            Stage::Stage1,
            Some(1),
            &[("bleu1", Some(0.4444)), ("radgraph_partial", None)],
        ),
    ];
    let results = build_results(&evals).expect("valid");
    let md = render_markdown(&results);
    let base = md_row(&md, "## Table 4.1: ", "base LLaMA");
    assert_eq!(base[2], "8.55");
    assert!(base[3..].iter().all(|c| c == "n/a"), "{base:?}");
    let stage1 = md_row(&md, "## Table 4.1: ", "stage-1 LLaMA");
    assert_eq!(stage1[1], "2");
    assert_eq!(stage1[11], "n/a");
    assert_eq!(md_row(&md, "relative change", "stage-1 LLaMA")[11], "n/a");
    assert!(!md.contains("NaN") && !md.contains("inf"), "{md}");

    let json: serde_json::Value =
        serde_json::from_str(&render_json(&results).expect("json")).unwrap();
    assert!(json["tables"][0]["rows"][0]["cells"][9]["mean"].is_null());
    let csv = render_csv(&results).expect("csv");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rg_base = reader
        .records()
        .map(|r| r.expect("record"))
        .find(|r| &r[3] == "base" && &r[8] == "RG")
        .expect("RG row");
    assert_eq!(&rg_base[9], "");
}

#[test]
fn csv_and_json_carry_the_numbers() {
    let results = build_results(&thesis_results()).expect("valid");
    let csv = render(&results, Format::Csv).expect("csv");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().expect("header").clone();
    assert_eq!(&header[0], "table");
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
    assert_eq!(records.len(), 2 * COLUMNS.len());
    let b1 = records
        .iter()
        .find(|r| &r[3] == "two-stage" && &r[8] == "B-1")
        .expect("B-1 row");
    assert_eq!(&b1[0], "Table 4.3");
    assert_eq!(&b1[7], "5");
    assert_eq!(b1[9].parse::<f64>().unwrap(), 57.91);
    assert!((b1[11].parse::<f64>().unwrap() - 292.6102).abs() < 1e-3);

    let json: serde_json::Value =
        serde_json::from_str(&render(&results, Format::Json).expect("json")).expect("parse");
    assert_eq!(json["columns"][9], "RG");
    assert_eq!(json["tables"][0]["task"], "stage2");
    let m = json["tables"][0]["rows"][1]["cells"][7]["mean"]
        .as_f64()
        .unwrap();
    assert!((m - 73.90).abs() < 1e-9);
    assert_eq!(Format::parse("md"), Some(Format::Markdown));
    assert_eq!(Format::parse("xlsx"), None);
}

#[test]
fn sweeps_get_their_own_table() {
    let mut evals = thesis_results();
    for (k, value) in [(0, 0.1), (1, 0.1), (0, 0.6), (1, 0.6)] {
        let mut e = eval(
            ModelStage::TwoStage,
            Stage::Stage2,
            Some(k),
            &[("bleu1", Some(if value == 0.1 { 0.5 } else { 0.58 }))],
        );
        e.sweep = Some((SweepParameter::Temperature, value));
        e.configured = value == 0.6;
        evals.push(e);
    }
    // The configured sweep point is a main-table evaluation too: drop the plain ones of folds 0 and 1.
    evals.retain(|e| !(e.sweep.is_none() && e.model == ModelStage::TwoStage && e.fold < Some(2)));
    let results = build_results(&evals).expect("valid");
    assert_eq!(results.sweeps.len(), 1);
    let sweep = &results.sweeps[0];
    assert_eq!(sweep.rows.len(), 2);
    assert_eq!(sweep.rows[0].value, 0.1);
    assert!(!sweep.rows[0].configured && sweep.rows[1].configured);
    assert_eq!(results.tables[0].rows[1].n, 5);
    let md = render_markdown(&results);
    let row = md_row(&md, "## Sweep of temperature", "0.6*");
    assert_eq!(row[1], "2");
    assert_eq!(row[2], "58.00 ± 0.00");
    assert_eq!(row[3], "n/a");
    let row = md_row(&md, "## Sweep of temperature", "0.1");
    assert_eq!(row[2], "50.00 ± 0.00");
}

#[test]
fn bad_scores_and_duplicates_are_errors_naming_the_evaluation() {
    let evals = vec![eval(
        ModelStage::Base,
        Stage::Stage2,
        Some(3),
        &[("rougeL", Some(20.88))],
    )];
    let err = build_results(&evals).expect_err("x100 value given");
    let text = err.to_string();
    assert!(text.contains("base LLaMA on stage2, fold 3"), "{text}");
    assert!(text.contains("rougeL") && text.contains("[0, 1]"), "{text}");

    let evals = vec![eval(
        ModelStage::Base,
        Stage::Stage2,
        None,
        &[("meteor", Some(f64::NAN))],
    )];
    assert!(matches!(
        build_results(&evals),
        Err(ReportError::ScoreOutOfRange { .. })
    ));

    let one = eval(
        ModelStage::Stage1,
        Stage::Stage1,
        None,
        &[("bleu1", Some(0.4))],
    );
    let err = build_results(&[one.clone(), one]).expect_err("duplicate");
    assert!(matches!(err, ReportError::DuplicateEval { .. }), "{err}");
}

#[test]
fn rows_follow_the_thesis_order_whatever_the_input_order() {
    let mut evals = thesis_results();
    let mut t5 = eval(
        ModelStage::Base,
        Stage::Stage2,
        None,
        &[("bleu1", Some(0.4065))],
    );
    t5.family = ModelFamily::T5;
    evals.insert(0, t5);
    evals.reverse();
    let a = render_markdown(&build_results(&evals).expect("valid"));
    evals.sort_by_key(|e| e.fold);
    let b = render_markdown(&build_results(&evals).expect("valid"));
    assert_eq!(a, b);
    let order: Vec<&str> = a
        .lines()
        .skip_while(|l| !l.starts_with("## Table 4.3"))
        .skip(4)
        .take(3)
        .map(|l| l.split('|').nth(1).unwrap().trim())
        .collect();
    assert_eq!(order, ["base LLaMA", "two-stage LLaMA", "base T5"]);
    // T5's two-stage row is absent, and no LLaMA base is used for T5.
    assert!(a.contains("| base T5"));
}
