//! The `tandem` subcommands: clap definitions here, one module per command group doing the work.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Orchestrator commands (coordinator, client).
mod audit;
mod cancel;
mod client;
mod completions;
mod data;
pub mod exit;
mod export;
mod export_tracking;
mod launch;
mod manifest;
mod output;
mod plan;
mod plot;
mod results;
mod run;
mod score;
mod serve;
mod status;
mod submit;
mod summarize;
mod token;
mod upload;
mod validate;
mod watch;
mod workers;

/// Tandem: a distributed job orchestrator for two-stage LoRA/QLoRA fine-tuning experiments.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether the command serves peers over sockets for long (`serve`, and `run` with its embedded coordinator).
    pub fn is_server(&self) -> bool {
        matches!(self.command, Command::Serve(_) | Command::Run(_))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator on a store folder.
    Serve(serve::ServeArgs),
    /// Manage bearer tokens for teams, workers and admins.
    Token(token::TokenArgs),
    /// Submit an experiment; prints its id.
    Submit(submit::SubmitArgs),
    /// Show experiments, or one experiment's jobs.
    Status(status::StatusArgs),
    /// Follow an experiment live until it ends.
    Watch(watch::WatchArgs),
    /// Cancel an experiment's jobs.
    Cancel(cancel::ExperimentArgs),
    /// Requeue an experiment's failed and cancelled jobs.
    Retry(cancel::ExperimentArgs),
    /// List registered workers.
    Workers(workers::WorkersArgs),
    /// Show an experiment's results: the thesis tables (or, with --series, the metric-series summary).
    Results(results::ResultsArgs),
    /// Draw an experiment's training and validation curves (SVG and PNG).
    Plot(plot::PlotArgs),
    /// Check an experiment's manifest, inputs and artifacts against their recorded hashes (--replay JOB:
    /// re-run a job and compare its outputs bitwise).
    Audit(audit::AuditArgs),
    /// Write an experiment's manifest, metrics and artifacts to a folder.
    Export(export::ExportArgs),
    /// Run one experiment on this machine: embedded coordinator, local workers, watch, results.
    Run(run::RunArgs),
    /// Check a manifest: exit 0 with a summary, or 2 with every problem (file:line:col: field: message).
    Validate(validate::ValidateArgs),
    /// Manifest utilities (content hash).
    #[command(subcommand)]
    Manifest(manifest::ManifestCommand),
    /// Datasets: MIMIC-CXR conversion, the SYNTHETIC longitudinal set, splits and k-fold.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Expand a manifest into its job graph.
    Plan(plan::PlanArgs),
    /// Score candidate/reference pairs (BLEU, ROUGE, METEOR, BERTScore, F1-RadGraph).
    Score(score::ScoreArgs),
    /// Summarise patient histories through a manifest's stage-1 and two-stage models, one job per patient.
    Summarize(summarize::SummarizeArgs),
    /// Start workers through a cluster's resource manager: Slurm jobs (submit, watch, status, cancel), or the
    /// Kubernetes Job rendered.
    #[command(subcommand)]
    Launch(launch::LaunchCommand),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
}

/// Logs go to stderr; `RUST_LOG` overrides the default level (warn).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Token(args) => token::run(args),
        Command::Submit(args) => submit::run(args),
        Command::Status(args) => status::run(args),
        Command::Watch(args) => watch::run(args),
        Command::Cancel(args) => cancel::cancel(args),
        Command::Retry(args) => cancel::retry(args),
        Command::Workers(args) => workers::run(args),
        Command::Results(args) => results::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Export(args) => export::run(args),
        Command::Run(args) => run::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Manifest(command) => manifest::run(command),
        Command::Data(command) => data::run(command),
        Command::Plan(args) => plan::run(args),
        Command::Score(args) => score::run(args),
        Command::Summarize(args) => summarize::run(args),
        Command::Launch(command) => launch::run(command),
        Command::Completions(args) => completions::run(args),
    }
}
