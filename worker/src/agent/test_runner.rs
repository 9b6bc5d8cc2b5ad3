//! `test.emit`: a deterministic job kind for tests and benchmarks (enabled with `--enable-test-kinds`).
//!
//! It runs `steps` steps; each emits one metric batch of `points_per_step` points (values a pure function of
//! seed and step), sleeps `step_ms`, and every `checkpoint_every` steps uploads a checkpoint. It resumes from
//! its checkpoint, re-emitting the same batches with the same sequence numbers, and finally uploads
//! `output.bin`, whose bytes depend only on the config, the inputs and the parents' outputs. With
//! `report_placement` it also emits, last, where and when it ran (not deterministic): `placement/gpu` (one
//! point per GPU ordinal the worker pinned it to, step = index) and `placement/started_ms` /
//! `placement/ended_ms` (Unix milliseconds of its first and last step).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_proto as pb;

use super::runners::engine_error;
use super::{JobContext, JobRunner, RunError, StopReason};
use crate::engine::files;

pub const TEST_EMIT_KIND: &str = "test.emit";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestEmitConfig {
    #[serde(default = "default_steps")]
    steps: u64,
    #[serde(default = "default_points")]
    points_per_step: u32,
    #[serde(default)]
    step_ms: u64,
    #[serde(default)]
    checkpoint_every: u64,
    #[serde(default = "default_output_bytes")]
    output_bytes: usize,
    #[serde(default)]
    seed: u64,
    /// Fail with this reason (on attempts up to `fail_attempts`, or always when that is 0).
    #[serde(default)]
    fail: Option<String>,
    #[serde(default)]
    fail_attempts: u32,
    #[serde(default)]
    fail_permanent: bool,
    /// Emit the GPU ordinals and the run's start and end times (see the module documentation).
    #[serde(default)]
    report_placement: bool,
}

fn default_steps() -> u64 {
    10
}
fn default_points() -> u32 {
    1
}
fn default_output_bytes() -> usize {
    64
}

#[derive(Debug, Serialize, Deserialize)]
struct TestCheckpoint {
    step: u64,
    acc: u64,
}

/// Deterministic pseudo-random value in [0, 1) for (seed, step, index) (SplitMix64).
fn unit(seed: u64, step: u64, index: u32) -> f64 {
    let mut z = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

pub struct TestEmitRunner;

impl JobRunner for TestEmitRunner {
    fn run(&self, ctx: &mut JobContext) -> Result<(), RunError> {
        let config: TestEmitConfig = serde_json::from_slice(ctx.config())
            .map_err(|e| RunError::permanent(format!("test.emit config: {e}")))?;
        if let Some(reason) = &config.fail
            && (config.fail_attempts == 0 || ctx.attempt() <= config.fail_attempts)
        {
            return Err(RunError::Failed {
                reason: reason.clone(),
                permanent: config.fail_permanent,
            });
        }
        let (mut step, mut acc) = match ctx.checkpoint() {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| RunError::retryable(format!("reading checkpoint: {e}")))?;
                let c: TestCheckpoint = serde_json::from_slice(&bytes).map_err(|e| {
                    RunError::retryable(format!("checkpoint is not a test.emit checkpoint: {e}"))
                })?;
                tracing::info!(job = ctx.job_id(), step = c.step, "test.emit resuming");
                (c.step, c.acc)
            }
            None => (0, config.seed),
        };
        let started_ms = unix_ms();
        while step < config.steps {
            match ctx.stop_requested() {
                Some(StopReason::Shutdown) => {
                    if config.checkpoint_every > 0 {
                        save(ctx, step, acc)?;
                    }
                    return Err(RunError::Stopped(StopReason::Shutdown));
                }
                Some(reason) => return Err(RunError::Stopped(reason)),
                None => {}
            }
            let points = (0..config.points_per_step)
                .map(|i| {
                    let noise = unit(config.seed, step, i);
                    let value =
                        2.0 * (-(step as f64) / config.steps.max(1) as f64).exp() + 0.05 * noise;
                    acc = acc.rotate_left(5) ^ value.to_bits();
                    let name = if i == 0 {
                        "train/loss".to_string()
                    } else {
                        format!("train/aux{i}")
                    };
                    pb::MetricPoint { name, step, value }
                })
                .collect();
            ctx.emit(points);
            step += 1;
            ctx.set_progress(step, config.steps);
            if config.step_ms > 0 {
                std::thread::sleep(Duration::from_millis(config.step_ms));
            }
            if config.checkpoint_every > 0
                && step % config.checkpoint_every == 0
                && step < config.steps
            {
                save(ctx, step, acc)?;
            }
        }
        if config.report_placement {
            ctx.emit(placement_points(ctx.gpu_ordinals(), started_ms, unix_ms()));
        }
        let mut hasher = Sha256::new();
        hasher.update(ctx.config());
        hasher.update(acc.to_le_bytes());
        for path in ctx.inputs().values() {
            hasher.update(
                std::fs::read(path)
                    .map_err(|e| RunError::retryable(format!("reading input: {e}")))?,
            );
        }
        for parent in ctx.parents() {
            hasher.update(parent.sha256.as_bytes());
        }
        let seed = hasher.finalize();
        let output: Vec<u8> = seed
            .iter()
            .copied()
            .cycle()
            .take(config.output_bytes)
            .collect();
        let path = ctx.work_dir().join("output.bin");
        files::write(&path, &output).map_err(engine_error)?;
        ctx.flush_metrics()?;
        ctx.put_artifact("output.bin", &path)?;
        Ok(())
    }
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64)
}

fn placement_points(ordinals: &[u32], started_ms: f64, ended_ms: f64) -> Vec<pb::MetricPoint> {
    let point = |name: &str, step: usize, value: f64| pb::MetricPoint {
        name: name.into(),
        step: step as u64,
        value,
    };
    let mut points: Vec<pb::MetricPoint> = ordinals
        .iter()
        .enumerate()
        .map(|(index, &ordinal)| point("placement/gpu", index, f64::from(ordinal)))
        .collect();
    points.push(point("placement/started_ms", 0, started_ms));
    points.push(point("placement/ended_ms", 0, ended_ms));
    points
}

fn save(ctx: &mut JobContext, step: u64, acc: u64) -> Result<(), RunError> {
    let path = ctx.work_dir().join("checkpoint.json");
    let bytes = serde_json::to_vec(&TestCheckpoint { step, acc })
        .map_err(|e| RunError::retryable(e.to_string()))?;
    files::write(&path, &bytes).map_err(engine_error)?;
    ctx.save_checkpoint(&path)
}

#[cfg(test)]
mod tests {
    use super::unit;

    #[test]
    fn values_are_a_pure_function_of_seed_step_and_index() {
        assert_eq!(unit(1, 2, 0), unit(1, 2, 0));
        assert_ne!(unit(1, 2, 0), unit(1, 3, 0));
        assert_ne!(unit(1, 2, 0), unit(2, 2, 0));
        assert!((0.0..1.0).contains(&unit(7, 9, 3)));
    }
}
