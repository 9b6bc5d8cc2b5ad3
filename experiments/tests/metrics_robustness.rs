//! Robustness of the metrics: arbitrary strings through every metric never panic and give finite scores in
//! [0, 1]; the JSON-lines RadGraph extractor against a fake extractor script (graphs, a crash, garbled output).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tandem_experiments::metrics::bertscore::{BertScoreConfig, BertScorer};
use tandem_experiments::metrics::radgraph::{CommandExtractor, score_pairs as radgraph_scores};
use tandem_experiments::metrics::{
    MetricSet, Pair, ScoreConfig, bleu, meteor, rouge, score_pairs, text,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics")
}

fn in_unit(v: f64) -> bool {
    v.is_finite() && (0.0..=1.0 + 1e-9).contains(&v)
}

fn tiny_bert() -> &'static BertScorer {
    static SCORER: std::sync::OnceLock<BertScorer> = std::sync::OnceLock::new();
    SCORER.get_or_init(|| {
        BertScorer::load(BertScoreConfig::new(fixtures().join("tiny-bert"))).expect("tiny bert")
    })
}

/// Strings mixing radiology words, punctuation, whitespace of all kinds and arbitrary Unicode.
fn text_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("effusion".to_string()),
        Just("No".to_string()),
        Just("heart".to_string()),
        Just(".".to_string()),
        Just("&amp;".to_string()),
        Just("-\n".to_string()),
        Just("\u{1c}".to_string()),
        Just("\u{3000}".to_string()),
        Just("İ".to_string()),
        "[ -~]{0,6}",
        any::<String>(),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|v| v.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_metric_accepts_any_text(cand in text_strategy(), refr in text_strategy()) {
        for (c, r) in [(cand.clone(), refr.clone()), (text::normalize(&cand), text::normalize(&refr))] {
            let stats = bleu::BleuStats::from_pair(&c, &r);
            for n in 1..=4 {
                prop_assert!(in_unit(bleu::corpus_bleu(&stats, n)));
            }
            prop_assert!(in_unit(bleu::sentence_bleu(&stats)));
            for stem in [false, true] {
                let s = rouge::score(&r, &c, stem);
                for v in [s.rouge1, s.rouge2, s.rouge_l, s.rouge_lsum] {
                    prop_assert!(in_unit(v.precision) && in_unit(v.recall) && in_unit(v.fmeasure));
                }
            }
            prop_assert!(in_unit(meteor::meteor(&r, &c, meteor::MeteorParams::default())));
        }
        let b = tiny_bert().score(&[cand.as_str()], &[refr.as_str()]).expect("bertscore");
        prop_assert!(b[0].precision.is_finite() && b[0].recall.is_finite() && b[0].f1.is_finite());
        let pairs = vec![Pair::new(cand, refr)];
        let config = ScoreConfig { metrics: MetricSet::TEXT, threads: 1, ..ScoreConfig::default() };
        let report = score_pairs(&pairs, &config, None, None).expect("score");
        prop_assert!(report.to_json(&pairs)["corpus"]["bleu4"].is_number());
    }
}

#[test]
fn long_texts_are_truncated_like_bert_score() {
    let long = "no acute cardiopulmonary abnormality . ".repeat(400);
    let scorer = tiny_bert();
    assert_eq!(scorer.token_ids(&long).expect("ids").len(), 512);
    let s = scorer
        .score(&[long.as_str()], &["no acute disease"])
        .expect("score");
    assert!(s[0].f1 > 0.0 && s[0].f1 <= 1.0);
}

#[test]
fn command_extractor_scores_with_graphs_from_the_command() {
    let script = fixtures().join("fake_radgraph.sh");
    let mut extractor =
        CommandExtractor::spawn("sh", &[script.display().to_string()]).expect("spawn");
    let candidates = ["small pleural effusion", "effusion", "", "heart normal"];
    let references = [
        "pleural effusion",
        "pleural effusion",
        "pleural effusion",
        "heart normal",
    ];
    let scores = radgraph_scores(&mut extractor, &candidates, &references).expect("scores");
    assert_eq!(scores[0].simple, 1.0);
    assert_eq!(scores[0].complete, 1.0);
    assert!((scores[1].simple - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(scores[2].simple, 0.0, "empty candidate scores 0");
    assert_eq!(scores[3].simple, 0.0, "no entities scores 0");

    let pairs: Vec<Pair> = candidates
        .iter()
        .zip(references)
        .map(|(c, r)| Pair::new(*c, r))
        .collect();
    let config = ScoreConfig {
        metrics: MetricSet::parse("radgraph").expect("parse"),
        threads: 1,
        ..ScoreConfig::default()
    };
    let report = score_pairs(&pairs, &config, None, Some(&mut extractor)).expect("report");
    let corpus = report.corpus.radgraph.expect("available with an extractor");
    assert!((corpus.simple - (1.0 + 2.0 / 3.0) / 4.0).abs() < 1e-12);
}

#[test]
fn command_extractor_failures_are_clear_errors() {
    let script = fixtures().join("fake_radgraph.sh").display().to_string();
    let mut crashing = CommandExtractor::spawn("sh", std::slice::from_ref(&script)).expect("spawn");
    let err = radgraph_scores(
        &mut crashing,
        &["effusion", "crash"],
        &["effusion", "effusion"],
    )
    .expect_err("crash")
    .to_string();
    assert!(
        err.contains("exit status: 3") || err.contains("exit code: 3"),
        "{err}"
    );
    let mut garbling = CommandExtractor::spawn("sh", &[script]).expect("spawn");
    let err = radgraph_scores(&mut garbling, &["garble"], &["effusion"])
        .expect_err("garbled")
        .to_string();
    assert!(
        err.contains("line 1") && err.contains("not a RadGraph graph"),
        "{err}"
    );
    let err = CommandExtractor::spawn("/nonexistent/extractor", &[])
        .expect_err("missing")
        .to_string();
    assert!(err.contains("cannot start"), "{err}");
}
