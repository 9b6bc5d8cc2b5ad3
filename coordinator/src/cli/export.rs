//! `tandem export ID --out DIR`: the manifest, the status, every metric series as CSV, the inputs and every
//! output artifact (verified against its hash), in plain files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sha2::{Digest, Sha256};
use tandem_proto as pb;
use tokio_stream::StreamExt;

use super::client::{Client, ClientArgs, block_on, rpc, safe_file_name};
use super::status::status_json;

#[derive(Debug, Args)]
pub struct ExportArgs {
    pub experiment: String,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
}

async fn download(client: &mut Client, sha256: &str, dest: &Path) -> anyhow::Result<()> {
    let mut stream = client
        .download_artifact(pb::DownloadArtifactRequest {
            sha256: sha256.to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.map_err(rpc)?.data);
    }
    let actual: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    anyhow::ensure!(
        actual == sha256,
        "artifact {sha256} arrived corrupted (got {actual})"
    );
    std::fs::write(dest, data).with_context(|| format!("writing {}", dest.display()))
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        let reply = client
            .results(pb::ResultsRequest {
                experiment_id: args.experiment.clone(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        let status = reply.status.clone().unwrap_or_default();
        let out = &args.out;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let ext = if reply.manifest_format == "toml" {
            "toml"
        } else {
            "json"
        };
        std::fs::write(out.join(format!("manifest.{ext}")), &reply.manifest)?;
        std::fs::write(
            out.join("status.json"),
            serde_json::to_string_pretty(&status_json(&status))?,
        )?;
        let names: std::collections::HashMap<&str, &str> = status
            .jobs
            .iter()
            .map(|j| (j.id.as_str(), j.name.as_str()))
            .collect();
        let mut csv = String::from("job_id,job_name,series,step,value\n");
        for s in &reply.series {
            let job_name = names
                .get(s.job_id.as_str())
                .copied()
                .unwrap_or("")
                .replace(['"', ','], "_");
            for (step, value) in s.steps.iter().zip(&s.values) {
                csv.push_str(&format!(
                    "{},{job_name},{},{step},{value}\n",
                    s.job_id,
                    s.name.replace(',', "_")
                ));
            }
        }
        std::fs::write(out.join("metrics.csv"), csv)?;
        let inputs_dir = out.join("inputs");
        std::fs::create_dir_all(&inputs_dir)?;
        for input in &status.inputs {
            download(
                &mut client,
                &input.sha256,
                &inputs_dir.join(safe_file_name(&input.name)),
            )
            .await?;
        }
        let mut count = 0;
        for artifact in reply.artifacts.iter().filter(|a| a.role == "output") {
            let job_name = names
                .get(artifact.job_id.as_str())
                .copied()
                .unwrap_or("job");
            let dir = out.join("artifacts").join(safe_file_name(&format!(
                "{job_name}-{}",
                &artifact.job_id[..artifact.job_id.len().min(8)]
            )));
            std::fs::create_dir_all(&dir)?;
            download(
                &mut client,
                &artifact.sha256,
                &dir.join(safe_file_name(&artifact.name)),
            )
            .await?;
            count += 1;
        }
        println!(
            "exported {} to {} ({} series, {count} artifacts)",
            args.experiment,
            out.display(),
            reply.series.len()
        );
        anyhow::Ok(ExitCode::SUCCESS)
    })?
}
