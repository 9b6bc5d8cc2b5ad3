//! Parity with the Python reference packages on the committed fixtures (made by scripts/metrics/make_fixtures.py):
//! BLEU and ROUGE within 1e-6, METEOR within 1e-4, BERTScore within 1e-3, per pair and per corpus; the Porter
//! stemmer and the WordNet synonym sets exactly.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tandem_experiments::metrics::bertscore::{Baseline, BertScoreConfig, BertScorer};
use tandem_experiments::metrics::{
    MetricSet, Pair, ScoreConfig, porter, read_jsonl_pairs, score_pairs, text, wordnet,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics")
}

fn load_json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).expect("fixture present");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn pairs() -> Vec<Pair> {
    read_jsonl_pairs(&fixtures().join("pairs.jsonl")).expect("pairs fixture")
}

struct Check {
    failures: Vec<String>,
    compared: usize,
}

impl Check {
    fn new() -> Check {
        Check {
            failures: Vec::new(),
            compared: 0,
        }
    }
    fn close(&mut self, what: String, ours: f64, expected: &Value, tol: f64) {
        let expected = expected
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: reference value missing"));
        self.compared += 1;
        if (ours - expected).abs() > tol || ours.is_nan() {
            self.failures
                .push(format!("{what}: ours {ours} reference {expected}"));
        }
    }
    fn finish(self) {
        assert!(self.compared > 0);
        assert!(
            self.failures.is_empty(),
            "{} of {} values differ:\n{}",
            self.failures.len(),
            self.compared,
            self.failures.join("\n")
        );
    }
}

fn check_text_metrics(mode: &str, raw: bool) {
    let pairs = pairs();
    assert!(pairs.len() >= 200);
    let reference = &load_json("reference.json")[mode];
    let mut check = Check::new();
    for stem in [false, true] {
        let config = ScoreConfig {
            metrics: MetricSet::TEXT,
            raw,
            rouge_stemmer: stem,
            threads: 2,
            ..ScoreConfig::default()
        };
        let report = score_pairs(&pairs, &config, None, None).expect("scoring");
        let suffix = if stem { "_stem" } else { "" };
        for (i, p) in report.pairs.iter().enumerate() {
            let r = &reference["pairs"][i];
            let kind = pairs[i].ids["kind"].as_str().unwrap_or("?");
            let rouge = p.rouge.expect("rouge");
            for (key, s) in [
                ("rouge1", rouge.rouge1),
                ("rouge2", rouge.rouge2),
                ("rougeL", rouge.rouge_l),
                ("rougeLsum", rouge.rouge_lsum),
            ] {
                let key = format!("{key}{suffix}");
                check.close(
                    format!("{mode} pair {i} ({kind}) {key} P"),
                    s.precision,
                    &r[&key][0],
                    1e-6,
                );
                check.close(
                    format!("{mode} pair {i} ({kind}) {key} R"),
                    s.recall,
                    &r[&key][1],
                    1e-6,
                );
                check.close(
                    format!("{mode} pair {i} ({kind}) {key} F"),
                    s.fmeasure,
                    &r[&key][2],
                    1e-6,
                );
            }
            if stem {
                continue;
            }
            let bleu = p.bleu.expect("bleu");
            for n in 0..4 {
                check.close(
                    format!("{mode} pair {i} ({kind}) bleu{}", n + 1),
                    bleu[n],
                    &r[format!("bleu{}", n + 1)],
                    1e-6,
                );
            }
            check.close(
                format!("{mode} pair {i} ({kind}) sentence_bleu"),
                p.sentence_bleu.expect("sb"),
                &r["sentence_bleu"],
                1e-6,
            );
            check.close(
                format!("{mode} pair {i} ({kind}) meteor"),
                p.meteor.expect("meteor"),
                &r["meteor"],
                1e-4,
            );
        }
        let c = &reference["corpus"];
        let rouge = report.corpus.rouge.expect("corpus rouge");
        check.close(
            format!("{mode} corpus rouge1{suffix}"),
            rouge.rouge1.fmeasure,
            &c[format!("rouge1{suffix}")],
            1e-6,
        );
        check.close(
            format!("{mode} corpus rouge2{suffix}"),
            rouge.rouge2.fmeasure,
            &c[format!("rouge2{suffix}")],
            1e-6,
        );
        check.close(
            format!("{mode} corpus rougeL{suffix}"),
            rouge.rouge_l.fmeasure,
            &c[format!("rougeL{suffix}")],
            1e-6,
        );
        check.close(
            format!("{mode} corpus rougeLsum{suffix}"),
            rouge.rouge_lsum.fmeasure,
            &c[format!("rougeLsum{suffix}")],
            1e-6,
        );
        if !stem {
            let bleu = report.corpus.bleu.expect("corpus bleu");
            for n in 0..4 {
                check.close(
                    format!("{mode} corpus bleu{}", n + 1),
                    bleu[n],
                    &c[format!("bleu{}", n + 1)],
                    1e-6,
                );
            }
            check.close(
                format!("{mode} corpus meteor"),
                report.corpus.meteor.expect("m"),
                &c["meteor"],
                1e-4,
            );
        }
    }
    check.finish();
}

#[test]
fn bleu_rouge_meteor_match_the_references_on_preprocessed_text() {
    check_text_metrics("norm", false);
}

#[test]
fn bleu_rouge_meteor_match_the_references_on_raw_text() {
    check_text_metrics("raw", true);
}

#[test]
fn porter_stems_match_nltk() {
    let stems = load_json("stems.json");
    let stems = stems.as_object().expect("object");
    assert!(stems.len() > 500);
    let wrong: Vec<String> = stems
        .iter()
        .filter(|(w, s)| porter::stem(w) != s.as_str().unwrap_or_default())
        .map(|(w, s)| format!("{w}: ours {} nltk {s}", porter::stem(w)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn wordnet_synonyms_match_nltk() {
    let synonyms = load_json("synonyms.json");
    let synonyms = synonyms.as_object().expect("object");
    let wn = wordnet::wordnet();
    let mut wrong = Vec::new();
    for (word, expected) in synonyms {
        let expected: Vec<&str> = expected
            .as_array()
            .expect("list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let ours = wn.synonyms(word);
        if ours != expected {
            wrong.push(format!("{word}: ours {ours:?} nltk {expected:?}"));
        }
    }
    assert!(
        synonyms
            .values()
            .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
            .count()
            > 300
    );
    assert!(wrong.is_empty(), "{} differ: {wrong:#?}", wrong.len());
}

fn bert_pairs(raw: bool) -> (Vec<String>, Vec<String>) {
    pairs()
        .iter()
        .map(|p| {
            if raw {
                (p.candidate.clone(), p.reference.clone())
            } else {
                (text::normalize(&p.candidate), text::normalize(&p.reference))
            }
        })
        .unzip()
}

fn check_bertscore(
    check: &mut Check,
    what: &str,
    scorer: &BertScorer,
    raw: bool,
    expected: &Value,
) {
    let (c, r) = bert_pairs(raw);
    let c: Vec<&str> = c.iter().map(String::as_str).collect();
    let r: Vec<&str> = r.iter().map(String::as_str).collect();
    let ours = scorer.score(&c, &r).expect("bertscore");
    let n = ours.len() as f64;
    for (i, v) in ours.iter().enumerate() {
        check.close(
            format!("{what} pair {i} P"),
            v.precision,
            &expected[i][0],
            1e-3,
        );
        check.close(
            format!("{what} pair {i} R"),
            v.recall,
            &expected[i][1],
            1e-3,
        );
        check.close(format!("{what} pair {i} F"), v.f1, &expected[i][2], 1e-3);
    }
    let mean = |k: usize| {
        expected
            .as_array()
            .expect("list")
            .iter()
            .map(|v| v[k].as_f64().unwrap_or(f64::NAN))
            .sum::<f64>()
            / n
    };
    check.close(
        format!("{what} corpus F"),
        ours.iter().map(|v| v.f1).sum::<f64>() / n,
        &Value::from(mean(2)),
        1e-3,
    );
}

#[test]
fn bertscore_matches_bert_score_on_the_tiny_checkpoint() {
    let reference = load_json("reference.json");
    let dir = fixtures().join("tiny-bert");
    let mut check = Check::new();
    let mut config = BertScoreConfig::new(&dir);
    config.num_layers = Some(2);
    let plain = BertScorer::load(config.clone()).expect("tiny bert loads");
    check_bertscore(
        &mut check,
        "tiny plain",
        &plain,
        false,
        &reference["bertscore_tiny"]["plain"],
    );
    let idf = BertScorer::load(BertScoreConfig {
        idf: true,
        ..config.clone()
    })
    .expect("load");
    check_bertscore(
        &mut check,
        "tiny idf",
        &idf,
        false,
        &reference["bertscore_tiny"]["idf"],
    );
    let baseline =
        Baseline::from_file(&fixtures().join("tiny-bert-baseline.tsv"), 2).expect("baseline");
    let rescaled = BertScorer::load(BertScoreConfig {
        baseline: Some(baseline),
        ..config.clone()
    })
    .expect("load");
    check_bertscore(
        &mut check,
        "tiny baseline",
        &rescaled,
        false,
        &reference["bertscore_tiny"]["baseline"],
    );
    let one_layer = BertScorer::load(BertScoreConfig {
        num_layers: Some(1),
        ..config.clone()
    })
    .expect("load");
    check_bertscore(
        &mut check,
        "tiny 1 layer",
        &one_layer,
        false,
        &reference["bertscore_tiny_l1"],
    );
    let all_layers = BertScorer::load(BertScoreConfig {
        num_layers: None,
        batch_tokens: 50,
        ..config
    })
    .expect("load");
    assert_eq!(all_layers.num_layers(), 3);
    check_bertscore(
        &mut check,
        "tiny raw 3 layers",
        &all_layers,
        true,
        &reference["bertscore_tiny_raw"],
    );
    check.finish();
}

#[test]
fn bertscore_matches_bert_score_with_minilm_when_cached() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/all-MiniLM-L6-v2");
    if !dir.join("model.safetensors").is_file() {
        println!(
            "skipped: {} absent (scripts/fetch-models.sh fetches it)",
            dir.display()
        );
        return;
    }
    let expected = load_json("minilm.json");
    let ids: Vec<usize> = expected["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(|v| v.as_u64())
        .map(|v| v as usize)
        .collect();
    let (c, r) = bert_pairs(false);
    let c: Vec<&str> = ids.iter().map(|&i| c[i].as_str()).collect();
    let r: Vec<&str> = ids.iter().map(|&i| r[i].as_str()).collect();
    let mut check = Check::new();
    for (name, idf) in [("plain", false), ("idf", true)] {
        let config = BertScoreConfig {
            num_layers: Some(6),
            idf,
            ..BertScoreConfig::new(&dir)
        };
        let scorer = BertScorer::load(config).expect("minilm loads");
        let ours = scorer.score(&c, &r).expect("score");
        for (i, v) in ours.iter().enumerate() {
            let e = &expected[name][i];
            check.close(
                format!("minilm {name} pair {} P", ids[i]),
                v.precision,
                &e[0],
                1e-3,
            );
            check.close(
                format!("minilm {name} pair {} R", ids[i]),
                v.recall,
                &e[1],
                1e-3,
            );
            check.close(
                format!("minilm {name} pair {} F", ids[i]),
                v.f1,
                &e[2],
                1e-3,
            );
        }
    }
    check.finish();
}
