//! `tandem-worker`: run one job locally (train, generate) or inspect a checkpoint (logits).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tandem_worker::engine;

#[derive(Parser)]
#[command(
    name = "tandem-worker",
    version,
    about = "Tandem worker: run LoRA/QLoRA jobs locally or for a coordinator"
)]
struct Cli {
    /// CPU threads for tensor operations (default: all cores).
    #[arg(long, global = true, env = "TANDEM_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the logits of the last prompt position as JSON.
    Logits(LogitsArgs),
}

#[derive(clap::Args)]
struct LogitsArgs {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT adapter folder to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The prompt, tokenised as is.
    #[arg(long)]
    prompt: String,
    /// How many of the highest logits to print.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Output format (only json).
    #[arg(long, default_value = "json")]
    format: String,
    /// Prepend the model's BOS token.
    #[arg(long)]
    bos: bool,
}

fn main() -> std::process::ExitCode {
    // Agent mode: `tandem-worker --coordinator URL ...` serves a coordinator (see `tandem_worker::agent`).
    if tandem_worker::agent::cli::wants_agent_mode() {
        return tandem_worker::agent::cli::main();
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = engine::threads::run_with_threads(cli.threads, || match cli.command {
        Command::Logits(args) => logits(args),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn logits(args: LogitsArgs) -> Result<()> {
    if args.format != "json" {
        anyhow::bail!("--format {}: accepted: json", args.format);
    }
    let report = engine::inspect::top_logits(
        &args.model,
        args.adapter.as_deref(),
        &args.prompt,
        args.top,
        args.bos,
    )
    .with_context(|| format!("logits of {}", args.model.display()))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
