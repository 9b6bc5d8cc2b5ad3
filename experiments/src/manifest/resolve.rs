//! The high layer of manifest parsing: raw (spanned, optional) values resolved into the public
//! [`Manifest`](super::Manifest), thesis defaults filled per stage, every value range-checked and, unless
//! asked not to, every referenced file checked. All problems are collected, none is half-accepted.

use std::collections::BTreeSet;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::defaults;
use super::diagnostic::{Collector, Diagnostics, ManifestError};
use super::paths;
use super::raw::{self, RawManifest, RawSplitKind, S};
use super::types::*;

mod training_sweep;

/// How much of a manifest to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Check that referenced files (model weights, datasets, BERTScore encoder) exist and look right.
    pub check_files: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { check_files: true }
    }
}

/// Reads, parses, resolves and validates the manifest at `path`.
pub fn load(path: &Path, options: LoadOptions) -> Result<Manifest, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, path, options)
}

/// Parses manifest `text` as if read from `path` (which names it in errors and anchors relative paths).
pub fn parse_str(text: &str, path: &Path, options: LoadOptions) -> Result<Manifest, ManifestError> {
    let mut collector = Collector::new(path, text);
    let raw = raw::parse(text, &mut collector);
    let manifest = raw.map(|raw| {
        let mut resolver = Resolver {
            errors: &mut collector,
            base: paths::manifest_dir(path),
            options,
            file: path,
        };
        resolver.manifest(raw)
    });
    collector.finish().map_err(ManifestError::Invalid)?;
    manifest.ok_or_else(|| ManifestError::Invalid(Diagnostics(Vec::new())))
}

struct Resolver<'a> {
    errors: &'a mut Collector,
    base: PathBuf,
    options: LoadOptions,
    file: &'a Path,
}

fn span<T>(field: &S<T>) -> Option<Range<usize>> {
    field.as_ref().map(Spanned::span)
}

fn value<T: Clone>(field: &S<T>, default: T) -> T {
    field.as_ref().map_or(default, |v| v.get_ref().clone())
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn list<T: AsRef<str>>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|s| s.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Resolver<'_> {
    fn error(
        &mut self,
        span: Option<Range<usize>>,
        field: &str,
        message: impl Into<String>,
        accepted: &str,
    ) {
        let accepted = (!accepted.is_empty()).then(|| accepted.to_owned());
        self.errors.push(span, field, message, accepted);
    }

    /// A whole number with a lower bound.
    fn at_least(&mut self, field: &S<usize>, default: usize, min: usize, path: &str) -> usize {
        let got = value(field, default);
        if got < min {
            self.error(
                span(field),
                path,
                format!("must be at least {min}, got {got}"),
                &format!("an integer >= {min}"),
            );
        }
        got
    }

    /// A finite number in a range; `open_low`/`open_high` make the bound exclusive.
    fn number(&mut self, field: &S<f64>, default: f64, path: &str, range: NumberRange) -> f64 {
        let got = value(field, default);
        if !range.contains(got) {
            self.error(
                span(field),
                path,
                format!("out of range: {got}"),
                &range.describe(),
            );
        }
        got
    }

    fn required_string(
        &mut self,
        field: &S<String>,
        parent: Option<Range<usize>>,
        path: &str,
        accepted: &str,
    ) -> String {
        match field {
            Some(text) if !text.get_ref().trim().is_empty() => text.get_ref().clone(),
            Some(text) => {
                self.error(Some(text.span()), path, "must not be empty", accepted);
                String::new()
            }
            None => {
                self.error(parent, path, "missing (required)", accepted);
                String::new()
            }
        }
    }

    fn manifest(&mut self, raw: RawManifest) -> Manifest {
        let default_name = self
            .file
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let name = value(&raw.name, default_name);
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            self.error(
                span(&raw.name),
                "name",
                format!("invalid experiment name {name:?}"),
                "letters, digits, '.', '_' and '-'",
            );
        }
        let team = value(&raw.team, defaults::TEAM.to_owned());
        if team.trim().is_empty() {
            self.error(span(&raw.team), "team", "must not be empty", "a team name");
        }
        let model = self.model(&raw.model);
        let lora = self.lora(&raw.lora, model.family);
        let stage1 = self.stage(&raw.stage1, Stage::Stage1);
        let stage2 = self.stage(&raw.stage2, Stage::Stage2);
        let manifest_stages = [(Stage::Stage1, &stage1), (Stage::Stage2, &stage2)];
        let sweeps = self.sweeps(&raw.sweeps, &manifest_stages);
        let evaluation = self.evaluation(&raw.evaluation);
        let seed = value(&raw.seed, defaults::SEED);
        let training_sweep = self.training_sweep(
            &raw.training_sweep,
            seed,
            model.family,
            &manifest_stages,
            &evaluation,
        );
        let mut resources = self.resources(&raw.resources);
        self.device(&raw, model.device, &mut resources);
        Manifest {
            name,
            seed,
            team,
            description: value(&raw.description, String::new()),
            model,
            lora,
            stage1,
            stage2,
            sweeps,
            training_sweep,
            evaluation,
            resources,
        }
    }

    fn model(&mut self, raw: &S<raw::RawModel>) -> ModelSpec {
        let Some(table) = raw else {
            self.error(
                None,
                "model",
                "missing (required)",
                "a [model] table with family and path",
            );
            return ModelSpec {
                family: ModelFamily::Llama,
                path: PathBuf::new(),
                quantization: Quantization::Nf4,
                compute_dtype: ComputeDtype::F16,
                device: defaults::DEVICE,
            };
        };
        let whole = Some(table.span());
        let model = table.get_ref();
        let family = match &model.family {
            Some(family) => *family.get_ref(),
            None => {
                self.error(
                    whole.clone(),
                    "model.family",
                    "missing (required)",
                    "llama, t5",
                );
                ModelFamily::Llama
            }
        };
        let accepted = "a .gguf file or a Hugging Face folder with config.json, tokenizer.json and *.safetensors";
        let path_text = self.required_string(&model.path, whole, "model.path", accepted);
        let path = paths::resolve(&self.base, Path::new(&path_text));
        let problem = if self.options.check_files && !path_text.is_empty() {
            check_model_path(&path).err()
        } else {
            None
        };
        if let Some(problem) = problem {
            self.error(
                span(&model.path),
                "model.path",
                format!("{}: {problem}", path.display()),
                accepted,
            );
        }
        ModelSpec {
            family,
            path,
            quantization: value(&model.quantization, defaults::quantization(family)),
            compute_dtype: value(&model.compute_dtype, defaults::compute_dtype(family)),
            device: value(&model.device, defaults::DEVICE),
        }
    }

    /// Squares `model.device` with the train and eval resources: `cuda` needs jobs that ask for a GPU; `cpu`
    /// plans them without GPUs (a GPU asked for explicitly is an error, not silently dropped).
    fn device(
        &mut self,
        raw: &RawManifest,
        device: DevicePreference,
        resources: &mut ResourcesSpec,
    ) {
        let device_span = raw.model.as_ref().and_then(|m| span(&m.get_ref().device));
        let raw_resources = raw.resources.as_ref().map(Spanned::get_ref);
        let kinds = [
            (
                "train",
                &mut resources.train,
                raw_resources.and_then(|r| r.train.as_ref()),
            ),
            (
                "eval",
                &mut resources.eval,
                raw_resources.and_then(|r| r.eval.as_ref()),
            ),
        ];
        for (kind, request, raw_request) in kinds {
            let gpus_field = raw_request.and_then(|r| r.get_ref().gpus.as_ref());
            match device {
                DevicePreference::Cuda if request.gpus == 0 => self.error(
                    device_span.clone(),
                    "model.device",
                    format!("\"cuda\" needs a GPU, but resources.{kind}.gpus = 0"),
                    &format!("resources.{kind}.gpus >= 1, or device = \"auto\" or \"cpu\""),
                ),
                DevicePreference::Cpu => match gpus_field.filter(|g| *g.get_ref() > 0) {
                    Some(gpus) => self.error(
                        Some(gpus.span()),
                        &format!("resources.{kind}.gpus"),
                        format!(
                            "asks for {} GPU(s), but model.device = \"cpu\"",
                            gpus.get_ref()
                        ),
                        "0, or leave it out, when model.device = \"cpu\"",
                    ),
                    None => {
                        request.gpus = 0;
                        request.gpu_memory_gb = 0;
                    }
                },
                DevicePreference::Cuda | DevicePreference::Auto => {}
            }
        }
    }

    fn lora(&mut self, raw: &S<raw::RawLora>, family: ModelFamily) -> LoraSpec {
        let thesis = defaults::lora();
        let Some(table) = raw else {
            return LoraSpec {
                target_modules: defaults::target_modules(family),
                ..thesis
            };
        };
        let lora = table.get_ref();
        let r = self.at_least(&lora.r, thesis.r, 1, "lora.r");
        let alpha = self.number(
            &lora.alpha,
            thesis.alpha,
            "lora.alpha",
            NumberRange::positive(),
        );
        let dropout = self.number(
            &lora.dropout,
            thesis.dropout,
            "lora.dropout",
            NumberRange::new(0.0, false, 1.0, true),
        );
        let known = defaults::known_target_modules(family);
        let target_modules = match &lora.target_modules {
            None => defaults::target_modules(family),
            Some(modules) => {
                if modules.get_ref().is_empty() {
                    self.error(
                        Some(modules.span()),
                        "lora.target_modules",
                        "must name at least one module",
                        &list(known),
                    );
                }
                let mut seen = BTreeSet::new();
                for (index, module) in modules.get_ref().iter().enumerate() {
                    let name = module.get_ref();
                    let path = format!("lora.target_modules[{index}]");
                    if !known.contains(&name.as_str()) {
                        let family_name = format!("{family:?}").to_lowercase();
                        self.error(
                            Some(module.span()),
                            &path,
                            format!("unknown target module {name:?} for family {family_name}"),
                            &list(known),
                        );
                    } else if !seen.insert(name.clone()) {
                        self.error(
                            Some(module.span()),
                            &path,
                            format!("duplicate target module {name:?}"),
                            "each module once",
                        );
                    }
                }
                modules
                    .get_ref()
                    .iter()
                    .map(|m| m.get_ref().clone())
                    .collect()
            }
        };
        LoraSpec {
            r,
            alpha,
            dropout,
            target_modules,
        }
    }

    fn stage(&mut self, raw: &S<raw::RawStage>, stage: Stage) -> StageSpec {
        let name = stage.as_str();
        let whole = span(raw);
        let empty = raw::RawStage {
            dataset: None,
            split: None,
            prompt: None,
            training: None,
            generation: None,
        };
        let table = raw.as_ref().map_or(&empty, Spanned::get_ref);
        if raw.is_none() {
            self.error(
                None,
                name,
                "missing (required)",
                &format!("a [{name}.dataset] table with a path"),
            );
        }
        let dataset = self.dataset(&table.dataset, whole, stage);
        let split = self.split(&table.split, stage);
        let prompt = self.prompt(&table.prompt, stage);
        let training = self.training(&table.training, stage);
        let generation = self.generation(&table.generation, stage);
        StageSpec {
            dataset,
            split,
            prompt,
            training,
            generation,
        }
    }

    fn dataset(
        &mut self,
        raw: &S<raw::RawDataset>,
        parent: Option<Range<usize>>,
        stage: Stage,
    ) -> DatasetSpec {
        let prefix = format!("{}.dataset", stage.as_str());
        let (input_default, target_default) = defaults::columns(stage);
        let Some(table) = raw else {
            if parent.is_some() {
                self.error(
                    parent,
                    &prefix,
                    "missing (required)",
                    "a table with at least a path",
                );
            }
            return DatasetSpec {
                path: PathBuf::new(),
                format: DatasetFormat::Csv,
                input_column: input_default.into(),
                target_column: target_default.into(),
                group_column: None,
                bad_rows: BadRows::Error,
                max_rows: None,
            };
        };
        let whole = Some(table.span());
        let dataset = table.get_ref();
        let accepted = "a CSV file, or for format = \"mimic\" a MIMIC-CXR folder or .zip";
        let path_text =
            self.required_string(&dataset.path, whole, &join(&prefix, "path"), accepted);
        let path = paths::resolve(&self.base, Path::new(&path_text));
        let format = value(&dataset.format, DatasetFormat::Csv);
        let mut columns = Vec::new();
        for (field, default, what) in [
            (&dataset.input_column, Some(input_default), "input_column"),
            (
                &dataset.target_column,
                Some(target_default),
                "target_column",
            ),
            (&dataset.group_column, None, "group_column"),
        ] {
            let got = field
                .as_ref()
                .map(|f| f.get_ref().clone())
                .or(default.map(str::to_owned));
            if let Some(column) = &got {
                if column.trim().is_empty() {
                    self.error(
                        span(field),
                        &join(&prefix, what),
                        "must not be empty",
                        "a column name of the CSV header",
                    );
                }
                columns.push((what, column.clone(), span(field)));
            }
            if format == DatasetFormat::Mimic && field.is_some() && what != "group_column" {
                self.error(
                    span(field),
                    &join(&prefix, what),
                    "not used for format = \"mimic\" (its columns are findings and impression)",
                    "leave it out",
                );
            }
        }
        let max_rows = dataset.max_rows.as_ref().map(|m| *m.get_ref());
        if max_rows == Some(0) {
            self.error(
                span(&dataset.max_rows),
                &join(&prefix, "max_rows"),
                "must be at least 1, got 0",
                "an integer >= 1, or leave it out for all rows",
            );
        }
        if self.options.check_files && !path_text.is_empty() {
            let problem = match format {
                DatasetFormat::Csv => check_csv(&path, &columns),
                DatasetFormat::Mimic => check_mimic(&path),
            };
            if let Err((problem, field)) = problem {
                let (field, at, accepted) = match field {
                    Some((name, at)) => (join(&prefix, name), at, "a column of the CSV header"),
                    None => (join(&prefix, "path"), span(&dataset.path), accepted),
                };
                self.error(
                    at,
                    &field,
                    format!("{}: {problem}", path.display()),
                    accepted,
                );
            }
        }
        let (input_column, target_column) = match format {
            DatasetFormat::Csv => (
                value(&dataset.input_column, input_default.into()),
                value(&dataset.target_column, target_default.into()),
            ),
            DatasetFormat::Mimic => ("findings".to_owned(), "impression".to_owned()),
        };
        DatasetSpec {
            path,
            format,
            input_column,
            target_column,
            group_column: dataset.group_column.as_ref().map(|g| g.get_ref().clone()),
            bad_rows: value(&dataset.bad_rows, BadRows::Error),
            max_rows,
        }
    }

    fn split(&mut self, raw: &S<raw::RawSplit>, stage: Stage) -> SplitSpec {
        let default = defaults::split(stage);
        let Some(table) = raw else { return default };
        let prefix = format!("{}.split", stage.as_str());
        let split = table.get_ref();
        let default_kind = match default {
            SplitSpec::Holdout { .. } => RawSplitKind::Holdout,
            SplitSpec::Kfold { .. } => RawSplitKind::Kfold,
        };
        let kind = value(&split.kind, default_kind);
        if stage == Stage::Stage1 && kind == RawSplitKind::Kfold {
            self.error(
                span(&split.kind),
                &join(&prefix, "kind"),
                "stage 1 is trained once, on one holdout split",
                "holdout",
            );
        }
        let fraction = NumberRange::new(0.0, true, 1.0, true);
        match kind {
            RawSplitKind::Holdout => {
                for (field, name) in [(&split.folds, "folds")] {
                    if field.is_some() {
                        self.error(
                            span(field),
                            &join(&prefix, name),
                            "only used with kind = \"kfold\"",
                            "train, val, test",
                        );
                    }
                }
                if split.val_fraction.is_some() {
                    self.error(
                        span(&split.val_fraction),
                        &join(&prefix, "val_fraction"),
                        "only used with kind = \"kfold\"",
                        "train, val, test",
                    );
                }
                let train = self.number(&split.train, 0.8, &join(&prefix, "train"), fraction);
                let val = self.number(&split.val, 0.1, &join(&prefix, "val"), fraction);
                let test = self.number(&split.test, 0.1, &join(&prefix, "test"), fraction);
                let sum = train + val + test;
                if (sum - 1.0).abs() > 1e-9 {
                    let at = span(&split.train)
                        .or(span(&split.val))
                        .or(span(&split.test))
                        .or(Some(table.span()));
                    self.error(
                        at,
                        &prefix,
                        format!("train + val + test = {sum}, not 1"),
                        "fractions summing to 1 within 1e-9, e.g. 0.8, 0.1, 0.1",
                    );
                }
                SplitSpec::Holdout { train, val, test }
            }
            RawSplitKind::Kfold => {
                for (field, name) in [
                    (&split.train, "train"),
                    (&split.val, "val"),
                    (&split.test, "test"),
                ] {
                    if field.is_some() {
                        self.error(
                            span(field),
                            &join(&prefix, name),
                            "only used with kind = \"holdout\"",
                            "folds, val_fraction",
                        );
                    }
                }
                let folds = self.at_least(&split.folds, 5, 2, &join(&prefix, "folds"));
                let test_fraction = 1.0 / folds.max(2) as f64;
                let val_fraction = self.number(
                    &split.val_fraction,
                    0.1,
                    &join(&prefix, "val_fraction"),
                    NumberRange::new(0.0, true, 1.0 - test_fraction, true),
                );
                SplitSpec::Kfold {
                    folds,
                    val_fraction,
                }
            }
        }
    }

    fn prompt(&mut self, raw: &S<raw::RawPrompt>, stage: Stage) -> PromptSpec {
        let default = defaults::prompt(stage);
        let Some(table) = raw else { return default };
        let prompt = table.get_ref();
        let prefix = format!("{}.prompt", stage.as_str());
        let mut check = |field: &S<String>, default: String, name: &str| {
            let got = value(field, default);
            if !got.contains(defaults::INPUT_PLACEHOLDER) {
                self.error(
                    span(field),
                    &join(&prefix, name),
                    format!(
                        "template has no {} placeholder",
                        defaults::INPUT_PLACEHOLDER
                    ),
                    "a template containing {input}, where the input text goes",
                );
            }
            got
        };
        let train = check(&prompt.train, default.train, "train");
        let inference = check(&prompt.inference, default.inference, "inference");
        PromptSpec { train, inference }
    }

    fn training(&mut self, raw: &S<raw::RawTraining>, stage: Stage) -> TrainingSpec {
        let d = defaults::training(stage);
        let Some(table) = raw else { return d };
        let t = table.get_ref();
        let p = |name: &str| format!("{}.training.{name}", stage.as_str());
        let max_steps = t.max_steps.as_ref().map(|m| *m.get_ref());
        if max_steps == Some(0) {
            self.error(
                span(&t.max_steps),
                &p("max_steps"),
                "must be at least 1, got 0",
                "an integer >= 1, or leave it out",
            );
        }
        TrainingSpec {
            batch_size: self.at_least(&t.batch_size, d.batch_size, 1, &p("batch_size")),
            grad_accum: self.at_least(&t.grad_accum, d.grad_accum, 1, &p("grad_accum")),
            lr: self.number(&t.lr, d.lr, &p("lr"), NumberRange::positive()),
            warmup_steps: value(&t.warmup_steps, d.warmup_steps),
            weight_decay: self.number(
                &t.weight_decay,
                d.weight_decay,
                &p("weight_decay"),
                NumberRange::non_negative(),
            ),
            epochs: self.number(&t.epochs, d.epochs, &p("epochs"), NumberRange::positive()),
            max_grad_norm: self.number(
                &t.max_grad_norm,
                d.max_grad_norm,
                &p("max_grad_norm"),
                NumberRange::positive(),
            ),
            eval_every: self.at_least(&t.eval_every, d.eval_every, 1, &p("eval_every")),
            log_every: self.at_least(&t.log_every, d.log_every, 1, &p("log_every")),
            checkpoint_every: self.at_least(
                &t.checkpoint_every,
                d.checkpoint_every,
                1,
                &p("checkpoint_every"),
            ),
            checkpoints_kept: self.at_least(
                &t.checkpoints_kept,
                d.checkpoints_kept,
                1,
                &p("checkpoints_kept"),
            ),
            early_stopping_patience: value(&t.early_stopping_patience, d.early_stopping_patience),
            max_length: self.at_least(&t.max_length, d.max_length, 2, &p("max_length")),
            loss_mask: value(&t.loss_mask, d.loss_mask),
            max_steps,
        }
    }

    fn generation(&mut self, raw: &S<raw::RawGeneration>, stage: Stage) -> GenerationSpec {
        let d = defaults::generation(stage);
        let Some(table) = raw else { return d };
        let g = table.get_ref();
        let p = |name: &str| format!("{}.generation.{name}", stage.as_str());
        let do_sample = value(&g.do_sample, d.do_sample);
        let temperature = value(&g.temperature, d.temperature);
        if !(temperature.is_finite() && (temperature > 0.0 || !do_sample && temperature >= 0.0)) {
            let message = if do_sample {
                format!("must be > 0 when sampling (do_sample = true), got {temperature}")
            } else {
                format!("out of range: {temperature}")
            };
            self.error(
                span(&g.temperature),
                &p("temperature"),
                message,
                "a number > 0",
            );
        }
        let min_new_tokens = value(&g.min_new_tokens, d.min_new_tokens);
        if let Some(max) = g
            .max_new_tokens
            .as_ref()
            .map(|m| *m.get_ref())
            .or(Some(d.max_new_tokens))
            && min_new_tokens > max
        {
            self.error(
                span(&g.min_new_tokens),
                &p("min_new_tokens"),
                format!("{min_new_tokens} is more than max_new_tokens ({max})"),
                "an integer <= max_new_tokens",
            );
        }
        let max_eval_rows = g.max_eval_rows.as_ref().map(|m| *m.get_ref());
        if max_eval_rows == Some(0) {
            self.error(
                span(&g.max_eval_rows),
                &p("max_eval_rows"),
                "must be at least 1, got 0",
                "an integer >= 1, or leave it out",
            );
        }
        GenerationSpec {
            max_new_tokens: self.at_least(
                &g.max_new_tokens,
                d.max_new_tokens,
                1,
                &p("max_new_tokens"),
            ),
            min_new_tokens,
            do_sample,
            temperature,
            top_k: value(&g.top_k, d.top_k),
            top_p: self.number(
                &g.top_p,
                d.top_p,
                &p("top_p"),
                NumberRange::new(0.0, true, 1.0, false),
            ),
            num_beams: self.at_least(&g.num_beams, d.num_beams, 1, &p("num_beams")),
            length_penalty: self.number(
                &g.length_penalty,
                d.length_penalty,
                &p("length_penalty"),
                NumberRange::any(),
            ),
            repetition_penalty: self.number(
                &g.repetition_penalty,
                d.repetition_penalty,
                &p("repetition_penalty"),
                NumberRange::positive(),
            ),
            early_stopping: value(&g.early_stopping, d.early_stopping),
            max_eval_rows,
        }
    }

    fn sweeps(
        &mut self,
        raw: &S<Vec<Spanned<raw::RawSweep>>>,
        stages: &[(Stage, &StageSpec)],
    ) -> Vec<SweepSpec> {
        let Some(list) = raw else {
            return defaults::sweeps();
        };
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for (index, entry) in list.get_ref().iter().enumerate() {
            let prefix = format!("sweeps[{index}]");
            let sweep = entry.get_ref();
            let stage = value(&sweep.stage, Stage::Stage2);
            let Some(parameter) = sweep.parameter.as_ref().map(|p| *p.get_ref()) else {
                self.error(Some(entry.span()), &join(&prefix, "parameter"), "missing (required)", "temperature, top_k, top_p, num_beams, length_penalty, repetition_penalty, max_new_tokens");
                continue;
            };
            if !seen.insert((stage, parameter)) {
                self.error(
                    span(&sweep.parameter),
                    &prefix,
                    format!(
                        "a second sweep of {} on {}",
                        parameter.as_str(),
                        stage.as_str()
                    ),
                    "one sweep per parameter and stage",
                );
            }
            let generation = &stages
                .iter()
                .find(|(s, _)| *s == stage)
                .expect("both stages")
                .1
                .generation;
            if parameter == SweepParameter::Temperature && !generation.do_sample {
                self.error(
                    span(&sweep.parameter),
                    &join(&prefix, "parameter"),
                    format!(
                        "temperature has no effect: {}.generation.do_sample is false",
                        stage.as_str()
                    ),
                    "do_sample = true, or another parameter",
                );
            }
            let Some(values) = &sweep.values else {
                self.error(
                    Some(entry.span()),
                    &join(&prefix, "values"),
                    "missing (required)",
                    "a non-empty list of numbers",
                );
                continue;
            };
            if values.get_ref().is_empty() {
                self.error(
                    Some(values.span()),
                    &join(&prefix, "values"),
                    "must not be empty",
                    "a non-empty list of numbers",
                );
            }
            let range = sweep_range(parameter);
            let mut distinct: Vec<f64> = Vec::new();
            for (at, item) in values.get_ref().iter().enumerate() {
                let v = *item.get_ref();
                let field = format!("{prefix}.values[{at}]");
                if !range.contains(v) || parameter.is_integer() && v.fract() != 0.0 {
                    let kind = if parameter.is_integer() {
                        "whole numbers "
                    } else {
                        ""
                    };
                    self.error(
                        Some(item.span()),
                        &field,
                        format!("{v} is not a valid {}", parameter.as_str()),
                        &format!("{kind}{}", range.describe()),
                    );
                } else if distinct.contains(&v) {
                    self.error(
                        Some(item.span()),
                        &field,
                        format!("duplicate value {v}"),
                        "each value once",
                    );
                }
                distinct.push(v);
            }
            out.push(SweepSpec {
                stage,
                parameter,
                values: values.get_ref().iter().map(|v| *v.get_ref()).collect(),
            });
        }
        out
    }

    fn evaluation(&mut self, raw: &S<raw::RawEvaluation>) -> EvaluationSpec {
        let d = defaults::evaluation();
        let Some(table) = raw else { return d };
        let e = table.get_ref();
        let metrics = match &e.metrics {
            None => d.metrics,
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.error(
                        Some(list.span()),
                        "evaluation.metrics",
                        "must name at least one metric",
                        "bleu, rouge, meteor, bertscore, radgraph",
                    );
                }
                let mut metrics = Vec::new();
                for (index, metric) in list.get_ref().iter().enumerate() {
                    if metrics.contains(metric.get_ref()) {
                        self.error(
                            Some(metric.span()),
                            &format!("evaluation.metrics[{index}]"),
                            "duplicate metric",
                            "each metric once",
                        );
                    }
                    metrics.push(*metric.get_ref());
                }
                metrics
            }
        };
        let accepted_cells = list(EvalCell::all().iter().map(ToString::to_string));
        let cells = match &e.cells {
            None => d.cells,
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.error(
                        Some(list.span()),
                        "evaluation.cells",
                        "must name at least one cell",
                        &accepted_cells,
                    );
                }
                let mut cells = Vec::new();
                for (index, text) in list.get_ref().iter().enumerate() {
                    let field = format!("evaluation.cells[{index}]");
                    match EvalCell::parse(text.get_ref()) {
                        Some(cell) if cells.contains(&cell) => {
                            self.error(
                                Some(text.span()),
                                &field,
                                format!("duplicate cell {cell}"),
                                "each cell once",
                            );
                        }
                        Some(cell) => cells.push(cell),
                        None => self.error(
                            Some(text.span()),
                            &field,
                            format!("unknown cell {:?}", text.get_ref()),
                            &accepted_cells,
                        ),
                    }
                }
                cells
            }
        };
        let bertscore_model = e
            .bertscore_model
            .as_ref()
            .map(|p| paths::resolve(&self.base, Path::new(p.get_ref())));
        if let (Some(path), true) = (&bertscore_model, self.options.check_files) {
            let needed = ["config.json", "tokenizer.json"];
            let missing: Vec<_> = needed.iter().filter(|f| !path.join(f).is_file()).collect();
            if !path.is_dir() || !missing.is_empty() || !has_safetensors(path) {
                self.error(
                    span(&e.bertscore_model),
                    "evaluation.bertscore_model",
                    format!("{}: not a Hugging Face encoder folder", path.display()),
                    "a folder with config.json, tokenizer.json and *.safetensors",
                );
            }
        }
        let radgraph_command = e.radgraph_command.as_ref().map(|c| {
            c.get_ref()
                .iter()
                .map(|s| s.get_ref().clone())
                .collect::<Vec<_>>()
        });
        if radgraph_command
            .as_ref()
            .is_some_and(|c| c.is_empty() || c[0].trim().is_empty())
        {
            self.error(
                span(&e.radgraph_command),
                "evaluation.radgraph_command",
                "must name a program",
                "[\"program\", \"arg\", ...], or leave it out",
            );
        }
        EvaluationSpec {
            metrics,
            cells,
            preprocess: value(&e.preprocess, d.preprocess),
            bertscore_model,
            bertscore_layer: e.bertscore_layer.as_ref().map(|l| *l.get_ref()),
            radgraph_command,
        }
    }

    fn resources(&mut self, raw: &S<raw::RawResources>) -> ResourcesSpec {
        let d = defaults::resources();
        let Some(table) = raw else { return d };
        let r = table.get_ref();
        ResourcesSpec {
            data_prep: self.request(&r.data_prep, d.data_prep, "resources.data_prep"),
            train: self.request(&r.train, d.train, "resources.train"),
            eval: self.request(&r.eval, d.eval, "resources.eval"),
            report: self.request(&r.report, d.report, "resources.report"),
        }
    }

    fn request(
        &mut self,
        raw: &S<raw::RawResourceRequest>,
        d: ResourceRequest,
        prefix: &str,
    ) -> ResourceRequest {
        let Some(table) = raw else { return d };
        let r = table.get_ref();
        let gpus = value(&r.gpus, d.gpus);
        let gpu_memory_gb = value(
            &r.gpu_memory_gb,
            if gpus == 0 { 0 } else { d.gpu_memory_gb },
        );
        let cpu_threads = value(&r.cpu_threads, d.cpu_threads);
        if cpu_threads == 0 {
            self.error(
                span(&r.cpu_threads),
                &join(prefix, "cpu_threads"),
                "must be at least 1, got 0",
                "an integer >= 1",
            );
        }
        if gpus == 0 && gpu_memory_gb > 0 {
            self.error(
                span(&r.gpu_memory_gb),
                &join(prefix, "gpu_memory_gb"),
                "asks for GPU memory without a GPU",
                "0 when gpus = 0",
            );
        }
        ResourceRequest {
            gpus,
            gpu_memory_gb,
            cpu_threads,
        }
    }
}

/// A numeric range with open or closed ends.
#[derive(Debug, Clone, Copy)]
struct NumberRange {
    low: f64,
    low_open: bool,
    high: f64,
    high_open: bool,
}

impl NumberRange {
    fn new(low: f64, low_open: bool, high: f64, high_open: bool) -> Self {
        NumberRange {
            low,
            low_open,
            high,
            high_open,
        }
    }
    fn positive() -> Self {
        Self::new(0.0, true, f64::INFINITY, true)
    }
    fn non_negative() -> Self {
        Self::new(0.0, false, f64::INFINITY, true)
    }
    fn any() -> Self {
        Self::new(f64::NEG_INFINITY, true, f64::INFINITY, true)
    }
    fn contains(&self, v: f64) -> bool {
        v.is_finite()
            && (if self.low_open {
                v > self.low
            } else {
                v >= self.low
            })
            && (if self.high_open {
                v < self.high
            } else {
                v <= self.high
            })
    }
    fn describe(&self) -> String {
        match (self.low.is_finite(), self.high.is_finite()) {
            (false, false) => "a finite number".into(),
            (true, false) => format!(
                "a number {} {}",
                if self.low_open { ">" } else { ">=" },
                self.low
            ),
            (false, true) => format!(
                "a number {} {}",
                if self.high_open { "<" } else { "<=" },
                self.high
            ),
            (true, true) => format!(
                "a number in {}{}, {}{}",
                if self.low_open { "(" } else { "[" },
                self.low,
                self.high,
                if self.high_open { ")" } else { "]" }
            ),
        }
    }
}

fn sweep_range(parameter: SweepParameter) -> NumberRange {
    match parameter {
        SweepParameter::Temperature | SweepParameter::RepetitionPenalty => NumberRange::positive(),
        SweepParameter::TopP => NumberRange::new(0.0, true, 1.0, false),
        SweepParameter::TopK => NumberRange::non_negative(),
        SweepParameter::NumBeams | SweepParameter::MaxNewTokens => {
            NumberRange::new(1.0, false, f64::INFINITY, true)
        }
        SweepParameter::LengthPenalty => NumberRange::any(),
    }
}

fn has_safetensors(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
    })
}

/// A GGUF file (checked by its magic) or a Hugging Face folder with its config, tokenizer and weights (every
/// shard that `model.safetensors.index.json` names).
pub(crate) fn check_model_path(path: &Path) -> Result<(), String> {
    if path.is_file() {
        if path.extension().is_none_or(|x| x != "gguf") {
            return Err("a model file must be a .gguf file".into());
        }
        let mut magic = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map_err(|e| format!("cannot read: {e}"))?;
        if &magic != b"GGUF" {
            return Err("not a GGUF file (its first bytes are not \"GGUF\")".into());
        }
        return Ok(());
    }
    if !path.is_dir() {
        return Err("no such file or folder".into());
    }
    for needed in ["config.json", "tokenizer.json"] {
        if !path.join(needed).is_file() {
            return Err(format!("the model folder has no {needed}"));
        }
    }
    let index = path.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| format!("cannot read {}: {e}", index.display()))?;
        let parsed: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: invalid JSON: {e}", index.display()))?;
        let shards: BTreeSet<&str> = parsed
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| m.values().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if shards.is_empty() {
            return Err(format!("{} has no weight_map", index.display()));
        }
        for shard in shards {
            if !path.join(shard).is_file() {
                return Err(format!(
                    "the shard {shard} named in model.safetensors.index.json is missing"
                ));
            }
        }
        return Ok(());
    }
    if !has_safetensors(path) {
        return Err("the model folder has no *.safetensors weights".into());
    }
    Ok(())
}

type FileProblem = (String, Option<(&'static str, Option<Range<usize>>)>);

/// The CSV exists and its header has every configured column.
fn check_csv(
    path: &Path,
    columns: &[(&'static str, String, Option<Range<usize>>)],
) -> Result<(), FileProblem> {
    if !path.is_file() {
        return Err(("no such file".into(), None));
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| (format!("cannot read: {e}"), None))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| (format!("cannot read the header: {e}"), None))?
        .iter()
        .map(str::to_owned)
        .collect();
    for (field, column, at) in columns {
        if !header.iter().any(|h| h == column) {
            return Err((
                format!(
                    "has no column {column:?} (its columns: {})",
                    header.join(", ")
                ),
                Some((field, at.clone())),
            ));
        }
    }
    Ok(())
}

fn check_mimic(path: &Path) -> Result<(), FileProblem> {
    if path.is_dir() || path.is_file() && path.extension().is_some_and(|x| x == "zip") {
        Ok(())
    } else if path.exists() {
        Err((
            "a MIMIC-CXR dataset must be a folder or a .zip".into(),
            None,
        ))
    } else {
        Err(("no such file or folder".into(), None))
    }
}
