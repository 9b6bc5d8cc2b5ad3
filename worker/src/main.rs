//! `tandem-worker`: run one job locally (train, generate) or inspect a checkpoint (logits).

mod bench;

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tandem_experiments::manifest::{DevicePreference, Manifest, Stage};
use tandem_worker::engine;
use tandem_worker::engine::backend::{self, Backend};
use tandem_worker::engine::train::TrainEvent;

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
    /// Serve a coordinator: register, lease jobs, run them, stream metrics and artifacts back (until SIGTERM,
    /// which checkpoints and hands the running jobs back).
    Agent(Box<tandem_worker::agent::cli::AgentArgs>),
    #[command(flatten)]
    Local(LocalCommand),
}

/// The commands that run one piece of work on this machine and exit.
#[derive(Subcommand)]
enum LocalCommand {
    /// Train one stage (one fold) of a manifest; writes the adapter to OUT/adapter.
    Train(TrainArgs),
    /// Generate for the rows of a CSV with a stage's prompt and decoding settings.
    Generate(GenerateArgs),
    /// Print the logits of the last prompt position as JSON.
    Logits(LogitsArgs),
    /// Benchmarks that print figures (not tests).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The CUDA kernels at LLaMA-3.1-8B shapes against copy bandwidth and cuBLAS (needs an NVIDIA GPU).
    Kernels(bench::kernels::KernelBenchArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum StageArg {
    Stage1,
    Stage2,
}

impl From<StageArg> for Stage {
    fn from(s: StageArg) -> Self {
        match s {
            StageArg::Stage1 => Stage::Stage1,
            StageArg::Stage2 => Stage::Stage2,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

impl From<DeviceArg> for DevicePreference {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => DevicePreference::Auto,
            DeviceArg::Cpu => DevicePreference::Cpu,
            DeviceArg::Cuda => DevicePreference::Cuda,
        }
    }
}

/// Where a local job computes.
#[derive(clap::Args)]
struct DeviceArgs {
    /// Overrides the manifest's model.device.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// A CUDA device ordinal the job may use (repeat for several; none: the job gets no GPU).
    #[arg(long = "gpu")]
    gpus: Vec<u32>,
}

impl DeviceArgs {
    fn backend(&self, manifest: &Manifest) -> Result<Backend> {
        let pref = self.device.map_or(manifest.model.device, Into::into);
        Ok(backend::choose(pref, manifest.model.family, &self.gpus)?)
    }
}

#[derive(clap::Args)]
struct TrainArgs {
    #[arg(long)]
    manifest: PathBuf,
    #[arg(long, value_enum)]
    stage: StageArg,
    /// Fold of a k-fold stage.
    #[arg(long)]
    fold: Option<usize>,
    #[arg(long)]
    out: PathBuf,
    /// Adapter to start from (stage 2: the stage-1 adapter).
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    /// Continue from the newest checkpoint in OUT.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[arg(long)]
    manifest: PathBuf,
    /// PEFT adapter folder; omit to generate with the base model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Stage whose prompt, input column and decoding settings are used.
    #[arg(long, value_enum, default_value = "stage1")]
    stage: StageArg,
    /// CSV with the stage's input column (and optionally its target column).
    #[arg(long)]
    input: PathBuf,
    /// CSV written with columns row, input, reference, prediction.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
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
    engine::alloc::tune_for_tensors();
    let cli = Cli::parse();
    // Agent mode sets up its own logging, threads and runtime (see `tandem_worker::agent`).
    let command = match cli.command {
        Command::Agent(args) => return tandem_worker::agent::cli::main(*args, cli.threads),
        Command::Local(command) => command,
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let result = engine::threads::run_with_threads(cli.threads, || match command {
        LocalCommand::Train(args) => train(args),
        LocalCommand::Generate(args) => generate(args),
        LocalCommand::Logits(args) => logits(args),
        LocalCommand::Bench(BenchCommand::Kernels(args)) => {
            bench::kernels::run_kernel_bench(&args).map(drop)
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A progress bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(len: u64, what: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        Self { bar: Some(bar) }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn set(&self, pos: u64, msg: String) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.set_message(msg);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn train(args: TrainArgs) -> Result<()> {
    let manifest = engine::jobs::load_manifest(&args.manifest)?;
    let job = engine::jobs::TrainJob {
        stage: args.stage.into(),
        fold: args.fold,
        out_dir: args.out.clone(),
        init_adapter: args.init_adapter,
        resume: args.resume,
        backend: args.device.backend(&manifest)?,
    };
    let mut progress = Progress { bar: None };
    let summary = engine::jobs::run_train(&manifest, &job, &mut |event| match event {
        TrainEvent::Started { total_steps, train_examples, val_examples, trainable_params, resumed_at } => {
            progress = Progress::new(total_steps as u64, "train");
            progress.line(format!(
                "training {} on {train_examples} examples ({val_examples} validation): {total_steps} steps, \
                 {trainable_params} trainable parameters{}",
                job.stage.as_str(),
                if resumed_at > 0 { format!(", resumed at step {resumed_at}") } else { String::new() }
            ));
        }
        TrainEvent::Step(m) => {
            progress.set(m.step as u64, format!("loss {:.4}", m.train_loss));
            progress.line(format!(
                "step {}/{} epoch {:.2} loss {:.4} lr {:.3e} grad-norm {:.3} {:.0} tok/s",
                m.step, m.total_steps, m.epoch, m.train_loss, m.lr, m.grad_norm, m.tokens_per_s
            ));
        }
        TrainEvent::Eval(e) => progress.line(format!(
            "eval at step {}: val loss {:.4}, perplexity {:.2}{}",
            e.step,
            e.val_loss,
            e.perplexity,
            if e.improved { " (best)" } else { "" }
        )),
        TrainEvent::Checkpoint { step, path } => progress.line(format!("checkpoint {step}: {}", path.display())),
        TrainEvent::EarlyStop { step, best_step } => {
            progress.line(format!("early stop at step {step}; best step {best_step}"))
        }
        TrainEvent::Finished(_) => progress.finish(),
    })
    .with_context(|| format!("training {} of {}", job.stage.as_str(), args.manifest.display()))?;
    let fmt = |v: Option<f64>| v.map_or("not available".to_string(), |x| format!("{x:.4}"));
    println!("steps           {}", summary.steps);
    println!("epochs          {:.2}", summary.epochs);
    println!("final loss      {}", fmt(summary.final_train_loss));
    println!(
        "best val loss   {} (step {})",
        fmt(summary.best_val_loss),
        summary.best_step.map_or("-".into(), |s| s.to_string())
    );
    println!(
        "perplexity      {}",
        fmt(summary.best_val_loss.map(f64::exp))
    );
    println!("stopped early   {}", summary.stopped_early);
    println!("adapter         {}", summary.adapter_dir.display());
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    let manifest = engine::jobs::load_manifest(&args.manifest)?;
    let backend = args.device.backend(&manifest)?;
    let stage: Stage = args.stage.into();
    let spec = &manifest.stage(stage).dataset;
    let mut reader = csv::Reader::from_path(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let headers = reader.headers()?.clone();
    let Some(input_col) = headers.iter().position(|h| h == spec.input_column) else {
        bail!(
            "{}: no column `{}` (the {} input column); columns: {:?}",
            args.input.display(),
            spec.input_column,
            stage.as_str(),
            headers
        );
    };
    let target_col = headers.iter().position(|h| h == spec.target_column);
    let mut inputs = Vec::new();
    let mut refs = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", args.input.display(), i + 1))?;
        inputs.push(rec.get(input_col).unwrap_or_default().to_string());
        refs.push(
            target_col
                .and_then(|c| rec.get(c))
                .unwrap_or_default()
                .to_string(),
        );
    }
    let progress = Progress::new(inputs.len() as u64, "generate");
    let mut done = 0u64;
    let start = std::time::Instant::now();
    let outputs = engine::jobs::run_generate(
        &manifest,
        stage,
        args.adapter.as_deref(),
        &inputs,
        None,
        &backend,
        &mut |n| {
            done += n as u64;
            progress.set(done, String::new());
            if progress.bar.is_none() {
                eprintln!("generated {done}/{}", inputs.len());
            }
        },
    )?;
    progress.finish();
    let mut writer = csv::Writer::from_path(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    writer.write_record(["row", "input", "reference", "prediction"])?;
    for (i, ((input, reference), prediction)) in inputs.iter().zip(&refs).zip(&outputs).enumerate()
    {
        writer.write_record([i.to_string().as_str(), input, reference, prediction])?;
    }
    writer.flush()?;
    println!(
        "generated {} rows in {:.1}s -> {}",
        outputs.len(),
        start.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

fn logits(args: LogitsArgs) -> Result<()> {
    if args.format != "json" {
        bail!("--format {}: accepted: json", args.format);
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
