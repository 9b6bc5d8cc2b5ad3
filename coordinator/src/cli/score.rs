//! `tandem score`: scores candidate/reference pairs with BLEU, ROUGE, METEOR, BERTScore and F1-RadGraph (the
//! metrics live in `tandem_experiments::metrics`; this is the thin command-line adapter).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tandem_experiments::metrics::bertscore::{Baseline, BertScoreConfig, BertScorer};
use tandem_experiments::metrics::radgraph::{CommandExtractor, GraphExtractor};
use tandem_experiments::metrics::{
    MetricSet, ScoreConfig, read_csv_pairs, read_jsonl_pairs, score_pairs,
};

/// The encoder used when `--bertscore-model` is not given (fetched by scripts/fetch-models.sh).
pub const DEFAULT_BERTSCORE_MODEL: &str = ".cache/models/all-MiniLM-L6-v2";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Md,
}

/// Score candidate/reference pairs.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// JSON lines, one `{"candidate": "...", "reference": "..."}` per line (other fields are kept as ids).
    #[arg(long, conflicts_with_all = ["candidates", "references"], required_unless_present = "candidates")]
    pub pairs: Option<PathBuf>,
    /// CSV file of candidates (with --references and --column).
    #[arg(long, requires_all = ["references", "column"])]
    pub candidates: Option<PathBuf>,
    /// CSV file of references, row i paired with row i of --candidates.
    #[arg(long, requires = "candidates")]
    pub references: Option<PathBuf>,
    /// Column holding the text in both CSV files.
    #[arg(long, requires = "candidates")]
    pub column: Option<String>,
    /// Comma-separated metrics: bleu, rouge, meteor, bertscore, radgraph [default: all; bertscore only when the
    /// default model is present].
    #[arg(long)]
    pub metrics: Option<String>,
    /// Local Hugging Face BERT directory for BERTScore.
    #[arg(long)]
    pub bertscore_model: Option<PathBuf>,
    /// bert-score's num_layers (default: all layers of the model).
    #[arg(long)]
    pub bertscore_layers: Option<usize>,
    /// idf weighting over the references (bert-score's idf=True).
    #[arg(long)]
    pub bertscore_idf: bool,
    /// bert-score baseline file (CSV LAYER,P,R,F) for rescaling; the row of the layer count is used.
    #[arg(long)]
    pub bertscore_baseline: Option<PathBuf>,
    /// Command that extracts RadGraph graphs (JSON lines: {"text": ...} in, a graph out); without it F1-RadGraph
    /// is not available.
    #[arg(long)]
    pub radgraph_command: Option<String>,
    /// Arguments of --radgraph-command (repeatable).
    #[arg(long = "radgraph-arg", allow_hyphen_values = true)]
    pub radgraph_args: Vec<String>,
    /// Skip the preprocessing (lower-case, whitespace normalised).
    #[arg(long)]
    pub raw: bool,
    /// ROUGE with rouge-score's Porter stemmer.
    #[arg(long)]
    pub rouge_stemmer: bool,
    /// Threads for the text metrics and the BERT encoder (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Write the result here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

pub fn run(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    let text = score_to_string(&args)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .context("writing to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Does the scoring and renders the result.
pub fn score_to_string(args: &ScoreArgs) -> anyhow::Result<String> {
    let pairs = match (
        &args.pairs,
        &args.candidates,
        &args.references,
        &args.column,
    ) {
        (Some(path), _, _, _) => read_jsonl_pairs(path)?,
        (None, Some(c), Some(r), Some(column)) => read_csv_pairs(c, r, column)?,
        _ => {
            bail!("give --pairs FILE.jsonl, or --candidates A.csv --references B.csv --column NAME")
        }
    };
    let default_model = Path::new(DEFAULT_BERTSCORE_MODEL);
    let metrics = match &args.metrics {
        Some(list) => MetricSet::parse(list)?,
        None => {
            let mut set = MetricSet::ALL;
            if args.bertscore_model.is_none() && !default_model.join("model.safetensors").is_file()
            {
                tracing::warn!(model = %default_model.display(), "BERTScore not available: model absent");
                set.bertscore = false;
                eprintln!(
                    "note: BERTScore not computed ({} absent; scripts/fetch-models.sh fetches it)",
                    default_model.display()
                );
            }
            set
        }
    };
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => {
            // SAFETY: the `tandem` binary is single-threaded up to here (no runtime or worker threads started);
            // candle's CPU matrix products read this variable for their thread count.
            unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
            n
        }
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let bert = if metrics.bertscore {
        let dir = args
            .bertscore_model
            .clone()
            .unwrap_or_else(|| default_model.to_path_buf());
        let mut config = BertScoreConfig::new(dir);
        config.num_layers = args.bertscore_layers;
        config.idf = args.bertscore_idf;
        let mut scorer = BertScorer::load(config)?;
        if let Some(path) = &args.bertscore_baseline {
            scorer.set_baseline(Some(Baseline::from_file(path, scorer.num_layers())?));
        }
        Some(scorer)
    } else {
        None
    };
    let mut extractor = match (&args.radgraph_command, metrics.radgraph) {
        (Some(program), true) => Some(CommandExtractor::spawn(program, &args.radgraph_args)?),
        _ => None,
    };
    let config = ScoreConfig {
        metrics,
        raw: args.raw,
        rouge_stemmer: args.rouge_stemmer,
        threads,
        ..Default::default()
    };
    tracing::info!(pairs = pairs.len(), threads, "scoring");
    let report = score_pairs(
        &pairs,
        &config,
        bert.as_ref(),
        extractor.as_mut().map(|e| e as &mut dyn GraphExtractor),
    )?;
    Ok(match args.format {
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&report.to_json(&pairs))?
        ),
        Format::Md => report.to_markdown(),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[allow(irrefutable_let_patterns)]
    fn args(argv: &[&str]) -> ScoreArgs {
        let cli = Cli::try_parse_from(argv).expect("arguments parse");
        let Command::Score(a) = cli.command else {
            panic!("not the score command")
        };
        a
    }

    #[test]
    fn scores_a_jsonl_file_as_json_and_markdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.jsonl");
        std::fs::write(
            &path,
            "{\"candidate\": \"No acute disease.\", \"reference\": \"No acute cardiopulmonary disease.\", \"uid\": 3}\n",
        )
        .expect("write");
        let p = path.to_str().expect("utf8");
        let out = score_to_string(&args(&[
            "tandem",
            "score",
            "--pairs",
            p,
            "--metrics",
            "bleu,rouge,meteor,radgraph",
        ]))
        .expect("scores");
        let json: serde_json::Value = serde_json::from_str(&out).expect("json");
        let b4 = json["corpus"]["bleu4"].as_f64().expect("bleu4");
        assert!((0.0..=1.0).contains(&b4));
        assert!(json["corpus"]["radgraph_partial"].is_null());
        assert_eq!(json["pairs"][0]["ids"]["uid"], 3);
        assert!(json["pairs"][0]["sentence_bleu"].is_number());
        let md = score_to_string(&args(&[
            "tandem",
            "score",
            "--pairs",
            p,
            "--metrics",
            "meteor",
            "--format",
            "md",
        ]))
        .expect("md");
        assert!(md.contains("| meteor |"));
    }

    #[test]
    fn bertscore_with_a_local_model_and_baseline() {
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/tests/fixtures/metrics");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.jsonl");
        std::fs::write(
            &path,
            "{\"candidate\": \"heart normal\", \"reference\": \"normal heart size\"}\n",
        )
        .expect("write");
        let model = fixtures.join("tiny-bert");
        let baseline = fixtures.join("tiny-bert-baseline.tsv");
        let (p, m, b) = (
            path.to_str().expect("utf8"),
            model.to_str().expect("utf8"),
            baseline.to_str().expect("utf8"),
        );
        let base = [
            "tandem",
            "score",
            "--pairs",
            p,
            "--metrics",
            "bertscore",
            "--bertscore-model",
            m,
        ];
        let plain: serde_json::Value =
            serde_json::from_str(&score_to_string(&args(&base)).expect("plain")).expect("json");
        let mut with_baseline = base.to_vec();
        with_baseline.extend(["--bertscore-baseline", b]);
        let rescaled: serde_json::Value =
            serde_json::from_str(&score_to_string(&args(&with_baseline)).expect("rescaled"))
                .expect("json");
        let f = plain["corpus"]["bertscore_f1"].as_f64().expect("f1");
        let g = rescaled["corpus"]["bertscore_f1"].as_f64().expect("f1");
        // All 3 layers: the baseline row at position 3 has F = 0.5.
        assert!((g - (f - 0.5) / 0.5).abs() < 1e-9, "{f} {g}");
    }

    #[test]
    fn csv_inputs_and_input_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = dir.path().join("c.csv");
        let r = dir.path().join("r.csv");
        std::fs::write(
            &c,
            "id,impression\n1,no effusion\n2,\"heart normal, lungs clear\"\n",
        )
        .expect("write");
        std::fs::write(&r, "id,impression\n1,no pleural effusion\n2,normal heart\n")
            .expect("write");
        let (c, r) = (c.to_str().expect("utf8"), r.to_str().expect("utf8"));
        let out = score_to_string(&args(&[
            "tandem",
            "score",
            "--candidates",
            c,
            "--references",
            r,
            "--column",
            "impression",
            "--metrics",
            "rouge",
        ]))
        .expect("scores");
        assert!(out.contains("rougeLsum"));
        let err = score_to_string(&args(&[
            "tandem",
            "score",
            "--candidates",
            c,
            "--references",
            r,
            "--column",
            "nope",
            "--metrics",
            "rouge",
        ]))
        .expect_err("missing column");
        assert!(err.to_string().contains("no column"), "{err}");
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"candidate\": \"a\", \"reference\": \"b\"}\nnot json\n",
        )
        .expect("write");
        let err = score_to_string(&args(&[
            "tandem",
            "score",
            "--pairs",
            bad.to_str().expect("utf8"),
        ]))
        .expect_err("bad line");
        assert!(err.to_string().contains("line 2"), "{err}");
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "").expect("write");
        assert!(
            score_to_string(&args(&[
                "tandem",
                "score",
                "--pairs",
                empty.to_str().expect("utf8")
            ]))
            .is_err()
        );
        let missing_model = score_to_string(&args(&[
            "tandem",
            "score",
            "--pairs",
            bad.to_str().expect("utf8"),
            "--metrics",
            "bertscore",
            "--bertscore-model",
            "/nonexistent/model",
        ]));
        assert!(missing_model.is_err());
    }
}
