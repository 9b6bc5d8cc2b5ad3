//! Throughput of the metrics on IU X-ray impressions, to compare with the Python reference packages
//! (scripts/metrics/bench_reference.py reads the same pairs). Not a test; prints figures.
//!
//! cargo bench -p tandem-experiments --bench metrics -- [--pairs 10000] [--bertscore-pairs 512] [--threads 2]
//!     [--write-pairs target/metrics-bench-pairs.jsonl] [--model .cache/models/all-MiniLM-L6-v2]

use std::path::{Path, PathBuf};
use std::time::Instant;

use tandem_experiments::metrics::bertscore::{BertScoreConfig, BertScorer};
use tandem_experiments::metrics::{MetricSet, Pair, ScoreConfig, score_pairs, text, wordnet};

struct Options {
    pairs: usize,
    bertscore_pairs: usize,
    threads: usize,
    write_pairs: PathBuf,
    model: PathBuf,
}

fn parse_options() -> Options {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Options {
        pairs: 10_000,
        bertscore_pairs: 512,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        write_pairs: root.join("target/metrics-bench-pairs.jsonl"),
        model: root.join(".cache/models/all-MiniLM-L6-v2"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--pairs" => o.pairs = value.parse().unwrap_or(o.pairs),
            "--bertscore-pairs" => o.bertscore_pairs = value.parse().unwrap_or(o.bertscore_pairs),
            "--threads" => o.threads = value.parse().unwrap_or(o.threads),
            "--write-pairs" => o.write_pairs = PathBuf::from(value),
            "--model" => o.model = PathBuf::from(value),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// Deterministic IU pairs: each impression against the impression of another report with the same "Problems"
/// field when there is one (near misses), else the next report's.
fn iu_pairs(n: usize) -> Vec<Pair> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/iu-xray/indiana_reports.csv");
    let mut reader = csv::Reader::from_path(&path).expect("IU X-ray CSV");
    let headers = reader.headers().expect("header").clone();
    let col = |name: &str| headers.iter().position(|h| h == name).expect("column");
    let (problems, impression) = (col("Problems"), col("impression"));
    let rows: Vec<(String, String)> = reader
        .records()
        .filter_map(Result::ok)
        .map(|r| (r[problems].to_string(), r[impression].to_string()))
        .filter(|(_, imp)| !imp.trim().is_empty())
        .collect();
    let mut by_problem: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, (p, _)) in rows.iter().enumerate() {
        by_problem.entry(p.as_str()).or_default().push(i);
    }
    (0..n)
        .map(|k| {
            let i = k % rows.len();
            let group = &by_problem[rows[i].0.as_str()];
            let j = if group.len() > 1 {
                group[(group.iter().position(|&x| x == i).unwrap_or(0) + 1 + k / rows.len())
                    % group.len()]
            } else {
                (i + 1) % rows.len()
            };
            Pair::new(rows[i].1.clone(), rows[j].1.clone())
        })
        .collect()
}

fn main() {
    let o = parse_options();
    let pairs = iu_pairs(o.pairs);
    if let Some(dir) = o.write_pairs.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let lines: String = pairs
        .iter()
        .map(|p| {
            serde_json::json!({"candidate": p.candidate, "reference": p.reference}).to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&o.write_pairs, lines).expect("write pairs");
    println!(
        "{} IU X-ray pairs written to {}",
        pairs.len(),
        o.write_pairs.display()
    );

    let t = Instant::now();
    let wn = wordnet::wordnet();
    println!(
        "WordNet data parsed in {:.3} s ({} synonyms of 'enlarged')",
        t.elapsed().as_secs_f64(),
        wn.synonyms("enlarged").len()
    );

    for (name, metrics) in [
        (
            "BLEU",
            MetricSet {
                rouge: false,
                meteor: false,
                ..MetricSet::TEXT
            },
        ),
        (
            "ROUGE",
            MetricSet {
                bleu: false,
                meteor: false,
                ..MetricSet::TEXT
            },
        ),
        (
            "METEOR",
            MetricSet {
                bleu: false,
                rouge: false,
                ..MetricSet::TEXT
            },
        ),
    ] {
        let config = ScoreConfig {
            metrics,
            threads: 1,
            ..ScoreConfig::default()
        };
        let t = Instant::now();
        score_pairs(&pairs, &config, None, None).expect("score");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "  {name} alone, 1 thread: {secs:.3} s = {:.0} pairs/s",
            pairs.len() as f64 / secs
        );
    }
    for threads in [1, o.threads] {
        let config = ScoreConfig {
            metrics: MetricSet::TEXT,
            threads,
            ..ScoreConfig::default()
        };
        let t = Instant::now();
        let report = score_pairs(&pairs, &config, None, None).expect("score");
        let secs = t.elapsed().as_secs_f64();
        let c = &report.corpus;
        println!(
            "BLEU+ROUGE+METEOR, {threads} thread(s): {} pairs in {secs:.3} s = {:.0} pairs/s (bleu4 {:.4} rougeL {:.4} meteor {:.4})",
            pairs.len(),
            pairs.len() as f64 / secs,
            c.bleu.map_or(f64::NAN, |b| b[3]),
            c.rouge.map_or(f64::NAN, |r| r.rouge_l.fmeasure),
            c.meteor.unwrap_or(f64::NAN)
        );
    }

    if o.bertscore_pairs == 0 {
        return;
    }
    if !o.model.join("model.safetensors").is_file() {
        println!(
            "BERTScore skipped: {} absent (scripts/fetch-models.sh)",
            o.model.display()
        );
        return;
    }
    let n = o.bertscore_pairs.min(pairs.len());
    let cands: Vec<String> = pairs[..n]
        .iter()
        .map(|p| text::normalize(&p.candidate))
        .collect();
    let refs: Vec<String> = pairs[..n]
        .iter()
        .map(|p| text::normalize(&p.reference))
        .collect();
    let c: Vec<&str> = cands.iter().map(String::as_str).collect();
    let r: Vec<&str> = refs.iter().map(String::as_str).collect();
    let scorer = BertScorer::load(BertScoreConfig::new(&o.model)).expect("model loads");
    let t = Instant::now();
    let scores = scorer.score(&c, &r).expect("bertscore");
    let secs = t.elapsed().as_secs_f64();
    let f1 = scores.iter().map(|s| s.f1).sum::<f64>() / n as f64;
    println!(
        "BERTScore all-MiniLM-L6-v2 ({} layers), RAYON_NUM_THREADS={}: {n} pairs in {secs:.3} s = {:.1} pairs/s (mean F1 {f1:.4})",
        scorer.num_layers(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
        n as f64 / secs
    );
}
