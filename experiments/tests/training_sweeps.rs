//! `[training_sweep]`: the points a grid, a seeded random search and a list expand to, every bad input refused
//! with its field named, and the job graph a sweep plans (a train job per point, the select job whose adapter
//! feeds the stage's tables and the next stage, ASHA rules shared by the competing points).

mod common;

use common::Project;
use tandem_experiments::manifest::{
    self, FieldValue, LoadOptions, Manifest, ManifestError, SearchMethod, Selection, TrainField,
};
use tandem_experiments::planner::{self, JobConfig, JobKind, Plan};

fn load(project: &Project, text: &str) -> Result<Manifest, ManifestError> {
    let path = project.manifest("m.toml", text);
    manifest::load(&path, LoadOptions { check_files: true })
}

fn with(extra: &str) -> String {
    format!(
        "{}\n[stage1.training]\neval_every = 2\nmax_steps = 8\n\n[stage2.training]\neval_every = 2\n{extra}\n",
        Project::base_text()
    )
}

fn errors(extra: &str) -> Vec<String> {
    let project = Project::new();
    let error = load(&project, &with(extra)).expect_err("the manifest must be rejected");
    error.to_string().lines().map(str::to_owned).collect()
}

fn plan(project: &Project, extra: &str) -> Plan {
    let m = load(project, &with(extra)).unwrap_or_else(|e| panic!("{e}"));
    planner::plan(&m).unwrap_or_else(|e| panic!("{e}"))
}

const GRID: &str = r#"
[training_sweep]
stage = "stage1"
[training_sweep.space]
"training.lr" = [1e-4, 1e-3]
lora.r = [8, 16, 64]
"#;

#[test]
fn a_grid_expands_to_every_combination_in_manifest_order() {
    let project = Project::new();
    let m = load(&project, &with(GRID)).unwrap();
    let sweep = m.training_sweep.expect("a sweep");
    assert_eq!(sweep.method, SearchMethod::Grid);
    assert_eq!(sweep.fields, vec![TrainField::Lr, TrainField::LoraR]);
    assert_eq!(sweep.points.len(), 6);
    assert_eq!(sweep.points[1].describe(), "training.lr=0.0001, lora.r=16");
    assert_eq!(sweep.select, Selection::ValLoss);
    assert!(sweep.feed);
    assert_eq!(sweep.asha, None);
}

#[test]
fn a_random_search_is_seeded_and_stays_in_its_ranges() {
    let text = r#"
[training_sweep]
method = "random"
samples = 12
seed = 3
[training_sweep.space]
"training.lr" = { min = 1e-5, max = 1e-2, log = true }
"training.warmup_steps" = { min = 0, max = 20 }
"lora.target_modules" = [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]]
"#;
    let project = Project::new();
    let a = load(&project, &with(text)).unwrap().training_sweep.unwrap();
    let b = load(&project, &with(text)).unwrap().training_sweep.unwrap();
    assert_eq!(a.points, b.points, "same seed, same points");
    assert_eq!(a.points.len(), 12);
    let other = load(&project, &with(&text.replace("seed = 3", "seed = 4")))
        .unwrap()
        .training_sweep
        .unwrap();
    assert_ne!(a.points, other.points);
    for p in &a.points {
        let FieldValue::Number(lr) = p.values[0].1 else {
            panic!("{p:?}")
        };
        assert!((1e-5..=1e-2).contains(&lr), "{lr}");
        let FieldValue::Number(w) = p.values[1].1 else {
            panic!("{p:?}")
        };
        assert!(w.fract() == 0.0 && (0.0..=20.0).contains(&w), "{w}");
        assert!(matches!(&p.values[2].1, FieldValue::Modules(m) if m.len() == 2 || m.len() == 4));
    }
}

#[test]
fn a_list_sweep_runs_the_points_as_written() {
    let text = r#"
[training_sweep]
select = "rougeL"
feed = false
[[training_sweep.points]]
"training.lr" = 1e-4
"lora.r" = 8
[[training_sweep.points]]
"lora.r" = 32
"training.lr" = 5e-4
[training_sweep.asha]
grace_period = 2
reduction_factor = 2
"#;
    let project = Project::new();
    let sweep = load(&project, &with(text)).unwrap().training_sweep.unwrap();
    assert_eq!(sweep.method, SearchMethod::List);
    assert_eq!(sweep.points.len(), 2);
    assert_eq!(sweep.points[1].describe(), "training.lr=0.0005, lora.r=32");
    assert_eq!(sweep.select, Selection::Score("rougeL".into()));
    assert!(!sweep.feed);
    assert_eq!(
        sweep.asha.map(|a| (a.grace_period, a.reduction_factor)),
        Some((2, 2))
    );
}

#[test]
fn bad_sweeps_are_refused_with_the_field_named() {
    let cases: &[(&str, &str)] = &[
        (
            "[training_sweep.space]\n\"training.lrr\" = [1e-4]\n",
            "training_sweep.space.training.lrr: \"training.lrr\" is not a field a training sweep can vary (accepted: lora.r, lora.alpha",
        ),
        (
            "[training_sweep.space]\n\"training.lr\" = [\"fast\"]\n",
            "training_sweep.space.training.lr: \"fast\" is not a valid training.lr (accepted: numbers > 0)",
        ),
        (
            "[training_sweep.space]\n\"lora.dropout\" = [0.1, 1.5]\n",
            "training_sweep.space.lora.dropout: 1.5 is not a valid lora.dropout (accepted: numbers >= 0 and < 1)",
        ),
        (
            "[training_sweep.space]\n\"lora.r\" = [8.5]\n",
            "training_sweep.space.lora.r: 8.5 is not a valid lora.r (accepted: whole numbers >= 1)",
        ),
        (
            "[training_sweep.space]\n\"lora.r\" = []\n",
            "training_sweep.space.lora.r: the grid is empty: no values",
        ),
        (
            "[training_sweep.space]\n\"lora.target_modules\" = [[\"q_proj\", \"wq\"]]\n",
            "training_sweep.space.lora.target_modules: \"wq\" is not a target module of this model family",
        ),
        (
            "[evaluation]\nmetrics = [\"bleu\"]\n[training_sweep]\nselect = \"rougeL\"\n[training_sweep.space]\n\"lora.r\" = [8]\n",
            "training_sweep.select: rougeL needs the Rouge metric",
        ),
        (
            "[training_sweep]\nselect = \"accuracy\"\n[training_sweep.space]\n\"lora.r\" = [8]\n",
            "training_sweep.select: unknown selection metric \"accuracy\" (accepted: val_loss, bleu1",
        ),
        (
            "[training_sweep.space]\n\"lora.r\" = [8]\n[training_sweep.asha]\ngrace_period = 3\n",
            "training_sweep.asha.grace_period: 3 is not a positive multiple of eval_every (2)",
        ),
        (
            "[training_sweep]\nmethod = \"random\"\n[training_sweep.space]\n\"lora.r\" = [8]\n",
            "training_sweep.samples: missing (required for method = \"random\")",
        ),
        (
            "[[training_sweep.points]]\n\"lora.r\" = 8\n[[training_sweep.points]]\n\"training.lr\" = 1e-3\n",
            "training_sweep.points[1]: names training.lr, the first point names lora.r (accepted: the same fields in every point)",
        ),
    ];
    for (extra, expected) in cases {
        let text = if extra.starts_with('[') && !extra.starts_with("[training_sweep.") {
            extra.to_string()
        } else {
            format!("[training_sweep]\n{extra}")
        };
        let errors = errors(&text);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{extra}\nexpected {expected:?} in {errors:#?}"
        );
    }
}

#[test]
fn a_stage1_sweep_trains_every_point_and_the_selected_adapter_feeds_stage2() {
    let project = Project::new();
    let plan = plan(&project, GRID);
    let points: Vec<_> = plan
        .jobs
        .iter()
        .filter(|j| j.kind == JobKind::Train && j.stage == Some(manifest::Stage::Stage1))
        .collect();
    assert_eq!(
        points.len(),
        6,
        "one train job per point, no configured one"
    );
    assert!(
        points[1]
            .label
            .starts_with("train(stage1, point 1: training.lr=0.0001, lora.r=16")
    );
    let select: Vec<_> = plan
        .jobs
        .iter()
        .filter(|j| j.kind == JobKind::Select)
        .collect();
    assert_eq!(select.len(), 1);
    let select = select[0];
    assert_eq!(
        select.deps,
        points.iter().map(|j| j.id.clone()).collect::<Vec<_>>()
    );
    // Every stage-2 fold starts from the selected adapter, and the stage-1 model's evaluations use it.
    for job in &plan.jobs {
        match &job.config {
            JobConfig::Train(t) if t.stage == manifest::Stage::Stage2 => {
                assert_eq!(
                    t.init_adapter.as_deref(),
                    Some(select.id.as_str()),
                    "{}",
                    job.label
                )
            }
            JobConfig::Eval(e) if e.model_stage == manifest::ModelStage::Stage1 => {
                assert_eq!(
                    e.adapter.as_deref(),
                    Some(select.id.as_str()),
                    "{}",
                    job.label
                )
            }
            _ => {}
        }
    }
    // The points' settings are in their configs (and so in their ids); replanning gives the same ids.
    let JobConfig::Train(t) = &points[5].config else {
        panic!()
    };
    assert_eq!((t.training.lr, t.lora.r), (1e-3, 64));
    let again = planner::plan(&load(&project, &with(GRID)).unwrap()).unwrap();
    assert_eq!(plan.jobs, again.jobs);
}

#[test]
fn points_keep_their_ids_when_only_the_selection_changes() {
    let project = Project::new();
    let by_loss = plan(&project, GRID);
    let by_rouge = plan(
        &project,
        &GRID.replace(
            "stage = \"stage1\"",
            "stage = \"stage1\"\nselect = \"rougeL\"",
        ),
    );
    let trains = |p: &Plan| -> Vec<String> {
        p.jobs
            .iter()
            .filter(|j| j.label.starts_with("train(stage1, point"))
            .map(|j| j.id.clone())
            .collect()
    };
    assert_eq!(
        trains(&by_loss),
        trains(&by_rouge),
        "the points come from the cache"
    );
    // Selecting by a score adds an evaluation of each point on the validation rows.
    let val_evals: Vec<_> = by_rouge
        .jobs
        .iter()
        .filter(|j| matches!(&j.config, JobConfig::Eval(e) if e.data.part == "val"))
        .collect();
    assert_eq!(val_evals.len(), 6);
    assert!(
        by_loss
            .jobs
            .iter()
            .all(|j| !matches!(&j.config, JobConfig::Eval(e) if e.data.part == "val"))
    );
}

#[test]
fn a_side_study_keeps_the_configured_model_and_a_stage2_sweep_selects_per_fold() {
    let project = Project::new();
    let side = plan(
        &project,
        &GRID.replace("stage = \"stage1\"", "stage = \"stage1\"\nfeed = false"),
    );
    let configured = side
        .jobs
        .iter()
        .find(|j| j.label == "train(stage1)")
        .expect("the configured stage-1 training");
    assert!(side.jobs.iter().any(|j| j.kind == JobKind::Select));
    for job in &side.jobs {
        if let JobConfig::Train(t) = &job.config
            && t.stage == manifest::Stage::Stage2
        {
            assert_eq!(t.init_adapter.as_deref(), Some(configured.id.as_str()));
        }
    }

    let stage2 = r#"
[training_sweep]
stage = "stage2"
[training_sweep.space]
"training.lr" = [1e-4, 1e-3]
[training_sweep.asha]
grace_period = 2
"#;
    let plan = plan(&project, stage2);
    let selects: Vec<_> = plan
        .jobs
        .iter()
        .filter(|j| j.kind == JobKind::Select)
        .collect();
    let folds = plan.count(JobKind::DataPrep); // sanity: both stages prepared
    assert_eq!(folds, 2);
    assert_eq!(
        selects.len(),
        5,
        "one selection per fold (the thesis's 5 folds)"
    );
    // The points of one fold share an ASHA group; folds do not.
    let groups: std::collections::BTreeMap<Option<usize>, std::collections::BTreeSet<String>> =
        plan.jobs.iter().fold(Default::default(), |mut acc, j| {
            if let JobConfig::Train(t) = &j.config
                && let Some(asha) = &t.asha
            {
                acc.entry(t.fold).or_default().insert(asha.group.clone());
            }
            acc
        });
    assert_eq!(groups.len(), 5);
    assert!(groups.values().all(|g| g.len() == 1));
    let all: std::collections::BTreeSet<_> = groups.values().flatten().collect();
    assert_eq!(all.len(), 5);
}
