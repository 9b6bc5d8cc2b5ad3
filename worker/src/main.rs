//! `tandem-worker`: run one job locally, or serve a coordinator as a worker.

fn main() -> std::process::ExitCode {
    // Agent mode: `tandem-worker --coordinator URL ...` serves a coordinator (see `tandem_worker::agent`).
    if tandem_worker::agent::cli::wants_agent_mode() {
        return tandem_worker::agent::cli::main();
    }
    println!("tandem-worker");
    std::process::ExitCode::SUCCESS
}
