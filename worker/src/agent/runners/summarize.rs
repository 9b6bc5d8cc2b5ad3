//! `summarize`: one patient's history through the fine-tuned models. Stage 1 writes the impressions the history
//! leaves empty (from the findings, with the stage-1 adapter); then the stage-2 adapter folds the impressions in
//! date order: the first visit's impression is summarised alone, every later one together with the summary so
//! far (the job's chain template). Writes `patient_summary.json` with every intermediate summary.

use tandem_experiments::data::patients::load_histories;
use tandem_experiments::manifest::hash::digest_path;
use tandem_experiments::planner::summarize::{
    PATIENT_SUMMARY, PatientSummary, SummaryStep, chain_input,
};
use tandem_experiments::planner::{JobConfig, input_role};

use super::{
    engine_error, fetch_adapter, input_path, io_error, job_backend, job_spec, load_job_model,
};
use crate::agent::{JobContext, JobRunner, RunError};
use crate::engine::files;
use crate::engine::generate::{self, GenerateConfig};
use crate::engine::jobs::preprocess;

pub struct SummarizeRunner;

impl JobRunner for SummarizeRunner {
    fn run(&self, ctx: &mut JobContext) -> Result<(), RunError> {
        let spec = job_spec(ctx)?;
        let JobConfig::Summarize(config) = &spec.config else {
            return Err(RunError::permanent(format!(
                "job {}: kind summarize with a {:?} config",
                spec.id,
                spec.config.kind()
            )));
        };
        let path = input_path(ctx, input_role::HISTORIES)?;
        let found = digest_path(&path, false).map_err(|e| io_error(&path, e))?;
        if found != config.histories_sha256 {
            return Err(RunError::permanent(format!(
                "{}: digest {found}, the job expects {}",
                path.display(),
                config.histories_sha256
            )));
        }
        let histories = load_histories(&path).map_err(|e| RunError::permanent(e.to_string()))?;
        let patient = histories
            .into_iter()
            .find(|h| h.subject_id == config.subject_id)
            .ok_or_else(|| {
                RunError::permanent(format!(
                    "{}: no reports of subject {:?}",
                    path.display(),
                    config.subject_id
                ))
            })?;
        let clean = |text: &str| match config.preprocess {
            true => preprocess(text),
            false => text.to_owned(),
        };
        let backend = job_backend(ctx, &config.model)?;
        let mut loaded = load_job_model(ctx, &spec, &config.model, &backend)?;
        let visits = patient.visits.len() as u64;
        let missing: Vec<usize> = (0..patient.visits.len())
            .filter(|&i| patient.visits[i].impression.is_none())
            .collect();
        tracing::info!(
            visits,
            impressions_to_write = missing.len(),
            "summarize job"
        );
        let total = visits + missing.len() as u64;
        let mut done = 0u64;
        let mut impressions: Vec<Option<String>> = patient
            .visits
            .iter()
            .map(|v| v.impression.clone())
            .collect();
        if !missing.is_empty() {
            let dir = ctx.work_dir().join("stage1-adapter");
            fetch_adapter(ctx, &config.stage1_adapter, &dir)?;
            loaded
                .trainable()
                .load_adapter(&dir, None)
                .map_err(engine_error)?;
            let findings: Vec<String> = missing
                .iter()
                .map(|&i| clean(&patient.visits[i].findings))
                .collect();
            let cfg = GenerateConfig::from_spec(&config.stage1_generation, config.seed);
            let written = {
                let ctx = &*ctx;
                generate::generate_texts(
                    &*loaded,
                    &findings,
                    &config.stage1_prompt,
                    &cfg,
                    findings.len().max(1),
                    &mut |n| {
                        done += n as u64;
                        ctx.set_progress(done, total);
                    },
                )
                .map_err(engine_error)?
            };
            for (&i, text) in missing.iter().zip(written) {
                impressions[i] = Some(text);
            }
            loaded.trainable().clear_adapter();
        }
        let dir = ctx.work_dir().join("stage2-adapter");
        fetch_adapter(ctx, &config.stage2_adapter, &dir)?;
        loaded
            .trainable()
            .load_adapter(&dir, None)
            .map_err(engine_error)?;
        let cfg = GenerateConfig::from_spec(&config.stage2_generation, config.seed);
        let mut steps: Vec<SummaryStep> = Vec::with_capacity(patient.visits.len());
        for (i, visit) in patient.visits.iter().enumerate() {
            if let Some(reason) = ctx.stop_requested() {
                return Err(RunError::Stopped(reason));
            }
            let impression = impressions[i].clone().unwrap_or_default();
            let input = match steps.last() {
                None => clean(&impression),
                Some(previous) => chain_input(
                    &config.chain_template,
                    &previous.summary,
                    &visit.date,
                    &clean(&impression),
                ),
            };
            let summary = generate::generate_texts(
                &*loaded,
                std::slice::from_ref(&input),
                &config.stage2_prompt,
                &cfg,
                1,
                &mut |_| {},
            )
            .map_err(engine_error)?
            .pop()
            .unwrap_or_default();
            done += 1;
            ctx.set_progress(done, total);
            steps.push(SummaryStep {
                study_id: visit.study_id.clone(),
                date: visit.date.clone(),
                impression,
                impression_generated: visit.impression.is_none(),
                summary,
            });
        }
        let result = PatientSummary {
            subject_id: patient.subject_id.clone(),
            summary: steps.last().map(|s| s.summary.clone()).unwrap_or_default(),
            steps,
        };
        let out = ctx.work_dir().join("summarize");
        std::fs::create_dir_all(&out).map_err(|e| io_error(&out, e))?;
        let file = out.join(PATIENT_SUMMARY);
        let bytes = serde_json::to_vec_pretty(&result)
            .map_err(|e| RunError::permanent(format!("{PATIENT_SUMMARY}: {e}")))?;
        files::write(&file, &bytes).map_err(engine_error)?;
        ctx.put_artifact(PATIENT_SUMMARY, &file)?;
        Ok(())
    }
}
