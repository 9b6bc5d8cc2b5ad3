//! `tandem submit M`: plan a manifest here, upload the input files and folders the coordinator's store lacks
//! (by digest: what it has is never sent again), submit the job graph; prints the experiment id.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tandem_proto as pb;

use tandem_experiments::manifest::hash::sha256_file;
use tandem_experiments::planner::inputs::{BlobSource, InputBlob};

use super::client::{Client, ClientArgs, block_on, rpc};
use super::upload::upload_missing;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The manifest: an experiment manifest (`.toml`, planned here and checked by the coordinator) or a job
    /// graph (`.json`, format jobgraph+json).
    pub manifest: PathBuf,
    /// Extra input files to send (a job graph's `files` and a manifest's model and datasets are sent
    /// automatically, each only when the coordinator does not have it yet).
    #[arg(long = "input")]
    pub inputs: Vec<PathBuf>,
    /// Priority within your team (higher first).
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    /// Manifest format (default: from the file extension).
    #[arg(long)]
    pub format: Option<String>,
    /// Queue a training sweep larger than its `max_points`.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub overrides: super::validate::Overrides,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The format a manifest file is in, from its extension.
pub fn format_of(path: &Path) -> anyhow::Result<String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Ok(tandem_coordinator::planning::FORMAT_JOBGRAPH.to_string()),
        Some("toml") => Ok("toml".to_string()),
        _ => anyhow::bail!(
            "{}: cannot tell the manifest format from the extension; pass --format",
            path.display()
        ),
    }
}

/// The input files a job-graph manifest lists under `files` (relative to the manifest's folder).
fn jobgraph_files(path: &Path, bytes: &[u8]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        // The coordinator reports syntax errors with line and column.
        Err(_) => return Ok(Vec::new()),
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    if let Some(files) = value.get("files").and_then(|f| f.as_array()) {
        for (i, f) in files.iter().enumerate() {
            let name = f
                .as_str()
                .with_context(|| format!("{}: files[{i}] must be a string", path.display()))?;
            out.push((name.to_string(), base.join(name)));
        }
    }
    Ok(out)
}

/// A submission ready to send: the request, and the blobs behind its inputs (uploaded first where the
/// coordinator's store lacks them).
pub struct Prepared {
    pub request: pb::SubmitRequest,
    pub blobs: Vec<InputBlob>,
}

/// The input ref and blob of a single file sent under `role`.
fn file_input(role: String, path: &Path) -> anyhow::Result<(pb::InputRef, InputBlob)> {
    let (sha256, size) =
        sha256_file(path).with_context(|| format!("reading input file {}", path.display()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((
        pb::InputRef {
            role,
            sha256: sha256.clone(),
            folder: false,
            file_name,
            size,
        },
        InputBlob {
            sha256,
            size,
            source: BlobSource::File(path.to_path_buf()),
        },
    ))
}

/// Loads and plans a toml manifest here (where its files are): the name, the encoded jobs, the inputs by
/// manifest field and their blobs; `Err(code)` when the manifest is invalid (its problems were printed).
type Planned = (String, Vec<pb::JobSpec>, Vec<pb::InputRef>, Vec<InputBlob>);

fn plan_toml(
    manifest: &tandem_experiments::manifest::Manifest,
    path: &Path,
) -> anyhow::Result<Planned> {
    use tandem_experiments::planner::wire;
    let plan = tandem_experiments::planner::plan(manifest)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let jobs = plan.jobs.iter().map(wire::encode).collect();
    let inputs = plan
        .inputs
        .iter()
        .map(|(role, input)| wire::input_to_pb(role, input))
        .collect();
    Ok((plan.experiment, jobs, inputs, plan.blobs))
}

/// Reads `manifest` (planning a toml manifest here, with `overrides` written in) into a submit request and
/// the blobs behind its inputs; `Err(code)` when the manifest is invalid (its problems were printed).
pub fn request(
    manifest_path: &Path,
    format: Option<&str>,
    extra_inputs: &[PathBuf],
    priority: i32,
    overrides: &super::validate::Overrides,
    yes: bool,
) -> anyhow::Result<Result<Prepared, ExitCode>> {
    let mut manifest = std::fs::read(manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let format = match format {
        Some(f) => f.to_string(),
        None => format_of(manifest_path)?,
    };
    anyhow::ensure!(
        overrides.sets.is_empty() || format == tandem_coordinator::planning::FORMAT_TOML,
        "--set applies to TOML experiment manifests only; {} is {format}",
        manifest_path.display()
    );
    let (mut experiment_name, mut jobs, mut inputs, mut blobs) =
        (String::new(), Vec::new(), Vec::new(), Vec::new());
    let mut files = Vec::new();
    if format == tandem_coordinator::planning::FORMAT_JOBGRAPH {
        files = jobgraph_files(manifest_path, &manifest)?;
    } else if format == tandem_coordinator::planning::FORMAT_TOML {
        let (loaded, text) = match super::validate::load_or_report(manifest_path, overrides, true) {
            Ok(loaded) => loaded,
            Err(code) => return Ok(Err(code)),
        };
        if let Err(message) = check_sweep_size(&loaded, yes) {
            eprintln!("{}: {message}", manifest_path.display());
            return Ok(Err(ExitCode::from(2)));
        }
        // The text with the overrides written in is what the coordinator stores, re-plans and hashes.
        manifest = text.into_bytes();
        (experiment_name, jobs, inputs, blobs) = plan_toml(&loaded, manifest_path)?;
    }
    for path in extra_inputs {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((name, path.clone()));
    }
    for (name, path) in files {
        let (input, blob) = file_input(name, &path)?;
        inputs.push(input);
        blobs.push(blob);
    }
    let manifest_name = manifest_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Ok(Prepared {
        request: pb::SubmitRequest {
            manifest,
            format,
            manifest_name,
            priority,
            jobs,
            inputs,
            experiment_name,
        },
        blobs,
    }))
}

/// Refuses a training sweep with more points than its `max_points` unless `yes`: a grid grows fast, and each
/// point is a training run (times the folds for stage 2).
pub fn check_sweep_size(
    manifest: &tandem_experiments::manifest::Manifest,
    yes: bool,
) -> Result<(), String> {
    let Some(sweep) = &manifest.training_sweep else {
        return Ok(());
    };
    let points = sweep.points.len();
    if points <= sweep.max_points || yes {
        return Ok(());
    }
    let runs = match (sweep.stage, &manifest.stage2.split) {
        (
            tandem_experiments::manifest::Stage::Stage2,
            tandem_experiments::manifest::SplitSpec::Kfold { folds, .. },
        ) => points * folds,
        _ => points,
    };
    Err(format!(
        "training_sweep: {points} points ({runs} training runs) is more than max_points = {}; pass --yes to \
         queue them all, or raise training_sweep.max_points",
        sweep.max_points
    ))
}

/// Uploads the blobs the coordinator lacks, then submits `request`.
pub async fn send(
    client: &mut Client,
    request: pb::SubmitRequest,
    blobs: &[InputBlob],
) -> anyhow::Result<pb::SubmitReply> {
    upload_missing(client, blobs).await?;
    Ok(client
        .submit_experiment(request)
        .await
        .map_err(rpc)?
        .into_inner())
}

pub fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let Prepared { request, blobs } = match request(
        &args.manifest,
        args.format.as_deref(),
        &args.inputs,
        args.priority,
        &args.overrides,
        args.yes,
    )? {
        Ok(prepared) => prepared,
        Err(code) => return Ok(code),
    };
    let reply = block_on(async move {
        let mut client = args.client.connect().await?;
        send(&mut client, request, &blobs).await
    })??;
    eprintln!(
        "submitted {} jobs ({} served from the cache)",
        reply.jobs, reply.cached
    );
    println!("{}", reply.experiment_id);
    Ok(ExitCode::SUCCESS)
}
