//! The job graph of `tandem summarize`: the manifest's own jobs that lead to its stage-1 model and one fold's
//! two-stage model (their ids are the experiment's, so finished work comes from the cache), then one
//! `summarize` job per patient of a history CSV, so a large CSV spreads over the workers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::Plan;
use super::inputs::{BlobSource, InputBlob};
use super::job::{
    InputRef, JobConfig, JobKind, JobSpec, ModelRef, SummarizeConfig, identity, input_role,
};
use crate::data::patients::PatientHistory;
use crate::manifest::hash::sha256_file;
use crate::manifest::{Manifest, SplitSpec};

/// The stage-2 input for every visit after a patient's first (documented in the README): the summary so far and
/// the next impression with its date.
pub const CHAIN_TEMPLATE: &str = "Summary so far: {summary}\nNew impression ({date}): {impression}";

/// The manifest field under which the history CSV is sent.
pub const HISTORIES_FIELD: &str = "summarize.histories";

/// Why a summarize graph cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum SummarizeError {
    #[error(
        "the manifest plans no {what}: its evaluation cells need none (accepted: a manifest whose cells include two-stage:stage2)"
    )]
    NoModel { what: String },
    #[error("--fold {fold}: stage 2 has {folds} folds (accepted: 0 to {})", folds.saturating_sub(1))]
    Fold { fold: usize, folds: usize },
    #[error("--fold: stage 2 is a holdout split, it has no folds (accepted: no --fold)")]
    NotKfold,
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// `plan` (the manifest's plan) cut down to what its stage-1 model and fold `fold`'s two-stage model need, plus
/// one summarize job per patient of `histories` (read from `histories_path`). The fold defaults to 0 for a
/// k-fold stage 2.
pub fn plan_summaries(
    manifest: &Manifest,
    plan: &Plan,
    histories_path: &Path,
    histories: &[PatientHistory],
    fold: Option<usize>,
) -> Result<Plan, SummarizeError> {
    let fold = match (&manifest.stage2.split, fold) {
        (SplitSpec::Kfold { folds, .. }, Some(k)) if k >= *folds => {
            return Err(SummarizeError::Fold {
                fold: k,
                folds: *folds,
            });
        }
        (SplitSpec::Kfold { .. }, k) => Some(k.unwrap_or(0)),
        (SplitSpec::Holdout { .. }, Some(_)) => return Err(SummarizeError::NotKfold),
        (SplitSpec::Holdout { .. }, None) => None,
    };
    let stage1 = plan
        .stage_models
        .stage1
        .clone()
        .ok_or_else(|| SummarizeError::NoModel {
            what: "stage-1 model".into(),
        })?;
    let stage2 = plan
        .stage_models
        .stage2
        .get(&fold)
        .cloned()
        .ok_or_else(|| SummarizeError::NoModel {
            what: "two-stage model".into(),
        })?;
    let needed = ancestors(plan, [stage1.as_str(), stage2.as_str()]);
    let mut jobs: Vec<JobSpec> = plan
        .jobs
        .iter()
        .filter(|j| needed.contains(j.id.as_str()))
        .cloned()
        .collect();
    let (sha256, size) = sha256_file(histories_path).map_err(|source| SummarizeError::Io {
        path: histories_path.to_path_buf(),
        source,
    })?;
    let histories_input = InputRef {
        path: histories_path.to_path_buf(),
        sha256: format!("sha256:{sha256}"),
        folder: false,
        file_name: histories_path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        size,
    };
    let model_input = plan
        .inputs
        .get("model.path")
        .cloned()
        .expect("a planned manifest has its model input");
    let model = ModelRef {
        family: manifest.model.family,
        sha256: model_input.sha256.clone(),
        quantization: manifest.model.quantization,
        compute_dtype: manifest.model.compute_dtype,
        device: manifest.model.device,
    };
    for patient in histories {
        let config = JobConfig::Summarize(SummarizeConfig {
            subject_id: patient.subject_id.clone(),
            histories_sha256: histories_input.sha256.clone(),
            seed: manifest.seed,
            model: model.clone(),
            stage1_adapter: stage1.clone(),
            stage2_adapter: stage2.clone(),
            stage1_prompt: manifest.stage1.prompt.inference.clone(),
            stage2_prompt: manifest.stage2.prompt.inference.clone(),
            stage1_generation: manifest.stage1.generation.clone(),
            stage2_generation: manifest.stage2.generation.clone(),
            preprocess: manifest.evaluation.preprocess,
            chain_template: CHAIN_TEMPLATE.to_owned(),
        });
        let (config_hash, id) = identity(&config);
        jobs.push(JobSpec {
            id,
            kind: JobKind::Summarize,
            label: format!(
                "summarize({}, {} visits)",
                patient.subject_id,
                patient.visits.len()
            ),
            deps: vec![stage1.clone(), stage2.clone()],
            config_hash,
            resources: manifest.resources.eval.clone(),
            stage: None,
            fold,
            model_stage: None,
            task: None,
            sweep: None,
            configured: true,
            inputs: BTreeMap::from([
                (input_role::MODEL.to_owned(), model_input.clone()),
                (input_role::HISTORIES.to_owned(), histories_input.clone()),
            ]),
            config,
        });
    }
    let mut inputs = plan.inputs.clone();
    inputs.insert(HISTORIES_FIELD.to_owned(), histories_input);
    let mut blobs = plan.blobs.clone();
    if !blobs.iter().any(|b| b.sha256 == sha256) {
        blobs.push(InputBlob {
            sha256,
            size,
            source: BlobSource::File(histories_path.to_path_buf()),
        });
    }
    Ok(Plan {
        experiment: format!("{}-summaries", manifest.name),
        manifest_sha256: plan.manifest_sha256.clone(),
        jobs,
        inputs,
        blobs,
        stage_models: plan.stage_models.clone(),
    })
}

/// `roots` and every job they depend on, transitively.
fn ancestors<'a>(plan: &'a Plan, roots: [&'a str; 2]) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = roots.to_vec();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        if let Some(job) = plan.job(id) {
            stack.extend(job.deps.iter().map(String::as_str));
        }
    }
    seen
}

/// A summarize job's output: the patient's chain of summaries.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PatientSummary {
    pub subject_id: String,
    pub steps: Vec<SummaryStep>,
    /// The summary after the last visit.
    pub summary: String,
}

/// One visit folded into the summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SummaryStep {
    pub study_id: String,
    pub date: String,
    pub impression: String,
    /// Whether stage 1 wrote the impression from the findings.
    pub impression_generated: bool,
    /// The summary after this visit.
    pub summary: String,
}

/// The artifact name of [`PatientSummary`].
pub const PATIENT_SUMMARY: &str = "patient_summary.json";

/// `subject_id,visits,impressions_generated,summary`, one row per patient.
pub fn summaries_csv(summaries: &[PatientSummary]) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record(["subject_id", "visits", "impressions_generated", "summary"])
        .expect("writing to memory");
    for s in summaries {
        let written = s.steps.iter().filter(|v| v.impression_generated).count();
        writer
            .write_record([
                s.subject_id.as_str(),
                &s.steps.len().to_string(),
                &written.to_string(),
                s.summary.as_str(),
            ])
            .expect("writing to memory");
    }
    String::from_utf8(writer.into_inner().expect("in memory")).expect("UTF-8 in, UTF-8 out")
}

/// Fills [`CHAIN_TEMPLATE`]-style `template` in one pass (a summary that happens to contain `{date}` stays as
/// written).
pub fn chain_input(template: &str, summary: &str, date: &str, impression: &str) -> String {
    let mut out = String::with_capacity(template.len() + summary.len() + impression.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let (value, len) = [
            ("{summary}", summary),
            ("{date}", date),
            ("{impression}", impression),
        ]
        .into_iter()
        .find(|(key, _)| tail.starts_with(key))
        .map_or(("{", 1), |(key, value)| (value, key.len()));
        out.push_str(value);
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_template_is_filled_once() {
        assert_eq!(
            chain_input(
                CHAIN_TEMPLATE,
                "Stable {date} mass.",
                "2021-03-04",
                "New nodule."
            ),
            "Summary so far: Stable {date} mass.\nNew impression (2021-03-04): New nodule."
        );
        assert_eq!(chain_input("{x} {summary}", "s", "d", "i"), "{x} s");
    }
}
