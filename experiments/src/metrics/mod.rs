//! Evaluation metrics that give the same numbers as the Python reference packages, and faster: BLEU-1..4 and
//! sentence BLEU (sacrebleu 2.6.0), ROUGE-1/2/L/Lsum (rouge-score 0.1.2), METEOR (nltk 3.10.4, WordNet 3.0 shipped
//! in `experiments/data/wordnet/`), BERTScore (bert-score 0.3.13, BERT encoder on candle) and F1-RadGraph (the
//! `radgraph` package's reward over graphs from a pluggable extractor). [`score_pairs`] runs a chosen set over
//! candidate/reference pairs; `tandem score` is its command line.

pub mod bert;
pub mod bertscore;
pub mod bleu;
pub mod meteor;
pub mod pairs;
pub mod porter;
pub mod radgraph;
pub mod rouge;
pub mod scorer;
pub mod text;
pub mod wordnet;

use std::path::PathBuf;

pub use pairs::{Pair, read_csv_pairs, read_jsonl_pairs};
pub use scorer::{CorpusScores, MetricSet, PairScores, ScoreConfig, ScoreReport, score_pairs};

/// Errors of the metrics: bad input files, model loading, extractor failures.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: line {line}: {message}")]
    Input {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("{candidates} candidates but {references} references")]
    Mismatch {
        candidates: usize,
        references: usize,
    },
    #[error("radgraph: {message}")]
    RadGraph { message: String },
    #[error("unknown metric {name:?} (accepted: bleu, rouge, meteor, bertscore, radgraph)")]
    UnknownMetric { name: String },
}
