//! `tandem workers`: registered workers, their resources, the CUDA devices they found, liveness, current
//! jobs, and where they run (host; the Slurm job, its GPUs and Slurm's state of it when Slurm started them).

use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use tandem_proto as pb;

use tandem_coordinator::launch::slurm::Slurm;

use super::client::{ClientArgs, block_on, rpc, utc};
use super::output::{OutputFormat, Table};

#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// table, json (one object per worker, devices and cluster job included) or csv.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
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
        // Slurm's view of the workers' jobs, where this machine has squeue (a login node); "-" elsewhere.
        let slurm_states: std::collections::BTreeMap<String, String> =
            if reply.workers.iter().any(|w| {
                w.cluster_job
                    .as_ref()
                    .is_some_and(|c| c.scheduler == "slurm")
            }) {
                Slurm::default()
                    .queue()
                    .map(|q| q.into_iter().map(|j| (j.id, j.state)).collect())
                    .unwrap_or_default()
            } else {
                Default::default()
            };
        let slurm_state = |w: &pb::WorkerInfo| {
            w.cluster_job
                .as_ref()
                .filter(|c| c.scheduler == "slurm")
                .map(|c| {
                    slurm_states
                        .get(&c.job_id)
                        .cloned()
                        .unwrap_or_else(|| "not queued".into())
                })
        };
        let mut table = Table::new(&[
            "worker",
            "alive",
            "gpus",
            "gpu MiB",
            "threads",
            "last seen (UTC)",
            "jobs",
            "host",
            "cluster job",
            "devices found",
        ]);
        for w in &reply.workers {
            let r = w.resources.unwrap_or_default();
            let jobs = if w.jobs.is_empty() {
                "-".to_string()
            } else {
                w.jobs.join(",")
            };
            let cluster = match &w.cluster_job {
                Some(c) => {
                    let gpus = if c.gpus.is_empty() {
                        String::new()
                    } else {
                        format!(" gpus {}", c.gpus)
                    };
                    let state = slurm_state(w).map(|s| format!(" {s}")).unwrap_or_default();
                    format!("{} {}{gpus}{state}", c.scheduler, c.job_id)
                }
                None => "-".into(),
            };
            let json = json!({"id": w.id, "name": w.name, "alive": w.alive, "jobs": w.jobs, "kinds": w.kinds,
                   "gpus": r.gpus, "gpu_memory_mib": r.gpu_memory_mib, "cpu_threads": r.cpu_threads,
                   "version": w.version, "host": w.host, "last_seen_ms": w.last_seen_ms,
                   "devices": w.devices.iter().map(|d| json!({"ordinal": d.ordinal, "name": d.name,
                       "memory_mib": d.memory_mib, "compute_capability": d.compute_capability}))
                       .collect::<Vec<_>>(),
                   "cluster_job": w.cluster_job.as_ref().map(|c| json!({"scheduler": c.scheduler,
                       "job_id": c.job_id, "node": c.node, "partition": c.partition, "gpus": c.gpus,
                       "restarts": c.restarts, "state": slurm_state(w)}))});
            table.row(
                vec![
                    w.id.clone(),
                    if w.alive { "yes" } else { "no" }.into(),
                    r.gpus.to_string(),
                    r.gpu_memory_mib.to_string(),
                    r.cpu_threads.to_string(),
                    utc(w.last_seen_ms),
                    jobs,
                    w.host.clone(),
                    cluster,
                    pb::devices_summary(&w.devices),
                ],
                Some(json),
            );
        }
        print!("{}", table.render(args.format));
        anyhow::Ok(ExitCode::SUCCESS)
    })?
}
