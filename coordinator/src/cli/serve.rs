//! `tandem serve`: run the coordinator on a store folder until SIGTERM / Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tandem_coordinator::grpc::Limits;
use tandem_coordinator::scheduler::SchedulerConfig;
use tandem_coordinator::server::{ServeOptions, start};

use super::client::block_on;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Store folder (created if missing; an existing store resumes where it stood).
    #[arg(long)]
    pub store: PathBuf,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Also serve the web dashboard here (HTTP; the same tokens, read-only), e.g. 127.0.0.1:8080.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// No tokens needed (every caller is the admin "local"); loopback addresses only.
    #[arg(long)]
    pub insecure_local: bool,
    /// PEM certificate chain for TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Lease time-to-live without a heartbeat, ms.
    #[arg(long, default_value_t = 15_000)]
    pub lease_ttl_ms: u64,
    /// Heartbeat interval asked of workers, ms.
    #[arg(long, default_value_t = 3_000)]
    pub heartbeat_ms: u64,
    /// Attempts before a job fails for good.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// First retry back-off, ms (doubles per attempt, at most 60 s).
    #[arg(long, default_value_t = 1_000)]
    pub backoff_ms: u64,
    /// Largest gRPC message, MiB.
    #[arg(long, default_value_t = 64)]
    pub max_message_mib: usize,
    /// Largest artifact upload, MiB.
    #[arg(long, default_value_t = 8192)]
    pub max_upload_mib: u64,
    /// Artifacts one job may hold in the store (outputs and checkpoints), MiB.
    #[arg(long, default_value_t = 65_536)]
    pub max_job_artifact_mib: u64,
    /// Metric points per second one job may send on average (a faster worker's stream is read more slowly).
    #[arg(long, default_value_t = 20_000.0)]
    pub metric_points_per_s: f64,
    /// Metric points one job may send in a burst.
    #[arg(long, default_value_t = 200_000.0)]
    pub metric_points_burst: f64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let options = ServeOptions {
        store_dir: args.store.clone(),
        listen: args.listen,
        insecure_local: args.insecure_local,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        scheduler: SchedulerConfig {
            lease_ttl_ms: args.lease_ttl_ms,
            heartbeat_interval_ms: args.heartbeat_ms,
            max_attempts: args.max_attempts.max(1),
            backoff_base_ms: args.backoff_ms,
            backoff_max_ms: 60_000,
            max_lease_wait_ms: 20_000,
            tick_ms: (args.heartbeat_ms / 4).clamp(20, 500),
        },
        limits: Limits {
            max_message_bytes: args.max_message_mib << 20,
            max_upload_bytes: args.max_upload_mib << 20,
            max_job_artifact_bytes: args.max_job_artifact_mib << 20,
            metric_points_per_s: positive("--metric-points-per-s", args.metric_points_per_s)?,
            metric_points_burst: positive("--metric-points-burst", args.metric_points_burst)?,
            ..Limits::default()
        },
        http: args.http,
    };
    block_on(async move {
        let running = start(options).await?;
        let scheme = if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        println!(
            "tandem coordinator listening on {scheme}://{}",
            running.addr
        );
        // On stderr: stdout's one line is what scripts read the gRPC address from.
        if let Some(http) = running.http_addr {
            eprintln!("dashboard on http://{http}/");
        }
        let _ = std::io::stdout().flush();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("shutting down");
        running.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    })?
}

/// A rate or burst must be a positive number.
fn positive(flag: &str, value: f64) -> anyhow::Result<f64> {
    if value > 0.0 {
        Ok(value)
    } else {
        anyhow::bail!("{flag} {value}: expected a positive number")
    }
}
