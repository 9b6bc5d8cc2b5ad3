//! The `tandem` subcommands: clap definitions here, one module per command group doing the work.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod score;

/// Tandem: a distributed job orchestrator for two-stage LoRA/QLoRA fine-tuning experiments.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score candidate/reference pairs (BLEU, ROUGE, METEOR, BERTScore, F1-RadGraph).
    Score(score::ScoreArgs),
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
        Command::Score(args) => score::run(args),
    }
}
