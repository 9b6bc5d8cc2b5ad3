//! Sweeps over training hyperparameters (`[training_sweep]`): which fields can be swept, the points a grid, a
//! seeded random search or an explicit list expands to, how a point changes a stage's LoRA and training
//! settings, how the best point is selected, and the ASHA rule that stops bad points early.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;
use serde::{Deserialize, Serialize};

use super::types::{LoraSpec, Metric, Stage, TrainingSpec};

/// A LoRA or training field a sweep can vary; manifests name it `lora.r`, `training.lr`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TrainField {
    #[serde(rename = "lora.r")]
    LoraR,
    #[serde(rename = "lora.alpha")]
    LoraAlpha,
    #[serde(rename = "lora.dropout")]
    LoraDropout,
    #[serde(rename = "lora.target_modules")]
    LoraTargetModules,
    #[serde(rename = "training.lr")]
    Lr,
    #[serde(rename = "training.warmup_steps")]
    WarmupSteps,
    #[serde(rename = "training.weight_decay")]
    WeightDecay,
    #[serde(rename = "training.epochs")]
    Epochs,
    #[serde(rename = "training.batch_size")]
    BatchSize,
    #[serde(rename = "training.grad_accum")]
    GradAccum,
    #[serde(rename = "training.max_grad_norm")]
    MaxGradNorm,
    #[serde(rename = "training.max_steps")]
    MaxSteps,
    #[serde(rename = "training.early_stopping_patience")]
    EarlyStoppingPatience,
}

/// What values a field takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldKind {
    /// A whole number with this lower bound.
    Integer { min: u64 },
    /// A finite number: `(low, low_open, high, high_open)`.
    Real {
        low: f64,
        low_open: bool,
        high: f64,
        high_open: bool,
    },
    /// A list of module names (`lora.target_modules`).
    Modules,
}

impl TrainField {
    pub const ALL: [TrainField; 13] = [
        TrainField::LoraR,
        TrainField::LoraAlpha,
        TrainField::LoraDropout,
        TrainField::LoraTargetModules,
        TrainField::Lr,
        TrainField::WarmupSteps,
        TrainField::WeightDecay,
        TrainField::Epochs,
        TrainField::BatchSize,
        TrainField::GradAccum,
        TrainField::MaxGradNorm,
        TrainField::MaxSteps,
        TrainField::EarlyStoppingPatience,
    ];

    /// The manifest's name of the field.
    pub fn as_str(self) -> &'static str {
        match self {
            TrainField::LoraR => "lora.r",
            TrainField::LoraAlpha => "lora.alpha",
            TrainField::LoraDropout => "lora.dropout",
            TrainField::LoraTargetModules => "lora.target_modules",
            TrainField::Lr => "training.lr",
            TrainField::WarmupSteps => "training.warmup_steps",
            TrainField::WeightDecay => "training.weight_decay",
            TrainField::Epochs => "training.epochs",
            TrainField::BatchSize => "training.batch_size",
            TrainField::GradAccum => "training.grad_accum",
            TrainField::MaxGradNorm => "training.max_grad_norm",
            TrainField::MaxSteps => "training.max_steps",
            TrainField::EarlyStoppingPatience => "training.early_stopping_patience",
        }
    }

    pub fn parse(name: &str) -> Option<TrainField> {
        TrainField::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// Every sweepable name, for error messages.
    pub fn accepted() -> String {
        TrainField::ALL.map(TrainField::as_str).join(", ")
    }

    /// The values the field accepts: the same ranges as the manifest's own fields.
    pub fn kind(self) -> FieldKind {
        let positive = FieldKind::Real {
            low: 0.0,
            low_open: true,
            high: f64::INFINITY,
            high_open: true,
        };
        match self {
            TrainField::LoraR
            | TrainField::BatchSize
            | TrainField::GradAccum
            | TrainField::MaxSteps => FieldKind::Integer { min: 1 },
            TrainField::WarmupSteps | TrainField::EarlyStoppingPatience => {
                FieldKind::Integer { min: 0 }
            }
            TrainField::LoraAlpha
            | TrainField::Lr
            | TrainField::Epochs
            | TrainField::MaxGradNorm => positive,
            TrainField::WeightDecay => FieldKind::Real {
                low: 0.0,
                low_open: false,
                high: f64::INFINITY,
                high_open: true,
            },
            TrainField::LoraDropout => FieldKind::Real {
                low: 0.0,
                low_open: false,
                high: 1.0,
                high_open: true,
            },
            TrainField::LoraTargetModules => FieldKind::Modules,
        }
    }
}

impl FieldKind {
    /// Whether the number `v` is a valid value.
    pub fn accepts(self, v: f64) -> bool {
        match self {
            FieldKind::Integer { min } => v.is_finite() && v.fract() == 0.0 && v >= min as f64,
            FieldKind::Real {
                low,
                low_open,
                high,
                high_open,
            } => {
                v.is_finite()
                    && if low_open { v > low } else { v >= low }
                    && if high_open { v < high } else { v <= high }
            }
            FieldKind::Modules => false,
        }
    }

    /// What is accepted, in words.
    pub fn describe(self) -> String {
        match self {
            FieldKind::Integer { min } => format!("whole numbers >= {min}"),
            FieldKind::Real {
                low,
                low_open,
                high,
                high_open,
            } => {
                let lo = if low_open { ">" } else { ">=" };
                if high.is_finite() {
                    let hi = if high_open { "<" } else { "<=" };
                    format!("numbers {lo} {low} and {hi} {high}")
                } else {
                    format!("numbers {lo} {low}")
                }
            }
            FieldKind::Modules => "lists of target module names".into(),
        }
    }
}

/// One value of a swept field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    Number(f64),
    Modules(Vec<String>),
}

impl std::fmt::Display for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Number(v) => write!(f, "{v}"),
            FieldValue::Modules(m) => write!(f, "[{}]", m.join(",")),
        }
    }
}

/// One point of a sweep: a value for each swept field, in the sweep's field order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainPoint {
    pub values: Vec<(TrainField, FieldValue)>,
}

impl TrainPoint {
    /// `training.lr=0.0001, lora.r=16`.
    pub fn describe(&self) -> String {
        self.values
            .iter()
            .map(|(field, value)| format!("{}={value}", field.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The stage's LoRA and training settings with this point's values in place.
    pub fn apply(&self, lora: &LoraSpec, training: &TrainingSpec) -> (LoraSpec, TrainingSpec) {
        let (mut lora, mut training) = (lora.clone(), training.clone());
        for (field, value) in &self.values {
            match value {
                FieldValue::Modules(modules) => lora.target_modules = modules.clone(),
                FieldValue::Number(v) => {
                    let whole = *v as usize;
                    match field {
                        TrainField::LoraR => lora.r = whole,
                        TrainField::LoraAlpha => lora.alpha = *v,
                        TrainField::LoraDropout => lora.dropout = *v,
                        TrainField::LoraTargetModules => {}
                        TrainField::Lr => training.lr = *v,
                        TrainField::WarmupSteps => training.warmup_steps = whole,
                        TrainField::WeightDecay => training.weight_decay = *v,
                        TrainField::Epochs => training.epochs = *v,
                        TrainField::BatchSize => training.batch_size = whole,
                        TrainField::GradAccum => training.grad_accum = whole,
                        TrainField::MaxGradNorm => training.max_grad_norm = *v,
                        TrainField::MaxSteps => training.max_steps = Some(whole),
                        TrainField::EarlyStoppingPatience => {
                            training.early_stopping_patience = whole
                        }
                    }
                }
            }
        }
        (lora, training)
    }
}

/// How the points are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMethod {
    /// Every combination of the listed values (the first field varies slowest).
    Grid,
    /// `samples` points drawn with the sweep's seed: a list is sampled uniformly, a `{ min, max }` range
    /// uniformly (or log-uniformly with `log = true`; whole-number fields are rounded).
    Random,
    /// The `[[training_sweep.points]]` tables, as written.
    List,
}

impl SearchMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMethod::Grid => "grid",
            SearchMethod::Random => "random",
            SearchMethod::List => "list",
        }
    }
}

/// A random-search dimension.
#[derive(Debug, Clone, PartialEq)]
pub enum Dimension {
    Choice(Vec<FieldValue>),
    Range { min: f64, max: f64, log: bool },
}

/// `samples` points over `dims` from `seed`: the same arguments always give the same points.
pub fn sample_points(
    dims: &[(TrainField, Dimension)],
    samples: usize,
    seed: u64,
) -> Vec<TrainPoint> {
    // Raw 64-bit draws (not a library distribution), so the points never change with a rand upgrade.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut unit = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (0..samples)
        .map(|_| TrainPoint {
            values: dims
                .iter()
                .map(|(field, dim)| {
                    let value = match dim {
                        Dimension::Choice(items) => {
                            let at = ((unit() * items.len() as f64) as usize).min(items.len() - 1);
                            items[at].clone()
                        }
                        Dimension::Range { min, max, log } => {
                            let u = unit();
                            let v = if *log {
                                (min.ln() + u * (max.ln() - min.ln())).exp()
                            } else {
                                min + u * (max - min)
                            };
                            match field.kind() {
                                FieldKind::Integer { .. } => FieldValue::Number(v.round()),
                                _ => FieldValue::Number(v),
                            }
                        }
                    };
                    (*field, value)
                })
                .collect(),
        })
        .collect()
}

/// Every combination of `lists`, the first field varying slowest.
pub fn grid_points(lists: &[(TrainField, Vec<FieldValue>)]) -> Vec<TrainPoint> {
    let mut points = vec![TrainPoint { values: Vec::new() }];
    for (field, values) in lists {
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut next = p.clone();
                    next.values.push((*field, v.clone()));
                    next
                })
            })
            .collect();
    }
    if lists.is_empty() {
        return Vec::new();
    }
    points
}

/// What picks the best point: validation loss (lowest wins), or a score of `tandem score` on the validation
/// rows (highest wins).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    ValLoss,
    Score(String),
}

impl Selection {
    /// The name in manifests and tables: `val_loss` or a score key such as `rougeL`.
    pub fn name(&self) -> &str {
        match self {
            Selection::ValLoss => "val_loss",
            Selection::Score(key) => key,
        }
    }

    /// Whether a higher value is better.
    pub fn maximise(&self) -> bool {
        matches!(self, Selection::Score(_))
    }

    /// The metric that computes a score key (`bleu2` -> BLEU); `None` for a key no metric emits.
    pub fn metric_of(key: &str) -> Option<Metric> {
        match key {
            "bleu1" | "bleu2" | "bleu3" | "bleu4" => Some(Metric::Bleu),
            "rouge1" | "rouge2" | "rougeL" => Some(Metric::Rouge),
            "meteor" => Some(Metric::Meteor),
            "bertscore_f1" => Some(Metric::Bertscore),
            "radgraph_partial" => Some(Metric::Radgraph),
            _ => None,
        }
    }

    pub const ACCEPTED: &str = "val_loss, bleu1, bleu2, bleu3, bleu4, rouge1, rouge2, rougeL, meteor, bertscore_f1, radgraph_partial";
}

/// Asynchronous successive halving (ASHA, as Ray Tune's scheduler): rungs at `grace_period * reduction_factor^k`
/// optimizer steps; a point whose validation loss at a rung is worse than the best `1 / reduction_factor` of
/// the values recorded there so far stops, keeping its best adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AshaSpec {
    pub grace_period: usize,
    pub reduction_factor: usize,
}

impl AshaSpec {
    /// The rung index of optimizer step `step`, if it is a rung milestone.
    pub fn rung_of(&self, step: usize) -> Option<u32> {
        let mut milestone = self.grace_period.max(1);
        let mut rung = 0;
        while milestone <= step {
            if milestone == step {
                return Some(rung);
            }
            milestone = milestone.checked_mul(self.reduction_factor.max(2))?;
            rung += 1;
        }
        None
    }
}

/// One training sweep of a stage, expanded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSweep {
    pub stage: Stage,
    pub method: SearchMethod,
    /// The swept fields, in manifest order.
    pub fields: Vec<TrainField>,
    /// Every point, in the order jobs are planned (their index is the point number).
    pub points: Vec<TrainPoint>,
    pub select: Selection,
    /// Whether the selected point's adapter is the stage's model for the tables and the next stage (otherwise
    /// the manifest's own settings are, and the sweep is a side study).
    pub feed: bool,
    pub asha: Option<AshaSpec>,
    /// Points above which `tandem submit`/`run` ask for `--yes`.
    pub max_points: usize,
}

impl TrainingSweep {
    /// One line for `tandem plan`: what is swept, how points are chosen and stopped.
    pub fn describe(&self) -> String {
        let fields: Vec<&str> = self.fields.iter().map(|f| f.as_str()).collect();
        let asha = self.asha.map_or_else(
            || "no early stopping of points".to_owned(),
            |a| {
                format!(
                    "ASHA rungs at {} x {}^k updates",
                    a.grace_period, a.reduction_factor
                )
            },
        );
        let feed = if self.feed {
            "the chosen adapter is the stage's model"
        } else {
            "a side study (the stage's model keeps the manifest's settings)"
        };
        format!(
            "training sweep of {}: {} of {} points over {}; selected by {}; {asha}; {feed}",
            self.stage.as_str(),
            self.method.as_str(),
            self.points.len(),
            fields.join(", "),
            self.select.name()
        )
    }
}

/// The default of `max_points`.
pub const DEFAULT_MAX_POINTS: usize = 32;

/// The ASHA decision at a rung: stop when `value` is worse than the `1 / reduction_factor` quantile of the
/// values recorded at that rung (`value` included). Returns `(stop, cutoff)`. The first point to reach a rung
/// always continues. Ties continue.
pub fn asha_decision(
    recorded: &[f64],
    value: f64,
    reduction_factor: usize,
    maximise: bool,
) -> (bool, f64) {
    let mut values: Vec<f64> = recorded.iter().copied().filter(|v| v.is_finite()).collect();
    values.push(value);
    // Order best first; the cutoff is the value at the top 1/eta quantile (linear interpolation, as numpy's
    // percentile, which Ray Tune uses).
    values.sort_by(|a, b| {
        let o = a.total_cmp(b);
        if maximise { o.reverse() } else { o }
    });
    let q = 1.0 / reduction_factor.max(2) as f64;
    let position = q * (values.len() - 1) as f64;
    let (lo, hi) = (position.floor() as usize, position.ceil() as usize);
    let cutoff = values[lo] + (values[hi] - values[lo]) * (position - lo as f64);
    let worse = if !value.is_finite() {
        true
    } else if maximise {
        value < cutoff
    } else {
        value > cutoff
    };
    (worse, cutoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_varies_the_first_field_slowest() {
        let points = grid_points(&[
            (
                TrainField::Lr,
                vec![FieldValue::Number(1e-4), FieldValue::Number(1e-3)],
            ),
            (
                TrainField::LoraR,
                vec![
                    FieldValue::Number(8.0),
                    FieldValue::Number(16.0),
                    FieldValue::Number(64.0),
                ],
            ),
        ]);
        assert_eq!(points.len(), 6);
        assert_eq!(points[0].describe(), "training.lr=0.0001, lora.r=8");
        assert_eq!(points[2].describe(), "training.lr=0.0001, lora.r=64");
        assert_eq!(points[3].describe(), "training.lr=0.001, lora.r=8");
        assert!(grid_points(&[]).is_empty());
    }

    #[test]
    fn random_points_are_seeded_in_range_and_whole_where_needed() {
        let dims = vec![
            (
                TrainField::Lr,
                Dimension::Range {
                    min: 1e-5,
                    max: 1e-2,
                    log: true,
                },
            ),
            (
                TrainField::WarmupSteps,
                Dimension::Range {
                    min: 0.0,
                    max: 10.0,
                    log: false,
                },
            ),
            (
                TrainField::LoraR,
                Dimension::Choice(vec![FieldValue::Number(8.0), FieldValue::Number(32.0)]),
            ),
        ];
        let a = sample_points(&dims, 20, 7);
        assert_eq!(a, sample_points(&dims, 20, 7), "same seed, same points");
        assert_ne!(a, sample_points(&dims, 20, 8));
        for p in &a {
            let FieldValue::Number(lr) = p.values[0].1 else {
                panic!()
            };
            assert!((1e-5..=1e-2).contains(&lr));
            let FieldValue::Number(w) = p.values[1].1 else {
                panic!()
            };
            assert_eq!(w.fract(), 0.0);
            assert!(TrainField::WarmupSteps.kind().accepts(w));
        }
        // Log-uniform: about half the draws below the geometric middle (3.16e-4).
        let below = a
            .iter()
            .filter(|p| matches!(p.values[0].1, FieldValue::Number(v) if v < 3.162e-4))
            .count();
        assert!(
            (4..=16).contains(&below),
            "{below} of 20 below the log middle"
        );
    }

    #[test]
    fn points_change_only_their_fields() {
        let lora = crate::manifest::defaults::lora();
        let training = crate::manifest::defaults::training(Stage::Stage1);
        let point = TrainPoint {
            values: vec![
                (TrainField::LoraR, FieldValue::Number(64.0)),
                (TrainField::MaxSteps, FieldValue::Number(12.0)),
                (
                    TrainField::LoraTargetModules,
                    FieldValue::Modules(vec!["q_proj".into()]),
                ),
            ],
        };
        let (l, t) = point.apply(&lora, &training);
        assert_eq!(
            (l.r, l.alpha, t.max_steps, t.lr),
            (64, lora.alpha, Some(12), training.lr)
        );
        assert_eq!(l.target_modules, vec!["q_proj".to_owned()]);
    }

    #[test]
    fn rungs_are_grace_times_powers_of_the_reduction_factor() {
        let asha = AshaSpec {
            grace_period: 4,
            reduction_factor: 3,
        };
        let rungs: Vec<(usize, u32)> = (1..=40)
            .filter_map(|s| asha.rung_of(s).map(|r| (s, r)))
            .collect();
        assert_eq!(rungs, vec![(4, 0), (12, 1), (36, 2)]);
    }

    #[test]
    fn asha_stops_what_is_worse_than_the_top_quantile() {
        // The first arrival continues.
        assert_eq!(asha_decision(&[], 3.0, 3, false), (false, 3.0));
        // Losses 1, 2, 3 recorded; with eta = 2 the cutoff is the median.
        let (stop, cutoff) = asha_decision(&[1.0, 3.0], 2.0, 2, false);
        assert_eq!((stop, cutoff), (false, 2.0));
        let (stop, _) = asha_decision(&[1.0, 2.0], 3.0, 2, false);
        assert!(stop);
        // Scores: higher is better.
        let (stop, _) = asha_decision(&[0.5, 0.4], 0.1, 2, true);
        assert!(stop);
        // A diverged point (NaN loss) always stops.
        assert!(asha_decision(&[1.0], f64::NAN, 3, false).0);
    }
}
