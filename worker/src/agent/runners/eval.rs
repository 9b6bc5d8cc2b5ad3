//! `eval`: generates for the test rows of the job's part with the base model (plus the parent train job's
//! adapter), scores the predictions (BLEU, ROUGE, METEOR; BERTScore when the encoder folder is there; F1-RadGraph
//! when a RadGraph command is configured; otherwise "not available"), emits the corpus scores as metric points
//! and uploads `predictions.csv` and the result the report reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tandem_experiments::manifest::Metric;
use tandem_experiments::metrics::bertscore::{BertScoreConfig, BertScorer};
use tandem_experiments::metrics::radgraph::{CommandExtractor, GraphExtractor};
use tandem_experiments::metrics::{MetricSet, Pair, ScoreConfig, score_pairs};
use tandem_experiments::planner::artifacts::VAL_RESULT;
use tandem_experiments::planner::{EvalConfig, JobConfig, input_role};
use tandem_experiments::report::EvalResult;
use tandem_proto as pb;

use super::{
    EVAL_RESULT_ARTIFACT, engine_error, fetch_adapter, io_error, job_backend, job_spec,
    load_job_model, read_prepared,
};
use crate::agent::{JobContext, JobRunner, RunError};
use crate::engine::files;
use crate::engine::generate::{self, GenerateConfig};
use crate::engine::jobs::preprocess;

/// The BERTScore encoder used when the manifest names none (fetched by scripts/fetch-models.sh).
pub const DEFAULT_BERTSCORE_MODEL: &str = ".cache/models/all-MiniLM-L6-v2";

/// Prompts generated per batch (padding is masked, so results do not depend on it).
const GENERATE_BATCH: usize = 8;

pub struct EvalRunner;

impl JobRunner for EvalRunner {
    fn run(&self, ctx: &mut JobContext) -> Result<(), RunError> {
        let spec = job_spec(ctx)?;
        let JobConfig::Eval(config) = &spec.config else {
            return Err(RunError::permanent(format!(
                "job {}: kind eval with a {:?} config",
                spec.id,
                spec.config.kind()
            )));
        };
        let backend = job_backend(ctx, &config.model)?;
        let prepared = read_prepared(ctx, &config.data.prep_job)?;
        let part = prepared.part(config.data.fold)?;
        // The test rows for a table cell; the validation rows to score a training-sweep point.
        let indices = match config.data.part.as_str() {
            "val" => &part.val,
            _ => &part.test,
        };
        let mut rows = prepared.pick(indices)?;
        if let Some(max) = config.generation.max_eval_rows {
            rows.truncate(max);
        }
        if rows.is_empty() {
            return Err(RunError::permanent(format!(
                "job {}: the test part has no rows",
                spec.id
            )));
        }
        let mut loaded = load_job_model(ctx, &spec, &config.model, &backend)?;
        if let Some(parent) = &config.adapter {
            let dir = ctx.work_dir().join("adapter");
            fetch_adapter(ctx, parent, &dir)?;
            loaded
                .trainable()
                .load_adapter(&dir, None)
                .map_err(engine_error)?;
        }
        let inputs: Vec<String> = rows
            .iter()
            .map(|(input, _)| {
                if config.preprocess {
                    preprocess(input)
                } else {
                    input.clone()
                }
            })
            .collect();
        let cfg = GenerateConfig::from_spec(&config.generation, config.seed);
        tracing::info!(
            task = config.task.as_str(),
            fold = config.fold,
            rows = inputs.len(),
            beams = cfg.num_beams,
            "evaluation job"
        );
        let total = inputs.len() as u64;
        let mut done = 0u64;
        let predictions = {
            let ctx = &*ctx;
            generate::generate_texts(
                &*loaded,
                &inputs,
                &config.prompt,
                &cfg,
                GENERATE_BATCH,
                &mut |n| {
                    done += n as u64;
                    ctx.set_progress(done, total);
                },
            )
            .map_err(engine_error)?
        };
        if let Some(reason) = ctx.stop_requested() {
            return Err(RunError::Stopped(reason));
        }
        let pairs: Vec<Pair> = predictions
            .iter()
            .zip(&rows)
            .map(|(candidate, (_, reference))| Pair {
                candidate: candidate.clone(),
                reference: reference.clone(),
                ids: Default::default(),
            })
            .collect();
        let scores = score(ctx.input(input_role::BERTSCORE_MODEL), config, &pairs)?;
        let points: Vec<pb::MetricPoint> = scores
            .iter()
            .filter_map(|(name, value)| {
                value.map(|value| pb::MetricPoint {
                    name: format!("eval/{name}"),
                    step: 0,
                    value,
                })
            })
            .collect();
        ctx.emit(points);
        let out = ctx.work_dir().join("eval");
        std::fs::create_dir_all(&out).map_err(|e| io_error(&out, e))?;
        let csv_path = out.join("predictions.csv");
        write_predictions(&csv_path, indices, &pairs)?;
        ctx.put_artifact("predictions.csv", &csv_path)?;
        let result = EvalResult {
            family: config.model.family,
            model: config.model_stage,
            task: config.task,
            fold: config.fold,
            sweep: spec.sweep.map(|s| (s.parameter, s.value)),
            // The planner marks the evaluation of the configured settings (a sweep point equal to them
            // included): the cells of the main tables.
            configured: spec.configured,
            scores,
        };
        // A sweep point scored on the validation rows is no table cell: its result has its own name.
        let name = match config.data.part.as_str() {
            "val" => VAL_RESULT,
            _ => EVAL_RESULT_ARTIFACT,
        };
        let result_path = out.join(name);
        let bytes = serde_json::to_vec_pretty(&result)
            .map_err(|e| RunError::permanent(format!("{name}: {e}")))?;
        files::write(&result_path, &bytes).map_err(engine_error)?;
        ctx.put_artifact(name, &result_path)?;
        Ok(())
    }
}

/// Corpus scores by `tandem score` key; `None` = not available.
fn score(
    bertscore_model: Option<&Path>,
    config: &EvalConfig,
    pairs: &[Pair],
) -> Result<BTreeMap<String, Option<f64>>, RunError> {
    let wants = |m: Metric| config.metrics.contains(&m);
    let bert_dir = bertscore_model
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BERTSCORE_MODEL));
    let bert = if wants(Metric::Bertscore) && bert_dir.join("model.safetensors").is_file() {
        let mut bs = BertScoreConfig::new(bert_dir);
        bs.num_layers = config.bertscore_layer;
        Some(BertScorer::load(bs).map_err(|e| RunError::permanent(e.to_string()))?)
    } else {
        if wants(Metric::Bertscore) {
            tracing::warn!(model = %bert_dir.display(), "BERTScore not available: encoder absent");
        }
        None
    };
    let mut extractor = match (&config.radgraph_command, wants(Metric::Radgraph)) {
        (Some(command), true) if !command.is_empty() => Some(
            CommandExtractor::spawn(&command[0], &command[1..])
                .map_err(|e| RunError::permanent(e.to_string()))?,
        ),
        _ => None,
    };
    let score_config = ScoreConfig {
        metrics: MetricSet {
            bleu: wants(Metric::Bleu),
            rouge: wants(Metric::Rouge),
            meteor: wants(Metric::Meteor),
            bertscore: wants(Metric::Bertscore),
            radgraph: wants(Metric::Radgraph),
        },
        raw: !config.preprocess,
        ..Default::default()
    };
    let report = score_pairs(
        pairs,
        &score_config,
        bert.as_ref(),
        extractor.as_mut().map(|e| e as &mut dyn GraphExtractor),
    )
    .map_err(|e| RunError::permanent(e.to_string()))?;
    let json = report.to_json(pairs);
    let mut out = BTreeMap::new();
    if let Some(corpus) = json.get("corpus").and_then(|c| c.as_object()) {
        for (k, v) in corpus {
            out.insert(k.clone(), v.as_f64());
        }
    }
    Ok(out)
}

fn write_predictions(
    path: &std::path::Path,
    row_ids: &[usize],
    pairs: &[Pair],
) -> Result<(), RunError> {
    let csv_error = |e: csv::Error| RunError::retryable(format!("{}: {e}", path.display()));
    let mut w = csv::Writer::from_path(path).map_err(csv_error)?;
    w.write_record(["row", "prediction", "reference"])
        .map_err(csv_error)?;
    for (row, pair) in row_ids.iter().zip(pairs) {
        w.write_record([row.to_string().as_str(), &pair.candidate, &pair.reference])
            .map_err(csv_error)?;
    }
    w.flush().map_err(|e| io_error(path, e))
}
