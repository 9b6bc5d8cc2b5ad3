//! The raw layer of manifest parsing: serde structs that mirror the TOML exactly (every field optional and
//! spanned, unknown keys denied), and a parser that keeps going after a schema error so that every unknown key
//! and wrong type is reported, not only the first.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostic::Collector;
use super::training_sweep::SearchMethod;
use super::types::{
    BadRows, ComputeDtype, DatasetFormat, DevicePreference, LossMask, Metric, ModelFamily,
    Quantization, Stage, SweepParameter,
};

pub(crate) type S<T> = Option<Spanned<T>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawManifest {
    pub name: S<String>,
    pub seed: S<u64>,
    pub team: S<String>,
    pub description: S<String>,
    pub model: S<RawModel>,
    pub lora: S<RawLora>,
    pub stage1: S<RawStage>,
    pub stage2: S<RawStage>,
    pub sweeps: S<Vec<Spanned<RawSweep>>>,
    pub training_sweep: S<RawTrainingSweep>,
    pub evaluation: S<RawEvaluation>,
    pub resources: S<RawResources>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    pub family: S<ModelFamily>,
    pub path: S<String>,
    pub quantization: S<Quantization>,
    pub compute_dtype: S<ComputeDtype>,
    pub device: S<DevicePreference>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLora {
    pub r: S<usize>,
    pub alpha: S<f64>,
    pub dropout: S<f64>,
    pub target_modules: S<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStage {
    pub dataset: S<RawDataset>,
    pub split: S<RawSplit>,
    pub prompt: S<RawPrompt>,
    pub training: S<RawTraining>,
    pub generation: S<RawGeneration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDataset {
    pub path: S<String>,
    pub format: S<DatasetFormat>,
    pub input_column: S<String>,
    pub target_column: S<String>,
    pub group_column: S<String>,
    pub bad_rows: S<BadRows>,
    pub max_rows: S<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawSplitKind {
    Holdout,
    Kfold,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSplit {
    pub kind: S<RawSplitKind>,
    pub train: S<f64>,
    pub val: S<f64>,
    pub test: S<f64>,
    pub folds: S<usize>,
    pub val_fraction: S<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrompt {
    pub train: S<String>,
    pub inference: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTraining {
    pub batch_size: S<usize>,
    pub grad_accum: S<usize>,
    pub lr: S<f64>,
    pub warmup_steps: S<usize>,
    pub weight_decay: S<f64>,
    pub epochs: S<f64>,
    pub max_grad_norm: S<f64>,
    pub eval_every: S<usize>,
    pub log_every: S<usize>,
    pub checkpoint_every: S<usize>,
    pub checkpoints_kept: S<usize>,
    pub early_stopping_patience: S<usize>,
    pub max_length: S<usize>,
    pub loss_mask: S<LossMask>,
    pub max_steps: S<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGeneration {
    pub max_new_tokens: S<usize>,
    pub min_new_tokens: S<usize>,
    pub do_sample: S<bool>,
    pub temperature: S<f64>,
    pub top_k: S<usize>,
    pub top_p: S<f64>,
    pub num_beams: S<usize>,
    pub length_penalty: S<f64>,
    pub repetition_penalty: S<f64>,
    pub early_stopping: S<bool>,
    pub max_eval_rows: S<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSweep {
    pub stage: S<Stage>,
    pub parameter: S<SweepParameter>,
    pub values: S<Vec<Spanned<f64>>>,
}

/// `[training_sweep]`: values stay TOML values here (a list, a `{ min, max, log }` range, module lists); the
/// resolver checks each against the field it is for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrainingSweep {
    pub stage: S<Stage>,
    pub method: S<SearchMethod>,
    pub samples: S<usize>,
    pub seed: S<u64>,
    pub select: S<String>,
    pub feed: S<bool>,
    pub max_points: S<usize>,
    pub space: S<RawValues>,
    pub points: S<Vec<Spanned<RawValues>>>,
    pub asha: S<RawAsha>,
}

/// `field = value` entries of a sweep's space or of one listed point.
pub(crate) type RawValues = BTreeMap<String, Spanned<toml::Value>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAsha {
    pub grace_period: S<usize>,
    pub reduction_factor: S<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEvaluation {
    pub metrics: S<Vec<Spanned<Metric>>>,
    pub cells: S<Vec<Spanned<String>>>,
    pub preprocess: S<bool>,
    pub bertscore_model: S<String>,
    pub bertscore_layer: S<usize>,
    pub radgraph_command: S<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResources {
    pub data_prep: S<RawResourceRequest>,
    pub train: S<RawResourceRequest>,
    pub eval: S<RawResourceRequest>,
    pub report: S<RawResourceRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResourceRequest {
    pub gpus: S<u32>,
    pub gpu_memory_gb: S<u32>,
    pub cpu_threads: S<u32>,
}

/// Schema errors after which the parser gives up (a guard; each round removes one offending entry).
const MAX_SCHEMA_ERRORS: usize = 200;

/// Parses `text` into the raw layer. Syntax errors, unknown keys and wrong types go into `errors`; each
/// offending entry is removed and the rest parsed again, so all of them are found in one pass. Returns `None`
/// when nothing usable is left (a syntax error, or an error that cannot be located).
pub(crate) fn parse(text: &str, errors: &mut Collector) -> Option<RawManifest> {
    let (mut document, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for error in syntax_errors {
            let (message, accepted) = split_expected(error.message());
            errors.push(
                error.span(),
                "",
                format!("invalid TOML: {message}"),
                accepted,
            );
        }
        return None;
    }
    for _ in 0..MAX_SCHEMA_ERRORS {
        let attempt = RawManifest::deserialize(toml::de::Deserializer::from(document.clone()));
        let error = match attempt {
            Ok(raw) => return Some(raw),
            Err(error) => error,
        };
        let (message, accepted) = split_expected(error.message());
        let located = error
            .span()
            .and_then(|span| locate(document.get_ref(), &span));
        match located {
            Some(path) => {
                let span = error.span();
                errors.push(span, render_path(&path), message, accepted);
                remove(document.get_mut(), &path);
            }
            None => {
                errors.push(error.span(), "", message, accepted);
                return None;
            }
        }
    }
    None
}

/// Turns serde's "..., expected X" into ("...", Some("X")).
fn split_expected(message: &str) -> (String, Option<String>) {
    let message = message.trim();
    match message.split_once(", expected ") {
        Some((what, expected)) => {
            let expected = expected.strip_prefix("one of ").unwrap_or(expected);
            (
                what.to_owned(),
                Some(expected.replace("` or `", ", ").replace('`', "")),
            )
        }
        None => (message.to_owned(), None),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

fn contains(span: &Range<usize>, error: &Range<usize>) -> bool {
    span.start <= error.start && (error.start < span.end || span == error)
}

/// The deepest entry (key = value) whose key or value holds the start of `error`.
fn locate(table: &DeTable<'_>, error: &Range<usize>) -> Option<Vec<Segment>> {
    for (key, value) in table.iter() {
        let here = vec![Segment::Key(key.get_ref().to_string())];
        if let Some(deeper) = locate_in_value(value.get_ref(), error) {
            return Some([here, deeper].concat());
        }
        if contains(&key.span(), error) || contains(&value.span(), error) {
            return Some(here);
        }
    }
    None
}

fn locate_in_value(value: &DeValue<'_>, error: &Range<usize>) -> Option<Vec<Segment>> {
    match value {
        DeValue::Table(table) => locate(table, error),
        DeValue::Array(items) => {
            items
                .iter()
                .enumerate()
                .find_map(|(index, item)| match item.get_ref() {
                    DeValue::Table(table) => locate(table, error)
                        .map(|deeper| [vec![Segment::Index(index)], deeper].concat()),
                    _ => None,
                })
        }
        _ => None,
    }
}

fn remove(table: &mut DeTable<'_>, path: &[Segment]) {
    let Some(Segment::Key(first)) = path.first() else {
        return;
    };
    if path.len() == 1 {
        let key = table
            .keys()
            .find(|key| key.get_ref().as_ref() == first.as_str())
            .cloned();
        if let Some(key) = key {
            table.remove(&key);
        }
        return;
    }
    let key = table
        .keys()
        .find(|key| key.get_ref().as_ref() == first.as_str())
        .cloned();
    let Some(key) = key else { return };
    let Some(value) = table.get_mut(&key) else {
        return;
    };
    match (value.get_mut(), &path[1]) {
        (DeValue::Table(inner), _) => remove(inner, &path[1..]),
        (DeValue::Array(items), Segment::Index(index)) => {
            if let Some(DeValue::Table(inner)) = items.get_mut(*index).map(|item| item.get_mut()) {
                remove(inner, &path[2..]);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse_errors(text: &str) -> (Option<RawManifest>, Vec<String>) {
        let mut collector = Collector::new(Path::new("m.toml"), text);
        let raw = parse(text, &mut collector);
        let lines = collector
            .diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect();
        (raw, lines)
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_reported() {
        let text = "name = \"x\"\nseeed = 1\n[lora]\nr = \"big\"\nalpah = 2.0\n[stage2.training]\nlrr = 1.0\nbatch_size = 4\n";
        let (raw, errors) = parse_errors(text);
        assert!(raw.is_some(), "the rest still parses");
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("m.toml:2:1: seeed: unknown field")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("m.toml:4:5: lora.r: invalid type: string \"big\""))
        );
        assert!(errors.iter().any(|e| e.contains(
            "lora.alpah: unknown field `alpah` (accepted: r, alpha, dropout, target_modules)"
        )));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("m.toml:7:1: stage2.training.lrr"))
        );
        let raw = raw.unwrap();
        let training = raw
            .stage2
            .unwrap()
            .into_inner()
            .training
            .unwrap()
            .into_inner();
        assert_eq!(*training.batch_size.unwrap().get_ref(), 4);
    }

    #[test]
    fn errors_inside_arrays_of_tables_name_the_index() {
        let text = "[[sweeps]]\nparameter = \"temperature\"\nvalues = [0.1]\n[[sweeps]]\nparameter = \"heat\"\n";
        let (_, errors) = parse_errors(text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains("sweeps[1].parameter: unknown variant `heat`"),
            "{errors:#?}"
        );
        assert!(
            errors[0].contains("(accepted: temperature, top_k"),
            "{errors:#?}"
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let (raw, errors) = parse_errors("name = \"x\nseed = 1\n");
        assert!(raw.is_none());
        assert!(errors[0].starts_with("m.toml:1:"), "{errors:#?}");
        assert!(errors[0].contains("invalid TOML"), "{errors:#?}");
    }
}
