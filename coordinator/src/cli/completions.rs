//! `tandem completions SHELL`: the shell completion script for `tandem`, generated from its clap definition.

use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell. Install e.g. with
    /// `tandem completions bash > ~/.local/share/bash-completion/completions/tandem`.
    pub shell: Shell,
}

pub fn run(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut command = super::Cli::command();
    clap_complete::generate(args.shell, &mut command, "tandem", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
