//! `tandem`: the command line of Tandem (manifests, data, planning, scoring, and the orchestrator's client).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // Output into a closed pipe (`tandem plan M | head`) ends a printing command quietly, as for any Unix tool,
    // instead of a panic in `println!`. The servers (`serve`, `run`) keep Rust's default (SIGPIPE ignored), so
    // a peer that hangs up can never kill them.
    if !args.is_server() {
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    cli::init_tracing();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            cli::exit::exit_code(&err)
        }
    }
}
