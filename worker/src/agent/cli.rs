//! `tandem-worker agent --coordinator URL ...`: the agent mode of the worker binary (flags, environment facts
//! reported for audits, signal handling).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sha2::{Digest, Sha256};
use tandem_proto as pb;

use super::test_runner::{TEST_EMIT_KIND, TestEmitRunner};
use super::{AgentConfig, RunnerRegistry};

/// Serve a Tandem coordinator as a worker.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Coordinator URL (http://host:port, or https:// with --ca-cert).
    #[arg(
        long,
        env = "TANDEM_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub coordinator: String,
    /// Worker bearer token (`tandem token create --worker NAME`); prefer --token-file, which keeps it off the
    /// command line.
    #[arg(long, env = "TANDEM_WORKER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the worker bearer token, readable only by its owner (mode 600 or 400); keeps the token
    /// off the command line and out of the environment (what `tandem launch slurm` uses).
    #[arg(long, env = "TANDEM_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Seconds a shutting-down worker (SIGTERM) waits for its checkpoint upload and lease hand-back before it
    /// exits anyway.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_s: u64,
    /// PEM CA certificate to trust for an https coordinator.
    #[arg(long, env = "TANDEM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Worker name (default: host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// GPUs offered, ordinals 0..N, each to one job at a time (jobs run side by side, one per GPU) [default:
    /// every CUDA device found, 0 without a driver]. At most the devices found; 0 offers none (CPU only).
    #[arg(long)]
    pub gpus: Option<u32>,
    /// Memory per GPU, MiB (default when GPUs are offered: the smallest CUDA device found, else 0).
    #[arg(long)]
    pub gpu_memory_mib: Option<u64>,
    /// Folder for downloads and scratch files.
    #[arg(long, default_value = ".tandem/worker")]
    pub work_dir: PathBuf,
    /// Machine-wide cache of inputs (models, tokenizers, datasets) fetched by digest, shared by the machine's
    /// workers [default: $XDG_CACHE_HOME/tandem, else ~/.cache/tandem]
    #[arg(long, env = "TANDEM_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Also run the deterministic test job kind `test.emit` (tests and benchmarks).
    #[arg(long)]
    pub enable_test_kinds: bool,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The git commit and Cargo.lock hash of the source tree the binary was built from, when it is still there.
fn code_version() -> (String, String) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .arg("-C")
        .arg(&source)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let lock = std::fs::read(source.join("Cargo.lock"))
        .map(|bytes| {
            Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .unwrap_or_default();
    (commit, lock)
}

/// Reads a bearer token from `path`: a file readable by its owner only (mode 600 or 400), holding one token.
/// The error names the path and what is wrong.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let metadata = std::fs::metadata(path).map_err(|err| format!("--token-file {shown}: {err}"))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "--token-file {shown}: readable by group or others (mode {mode:03o}); a token file must be \
             readable by its owner only (chmod 600 {shown})"
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("--token-file {shown}: {err}"))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(format!(
            "--token-file {shown}: expected one token on one line (`tandem token create --worker NAME`)"
        ));
    }
    Ok(token.to_string())
}

/// The default log filter: warnings, and the agent's one line per registration, lease, checkpoint resume and
/// outcome.
const DEFAULT_LOG: &str = "warn,tandem_worker::agent=info";

/// Runs the agent with `args` until SIGTERM / Ctrl-C; `threads` is the worker's global `--threads` (CPU threads
/// offered and used by its jobs' tensor work; default: all).
pub fn main(args: AgentArgs, threads: Option<usize>) -> ExitCode {
    // The threads the worker advertises are the threads its jobs' tensor work uses.
    crate::engine::threads::configure(threads);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut registry = RunnerRegistry::new();
    super::runners::register_all(&mut registry);
    if args.enable_test_kinds {
        registry.register(TEST_EMIT_KIND, Arc::new(TestEmitRunner));
    }
    let token = match &args.token_file {
        Some(path) => match read_token_file(path) {
            Ok(token) => Some(token),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        },
        None => args.token.clone(),
    };
    let ca_cert = match &args.ca_cert {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(err) => {
                eprintln!("error: --ca-cert {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    // Devices are found once, reported as facts, and bound what --gpus may offer.
    let detected = super::devices::detect();
    match &detected {
        Ok(devices) if !devices.is_empty() => tracing::info!(
            count = devices.len(),
            devices = %pb::devices_summary(devices),
            "cuda devices found"
        ),
        Ok(_) => tracing::info!(
            reason = "the CUDA driver reports no device",
            "no CUDA device"
        ),
        Err(reason) => tracing::info!(reason = %reason, "no CUDA device"),
    }
    let offer = match super::devices::gpu_offer(args.gpus, args.gpu_memory_mib, &detected) {
        Ok(offer) => offer,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(warning) = &offer.warning {
        tracing::warn!("{warning}");
    }
    let host = host_name();
    let (git_commit, cargo_lock_sha256) = code_version();
    let threads = threads.map(|n| n as u32).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    let config = AgentConfig {
        coordinator: args.coordinator.clone(),
        token,
        ca_cert,
        name: args
            .name
            .clone()
            .unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        resources: pb::Resources {
            gpus: offer.gpus,
            gpu_memory_mib: offer.gpu_memory_mib,
            cpu_threads: threads,
        },
        work_dir: args.work_dir.clone(),
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(|| super::inputs::default_cache_dir(&args.work_dir)),
        lease_wait: Duration::from_secs(10),
        version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit,
        cargo_lock_sha256,
        host,
        devices: detected.unwrap_or_default(),
        cluster_job: super::cluster::cluster_job(|name| std::env::var(name).ok()),
    };
    if let Some(job) = &config.cluster_job {
        tracing::info!(scheduler = %job.scheduler, job = %job.job_id, node = %job.node, gpus = %job.gpus, restarts = job.restarts, "running in a cluster job");
    }
    let shutdown_grace = Duration::from_secs(args.shutdown_grace_s);
    runtime.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down: checkpointing and handing back the lease");
            let _ = tx.send(true);
            // A coordinator that is gone cannot take the lease back: after the grace period the worker exits
            // anyway (the lease expires there and the job is requeued). A second signal exits at once.
            tokio::select! {
                _ = tokio::time::sleep(shutdown_grace) => {
                    tracing::warn!(grace_s = shutdown_grace.as_secs(), "coordinator did not take the lease back in time; exiting");
                }
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            std::process::exit(1);
        });
        match super::run(config, registry, rx).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn token_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(format!("token-{mode:o}"));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_file(dir.path(), "tdm_w_abc123\n", 0o600);
        assert_eq!(read_token_file(&path).unwrap(), "tdm_w_abc123");
    }

    #[test]
    fn a_token_file_others_can_read_is_refused_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_file(dir.path(), "tdm_w_abc123\n", 0o644);
        let err = read_token_file(&path).unwrap_err();
        assert!(
            err.contains("mode 644") && err.contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_missing_or_empty_token_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = read_token_file(&missing).unwrap_err();
        assert!(
            err.starts_with(&format!("--token-file {}", missing.display())),
            "{err}"
        );
        let empty = token_file(dir.path(), "\n", 0o600);
        assert!(read_token_file(&empty).unwrap_err().contains("one token"));
    }
}
