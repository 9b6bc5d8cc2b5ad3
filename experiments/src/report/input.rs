//! What the report reads: one scored evaluation per eval job ([`EvalResult`]), one point per logged training or
//! validation value ([`CurvePoint`]), and the table columns with the score keys `tandem score` emits.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::manifest::{GenerationSpec, ModelFamily, ModelStage, Stage, SweepParameter};

/// The corpus scores of one evaluation job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub family: ModelFamily,
    pub model: ModelStage,
    /// The task (test set) evaluated on.
    pub task: Stage,
    /// The fold of a k-fold stage (the test fold, and for two-stage models the fold the model was trained on).
    pub fold: Option<usize>,
    /// The sweep point this evaluation belongs to, if any.
    pub sweep: Option<(SweepParameter, f64)>,
    /// Whether this evaluation used the manifest's configured generation settings, i.e. it is a cell of the
    /// main tables. True for an evaluation without a sweep point; for a sweep point, true when its value equals
    /// the configured one (the planner runs that work once), see [`EvalResult::is_configured`].
    #[serde(default = "default_true")]
    pub configured: bool,
    /// Corpus scores by the keys of `tandem score` (`bleu1`, `rougeL`, `bertscore_f1`, `radgraph_partial`,
    /// ...), in [0, 1]; `None` = not available. Keys the tables do not show are ignored.
    pub scores: BTreeMap<String, Option<f64>>,
}

fn default_true() -> bool {
    true
}

impl EvalResult {
    /// Whether an evaluation with `sweep` ran the configured generation settings `generation` of its task.
    pub fn is_configured(
        generation: &GenerationSpec,
        sweep: Option<(SweepParameter, f64)>,
    ) -> bool {
        match sweep {
            None => true,
            Some((parameter, value)) => generation.with(parameter, value) == *generation,
        }
    }
}

/// Which logged quantity a curve point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Series {
    TrainLoss,
    ValLoss,
    ValPerplexity,
}

impl Series {
    pub const ALL: [Series; 3] = [Series::TrainLoss, Series::ValLoss, Series::ValPerplexity];

    /// The metric name the engine streams: `train_loss`, `val_loss`, `val_perplexity`.
    pub fn as_str(self) -> &'static str {
        match self {
            Series::TrainLoss => "train_loss",
            Series::ValLoss => "val_loss",
            Series::ValPerplexity => "val_perplexity",
        }
    }

    /// Parses the streamed metric name.
    pub fn parse(name: &str) -> Option<Series> {
        Series::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The panel title.
    pub fn title(self) -> &'static str {
        match self {
            Series::TrainLoss => "Training loss",
            Series::ValLoss => "Validation loss",
            Series::ValPerplexity => "Validation perplexity",
        }
    }
}

/// One logged value of a training job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The training stage that logged it.
    pub stage: Stage,
    /// The fold of a k-fold stage-2 training; `None` for stage 1.
    pub fold: Option<usize>,
    /// Optimizer step.
    pub step: u64,
    pub series: Series,
    pub value: f64,
}

/// One column of the thesis's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Column {
    /// The header, e.g. `B-1`.
    pub label: &'static str,
    /// The score key of `tandem score`, e.g. `bleu1`.
    pub key: &'static str,
}

/// The columns of Tables 4.1/4.3/4.4 in order. RG is F1-RadGraph with partial entity/relation matching
/// (`radgraph_partial`), the reward the RadGraph package reports as F1-RadGraph.
pub const COLUMNS: [Column; 10] = [
    Column {
        label: "B-1",
        key: "bleu1",
    },
    Column {
        label: "B-2",
        key: "bleu2",
    },
    Column {
        label: "B-3",
        key: "bleu3",
    },
    Column {
        label: "B-4",
        key: "bleu4",
    },
    Column {
        label: "R-1",
        key: "rouge1",
    },
    Column {
        label: "R-2",
        key: "rouge2",
    },
    Column {
        label: "R-L",
        key: "rougeL",
    },
    Column {
        label: "M",
        key: "meteor",
    },
    Column {
        label: "BS",
        key: "bertscore_f1",
    },
    Column {
        label: "RG",
        key: "radgraph_partial",
    },
];

/// The curve points of every training series (`train_loss`, `val_loss`, `val_perplexity`) of a job with a
/// placement: `series` as (job id, series name, steps, values), `placements` as (job id, stage, fold). Series of
/// other jobs and other names are not curves; a placement with an unknown stage is reported in the returned
/// notes.
pub fn curve_points<'a>(
    series: impl IntoIterator<Item = (&'a str, &'a str, &'a [u64], &'a [f64])>,
    placements: impl IntoIterator<Item = (&'a str, &'a str, Option<usize>)>,
) -> (Vec<CurvePoint>, Vec<String>) {
    let mut notes = Vec::new();
    let mut by_job: HashMap<&str, (Stage, Option<usize>)> = HashMap::new();
    for (job, stage, fold) in placements {
        match Stage::ALL.into_iter().find(|s| s.as_str() == stage) {
            Some(stage) => {
                by_job.insert(job, (stage, fold));
            }
            None => notes.push(format!(
                "job {job}: unknown stage {stage:?} (expected stage1 or stage2); its curves are not drawn"
            )),
        }
    }
    let mut points = Vec::new();
    for (job, name, steps, values) in series {
        let (Some(kind), Some(&(stage, fold))) = (Series::parse(name), by_job.get(job)) else {
            continue;
        };
        points.extend(steps.iter().zip(values).map(|(&step, &value)| CurvePoint {
            stage,
            fold,
            step,
            series: kind,
            value,
        }));
    }
    (points, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation() -> GenerationSpec {
        GenerationSpec {
            max_new_tokens: 128,
            min_new_tokens: 0,
            do_sample: true,
            temperature: 0.6,
            top_k: 50,
            top_p: 0.9,
            num_beams: 10,
            length_penalty: 0.3,
            repetition_penalty: 1.1,
            early_stopping: false,
            max_eval_rows: None,
        }
    }

    #[test]
    fn the_sweep_point_equal_to_the_configured_setting_is_configured() {
        let g = generation();
        assert!(EvalResult::is_configured(&g, None));
        assert!(EvalResult::is_configured(
            &g,
            Some((SweepParameter::Temperature, 0.6))
        ));
        assert!(!EvalResult::is_configured(
            &g,
            Some((SweepParameter::Temperature, 0.1))
        ));
        assert!(EvalResult::is_configured(
            &g,
            Some((SweepParameter::TopK, 50.0))
        ));
        assert!(!EvalResult::is_configured(
            &g,
            Some((SweepParameter::NumBeams, 4.0))
        ));
    }

    #[test]
    fn series_names_round_trip() {
        for s in Series::ALL {
            assert_eq!(Series::parse(s.as_str()), Some(s));
        }
        assert_eq!(Series::parse("loss"), None);
        let json = serde_json::to_string(&Series::ValPerplexity).expect("json");
        assert_eq!(json, "\"val_perplexity\"");
    }

    #[test]
    fn configured_defaults_to_true_in_json() {
        let e: EvalResult = serde_json::from_str(
            r#"{"family":"t5","model":"two-stage","task":"stage2","fold":2,"sweep":null,
                "scores":{"bleu1":0.5,"radgraph_partial":null}}"#,
        )
        .expect("parse");
        assert!(e.configured);
        assert_eq!(e.scores["radgraph_partial"], None);
    }
}
