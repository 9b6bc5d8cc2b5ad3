//! The planner's job graph: every cell of Tables 4.1 and 4.3, sweeps, dependencies, and content-hash ids that
//! change exactly where the inputs change.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Project, copy_tree};
use tandem_experiments::manifest::{self, DevicePreference, LoadOptions, ModelStage, Stage};
use tandem_experiments::planner::{self, JobConfig, JobKind, JobSpec, Plan};

fn plan_of(project: &Project, text: &str) -> Plan {
    let path = project.manifest("m.toml", text);
    let m = manifest::load(&path, LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    planner::plan(&m).unwrap_or_else(|e| panic!("{e}"))
}

fn ids_by_label(plan: &Plan) -> BTreeMap<String, String> {
    plan.jobs
        .iter()
        .map(|j| (j.label.clone(), j.id.clone()))
        .collect()
}

fn find<'a>(plan: &'a Plan, label: &str) -> &'a JobSpec {
    plan.jobs
        .iter()
        .find(|j| j.label == label)
        .unwrap_or_else(|| panic!("no job {label}"))
}

#[test]
fn the_graph_has_every_cell_fold_and_sweep_point() {
    let project = Project::new();
    let plan = plan_of(&project, &Project::base_text());
    // 2 data-prep; train stage1 + 5 folds; evals: base+stage1 on stage1, and per fold base, stage1,
    // two-stage x {0.4, 0.6 (configured)}, forgetting = 5 per fold; one report.
    assert_eq!(plan.count(JobKind::DataPrep), 2);
    assert_eq!(plan.count(JobKind::Train), 6);
    assert_eq!(plan.count(JobKind::Eval), 2 + 5 * 5);
    assert_eq!(plan.count(JobKind::Report), 1);
    let cells: BTreeSet<(ModelStage, Stage)> = plan
        .jobs
        .iter()
        .filter_map(|j| Some((j.model_stage?, j.task?)))
        .collect();
    assert_eq!(cells.len(), 6, "every model-stage x task cell");
    for fold in 0..5 {
        let train = find(&plan, &format!("train(stage2, fold {fold})"));
        let forgetting = find(&plan, &format!("eval(two-stage fold {fold}, stage1 test)"));
        assert_eq!(
            forgetting.deps.last(),
            Some(&train.id),
            "forgetting check uses the fold's adapter"
        );
        assert_eq!(forgetting.task, Some(Stage::Stage1));
        let JobConfig::Eval(config) = &forgetting.config else {
            panic!("{} is not an eval", forgetting.label)
        };
        // The model is fold `fold`'s; the test rows are stage 1's one holdout part.
        assert_eq!(config.fold, Some(fold));
        assert_eq!(config.data.fold, None);
        assert!(forgetting.configured);
        let configured = find(
            &plan,
            &format!(
                "eval(two-stage fold {fold}, stage2 fold {fold} test, temperature=0.6 (configured))"
            ),
        );
        let swept = find(
            &plan,
            &format!("eval(two-stage fold {fold}, stage2 fold {fold} test, temperature=0.4)"),
        );
        assert!(
            configured.configured,
            "the sweep point equal to the settings is a table cell"
        );
        assert!(!swept.configured);
        for (job, temperature) in [(configured, 0.6), (swept, 0.4)] {
            let JobConfig::Eval(eval) = &job.config else {
                panic!("eval config")
            };
            assert_eq!(eval.generation.temperature, temperature);
            assert_eq!(job.sweep.map(|p| p.value), Some(temperature));
            assert_eq!(eval.adapter.as_ref(), Some(&train.id));
            assert_eq!(eval.generation.num_beams, 10, "stage-2 generation settings");
        }
    }
}

#[test]
fn deps_come_first_and_stage2_starts_from_the_stage1_adapter() {
    let project = Project::new();
    let plan = plan_of(&project, &Project::base_text());
    let mut seen = BTreeSet::new();
    for job in &plan.jobs {
        for dep in &job.deps {
            assert!(
                seen.contains(dep),
                "{} depends on a later or unknown job",
                job.label
            );
        }
        assert!(seen.insert(job.id.clone()), "duplicate id {}", job.label);
    }
    let train1 = find(&plan, "train(stage1)");
    for fold in 0..5 {
        let train2 = find(&plan, &format!("train(stage2, fold {fold})"));
        assert!(train2.deps.contains(&train1.id));
        let JobConfig::Train(config) = &train2.config else {
            panic!()
        };
        assert_eq!(config.init_adapter.as_ref(), Some(&train1.id));
        assert_eq!(config.training.batch_size, 4);
        assert_eq!(config.data.fold, Some(fold));
        assert!(config.data.indices_sha256.is_some());
    }
    let report = find(&plan, "report");
    assert_eq!(report.deps.len(), plan.count(JobKind::Eval));
}

#[test]
fn data_prep_holds_the_split_indices_and_the_dataset_digest() {
    let project = Project::new();
    let plan = plan_of(&project, &Project::base_text());
    let JobConfig::DataPrep(prep) = &find(&plan, "data-prep(stage2, 5 folds)").config else {
        panic!()
    };
    let rows = prep.rows.as_ref().unwrap();
    assert_eq!(rows.usable_rows, 36);
    assert_eq!(rows.parts.len(), 5);
    let mut tested: Vec<usize> = rows.parts.iter().flat_map(|p| p.test.clone()).collect();
    tested.sort_unstable();
    assert_eq!(tested, (0..36).collect::<Vec<_>>());
    let digest =
        tandem_experiments::manifest::hash::sha256_file(&project.root().join("data/stage2.csv"))
            .unwrap()
            .0;
    assert_eq!(prep.dataset.sha256, format!("sha256:{digest}"));
}

#[test]
fn unchanged_inputs_give_unchanged_ids_even_after_moving_the_project() {
    let project = Project::new();
    let first = plan_of(&project, &Project::base_text());
    let second = plan_of(&project, &Project::base_text());
    assert_eq!(ids_by_label(&first), ids_by_label(&second));
    let elsewhere = tempfile::tempdir().unwrap();
    copy_tree(project.root(), elsewhere.path());
    let moved = manifest::load(
        &elsewhere.path().join("manifests/m.toml"),
        LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(
        ids_by_label(&first),
        ids_by_label(&planner::plan(&moved).unwrap())
    );
}

#[test]
fn a_stage2_setting_leaves_stage1_jobs_alone() {
    let project = Project::new();
    let base = ids_by_label(&plan_of(&project, &Project::base_text()));
    let changed = ids_by_label(&plan_of(
        &project,
        &format!("{}\n[stage2.training]\nlr = 3e-5\n", Project::base_text()),
    ));
    for label in [
        "data-prep(stage1)",
        "data-prep(stage2, 5 folds)",
        "train(stage1)",
        "eval(base, stage1 test)",
        "eval(stage1, stage1 test)",
        "eval(stage1, stage2 fold 0 test)",
        "eval(base, stage2 fold 3 test)",
    ] {
        assert_eq!(base[label], changed[label], "{label} must keep its id");
    }
    for label in [
        "train(stage2, fold 0)",
        "train(stage2, fold 4)",
        "eval(two-stage fold 2, stage1 test)",
        "eval(two-stage fold 1, stage2 fold 1 test, temperature=0.4)",
        "report",
    ] {
        assert_ne!(base[label], changed[label], "{label} must get a new id");
    }
}

#[test]
fn a_stage1_setting_changes_everything_downstream_of_stage1_training() {
    let project = Project::new();
    let base = ids_by_label(&plan_of(&project, &Project::base_text()));
    let changed = ids_by_label(&plan_of(
        &project,
        &format!("{}\n[stage1.training]\nlr = 3e-5\n", Project::base_text()),
    ));
    for label in [
        "data-prep(stage1)",
        "data-prep(stage2, 5 folds)",
        "eval(base, stage1 test)",
        "eval(base, stage2 fold 0 test)",
    ] {
        assert_eq!(
            base[label], changed[label],
            "{label} does not depend on stage-1 training"
        );
    }
    let downstream = base
        .keys()
        .filter(|l| !l.starts_with("data-prep") && !l.starts_with("eval(base"));
    for label in downstream {
        assert_ne!(base[label], changed[label], "{label} must get a new id");
    }
}

#[test]
fn a_dataset_byte_changes_its_data_prep_and_what_follows() {
    let project = Project::new();
    let base = ids_by_label(&plan_of(&project, &Project::base_text()));
    let path = project.root().join("data/stage1.csv");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("Finding 3,", "Finding 3;");
    std::fs::write(&path, text).unwrap();
    let changed = ids_by_label(&plan_of(&project, &Project::base_text()));
    assert_ne!(base["data-prep(stage1)"], changed["data-prep(stage1)"]);
    assert_ne!(base["train(stage1)"], changed["train(stage1)"]);
    assert_eq!(
        base["data-prep(stage2, 5 folds)"],
        changed["data-prep(stage2, 5 folds)"]
    );
    assert_eq!(
        base["eval(base, stage2 fold 0 test)"],
        changed["eval(base, stage2 fold 0 test)"]
    );
}

#[test]
fn resources_and_names_are_not_part_of_a_jobs_identity() {
    let project = Project::new();
    let base = ids_by_label(&plan_of(&project, &Project::base_text()));
    let text = format!(
        "{}\n[resources.train]\ngpus = 2\ngpu_memory_gb = 40\ncpu_threads = 8\n",
        Project::base_text()
    )
    .replace("name = \"fixture\"", "name = \"renamed\"");
    let changed = ids_by_label(&plan_of(&project, &text));
    assert_eq!(base["train(stage1)"], changed["train(stage1)"]);
    let plan = plan_of(&project, &text);
    assert_eq!(find(&plan, "train(stage1)").resources.gpus, 2);
}

#[test]
fn only_the_listed_cells_are_evaluated() {
    let project = Project::new();
    let text = format!(
        "{}\n[evaluation]\ncells = [\"two-stage:stage2\"]\n",
        Project::base_text()
    );
    let plan = plan_of(&project, &text);
    assert_eq!(plan.count(JobKind::Eval), 5 * 2);
    assert_eq!(plan.count(JobKind::Train), 6);
    assert!(
        plan.jobs
            .iter()
            .filter(|j| j.kind == JobKind::Eval)
            .all(|j| j.model_stage == Some(ModelStage::TwoStage))
    );
}

#[test]
fn work_no_cell_needs_is_not_planned() {
    let project = Project::new();
    let cells = |list: &str| {
        let text = format!("{}\n[evaluation]\ncells = [{list}]\n", Project::base_text());
        plan_of(&project, &text)
    };
    // Stage-1 cells only: no stage-2 data, no folds trained.
    let plan = cells("\"base:stage1\", \"stage1:stage1\"");
    assert_eq!(plan.count(JobKind::DataPrep), 1);
    assert_eq!(plan.count(JobKind::Train), 1);
    assert_eq!(plan.count(JobKind::Eval), 2);
    assert!(plan.jobs.iter().all(|j| j.stage != Some(Stage::Stage2)));
    // The base model on the stage-2 task: no training at all, no stage-1 data.
    let plan = cells("\"base:stage2\"");
    assert_eq!(plan.count(JobKind::DataPrep), 1);
    assert_eq!(plan.count(JobKind::Train), 0);
    assert_eq!(plan.count(JobKind::Eval), 5);
    assert!(plan.jobs.iter().all(|j| j.stage != Some(Stage::Stage1)));
    // The forgetting check alone still needs the whole chain.
    let plan = cells("\"two-stage:stage1\"");
    assert_eq!(plan.count(JobKind::DataPrep), 2);
    assert_eq!(plan.count(JobKind::Train), 6);
    assert_eq!(plan.count(JobKind::Eval), 5);
    let plan = cells("\"stage1:stage2\"");
    assert_eq!(plan.count(JobKind::Train), 1);
    assert_eq!(plan.count(JobKind::Eval), 5);
    // In every plan, each job is the report or one of its ancestors.
    for list in [
        "\"base:stage1\"",
        "\"stage1:stage2\"",
        "\"two-stage:stage1\"",
    ] {
        let plan = cells(list);
        let report = plan
            .jobs
            .iter()
            .find(|j| j.kind == JobKind::Report)
            .unwrap();
        let mut reached = BTreeSet::from([report.id.clone()]);
        let mut todo = report.deps.clone();
        while let Some(id) = todo.pop() {
            if reached.insert(id.clone()) {
                todo.extend(plan.job(&id).unwrap().deps.iter().cloned());
            }
        }
        assert_eq!(reached.len(), plan.jobs.len(), "{list}");
    }
}

#[test]
fn the_plan_serialises_with_ids_kinds_deps_and_config_hashes() {
    let project = Project::new();
    let plan = plan_of(&project, &Project::base_text());
    let json: serde_json::Value = serde_json::to_value(&plan).unwrap();
    let job = &json["jobs"][0];
    assert_eq!(job["kind"], "data_prep");
    assert_eq!(job["id"].as_str().unwrap().len(), 64);
    assert_eq!(job["config_hash"].as_str().unwrap().len(), 64);
    assert!(job["deps"].as_array().unwrap().is_empty());
    assert_eq!(job["config"]["type"], "data_prep");
    // The JSON reads back as the job, bar the submitter's paths, which it never holds.
    assert!(
        !json
            .to_string()
            .contains(&*project.root().to_string_lossy())
    );
    let back: JobSpec = serde_json::from_value(job.clone()).unwrap();
    let mut expected = plan.jobs[0].clone();
    for input in expected.inputs.values_mut() {
        input.path = Default::default();
    }
    assert_eq!(back, expected);
    assert!(planner::render_tree(&plan).contains("train(stage2, fold 4)"));
}

#[test]
fn a_worker_reruns_data_prep_from_the_config_alone_and_gets_the_planned_rows() {
    let project = Project::new();
    let plan = plan_of(&project, &Project::base_text());
    let job = find(&plan, "data-prep(stage2, 5 folds)");
    let JobConfig::DataPrep(config) = &job.config else {
        panic!()
    };
    let out = tempfile::tempdir().unwrap();
    let dataset = &job.inputs["dataset"].path;
    let prepared = planner::prep::run_data_prep(config, dataset, out.path()).unwrap();
    assert_eq!(Some(&prepared.rows), config.rows.as_ref());
    assert_eq!(&prepared.csv, dataset);
    // A changed byte is caught by the digest.
    std::fs::write(
        dataset,
        std::fs::read_to_string(dataset).unwrap() + "P1,x,y\n",
    )
    .unwrap();
    let error = planner::prep::run_data_prep(config, dataset, out.path())
        .unwrap_err()
        .to_string();
    assert!(error.contains("the job expects sha256:"), "{error}");
}

#[test]
fn a_mimic_data_prep_converts_the_tree_and_splits_it() {
    let project = Project::new();
    let tree = project.root().join("mimic/files/p10");
    for i in 0..30 {
        let dir = tree.join(format!("p100000{i:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("s500000{i:02}.txt")),
            format!("FINDINGS: finding {i}.\nIMPRESSION: impression {i}.\n"),
        )
        .unwrap();
    }
    let text = Project::base_text().replace(
        "path = \"../data/stage1.csv\"",
        "path = \"../mimic\"\nformat = \"mimic\"",
    );
    let plan = plan_of(&project, &text);
    let job = find(&plan, "data-prep(stage1)");
    let JobConfig::DataPrep(config) = &job.config else {
        panic!()
    };
    assert!(
        config.rows.is_none(),
        "a MIMIC tree is prepared by the worker"
    );
    let out = tempfile::tempdir().unwrap();
    let prepared =
        planner::prep::run_data_prep(config, &job.inputs["dataset"].path, out.path()).unwrap();
    assert_eq!(prepared.rows.usable_rows, 30);
    assert_eq!(prepared.rows.parts[0].test.len(), 3);
    assert!(
        std::fs::read_to_string(&prepared.csv)
            .unwrap()
            .starts_with("subject_id,study_id,findings,impression\n")
    );
}

/// The job contract's round trip: every planned job, of every kind, encoded once for the wire (as `tandem submit`
/// sends it) and decoded once (as the worker that leases it does) is the job the planner made, bar the
/// submitter's paths, which never leave the submitter.
#[test]
fn every_job_kind_round_trips_through_the_wire_contract() {
    use tandem_experiments::planner::wire;
    let project = Project::new();
    // With a training sweep (scored on the validation rows), so select jobs are planned too.
    let text = format!(
        "{}\n[training_sweep]\nfeed = false\nselect = \"rouge1\"\n[training_sweep.space]\n\"lora.r\" = [4, 8]\n",
        Project::base_text()
    );
    let plan = plan_of(&project, &text);
    // And a summarize graph on top of it (one job per patient).
    let histories = project.root().join("data/histories.csv");
    std::fs::write(
        &histories,
        "subject_id,study_id,date,findings,impression\nP1,S1,2020-01-02,Clear.,\nP1,S2,2021-01-02,,Stable.\n",
    )
    .unwrap();
    let m = manifest::load(
        &project.root().join("manifests/m.toml"),
        LoadOptions::default(),
    )
    .unwrap();
    let patients = tandem_experiments::data::patients::load_histories(&histories).unwrap();
    let summaries =
        planner::summarize::plan_summaries(&m, &plan, &histories, &patients, None).unwrap();
    assert_eq!(summaries.count(JobKind::Summarize), 1);
    let mut kinds = BTreeSet::new();
    for job in plan.jobs.iter().chain(
        summaries
            .jobs
            .iter()
            .filter(|j| j.kind == JobKind::Summarize),
    ) {
        let sent = wire::encode(job);
        assert_eq!(sent.kind, job.kind.as_str());
        assert!(
            !String::from_utf8_lossy(&sent.config).contains(&*project.root().to_string_lossy()),
            "{}: a submitter path in the config",
            job.label
        );
        let received = wire::decode(&sent).unwrap_or_else(|e| panic!("{}: {e}", job.label));
        let mut expected = job.clone();
        for input in expected.inputs.values_mut() {
            input.path = Default::default();
        }
        assert_eq!(received, expected, "{}", job.label);
        kinds.insert(job.kind);
    }
    assert_eq!(kinds.len(), JobKind::ALL.len(), "every kind: {kinds:?}");

    // What the worker refuses: a config edited after planning (the id no longer covers it), a kind that does
    // not match the config, a placement value that is not one of the accepted names.
    let train = wire::encode(find(&plan, "train(stage1)"));
    let mut edited = train.clone();
    edited.config = String::from_utf8(edited.config)
        .unwrap()
        .replacen("\"seed\":", "\"seed\":1", 1)
        .into_bytes();
    let err = wire::decode(&edited).unwrap_err().to_string();
    assert!(err.contains("id: does not match"), "{err}");
    let mut wrong_kind = train.clone();
    wrong_kind.kind = "eval".into();
    let err = wire::decode(&wrong_kind).unwrap_err().to_string();
    assert!(
        err.contains("config of kind train in a job of kind eval"),
        "{err}"
    );
    let mut bad_stage = train;
    bad_stage.placement.as_mut().unwrap().stage = "stage9".into();
    let err = wire::decode(&bad_stage).unwrap_err().to_string();
    assert!(err.contains("placement.stage"), "{err}");
}

#[test]
fn device_auto_leaves_config_bytes_and_ids_unchanged() {
    let project = Project::new();
    let base = plan_of(&project, &Project::base_text());
    let explicit = plan_of(
        &project,
        &Project::base_text().replace(
            "family = \"llama\"",
            "family = \"llama\"\ndevice = \"auto\"",
        ),
    );
    assert_eq!(ids_by_label(&base), ids_by_label(&explicit));
    for job in &base.jobs {
        let bytes = planner::wire::config_bytes(&job.config);
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("device"), "{}: {text}", job.label);
    }
}

#[test]
fn device_cuda_travels_in_train_and_eval_configs_and_gives_them_new_ids() {
    let project = Project::new();
    let base = ids_by_label(&plan_of(&project, &Project::base_text()));
    let plan = plan_of(
        &project,
        &Project::base_text().replace(
            "family = \"llama\"",
            "family = \"llama\"\ndevice = \"cuda\"",
        ),
    );
    let cuda = ids_by_label(&plan);
    for label in ["data-prep(stage1)", "data-prep(stage2, 5 folds)"] {
        assert_eq!(base[label], cuda[label], "{label} has no model");
    }
    for label in ["train(stage1)", "eval(base, stage1 test)", "report"] {
        assert_ne!(base[label], cuda[label], "{label} must get a new id");
    }
    let train = find(&plan, "train(stage1)");
    let text = String::from_utf8(planner::wire::config_bytes(&train.config)).unwrap();
    assert!(text.contains("\"device\":\"cuda\""), "{text}");
    let decoded = planner::wire::decode(&planner::wire::encode(train)).unwrap();
    let JobConfig::Train(config) = decoded.config else {
        panic!("a train config")
    };
    assert_eq!(config.model.device, DevicePreference::Cuda);
}
