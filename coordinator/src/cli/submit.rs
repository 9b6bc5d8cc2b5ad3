//! `tandem submit M`: send a manifest and its input files to the coordinator; prints the experiment id.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tandem_proto as pb;

use super::client::{ClientArgs, block_on, rpc};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The manifest: an experiment manifest (`.toml`, planned here and checked by the coordinator) or a job
    /// graph (`.json`, format jobgraph+json).
    pub manifest: PathBuf,
    /// Extra input files to send (a job graph's `files` are sent automatically).
    #[arg(long = "input")]
    pub inputs: Vec<PathBuf>,
    /// Priority within your team (higher first).
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    /// Manifest format (default: from the file extension).
    #[arg(long)]
    pub format: Option<String>,
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

/// Largest total size of dataset files sent with a toml manifest (model weights stay with the workers).
const MAX_SENT_DATASET_BYTES: u64 = 48 << 20;

/// A planned graph (JSON) and the files to send with it (name, path).
type Planned = (Vec<u8>, Vec<(String, PathBuf)>);

/// Loads and plans a toml manifest here (where its files are); `Err(code)` when the manifest is invalid (its
/// problems were printed).
fn plan_toml(path: &Path) -> anyhow::Result<Result<Planned, ExitCode>> {
    use tandem_experiments::manifest::{self, LoadOptions, hash::referenced_files};
    let manifest = match manifest::load(path, LoadOptions::default()) {
        Ok(m) => m,
        Err(err) => {
            eprintln!("{err}");
            return Ok(Err(ExitCode::from(2)));
        }
    };
    let plan = tandem_experiments::planner::plan(&manifest)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut files = Vec::new();
    let mut total = 0u64;
    for (role, role_files) in
        referenced_files(&manifest).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    {
        if !role.ends_with("dataset.path") {
            continue;
        }
        for (relative, file) in role_files {
            total += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            files.push((format!("{role}/{relative}"), file));
        }
    }
    if total > MAX_SENT_DATASET_BYTES {
        eprintln!(
            "datasets total {total} bytes: not sent; workers read them from their own copies"
        );
        files.clear();
    }
    Ok(Ok((serde_json::to_vec(&plan.jobs)?, files)))
}

/// Reads `manifest` (planning a toml manifest here) and its input files into a submit request; `Err(code)`
/// when the manifest is invalid (its problems were printed).
pub fn request(
    manifest_path: &Path,
    format: Option<&str>,
    extra_inputs: &[PathBuf],
    priority: i32,
) -> anyhow::Result<Result<pb::SubmitRequest, ExitCode>> {
    let manifest = std::fs::read(manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let format = match format {
        Some(f) => f.to_string(),
        None => format_of(manifest_path)?,
    };
    let mut plan = Vec::new();
    let mut files = if format == tandem_coordinator::planning::FORMAT_JOBGRAPH {
        jobgraph_files(manifest_path, &manifest)?
    } else if format == tandem_coordinator::planning::FORMAT_TOML {
        match plan_toml(manifest_path)? {
            Ok((planned, files)) => {
                plan = planned;
                files
            }
            Err(code) => return Ok(Err(code)),
        }
    } else {
        Vec::new()
    };
    for path in extra_inputs {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((name, path.clone()));
    }
    let mut inputs = Vec::new();
    for (name, path) in files {
        let content = std::fs::read(&path)
            .with_context(|| format!("reading input file {}", path.display()))?;
        inputs.push(pb::InputFile { name, content });
    }
    let manifest_name = manifest_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Ok(pb::SubmitRequest {
        manifest,
        format,
        manifest_name,
        inputs,
        priority,
        plan,
    }))
}

pub fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let request = match request(
        &args.manifest,
        args.format.as_deref(),
        &args.inputs,
        args.priority,
    )? {
        Ok(request) => request,
        Err(code) => return Ok(code),
    };
    let reply = block_on(async move {
        let mut client = args.client.connect().await?;
        anyhow::Ok(
            client
                .submit_experiment(request)
                .await
                .map_err(rpc)?
                .into_inner(),
        )
    })??;
    eprintln!(
        "submitted {} jobs ({} served from the cache)",
        reply.jobs, reply.cached
    );
    println!("{}", reply.experiment_id);
    Ok(ExitCode::SUCCESS)
}
