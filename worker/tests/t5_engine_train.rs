//! The engine's training loop (AdamW, schedule, evaluation, checkpoints, PEFT adapter output) on
//! the tiny T5: the loss falls, the written adapter reloads to the same validation loss, and a
//! rerun is bitwise identical.

use std::path::Path;

use tandem_experiments::manifest::{LossMask, Stage, TrainingSpec, defaults};
use tandem_worker::engine::lora::{ForwardCtx, LoraConfig};
use tandem_worker::engine::model::{LanguageModel, TrainExample};
use tandem_worker::engine::peft;
use tandem_worker::engine::t5::T5Model;
use tandem_worker::engine::train::{TrainConfig, TrainSummary, train};

fn model() -> T5Model {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-t5/gated-gelu");
    T5Model::load(&dir).unwrap()
}

/// A small copy task: the target repeats part of the prompt.
fn examples(n: u32, offset: u32) -> Vec<TrainExample> {
    (0..n)
        .map(|i| {
            let a = 10 + (i * 7 + offset) % 250;
            let b = 10 + (i * 13 + offset) % 250;
            TrainExample {
                prompt: vec![a, b, a + 1, 1],
                target: vec![a, b, 1],
            }
        })
        .collect()
}

fn config() -> TrainConfig {
    let training = TrainingSpec {
        batch_size: 4,
        grad_accum: 1,
        lr: 2e-2,
        warmup_steps: 2,
        epochs: 6.0,
        eval_every: 6,
        log_every: 3,
        checkpoint_every: 12,
        checkpoints_kept: 1,
        early_stopping_patience: 0,
        max_length: 64,
        loss_mask: LossMask::Prompt,
        max_steps: None,
        ..defaults::training(Stage::Stage1)
    };
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.05,
        target_modules: vec!["q".into(), "v".into()],
    };
    TrainConfig {
        training,
        lora,
        seed: 17,
        resume: false,
    }
}

fn run(out: &Path) -> (T5Model, TrainSummary) {
    let mut m = model();
    let summary = train(
        &mut m,
        &examples(16, 0),
        &examples(4, 3),
        &config(),
        out,
        &mut |_| {},
    )
    .unwrap();
    (m, summary)
}

fn mean_loss(m: &T5Model, batch: &[TrainExample]) -> f64 {
    let out = m
        .loss(batch, LossMask::Prompt, &ForwardCtx::eval())
        .unwrap();
    f64::from(out.loss_sum.to_scalar::<f32>().unwrap()) / out.tokens as f64
}

#[test]
fn engine_training_on_t5_lowers_loss_and_writes_a_reloadable_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (trained, summary) = run(tmp.path());
    let losses = &summary.losses;
    assert_eq!(losses.len(), 24, "6 epochs of 4 batches");
    let first: f64 = losses[..4].iter().sum::<f64>() / 4.0;
    let last: f64 = losses[losses.len() - 4..].iter().sum::<f64>() / 4.0;
    assert!(
        last < 0.8 * first,
        "mean loss of the first epoch {first}, of the last {last}"
    );

    let val = examples(4, 3);
    let mut reloaded = model();
    assert!(
        mean_loss(&reloaded, &val) > mean_loss(&trained, &val),
        "training must help on held-out rows"
    );
    peft::load(&mut reloaded, &summary.adapter_dir, Some(4)).unwrap();
    let (a, b) = (mean_loss(&trained, &val), mean_loss(&reloaded, &val));
    assert!((a - b).abs() < 1e-6, "trained {a} vs reloaded adapter {b}");

    let again = tempfile::tempdir().unwrap();
    let (_, rerun) = run(again.path());
    let bits = |l: &[f64]| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&summary.losses),
        bits(&rerun.losses),
        "same seed, same data: identical losses"
    );
}
