//! `tandem manifest hash M`: the manifest's content hash (canonical form plus every referenced file).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use tandem_experiments::manifest::content_hash;

use super::validate::{Overrides, load_or_report};

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Print the SHA-256 over the canonical manifest and every file it references.
    Hash(HashArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HashFormat {
    /// `<sha256>  <manifest>`
    Plain,
    /// The hash, then one line per hashed file: `<sha256>  <bytes>  <field>  <file>`.
    Files,
    /// Everything, including the canonical JSON.
    Json,
}

#[derive(Debug, Args)]
pub struct HashArgs {
    pub manifest: PathBuf,
    #[arg(long, value_enum, default_value_t = HashFormat::Plain)]
    pub format: HashFormat,
    #[command(flatten)]
    pub overrides: Overrides,
}

pub fn run(command: ManifestCommand) -> anyhow::Result<ExitCode> {
    let ManifestCommand::Hash(args) = command;
    let manifest = match load_or_report(&args.manifest, &args.overrides, true) {
        Ok((m, _)) => m,
        Err(code) => return Ok(code),
    };
    let hash =
        content_hash(&manifest).with_context(|| format!("hashing {}", args.manifest.display()))?;
    match args.format {
        HashFormat::Plain => println!("{}  {}", hash.sha256, args.manifest.display()),
        HashFormat::Files => {
            println!("{}  {}", hash.sha256, args.manifest.display());
            for file in &hash.files {
                println!(
                    "{}  {:>12}  {}  {}",
                    file.sha256,
                    file.bytes,
                    file.role,
                    file.path.display()
                );
            }
        }
        HashFormat::Json => println!("{}", serde_json::to_string_pretty(&hash)?),
    }
    Ok(ExitCode::SUCCESS)
}
