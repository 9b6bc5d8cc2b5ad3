//! `train`: fine-tunes LoRA adapters from the job config (base model at the planned local path, rows from the
//! data-prep parent, stage 2 starting from the stage-1 parent's adapter), streams the training curves, uploads
//! checkpoints and resumes from the last one, and uploads the final adapter one file per artifact.

use std::cell::{Cell, RefCell};
use std::path::Path;

use tandem_experiments::planner::JobConfig;
use tandem_proto as pb;

use super::{
    ADAPTER_FILES, bundle, engine_error, fetch_adapter, io_error, job_backend, job_spec,
    load_job_model, read_prepared,
};
use crate::agent::{JobContext, JobRunner, RunError, StopReason};
use crate::engine::EngineError;
use crate::engine::files;
use crate::engine::lora::LoraConfig;
use crate::engine::train::examples::{Overlong, build_examples};
use crate::engine::train::{self, Control, TrainConfig, TrainEvent};
use tandem_experiments::planner::artifacts::{RungStop, TRAIN_SUMMARY, TrainOutcome};

pub struct TrainRunner;

fn point(name: &str, step: usize, value: f64) -> pb::MetricPoint {
    pb::MetricPoint {
        name: name.into(),
        step: step as u64,
        value,
    }
}

impl JobRunner for TrainRunner {
    fn run(&self, ctx: &mut JobContext) -> Result<(), RunError> {
        let spec = job_spec(ctx)?;
        let JobConfig::Train(config) = &spec.config else {
            return Err(RunError::permanent(format!(
                "job {}: kind train with a {:?} config",
                spec.id,
                spec.config.kind()
            )));
        };
        let backend = job_backend(ctx, &config.model)?;
        let prepared = read_prepared(ctx, &config.data.prep_job)?;
        let part = prepared.part(config.data.fold)?;
        let train_rows = prepared.pick(&part.train)?;
        let val_rows = prepared.pick(&part.val)?;
        let mut loaded = load_job_model(ctx, &spec, &config.model, &backend)?;
        let lora = LoraConfig::from(&config.lora);
        if let Some(parent) = &config.init_adapter {
            let dir = ctx.work_dir().join("init-adapter");
            fetch_adapter(ctx, parent, &dir)?;
            loaded
                .trainable()
                .load_adapter(&dir, Some(lora.r))
                .map_err(engine_error)?;
        } else {
            loaded
                .trainable()
                .add_adapter(&lora, config.seed)
                .map_err(engine_error)?;
        }
        let out_dir = ctx.work_dir().join("train");
        let resume = match ctx.checkpoint() {
            Some(file) => {
                let file = file.to_path_buf();
                // The bundle holds one `checkpoint-N` folder; the loop resumes from the newest one there.
                let root = out_dir.join("checkpoints");
                bundle::unpack(&file, &root).map_err(|e| io_error(&file, e))?;
                true
            }
            None => false,
        };
        let max_len = config.training.max_length;
        let train_ex = build_examples(
            &*loaded,
            &train_rows,
            &config.prompt.train,
            max_len,
            Overlong::Error,
        )
        .map_err(engine_error)?;
        let val_ex = build_examples(
            &*loaded,
            &val_rows,
            &config.prompt.train,
            max_len,
            Overlong::Error,
        )
        .map_err(engine_error)?;
        tracing::info!(
            stage = config.stage.as_str(),
            fold = config.fold,
            train_rows = train_ex.len(),
            val_rows = val_ex.len(),
            resume,
            "training job"
        );
        let train_config = TrainConfig {
            training: config.training.clone(),
            lora,
            seed: config.seed,
            resume,
        };
        let mut failure: Option<RunError> = None;
        let should_stop = ctx.stop_check();
        // ASHA: the coordinator's answer at the last rung; a stop ends the run with the best adapter so far.
        let asha = config.asha.as_ref().map(|rule| rule.spec());
        let rung_stop: RefCell<Option<RungStop>> = RefCell::new(None);
        // Set with `failure`: the loop suspends instead of training on after a failed upload or rung report.
        let failure_seen = Cell::new(false);
        let control = || {
            if should_stop() || failure_seen.get() {
                Control::Suspend
            } else if rung_stop.borrow().is_some() {
                Control::Finish
            } else {
                Control::Continue
            }
        };
        let summary = {
            let ctx = &mut *ctx;
            let failure = &mut failure;
            let mut on_event = |event: TrainEvent| {
                if failure.is_some() {
                    return;
                }
                match event {
                    TrainEvent::Started {
                        total_steps,
                        resumed_at,
                        ..
                    } => {
                        if resumed_at > 0 {
                            tracing::info!(
                                resumed_at,
                                total_steps,
                                "training resumed at update {resumed_at}"
                            );
                        }
                        ctx.set_progress(resumed_at as u64, total_steps as u64);
                    }
                    TrainEvent::Step(m) => {
                        ctx.set_progress(m.step as u64, m.total_steps as u64);
                        ctx.emit(vec![
                            point("train_loss", m.step, m.train_loss),
                            point("lr", m.step, m.lr),
                            point("grad_norm", m.step, m.grad_norm),
                            point("tokens_per_s", m.step, m.tokens_per_s),
                            point("epoch", m.step, m.epoch),
                        ]);
                    }
                    TrainEvent::Eval(m) => {
                        ctx.emit(vec![
                            point("val_loss", m.step, m.val_loss),
                            point("val_perplexity", m.step, m.perplexity),
                        ]);
                        if let Some(rung) = asha.and_then(|a| a.rung_of(m.step)) {
                            match ctx.report_rung(rung, m.step, m.val_loss) {
                                Ok((true, cutoff)) => {
                                    tracing::info!(
                                        rung,
                                        step = m.step,
                                        val_loss = m.val_loss,
                                        cutoff,
                                        "ASHA stops this point"
                                    );
                                    *rung_stop.borrow_mut() = Some(RungStop {
                                        rung,
                                        step: m.step,
                                        val_loss: m.val_loss,
                                        cutoff,
                                    });
                                }
                                Ok((false, cutoff)) => {
                                    tracing::info!(
                                        rung,
                                        step = m.step,
                                        val_loss = m.val_loss,
                                        cutoff,
                                        "ASHA: point goes on"
                                    );
                                }
                                Err(e) => {
                                    failure_seen.set(true);
                                    *failure = Some(e);
                                }
                            }
                        }
                    }
                    TrainEvent::Checkpoint { step, path } => {
                        if let Err(e) = upload_checkpoint(ctx, step, &path) {
                            failure_seen.set(true);
                            *failure = Some(e);
                        }
                    }
                    TrainEvent::EarlyStop { .. } | TrainEvent::Finished(_) => {}
                }
            };
            train::run(
                &mut *loaded.trainable(),
                &train_ex,
                &val_ex,
                &train_config,
                &out_dir,
                &mut on_event,
                &control,
            )
        };
        if let Some(e) = failure {
            return Err(e);
        }
        let summary = match summary {
            Ok(summary) => summary,
            // The loop checkpointed on the way out (uploaded above when the worker is shutting down).
            Err(EngineError::Stopped { step, .. }) => {
                let reason = ctx.stop_requested().unwrap_or(StopReason::Cancelled);
                tracing::info!(step, ?reason, "training stopped");
                return Err(RunError::Stopped(reason));
            }
            Err(e) => return Err(engine_error(e)),
        };
        if let Some(reason) = ctx.stop_requested() {
            return Err(RunError::Stopped(reason));
        }
        for name in ADAPTER_FILES {
            ctx.put_artifact(name, &summary.adapter_dir.join(name))?;
        }
        let outcome = TrainOutcome {
            steps: summary.steps,
            best_step: summary.best_step,
            best_val_loss: summary.best_val_loss,
            last_val_loss: summary.last_val_loss,
            stopped_early: summary.stopped_early,
            asha_stop: rung_stop.take().filter(|_| summary.finished_by_caller),
        };
        let path = out_dir.join(TRAIN_SUMMARY);
        let bytes = serde_json::to_vec_pretty(&outcome)
            .map_err(|e| RunError::permanent(format!("{TRAIN_SUMMARY}: {e}")))?;
        files::write(&path, &bytes).map_err(engine_error)?;
        ctx.put_artifact(TRAIN_SUMMARY, &path)?;
        tracing::info!(
            steps = summary.steps,
            best_val_loss = summary.best_val_loss,
            "training finished"
        );
        Ok(())
    }
}

/// Bundles checkpoint folder `dir` (named `checkpoint-N`) and uploads it, unless a stop was asked for in which
/// case a shutdown still uploads it first (so the next attempt resumes here).
fn upload_checkpoint(ctx: &mut JobContext, step: usize, dir: &Path) -> Result<(), RunError> {
    if matches!(
        ctx.stop_requested(),
        Some(StopReason::Cancelled | StopReason::LeaseLost)
    ) {
        return Ok(());
    }
    let staging = ctx.work_dir().join(format!("bundle-{step}"));
    let name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| format!("checkpoint-{step}").into());
    let folder = staging.join(&name);
    std::fs::create_dir_all(&folder).map_err(|e| io_error(&folder, e))?;
    copy_tree(dir, &folder)?;
    let file = ctx.work_dir().join(format!("checkpoint-{step}.bin"));
    bundle::pack(&staging, &file).map_err(|e| io_error(&file, e))?;
    ctx.save_checkpoint(&file)?;
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_file(&file);
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), RunError> {
    for entry in std::fs::read_dir(from).map_err(|e| io_error(from, e))? {
        let path = entry.map_err(|e| io_error(from, e))?.path();
        let target = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| io_error(&target, e))?;
            copy_tree(&path, &target)?;
        } else {
            std::fs::copy(&path, &target).map_err(|e| io_error(&path, e))?;
        }
    }
    Ok(())
}
