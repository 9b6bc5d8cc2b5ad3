//! `tandem validate M [--schema-only]`: exit 0 with a one-line summary, or exit 2 with every problem.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tandem_experiments::manifest::{self, LoadOptions, Manifest, SplitSpec};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The manifest (TOML).
    pub manifest: PathBuf,
    /// Check the schema and values only, not the referenced files (model weights, datasets).
    #[arg(long)]
    pub schema_only: bool,
}

/// Loads a manifest; on failure prints every problem to stderr and returns the exit code (2 when invalid).
pub fn load_or_report(path: &std::path::Path, check_files: bool) -> Result<Manifest, ExitCode> {
    match manifest::load(path, LoadOptions { check_files }) {
        Ok(manifest) => Ok(manifest),
        Err(error) => {
            let count = error.diagnostics().len();
            if count > 0 {
                eprintln!(
                    "{}: {count} problem{}:",
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
    let manifest = match load_or_report(&args.manifest, !args.schema_only) {
        Ok(m) => m,
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
