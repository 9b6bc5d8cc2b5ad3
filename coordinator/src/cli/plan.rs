//! `tandem plan M`: the job graph a manifest expands to, as a tree or as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use tandem_experiments::planner;

use super::validate::{Overrides, load_or_report};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Tree,
    Json,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    pub manifest: PathBuf,
    #[arg(long, value_enum, default_value_t = PlanFormat::Tree)]
    pub format: PlanFormat,
    #[command(flatten)]
    pub overrides: Overrides,
}

pub fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let manifest = match load_or_report(&args.manifest, &args.overrides, true) {
        Ok((m, _)) => m,
        Err(code) => return Ok(code),
    };
    let plan = match planner::plan(&manifest) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("{}: {error}", args.manifest.display());
            return Ok(ExitCode::from(2));
        }
    };
    match args.format {
        PlanFormat::Tree => {
            print!("{}", planner::render_tree(&plan));
            if let Some(sweep) = &manifest.training_sweep {
                println!("{}", sweep.describe());
            }
        }
        PlanFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
    }
    Ok(ExitCode::SUCCESS)
}
