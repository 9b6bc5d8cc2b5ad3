//! The training loop: LoRA parameters only, AdamW with linear warmup/decay, gradient accumulation, global-norm
//! clipping, epochs, periodic validation with early stopping (best adapter restored at the end), checkpoints
//! that resume bit-for-bit, and metrics reported through a callback (the engine never prints).

pub mod checkpoint;
pub mod examples;
pub mod trainable;

use std::path::{Path, PathBuf};
use std::time::Instant;

use tandem_experiments::manifest::TrainingSpec;
use tandem_kernels::dropout;
use tandem_kernels::ops::optim::{self, AdamW, AdamWState};

use self::checkpoint::LoopState;
use self::trainable::{CpuModel, Trainable};
use super::error::{EngineError, Result};
use super::lora::{ForwardCtx, LoraConfig};
use super::model::{LanguageModel, TrainExample};
use super::rng::{self, Purpose, Stream};

/// Everything that decides a training run besides the data.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub training: TrainingSpec,
    pub lora: LoraConfig,
    pub seed: u64,
    /// Continue from the newest checkpoint in `out_dir/checkpoints` when there is one.
    pub resume: bool,
}

/// Metrics of a window of optimizer updates.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// Updates done.
    pub step: usize,
    pub total_steps: usize,
    /// Fractional epochs done.
    pub epoch: f64,
    /// Mean training loss over the updates since the last report.
    pub train_loss: f64,
    /// Learning rate of the last update.
    pub lr: f64,
    /// Global gradient norm of the last update, before clipping.
    pub grad_norm: f64,
    /// Tokens (prompt + target, no padding) per second over the window.
    pub tokens_per_s: f64,
}

/// A validation result.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalMetrics {
    pub step: usize,
    pub val_loss: f64,
    pub perplexity: f64,
    /// Whether this is the best validation loss so far.
    pub improved: bool,
}

/// What the loop reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    Started {
        total_steps: usize,
        train_examples: usize,
        val_examples: usize,
        trainable_params: usize,
        resumed_at: usize,
    },
    Step(StepMetrics),
    Eval(EvalMetrics),
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    EarlyStop {
        step: usize,
        best_step: usize,
    },
    Finished(TrainSummary),
}

/// What the loop's caller says after each optimizer update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Write a checkpoint and return [`EngineError::Stopped`] (the job is handed back or cancelled).
    Suspend,
    /// End the run now as if it were done: the best adapter so far is the result (ASHA stopped the point).
    Finish,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub steps: usize,
    pub epochs: f64,
    pub best_step: Option<usize>,
    pub best_val_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub stopped_early: bool,
    /// Ended early because the caller said [`Control::Finish`].
    pub finished_by_caller: bool,
    /// The adapter written at the end (the best one when validation ran).
    pub adapter_dir: PathBuf,
    /// Training loss of every update.
    pub losses: Vec<f64>,
}

/// Optimizer updates of a run: `ceil(epochs * ceil(ceil(n / batch) / accum))`, capped by `max_steps`.
pub fn total_steps(spec: &TrainingSpec, examples: usize) -> usize {
    let batches = examples.div_ceil(spec.batch_size.max(1));
    let per_epoch = batches.div_ceil(spec.grad_accum.max(1));
    let total = (spec.epochs * per_epoch as f64).ceil() as usize;
    spec.max_steps.map_or(total, |m| total.min(m))
}

fn validate(spec: &TrainingSpec, lora: &LoraConfig, train: &[TrainExample]) -> Result<()> {
    let bad = |m: String| Err(EngineError::Input(m));
    if train.is_empty() {
        return bad("no training examples".into());
    }
    if spec.batch_size == 0 || spec.grad_accum == 0 {
        return bad("training.batch_size and training.grad_accum must be at least 1".into());
    }
    if lora.dropout > 0.0 && spec.grad_accum as u64 > dropout::MAX_MICRO_BATCHES {
        return bad(format!(
            "training.grad_accum {} with lora.dropout: dropout masks are named for at most {} micro-batches per \
             update",
            spec.grad_accum,
            dropout::MAX_MICRO_BATCHES
        ));
    }
    if spec.epochs.is_nan() || spec.epochs <= 0.0 {
        return bad(format!(
            "training.epochs must be positive, got {}",
            spec.epochs
        ));
    }
    if spec.lr.is_nan() || spec.lr <= 0.0 {
        return bad(format!("training.lr must be positive, got {}", spec.lr));
    }
    for (i, e) in train.iter().enumerate() {
        if e.prompt.len() + e.target.len() > spec.max_length {
            return bad(format!(
                "training example {i} has {} tokens, more than training.max_length {}",
                e.prompt.len() + e.target.len(),
                spec.max_length
            ));
        }
    }
    Ok(())
}

/// The shuffled example order of `epoch`.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    rng::shuffle(
        &mut order,
        &mut Stream::new(seed, Purpose::Shuffle, &[epoch as u64]),
    );
    order
}

/// Token-weighted mean validation loss.
pub fn evaluate(model: &dyn Trainable, val: &[TrainExample], spec: &TrainingSpec) -> Result<f64> {
    let mut sum = 0f64;
    let mut tokens = 0usize;
    for chunk in val.chunks(spec.batch_size.max(1)) {
        let (s, t) = model.loss_sum(chunk, spec.loss_mask)?;
        sum += s;
        tokens += t;
    }
    if tokens == 0 {
        return Err(EngineError::Input(
            "the validation set has no target tokens".into(),
        ));
    }
    Ok(sum / tokens as f64)
}

/// Writes `checkpoint-{step}` (adapter, optimizer, best parameters, loop state) and prunes old ones.
fn write_checkpoint(
    model: &dyn Trainable,
    config: &TrainConfig,
    root: &Path,
    opt: &AdamWState,
    best: Option<&[Vec<f32>]>,
    state: &LoopState,
) -> Result<PathBuf> {
    let dir = root.join(format!("checkpoint-{}", state.step));
    model.save_adapter(&config.lora, &dir.join("adapter"))?;
    checkpoint::save_optimizer(
        opt,
        config.training.weight_decay,
        &dir.join("optimizer.safetensors"),
    )?;
    if let Some(b) = best {
        save_params(b, &params_path(&dir))?;
    }
    checkpoint::save_state(state, &dir.join("state.json"))?;
    checkpoint::prune(root, config.training.checkpoints_kept)?;
    Ok(dir)
}

fn params_path(dir: &Path) -> PathBuf {
    dir.join("best.safetensors")
}

fn save_params(params: &[Vec<f32>], path: &Path) -> Result<()> {
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = params
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("param.{i}"), vec![p.len()], p.clone()))
        .collect();
    super::tensor_io::write_f32(path, &tensors, None)
}

fn load_params(path: &Path, like: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let all = super::tensor_io::read_all_f32(path)?;
    like.iter()
        .enumerate()
        .map(|(i, p)| {
            let (_, v) = all
                .get(&format!("param.{i}"))
                .ok_or_else(|| EngineError::Checkpoint {
                    path: path.into(),
                    message: format!("missing `param.{i}`"),
                })?;
            if v.len() != p.len() {
                return Err(EngineError::Checkpoint {
                    path: path.into(),
                    message: format!("`param.{i}` has the wrong size"),
                });
            }
            Ok(v.clone())
        })
        .collect()
}

/// Trains the model's LoRA parameters (adding fresh ones as `config.lora` says when it has none) on `train`,
/// validating on `val`; writes checkpoints under `out_dir/checkpoints` and the final adapter to
/// `out_dir/adapter`.
pub fn train(
    model: &mut dyn LanguageModel,
    train: &[TrainExample],
    val: &[TrainExample],
    config: &TrainConfig,
    out_dir: &Path,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    train_until(model, train, val, config, out_dir, on_event, &|| false)
}

/// [`train`], asking `should_stop` after every optimizer update: when it says yes, the loop writes a checkpoint
/// of the state so far (reported as [`TrainEvent::Checkpoint`] unless that step was just checkpointed) and
/// returns [`EngineError::Stopped`]; a run resumed from that checkpoint continues bit for bit.
pub fn train_until(
    model: &mut dyn LanguageModel,
    train: &[TrainExample],
    val: &[TrainExample],
    config: &TrainConfig,
    out_dir: &Path,
    on_event: &mut dyn FnMut(TrainEvent),
    should_stop: &dyn Fn() -> bool,
) -> Result<TrainSummary> {
    run(
        &mut CpuModel(model),
        train,
        val,
        config,
        out_dir,
        on_event,
        &|| match should_stop() {
            true => Control::Suspend,
            false => Control::Continue,
        },
    )
}

/// The training loop over any engine ([`Trainable`]): [`train_until`] for the kernel engine as for the CPU one,
/// asking `control` after every update whether to go on, suspend or finish now.
pub fn run(
    model: &mut dyn Trainable,
    train: &[TrainExample],
    val: &[TrainExample],
    config: &TrainConfig,
    out_dir: &Path,
    on_event: &mut dyn FnMut(TrainEvent),
    control: &dyn Fn() -> Control,
) -> Result<TrainSummary> {
    let spec = &config.training;
    validate(spec, &config.lora, train)?;
    if !model.has_adapter() {
        model.add_adapter(&config.lora, config.seed)?;
    }
    let mut params = model.params()?;
    let sizes: Vec<usize> = params.iter().map(Vec::len).collect();
    let mut opt = AdamWState::new(&sizes);
    let mut state = LoopState {
        step: 0,
        epoch: 0,
        micro: 0,
        best_val_loss: None,
        best_step: None,
        evals_without_improvement: 0,
        last_val_loss: None,
        seed: config.seed,
        losses: Vec::new(),
    };
    let mut best: Option<Vec<Vec<f32>>> = None;
    let ckpt_root = out_dir.join("checkpoints");
    if config.resume
        && let Some((_, dir)) = checkpoint::list(&ckpt_root)?.pop()
    {
        model.load_adapter(&dir.join("adapter"), Some(config.lora.r))?;
        params = model.params()?;
        checkpoint::load_optimizer(&mut opt, &dir.join("optimizer.safetensors"))?;
        state = checkpoint::load_state(&dir.join("state.json"))?;
        if state.seed != config.seed {
            return Err(EngineError::Checkpoint {
                path: dir.clone(),
                message: format!(
                    "written with seed {}, this run has seed {}",
                    state.seed, config.seed
                ),
            });
        }
        if params_path(&dir).exists() {
            best = Some(load_params(&params_path(&dir), &params)?);
        }
    }
    let total = total_steps(spec, train.len());
    let batches_per_epoch = train.len().div_ceil(spec.batch_size);
    on_event(TrainEvent::Started {
        total_steps: total,
        train_examples: train.len(),
        val_examples: val.len(),
        trainable_params: sizes.iter().sum(),
        resumed_at: state.step,
    });
    let mut window = (0f64, 0usize, 0usize, Instant::now());
    let mut stopped_early = false;
    let mut finished_by_caller = false;
    let mut last = (0f64, 0f64);
    while state.step < total {
        let order = epoch_order(train.len(), config.seed, state.epoch);
        let n_micro = spec.grad_accum.min(batches_per_epoch - state.micro);
        let mut grads: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0f32; n]).collect();
        let mut step_loss = 0f64;
        let mut step_tokens = 0usize;
        for j in 0..n_micro {
            let b = state.micro + j;
            let idx = &order[b * spec.batch_size..((b + 1) * spec.batch_size).min(train.len())];
            let batch: Vec<TrainExample> = idx.iter().map(|&i| train[i].clone()).collect();
            step_tokens += batch
                .iter()
                .map(|e| e.prompt.len() + e.target.len())
                .sum::<usize>();
            let ctx = ForwardCtx::train(config.seed, state.step as u64, j as u64);
            if let Some(loss) =
                model.accumulate(&batch, spec.loss_mask, &ctx, n_micro, &mut grads)?
            {
                step_loss += loss;
            }
        }
        state.micro += n_micro;
        if state.micro >= batches_per_epoch {
            state.epoch += 1;
            state.micro = 0;
        }
        let norm = optim::clip_global_norm(
            &mut grads.iter_mut().map(Vec::as_mut_slice).collect::<Vec<_>>(),
            spec.max_grad_norm,
        );
        let lr = optim::linear_schedule(spec.lr, state.step, spec.warmup_steps, total);
        opt.update(
            &AdamW::torch(lr as f32, spec.weight_decay as f32),
            &mut params,
            &grads,
        )
        .map_err(|e| EngineError::Input(format!("optimizer step: {e}")))?;
        model.set_params(&params)?;
        state.step += 1;
        state.losses.push(step_loss);
        last = (lr, norm);
        window.0 += step_loss;
        window.1 += 1;
        window.2 += step_tokens;
        let epoch_f = state.epoch as f64 + state.micro as f64 / batches_per_epoch as f64;
        if state.step.is_multiple_of(spec.log_every.max(1)) || state.step == total {
            let secs = window.3.elapsed().as_secs_f64();
            on_event(TrainEvent::Step(StepMetrics {
                step: state.step,
                total_steps: total,
                epoch: epoch_f,
                train_loss: window.0 / window.1 as f64,
                lr,
                grad_norm: norm,
                tokens_per_s: if secs > 0.0 {
                    window.2 as f64 / secs
                } else {
                    0.0
                },
            }));
            window = (0.0, 0, 0, Instant::now());
        }
        if spec.eval_every > 0 && state.step.is_multiple_of(spec.eval_every) && !val.is_empty() {
            let val_loss = evaluate(&*model, val, spec)?;
            let improved = state.best_val_loss.is_none_or(|b| val_loss < b);
            if improved {
                state.best_val_loss = Some(val_loss);
                state.best_step = Some(state.step);
                state.evals_without_improvement = 0;
                best = Some(params.clone());
            } else {
                state.evals_without_improvement += 1;
            }
            state.last_val_loss = Some(val_loss);
            on_event(TrainEvent::Eval(EvalMetrics {
                step: state.step,
                val_loss,
                perplexity: val_loss.exp(),
                improved,
            }));
            if spec.early_stopping_patience > 0
                && state.evals_without_improvement >= spec.early_stopping_patience
            {
                stopped_early = true;
                on_event(TrainEvent::EarlyStop {
                    step: state.step,
                    best_step: state.best_step.unwrap_or(0),
                });
            }
        }
        let mut saved = None;
        if spec.checkpoint_every > 0
            && state.step.is_multiple_of(spec.checkpoint_every)
            && !stopped_early
        {
            let dir = write_checkpoint(model, config, &ckpt_root, &opt, best.as_deref(), &state)?;
            on_event(TrainEvent::Checkpoint {
                step: state.step,
                path: dir.clone(),
            });
            saved = Some(dir);
        }
        if stopped_early {
            break;
        }
        let decision = match state.step < total {
            true => control(),
            false => Control::Continue,
        };
        if decision == Control::Finish {
            finished_by_caller = true;
            break;
        }
        if decision == Control::Suspend {
            let checkpoint = match saved {
                Some(dir) => dir,
                None => {
                    let dir =
                        write_checkpoint(model, config, &ckpt_root, &opt, best.as_deref(), &state)?;
                    on_event(TrainEvent::Checkpoint {
                        step: state.step,
                        path: dir.clone(),
                    });
                    dir
                }
            };
            return Err(EngineError::Stopped {
                step: state.step,
                checkpoint: Some(checkpoint),
            });
        }
    }
    let _ = last;
    if let Some(b) = &best {
        model.set_params(b)?;
    }
    let adapter_dir = out_dir.join("adapter");
    model.save_adapter(&config.lora, &adapter_dir)?;
    let summary = TrainSummary {
        steps: state.step,
        epochs: state.epoch as f64 + state.micro as f64 / batches_per_epoch as f64,
        best_step: state.best_step,
        best_val_loss: state.best_val_loss,
        last_val_loss: state.last_val_loss,
        final_train_loss: state.losses.last().copied(),
        stopped_early,
        finished_by_caller,
        adapter_dir,
        losses: state.losses.clone(),
    };
    on_event(TrainEvent::Finished(summary.clone()));
    Ok(summary)
}
