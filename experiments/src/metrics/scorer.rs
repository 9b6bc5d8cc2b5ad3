//! Scores candidate/reference pairs with a chosen set of metrics: per-pair values and corpus values (corpus BLEU
//! from summed statistics; the other metrics as the mean over pairs), as JSON or a Markdown table. Text metrics run
//! on `threads` scoped threads over contiguous chunks, so results do not depend on the thread count.

use serde_json::{Map, Value, json};

use super::bertscore::{BertScoreValue, BertScorer};
use super::bleu::{self, BleuStats};
use super::meteor::{self, MeteorParams};
use super::radgraph::{self, GraphExtractor, RadGraphScores};
use super::rouge::{self, RougeScores};
use super::{MetricsError, Pair, text};

/// Which metrics to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricSet {
    pub bleu: bool,
    pub rouge: bool,
    pub meteor: bool,
    pub bertscore: bool,
    pub radgraph: bool,
}

impl MetricSet {
    pub const ALL: MetricSet = MetricSet {
        bleu: true,
        rouge: true,
        meteor: true,
        bertscore: true,
        radgraph: true,
    };
    pub const TEXT: MetricSet = MetricSet {
        bleu: true,
        rouge: true,
        meteor: true,
        bertscore: false,
        radgraph: false,
    };

    /// Parses a comma-separated list such as "bleu,rouge,meteor".
    pub fn parse(list: &str) -> Result<MetricSet, MetricsError> {
        let mut set = MetricSet {
            bleu: false,
            rouge: false,
            meteor: false,
            bertscore: false,
            radgraph: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name.to_ascii_lowercase().as_str() {
                "bleu" => set.bleu = true,
                "rouge" => set.rouge = true,
                "meteor" => set.meteor = true,
                "bertscore" => set.bertscore = true,
                "radgraph" => set.radgraph = true,
                _ => {
                    return Err(MetricsError::UnknownMetric {
                        name: name.to_string(),
                    });
                }
            }
        }
        if set
            == (MetricSet {
                bleu: false,
                rouge: false,
                meteor: false,
                bertscore: false,
                radgraph: false,
            })
        {
            return Err(MetricsError::UnknownMetric {
                name: list.to_string(),
            });
        }
        Ok(set)
    }
}

/// How to score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreConfig {
    pub metrics: MetricSet,
    /// Skip the thesis preprocessing (lower-case, whitespace normalised).
    pub raw: bool,
    /// rouge-score's `use_stemmer`.
    pub rouge_stemmer: bool,
    pub meteor: MeteorParams,
    /// Threads for the text metrics (at least 1).
    pub threads: usize,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            metrics: MetricSet::ALL,
            raw: false,
            rouge_stemmer: false,
            meteor: MeteorParams::default(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Scores of one pair; `None` where the metric was not asked for or is not available.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairScores {
    pub bleu_stats: Option<BleuStats>,
    /// BLEU-1..4 of the pair alone (corpus BLEU over one pair).
    pub bleu: Option<[f64; 4]>,
    pub sentence_bleu: Option<f64>,
    pub rouge: Option<RougeScores>,
    pub meteor: Option<f64>,
    pub bertscore: Option<BertScoreValue>,
    pub radgraph: Option<RadGraphScores>,
}

/// Corpus scores; `None` where the metric was not asked for or is not available.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CorpusScores {
    pub bleu: Option<[f64; 4]>,
    pub rouge: Option<RougeScores>,
    pub meteor: Option<f64>,
    pub bertscore: Option<BertScoreValue>,
    pub radgraph: Option<RadGraphScores>,
}

/// The result of [`score_pairs`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreReport {
    pub metrics: MetricSet,
    pub corpus: CorpusScores,
    pub pairs: Vec<PairScores>,
}

fn text_scores(candidate: &str, reference: &str, config: &ScoreConfig) -> PairScores {
    let m = config.metrics;
    let mut s = PairScores::default();
    if m.bleu {
        let stats = BleuStats::from_pair(candidate, reference);
        s.bleu = Some([1, 2, 3, 4].map(|n| bleu::corpus_bleu(&stats, n)));
        s.sentence_bleu = Some(bleu::sentence_bleu(&stats));
        s.bleu_stats = Some(stats);
    }
    if m.rouge {
        s.rouge = Some(rouge::score(reference, candidate, config.rouge_stemmer));
    }
    if m.meteor {
        s.meteor = Some(meteor::meteor(reference, candidate, config.meteor));
    }
    s
}

fn mean(values: impl Iterator<Item = f64>, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        values.sum::<f64>() / n as f64
    }
}

/// Scores every pair. BERTScore needs `bert`, F1-RadGraph needs `extractor`; without them those metrics are
/// reported as not available (`None`), never estimated.
pub fn score_pairs(
    pairs: &[Pair],
    config: &ScoreConfig,
    bert: Option<&BertScorer>,
    extractor: Option<&mut dyn GraphExtractor>,
) -> Result<ScoreReport, MetricsError> {
    let prepared: Vec<(String, String)> = pairs
        .iter()
        .map(|p| {
            if config.raw {
                (p.candidate.clone(), p.reference.clone())
            } else {
                (text::normalize(&p.candidate), text::normalize(&p.reference))
            }
        })
        .collect();
    let threads = config.threads.max(1).min(prepared.len().max(1));
    let chunk = prepared.len().div_ceil(threads).max(1);
    let mut scores: Vec<PairScores> = std::thread::scope(|scope| {
        let handles: Vec<_> = prepared
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(c, r)| text_scores(c, r, config))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let candidates: Vec<&str> = prepared.iter().map(|(c, _)| c.as_str()).collect();
    let references: Vec<&str> = prepared.iter().map(|(_, r)| r.as_str()).collect();
    if config.metrics.bertscore
        && let Some(bert) = bert
    {
        for (s, v) in scores.iter_mut().zip(bert.score(&candidates, &references)?) {
            s.bertscore = Some(v);
        }
    }
    if config.metrics.radgraph
        && let Some(extractor) = extractor
    {
        for (s, v) in
            scores
                .iter_mut()
                .zip(radgraph::score_pairs(extractor, &candidates, &references)?)
        {
            s.radgraph = Some(v);
        }
    }
    let n = scores.len();
    let mut corpus = CorpusScores::default();
    if config.metrics.bleu {
        let mut total = BleuStats::default();
        scores
            .iter()
            .filter_map(|s| s.bleu_stats.as_ref())
            .for_each(|s| total.add(s));
        corpus.bleu = Some([1, 2, 3, 4].map(|k| bleu::corpus_bleu(&total, k)));
    }
    if config.metrics.rouge {
        let r: Vec<RougeScores> = scores.iter().filter_map(|s| s.rouge).collect();
        let avg = |f: &dyn Fn(&RougeScores) -> rouge::RougeScore| rouge::RougeScore {
            precision: mean(r.iter().map(|x| f(x).precision), n),
            recall: mean(r.iter().map(|x| f(x).recall), n),
            fmeasure: mean(r.iter().map(|x| f(x).fmeasure), n),
        };
        corpus.rouge = Some(RougeScores {
            rouge1: avg(&|x| x.rouge1),
            rouge2: avg(&|x| x.rouge2),
            rouge_l: avg(&|x| x.rouge_l),
            rouge_lsum: avg(&|x| x.rouge_lsum),
        });
    }
    if config.metrics.meteor {
        corpus.meteor = Some(mean(scores.iter().filter_map(|s| s.meteor), n));
    }
    let b: Vec<BertScoreValue> = scores.iter().filter_map(|s| s.bertscore).collect();
    if !b.is_empty() {
        corpus.bertscore = Some(BertScoreValue {
            precision: mean(b.iter().map(|x| x.precision), n),
            recall: mean(b.iter().map(|x| x.recall), n),
            f1: mean(b.iter().map(|x| x.f1), n),
        });
    }
    let g: Vec<RadGraphScores> = scores.iter().filter_map(|s| s.radgraph).collect();
    if !g.is_empty() {
        corpus.radgraph = Some(RadGraphScores {
            simple: mean(g.iter().map(|x| x.simple), n),
            partial: mean(g.iter().map(|x| x.partial), n),
            complete: mean(g.iter().map(|x| x.complete), n),
        });
    }
    Ok(ScoreReport {
        metrics: config.metrics,
        corpus,
        pairs: scores,
    })
}

/// The keys of the metrics in `set`, with their values (None: not available).
fn entries(
    set: MetricSet,
    bleu: Option<[f64; 4]>,
    rouge: Option<RougeScores>,
    meteor: Option<f64>,
    bertscore: Option<BertScoreValue>,
    radgraph: Option<RadGraphScores>,
) -> Vec<(&'static str, Option<f64>)> {
    let mut out = Vec::new();
    if set.bleu {
        for (k, key) in ["bleu1", "bleu2", "bleu3", "bleu4"].into_iter().enumerate() {
            out.push((key, bleu.map(|b| b[k])));
        }
    }
    if set.rouge {
        out.push(("rouge1", rouge.map(|r| r.rouge1.fmeasure)));
        out.push(("rouge2", rouge.map(|r| r.rouge2.fmeasure)));
        out.push(("rougeL", rouge.map(|r| r.rouge_l.fmeasure)));
        out.push(("rougeLsum", rouge.map(|r| r.rouge_lsum.fmeasure)));
    }
    if set.meteor {
        out.push(("meteor", meteor));
    }
    if set.bertscore {
        out.push(("bertscore_p", bertscore.map(|b| b.precision)));
        out.push(("bertscore_r", bertscore.map(|b| b.recall)));
        out.push(("bertscore_f1", bertscore.map(|b| b.f1)));
    }
    if set.radgraph {
        out.push(("radgraph_simple", radgraph.map(|g| g.simple)));
        out.push(("radgraph_partial", radgraph.map(|g| g.partial)));
        out.push(("radgraph_complete", radgraph.map(|g| g.complete)));
    }
    out
}

fn to_value(v: Option<f64>) -> Value {
    v.map_or(Value::Null, Value::from)
}

impl ScoreReport {
    fn corpus_entries(&self) -> Vec<(&'static str, Option<f64>)> {
        let c = &self.corpus;
        entries(
            self.metrics,
            c.bleu,
            c.rouge,
            c.meteor,
            c.bertscore,
            c.radgraph,
        )
    }

    /// `{"corpus": {...}, "pairs": [{...}]}`; a metric that is not available is `null`. Pairs carry their input's
    /// extra fields under "ids".
    pub fn to_json(&self, pairs: &[Pair]) -> Value {
        let mut corpus = Map::new();
        for (k, v) in self.corpus_entries() {
            corpus.insert(k.to_string(), to_value(v));
        }
        let list: Vec<Value> = self
            .pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut o = Map::new();
                if let Some(pair) = pairs.get(i)
                    && !pair.ids.is_empty()
                {
                    o.insert("ids".to_string(), Value::Object(pair.ids.clone()));
                }
                if self.metrics.bleu {
                    o.insert("sentence_bleu".to_string(), to_value(p.sentence_bleu));
                }
                for (k, v) in entries(
                    self.metrics,
                    p.bleu,
                    p.rouge,
                    p.meteor,
                    p.bertscore,
                    p.radgraph,
                ) {
                    o.insert(k.to_string(), to_value(v));
                }
                Value::Object(o)
            })
            .collect();
        json!({ "corpus": corpus, "pairs": list })
    }

    /// A Markdown table of the corpus scores, x100 as the thesis reports them.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "Corpus scores over {} pairs (x100)\n\n| metric | score |\n|---|---|\n",
            self.pairs.len()
        );
        for (k, v) in self.corpus_entries() {
            let value = v.map_or_else(
                || "not available".to_string(),
                |x| format!("{:.2}", x * 100.0),
            );
            out.push_str(&format!("| {k} | {value} |\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_does_not_change_results() {
        let pairs: Vec<Pair> = (0..37)
            .map(|i| {
                Pair::new(
                    format!("no acute disease {i}. heart normal"),
                    format!("No acute process {}.", i % 5),
                )
            })
            .collect();
        let one = ScoreConfig {
            threads: 1,
            metrics: MetricSet::TEXT,
            ..ScoreConfig::default()
        };
        let four = ScoreConfig { threads: 4, ..one };
        let a = score_pairs(&pairs, &one, None, None).expect("score");
        let b = score_pairs(&pairs, &four, None, None).expect("score");
        assert_eq!(a, b);
        let json = a.to_json(&pairs);
        assert!(json["corpus"]["bleu4"].is_number());
        assert!(json["pairs"][0]["sentence_bleu"].is_number());
    }

    #[test]
    fn unavailable_metrics_are_null_and_marked() {
        let pairs = vec![Pair::new("no effusion", "no pleural effusion")];
        let config = ScoreConfig {
            threads: 1,
            ..ScoreConfig::default()
        };
        let report = score_pairs(&pairs, &config, None, None).expect("score");
        let json = report.to_json(&pairs);
        assert!(json["corpus"]["radgraph_partial"].is_null());
        assert!(json["corpus"]["bertscore_f1"].is_null());
        assert!(
            report
                .to_markdown()
                .contains("| radgraph_partial | not available |")
        );
        assert!(MetricSet::parse("bleu,nope").is_err());
        assert_eq!(
            MetricSet::parse("bleu,rouge,meteor").expect("parse"),
            MetricSet::TEXT
        );
    }
}
