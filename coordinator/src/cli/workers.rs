//! `tandem workers`: registered workers, their resources, the CUDA devices they found, liveness and current
//! jobs.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use tandem_proto as pb;

use super::client::{ClientArgs, block_on, rpc, utc};
use super::status::StatusFormat;

#[derive(Debug, Args)]
pub struct WorkersArgs {
    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: WorkersArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        let reply = client
            .list_workers(pb::ListWorkersRequest {})
            .await
            .map_err(rpc)?
            .into_inner();
        if args.format == StatusFormat::Json {
            let rows: Vec<_> = reply
                .workers
                .iter()
                .map(|w| {
                    let r = w.resources.unwrap_or_default();
                    json!({"id": w.id, "name": w.name, "alive": w.alive, "jobs": w.jobs, "kinds": w.kinds,
                           "gpus": r.gpus, "gpu_memory_mib": r.gpu_memory_mib, "cpu_threads": r.cpu_threads,
                           "version": w.version, "host": w.host, "last_seen_ms": w.last_seen_ms,
                           "devices": w.devices.iter().map(|d| json!({"ordinal": d.ordinal, "name": d.name,
                               "memory_mib": d.memory_mib, "compute_capability": d.compute_capability}))
                               .collect::<Vec<_>>()})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            println!(
                "{:<28} {:<6} {:>4} {:>8} {:>7}  {:<20} {:<20} devices found",
                "worker", "alive", "gpus", "gpu MiB", "threads", "last seen (UTC)", "jobs"
            );
            for w in reply.workers {
                let r = w.resources.unwrap_or_default();
                let jobs = if w.jobs.is_empty() {
                    "-".to_string()
                } else {
                    w.jobs.join(",")
                };
                println!(
                    "{:<28} {:<6} {:>4} {:>8} {:>7}  {:<20} {:<20} {}",
                    w.id,
                    if w.alive { "yes" } else { "no" },
                    r.gpus,
                    r.gpu_memory_mib,
                    r.cpu_threads,
                    utc(w.last_seen_ms),
                    jobs,
                    pb::devices_summary(&w.devices)
                );
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })?
}
