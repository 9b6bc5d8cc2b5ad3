//! `tandem validate M [--schema-only]`: exit 0 with a one-line summary, or exit 2 with every problem.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tandem_experiments::manifest::{self, LoadOptions, Manifest, SplitSpec, overrides};

/// `--set KEY=VALUE` overrides of manifest values.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// Override a manifest value, typed and validated like the file (e.g. --set stage1.training.lr=2e-5,
    /// --set lora.r=64); repeat for several. The overridden manifest is what is planned, submitted and hashed.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The manifest (TOML).
    pub manifest: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
    /// Check the schema and values only, not the referenced files (model weights, datasets).
    #[arg(long)]
    pub schema_only: bool,
}

/// Loads a manifest with `overrides` written in; on failure prints every problem to stderr and returns the
/// exit code (2 when invalid). Returns the manifest and the text it was parsed from (what is submitted).
pub fn load_or_report(
    path: &std::path::Path,
    overrides: &Overrides,
    check_files: bool,
) -> Result<(Manifest, String), ExitCode> {
    let text = match overrides::read_with(path, &overrides.sets) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("error: {error}");
            return Err(ExitCode::from(2));
        }
    };
    match manifest::parse_str(&text, path, LoadOptions { check_files }) {
        Ok(manifest) => Ok((manifest, text)),
        Err(error) => {
            let count = error.diagnostics().len();
            if count > 0 {
                let with = if overrides.sets.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (with --set {}; positions are in the manifest with them written in)",
                        overrides.sets.join(" --set ")
                    )
                };
                eprintln!(
                    "{}{with}: {count} problem{}:",
                    path.display(),
                    if count == 1 { "" } else { "s" }
                );
            }
            eprintln!("{error}");
            Err(ExitCode::from(2))
        }
    }
}

fn split_summary(split: &SplitSpec) -> String {
    match split {
        SplitSpec::Holdout { train, val, test } => format!("holdout {train}/{val}/{test}"),
        SplitSpec::Kfold {
            folds,
            val_fraction,
        } => format!("{folds}-fold (val {val_fraction})"),
    }
}

/// One line describing a valid manifest.
pub fn summary(m: &Manifest) -> String {
    let family = format!("{:?}", m.model.family).to_lowercase();
    let quant = format!("{:?}", m.model.quantization).to_lowercase();
    let points: usize = m.sweeps.iter().map(|s| s.values.len()).sum();
    let group = |s: &tandem_experiments::manifest::StageSpec| {
        s.dataset
            .group_column
            .as_ref()
            .map_or_else(String::new, |g| format!(" by {g}"))
    };
    format!(
        "experiment {} (team {}): {family} {quant} LoRA r={} alpha={}; stage1 {}{}; stage2 {}{}; {} sweep point{}; {} eval cell{}; metrics {}",
        m.name,
        m.team,
        m.lora.r,
        m.lora.alpha,
        split_summary(&m.stage1.split),
        group(&m.stage1),
        split_summary(&m.stage2.split),
        group(&m.stage2),
        points,
        if points == 1 { "" } else { "s" },
        m.evaluation.cells.len(),
        if m.evaluation.cells.len() == 1 {
            ""
        } else {
            "s"
        },
        m.evaluation
            .metrics
            .iter()
            .map(|x| format!("{x:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(","),
    )
}

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let manifest = match load_or_report(&args.manifest, &args.overrides, !args.schema_only) {
        Ok((m, _)) => m,
        Err(code) => return Ok(code),
    };
    let scope = if args.schema_only {
        " (schema only; files not checked)"
    } else {
        ""
    };
    println!(
        "ok: {}: {}{scope}",
        args.manifest.display(),
        summary(&manifest)
    );
    Ok(ExitCode::SUCCESS)
}
