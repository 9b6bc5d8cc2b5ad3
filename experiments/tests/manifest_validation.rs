//! Every bad-input case of the manifest: each error names the file, line:col (or field), and what is accepted;
//! all problems are reported together; nothing is half-accepted.

mod common;

use common::Project;
use tandem_experiments::manifest::{
    self, DevicePreference, LoadOptions, Manifest, ManifestError, Quantization, SplitSpec,
};

fn load(project: &Project, text: &str) -> Result<Manifest, ManifestError> {
    let path = project.manifest("m.toml", text);
    manifest::load(&path, LoadOptions { check_files: true })
}

/// The error lines of `text` (which must be invalid), with the temp folder shortened to `M`.
fn errors(text: &str) -> Vec<String> {
    let project = Project::new();
    let error = load(&project, text).expect_err("the manifest must be rejected");
    let file = project
        .root()
        .join("manifests/m.toml")
        .display()
        .to_string();
    error
        .to_string()
        .lines()
        .map(|l| l.replace(&file, "M"))
        .collect()
}

fn with(extra: &str) -> String {
    format!("{}\n{extra}\n", Project::base_text())
}

/// The line number (1-based) of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

fn assert_one(text: &str, expected: &str) {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0], expected);
}

#[test]
fn the_base_fixture_is_valid_and_filled_with_stage_defaults() {
    let project = Project::new();
    let m = load(&project, &Project::base_text()).unwrap();
    assert_eq!(m.model.quantization, Quantization::Nf4);
    assert_eq!(m.stage1.training.batch_size, 2);
    assert_eq!(m.stage2.training.batch_size, 4);
    assert_eq!(m.stage1.training.warmup_steps, 100);
    assert_eq!(m.stage2.training.warmup_steps, 20);
    assert_eq!(m.stage2.generation.num_beams, 10);
    assert_eq!(m.stage1.generation.temperature, 0.7);
    assert_eq!(
        m.stage2.split,
        SplitSpec::Kfold {
            folds: 5,
            val_fraction: 0.1
        }
    );
    assert_eq!(m.stage2.dataset.input_column, "impression");
    assert_eq!(m.lora.target_modules, ["q_proj", "v_proj"]);
    assert_eq!(m.evaluation.cells.len(), 6);
    // Relative paths are resolved against the manifest's folder.
    assert_eq!(m.model.path, project.root().join("models/tiny.gguf"));
    assert_eq!(
        m.stage2.dataset.path,
        project.root().join("data/stage2.csv")
    );
}

#[test]
fn unknown_keys_name_line_column_and_the_accepted_keys() {
    let text = with("[stage1.training]\nlearning_rate = 1e-4\n");
    let line = line_of(&text, "learning_rate");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with(&format!("M:{line}:1: stage1.training.learning_rate: unknown field `learning_rate` (accepted: batch_size, grad_accum, lr,")), "{errors:#?}");
}

#[test]
fn an_unknown_table_is_reported() {
    let text = with("[optimizer]\nname = \"adamw\"\n");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains(": optimizer: unknown field `optimizer` (accepted: name, seed, team, description, model, lora, stage1, stage2, sweeps, training_sweep, evaluation, resources)"), "{errors:#?}");
}

#[test]
fn wrong_types_name_the_type_expected() {
    let text = with("[lora]\nr = \"thirty-two\"\n");
    let line = line_of(&text, "thirty-two");
    assert_one(
        &text,
        &format!("M:{line}:5: lora.r: invalid type: string \"thirty-two\" (accepted: usize)"),
    );
    let text = with("[stage1.training]\nbatch_size = -1\n");
    let errors = errors(&text);
    assert!(
        errors[0]
            .contains("stage1.training.batch_size: invalid value: integer `-1` (accepted: usize)"),
        "{errors:#?}"
    );
}

#[test]
fn unknown_enum_values_list_the_accepted_ones() {
    let text = Project::base_text().replace("family = \"llama\"", "family = \"gpt\"");
    let line = line_of(&text, "family");
    assert_one(
        &text,
        &format!("M:{line}:10: model.family: unknown variant `gpt` (accepted: llama, t5)"),
    );
}

#[test]
fn learning_rate_must_be_positive() {
    let text = with("[stage2.training]\nlr = 0.0\n");
    let line = line_of(&text, "lr = 0.0");
    assert_one(
        &text,
        &format!("M:{line}:6: stage2.training.lr: out of range: 0 (accepted: a number > 0)"),
    );
    let errors = errors(&with("[stage1.training]\nlr = -1e-5\n"));
    assert!(
        errors[0].contains("stage1.training.lr: out of range: -0.00001 (accepted: a number > 0)"),
        "{errors:#?}"
    );
}

#[test]
fn folds_must_be_at_least_two() {
    let text = with("[stage2.split]\nkind = \"kfold\"\nfolds = 1\n");
    let line = line_of(&text, "folds = 1");
    assert_one(
        &text,
        &format!(
            "M:{line}:9: stage2.split.folds: must be at least 2, got 1 (accepted: an integer >= 2)"
        ),
    );
}

#[test]
fn top_p_must_be_in_zero_one() {
    for bad in ["0.0", "1.5"] {
        let text = with(&format!("[stage2.generation]\ntop_p = {bad}\n"));
        let line = line_of(&text, "top_p");
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with(&format!(
                "M:{line}:9: stage2.generation.top_p: out of range:"
            )),
            "{errors:#?}"
        );
        assert!(
            errors[0].ends_with("(accepted: a number in (0, 1])"),
            "{errors:#?}"
        );
    }
}

#[test]
fn temperature_must_be_positive_when_sampling() {
    let text = with("[stage1.generation]\ntemperature = 0.0\n");
    let line = line_of(&text, "temperature = 0.0");
    assert_one(
        &text,
        &format!(
            "M:{line}:15: stage1.generation.temperature: must be > 0 when sampling (do_sample = true), got 0 (accepted: a number > 0)"
        ),
    );
    // Greedy decoding ignores the temperature.
    let project = Project::new();
    assert!(
        load(
            &project,
            &with("[stage1.generation]\ndo_sample = false\ntemperature = 0.0\n")
        )
        .is_ok()
    );
}

#[test]
fn split_fractions_must_sum_to_one() {
    let text = with("[stage1.split]\ntrain = 0.8\nval = 0.1\ntest = 0.2\n");
    let line = line_of(&text, "train = 0.8");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with(&format!(
            "M:{line}:9: stage1.split: train + val + test = 1.1"
        )),
        "{errors:#?}"
    );
    assert!(
        errors[0].ends_with("(accepted: fractions summing to 1 within 1e-9, e.g. 0.8, 0.1, 0.1)"),
        "{errors:#?}"
    );
    let project = Project::new();
    assert!(
        load(
            &project,
            &with("[stage1.split]\ntrain = 0.7\nval = 0.2\ntest = 0.1\n")
        )
        .is_ok()
    );
}

#[test]
fn split_fields_of_the_other_kind_are_rejected() {
    let errors = errors(&with("[stage1.split]\nkind = \"holdout\"\nfolds = 5\n"));
    assert!(
        errors[0].contains(
            "stage1.split.folds: only used with kind = \"kfold\" (accepted: train, val, test)"
        ),
        "{errors:#?}"
    );
}

#[test]
fn lora_rank_alpha_and_dropout_are_range_checked() {
    let text = with("[lora]\nr = 0\nalpha = 0.0\ndropout = 1.0\n");
    let errors = errors(&text);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert_eq!(
        errors[0],
        format!(
            "M:{}:5: lora.r: must be at least 1, got 0 (accepted: an integer >= 1)",
            line_of(&text, "r = 0")
        )
    );
    assert_eq!(
        errors[1],
        format!(
            "M:{}:9: lora.alpha: out of range: 0 (accepted: a number > 0)",
            line_of(&text, "alpha")
        )
    );
    assert_eq!(
        errors[2],
        format!(
            "M:{}:11: lora.dropout: out of range: 1 (accepted: a number in [0, 1))",
            line_of(&text, "dropout")
        )
    );
}

#[test]
fn batch_size_zero_is_rejected() {
    let text = with("[stage1.training]\nbatch_size = 0\n");
    let line = line_of(&text, "batch_size");
    assert_one(
        &text,
        &format!(
            "M:{line}:14: stage1.training.batch_size: must be at least 1, got 0 (accepted: an integer >= 1)"
        ),
    );
}

#[test]
fn target_modules_must_exist_in_the_family() {
    let text = Project::base_text().replace("family = \"llama\"", "family = \"t5\"")
        + "\n[lora]\ntarget_modules = [\"q\", \"q_proj\"]\n";
    let line = line_of(&text, "target_modules");
    assert_one(
        &text,
        &format!(
            "M:{line}:24: lora.target_modules[1]: unknown target module \"q_proj\" for family t5 (accepted: q, k, v, o, wi, wo, wi_0, wi_1)"
        ),
    );
}

#[test]
fn unknown_metrics_and_cells_list_the_accepted_values() {
    let text = with(
        "[evaluation]\nmetrics = [\"bleu\", \"cider\"]\ncells = [\"base:stage1\", \"stage2:stage1\"]\n",
    );
    let errors = errors(&text);
    // The metric is a schema error (its whole list is dropped); the cell a value error.
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].contains("evaluation.metrics: unknown variant `cider` (accepted: bleu, rouge, meteor, bertscore, radgraph)"), "{errors:#?}");
    assert!(errors[1].contains(&format!("M:{}:25: evaluation.cells[1]: unknown cell \"stage2:stage1\" (accepted: base:stage1, stage1:stage1, two-stage:stage1, base:stage2, stage1:stage2, two-stage:stage2)", line_of(&text, "cells"))), "{errors:#?}");
}

#[test]
fn prompt_templates_need_the_input_placeholder() {
    let text = with("[stage2.prompt]\ninference = \"Summarize: {text}\"\n");
    let line = line_of(&text, "Summarize");
    assert_one(
        &text,
        &format!(
            "M:{line}:13: stage2.prompt.inference: template has no {{input}} placeholder (accepted: a template containing {{input}}, where the input text goes)"
        ),
    );
}

#[test]
fn sweep_values_are_checked_per_parameter() {
    let text =
        with("[[sweeps]]\nstage = \"stage2\"\nparameter = \"num_beams\"\nvalues = [1, 2.5]\n");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("sweeps[1].values[1]: 2.5 is not a valid num_beams (accepted: whole numbers a number >= 1)"), "{errors:#?}");
}

#[test]
fn missing_files_name_the_field_and_the_path() {
    let project = Project::new();
    let text = Project::base_text()
        .replace("../models/tiny.gguf", "../models/absent.gguf")
        .replace("../data/stage1.csv", "../data/nope.csv");
    let path = project.manifest("m.toml", &text);
    let error = manifest::load(&path, LoadOptions { check_files: true })
        .unwrap_err()
        .to_string();
    let model = project.root().join("models/absent.gguf");
    let data = project.root().join("data/nope.csv");
    assert!(
        error.contains(&format!(
            ":6:8: model.path: {}: no such file or folder",
            model.display()
        )),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            ":9:8: stage1.dataset.path: {}: no such file",
            data.display()
        )),
        "{error}"
    );
    // --schema-only does not look at files.
    assert!(manifest::load(&path, LoadOptions { check_files: false }).is_ok());
}

#[test]
fn a_file_that_is_not_gguf_is_rejected() {
    let project = Project::new();
    std::fs::write(project.root().join("models/tiny.gguf"), b"not a model").unwrap();
    let path = project.manifest("m.toml", &Project::base_text());
    let error = manifest::load(&path, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("model.path:") && error.contains("not a GGUF file"),
        "{error}"
    );
}

#[test]
fn a_hugging_face_folder_needs_config_tokenizer_and_every_shard() {
    let project = Project::new();
    let hf = project.root().join("models/hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::write(hf.join("config.json"), "{}").unwrap();
    std::fs::write(hf.join("tokenizer.json"), "{}").unwrap();
    std::fs::write(hf.join("model.safetensors.index.json"), r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#).unwrap();
    std::fs::write(hf.join("model-00001-of-00002.safetensors"), "x").unwrap();
    let path = project.manifest(
        "m.toml",
        &Project::base_text().replace("../models/tiny.gguf", "../models/hf"),
    );
    let error = manifest::load(&path, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("the shard model-00002-of-00002.safetensors named in model.safetensors.index.json is missing"), "{error}");
    std::fs::write(hf.join("model-00002-of-00002.safetensors"), "y").unwrap();
    assert!(manifest::load(&path, LoadOptions::default()).is_ok());
    std::fs::remove_file(hf.join("tokenizer.json")).unwrap();
    let error = manifest::load(&path, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("the model folder has no tokenizer.json"),
        "{error}"
    );
}

#[test]
fn dataset_columns_are_checked_against_the_csv_header() {
    let text =
        Project::base_text().replace("group_column = \"patient\"", "group_column = \"subject\"");
    let line = line_of(&text, "group_column");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with(&format!("M:{line}:16: stage2.dataset.group_column:")),
        "{errors:#?}"
    );
    assert!(
        errors[0].contains("has no column \"subject\" (its columns: patient, impression, summary)"),
        "{errors:#?}"
    );
}

#[test]
fn required_tables_and_fields_are_named_when_missing() {
    let errors = errors("name = \"x\"\n");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("M: model: missing (required)")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("M: stage1: missing (required)")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("M: stage2: missing (required)")),
        "{errors:#?}"
    );
    let errors =
        self::errors(&Project::base_text().replace("path = \"../models/tiny.gguf\"\n", ""));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("model.path: missing (required)")),
        "{errors:#?}"
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = with(
        "[lora]\nr = 0\nbogus = 1\n[stage1.training]\nlr = 0.0\nbatch_size = \"two\"\n[stage2.generation]\ntop_p = 2.0\n[stage2.prompt]\ntrain = \"no placeholder\"\n",
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 6, "{errors:#?}");
    let lines: Vec<usize> = errors
        .iter()
        .map(|e| e.split(':').nth(1).unwrap().parse().unwrap())
        .collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted);
    let project = Project::new();
    // Nothing half-accepted: an invalid manifest gives no Manifest at all.
    assert!(matches!(load(&project, &text), Err(ManifestError::Invalid(d)) if d.len() == 6));
}

#[test]
fn toml_syntax_errors_have_a_position() {
    let errors = errors("name = \"unterminated\nseed = 1\n");
    assert!(errors[0].starts_with("M:1:"), "{errors:#?}");
    assert!(errors[0].contains("invalid TOML"), "{errors:#?}");
}

#[test]
fn the_shipped_manifests_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    for name in ["thesis-llama.toml", "thesis-t5.toml", "quickstart.toml"] {
        let m = manifest::load(&dir.join(name), LoadOptions { check_files: false });
        assert!(m.is_ok(), "{name}: {}", m.unwrap_err());
    }
    let llama = manifest::load(
        &dir.join("thesis-llama.toml"),
        LoadOptions { check_files: false },
    )
    .unwrap();
    // Every value spelled out in thesis-llama.toml is the thesis default.
    use tandem_experiments::manifest::{Stage, defaults};
    assert_eq!(llama.stage1.training, defaults::training(Stage::Stage1));
    assert_eq!(llama.stage2.training, defaults::training(Stage::Stage2));
    assert_eq!(llama.stage1.generation, defaults::generation(Stage::Stage1));
    assert_eq!(llama.stage2.generation, defaults::generation(Stage::Stage2));
    assert_eq!(llama.stage1.prompt, defaults::prompt(Stage::Stage1));
    assert_eq!(llama.stage2.prompt, defaults::prompt(Stage::Stage2));
    assert_eq!(llama.lora, defaults::lora());
    assert_eq!(llama.sweeps, defaults::sweeps());
    assert_eq!(llama.evaluation, defaults::evaluation());
    assert_eq!(llama.resources, defaults::resources());
    let t5 = manifest::load(
        &dir.join("thesis-t5.toml"),
        LoadOptions { check_files: false },
    )
    .unwrap();
    assert_eq!(t5.stage2.training, defaults::training(Stage::Stage2));
    assert_eq!(t5.model.quantization, Quantization::None);
    assert_eq!(t5.lora.target_modules, ["q", "v"]);
    // Stage 1 at full scale: the thesis's stage-1 recipe on CPU, and the thesis's GPU resources with one override.
    let full_path = dir.join("iu-xray-full.toml");
    let full = manifest::load(&full_path, LoadOptions { check_files: false }).unwrap();
    let thesis_training = defaults::training(Stage::Stage1);
    assert_eq!(
        full.stage1.training,
        tandem_experiments::manifest::TrainingSpec {
            checkpoint_every: 100,
            ..thesis_training
        },
        "only the checkpoint interval differs from the thesis"
    );
    assert_eq!(full.stage1.generation, defaults::generation(Stage::Stage1));
    assert_eq!(full.stage1.prompt, defaults::prompt(Stage::Stage1));
    assert_eq!(full.lora, defaults::lora());
    assert_eq!(full.stage1.dataset.max_rows, None);
    assert_eq!(full.model.device, DevicePreference::Cpu);
    assert_eq!(full.resources.train.gpus, 0);
    let text = std::fs::read_to_string(&full_path).unwrap();
    let on_gpu = manifest::overrides::apply(
        &text,
        &full_path,
        &[manifest::overrides::Override::parse("model.device=cuda").unwrap()],
    )
    .unwrap();
    let on_gpu =
        manifest::parse_str(&on_gpu, &full_path, LoadOptions { check_files: false }).unwrap();
    assert_eq!(on_gpu.model.device, DevicePreference::Cuda);
    assert_eq!(
        on_gpu.resources.train.gpus,
        defaults::resources().train.gpus
    );
    assert_eq!(on_gpu.resources.eval.gpus, defaults::resources().eval.gpus);

    // The quickstart's files are committed or fetched; check them when the model cache is there.
    let quickstart = dir.join("quickstart.toml");
    if dir
        .join("../../.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        .is_file()
        && dir
            .join("../../.cache/models/all-MiniLM-L6-v2/model.safetensors")
            .is_file()
    {
        let m = manifest::load(&quickstart, LoadOptions::default());
        assert!(m.is_ok(), "{}", m.unwrap_err());
    } else {
        println!(
            "skipped the quickstart file check: run scripts/fetch-models.sh to fetch the models"
        );
    }
}

#[test]
fn stage1_takes_a_holdout_split_only() {
    let text = with("[stage1.split]\nkind = \"kfold\"\nfolds = 5\n");
    let line = line_of(&text, "kind = \"kfold\"");
    assert_one(
        &text,
        &format!(
            "M:{line}:8: stage1.split.kind: stage 1 is trained once, on one holdout split (accepted: holdout)"
        ),
    );
}

#[test]
fn a_missing_column_says_a_header_column_is_accepted() {
    let text = Project::base_text().replace(
        "path = \"../data/stage1.csv\"",
        "path = \"../data/stage1.csv\"\ntarget_column = \"impressions\"",
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("stage1.dataset.target_column:"),
        "{errors:#?}"
    );
    assert!(
        errors[0].ends_with(
            "(its columns: findings, impression) (accepted: a column of the CSV header)"
        ),
        "{errors:#?}"
    );
}

/// The base manifest with `device = "<device>"` in its `[model]` table.
fn with_device(device: &str, extra: &str) -> String {
    let text = Project::base_text().replace(
        "family = \"llama\"",
        &format!("family = \"llama\"\ndevice = \"{device}\""),
    );
    format!("{text}\n{extra}\n")
}

#[test]
fn device_defaults_to_auto_and_keeps_the_resources() {
    let project = Project::new();
    let m = load(&project, &Project::base_text()).unwrap();
    assert_eq!(m.model.device, DevicePreference::Auto);
    assert_eq!(m.model.device.as_str(), "auto");
    assert_eq!((m.resources.train.gpus, m.resources.eval.gpus), (1, 1));
    let cuda = load(&project, &with_device("cuda", "")).unwrap();
    assert_eq!(cuda.model.device, DevicePreference::Cuda);
    assert_eq!(cuda.resources.train.gpus, 1);
}

#[test]
fn device_cpu_plans_train_and_eval_without_gpus() {
    let project = Project::new();
    let m = load(&project, &with_device("cpu", "")).unwrap();
    assert_eq!(m.model.device, DevicePreference::Cpu);
    for request in [&m.resources.train, &m.resources.eval] {
        assert_eq!((request.gpus, request.gpu_memory_gb), (0, 0), "{request:?}");
    }
    // The other kinds are untouched.
    assert_eq!(m.resources.data_prep.cpu_threads, 1);
}

#[test]
fn device_cpu_with_an_explicit_gpu_names_the_resource() {
    let text = with_device("cpu", "[resources.eval]\ngpus = 2\n");
    let line = line_of(&text, "gpus = 2");
    assert_one(
        &text,
        &format!(
            "M:{line}:8: resources.eval.gpus: asks for 2 GPU(s), but model.device = \"cpu\" \
             (accepted: 0, or leave it out, when model.device = \"cpu\")"
        ),
    );
}

#[test]
fn device_cuda_needs_train_and_eval_jobs_that_ask_for_a_gpu() {
    let text = with_device(
        "cuda",
        "[resources.train]\ngpus = 0\n[resources.eval]\ngpus = 0\n",
    );
    let line = line_of(&text, "device = ");
    let errors = errors(&text);
    assert_eq!(
        errors,
        [
            format!(
                "M:{line}:10: model.device: \"cuda\" needs a GPU, but resources.train.gpus = 0 \
                 (accepted: resources.train.gpus >= 1, or device = \"auto\" or \"cpu\")"
            ),
            format!(
                "M:{line}:10: model.device: \"cuda\" needs a GPU, but resources.eval.gpus = 0 \
                 (accepted: resources.eval.gpus >= 1, or device = \"auto\" or \"cpu\")"
            ),
        ]
    );
}

#[test]
fn an_unknown_device_lists_the_accepted_ones() {
    let text = with_device("gpu", "");
    let line = line_of(&text, "device = ");
    assert_one(
        &text,
        &format!("M:{line}:10: model.device: unknown variant `gpu` (accepted: auto, cpu, cuda)"),
    );
}
