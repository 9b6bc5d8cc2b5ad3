//! `tandem audit ID`: re-hash the manifest, every input and every stored artifact against what was recorded,
//! show the code version and worker environment each job ran with; exit code 1 on any mismatch.

use std::process::ExitCode;

use clap::Args;
use tandem_proto as pb;

use super::client::{ClientArgs, block_on, rpc, utc};

#[derive(Debug, Args)]
pub struct AuditArgs {
    pub experiment: String,
    /// Also print the experiment's audit log (every state change and who caused it).
    #[arg(long)]
    pub log: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(16)]
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        let reply = client
            .audit(pb::AuditRequest {
                experiment_id: args.experiment.clone(),
                include_log: args.log,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        println!(
            "{:<6} {:<60} {:<18} {:<18} detail",
            "result", "subject", "expected", "actual"
        );
        for c in &reply.checks {
            println!(
                "{:<6} {:<60} {:<18} {:<18} {}",
                if c.ok { "PASS" } else { "FAIL" },
                c.subject,
                short(&c.expected),
                short(&c.actual),
                c.detail
            );
        }
        println!();
        println!("coordinator version {}", reply.coordinator_version);
        println!(
            "{:<18} {:<28} {:<10} {:<14} {:<18} host",
            "job", "worker", "version", "git commit", "Cargo.lock"
        );
        for e in &reply.environments {
            println!(
                "{:<18} {:<28} {:<10} {:<14} {:<18} {}",
                short(&e.job_id),
                e.worker,
                e.worker_version,
                &e.git_commit[..e.git_commit.len().min(12)],
                short(&e.cargo_lock_sha256),
                e.host
            );
        }
        if args.log {
            println!();
            for entry in &reply.log {
                println!(
                    "{} {:<24} {:<12} {} {}",
                    utc(entry.time_ms),
                    entry.actor,
                    entry.action,
                    short(&entry.job_id),
                    entry.detail
                );
            }
        }
        let failed = reply.checks.iter().filter(|c| !c.ok).count();
        println!();
        println!(
            "{}: {} checks, {failed} failed",
            if reply.ok { "PASS" } else { "FAIL" },
            reply.checks.len()
        );
        anyhow::Ok(if reply.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })?
}
