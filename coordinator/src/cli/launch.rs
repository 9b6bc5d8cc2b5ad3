//! `tandem launch`: workers started by a cluster's resource manager. `slurm` submits worker jobs (or, with
//! `--watch`, keeps their number matched to the queued work), `status` shows where each stands, `cancel` stops
//! them, `k8s --dry-run` writes the equivalent Kubernetes Indexed Job. The work is done by
//! [`tandem_coordinator::launch`]; this module is flags, the coordinator calls and the printing.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use tandem_coordinator::launch::elastic::{self, Elastic, Policy};
use tandem_coordinator::launch::k8s::KubeRequest;
use tandem_coordinator::launch::ledger::{self, Event, Ledger};
use tandem_coordinator::launch::script::{GpuFlag, SlurmRequest};
use tandem_coordinator::launch::slurm::{self, QueuedJob, Slurm};
use tandem_coordinator::launch::worker::WorkerSpec;
use tandem_proto as pb;

use super::client::{Client, ClientArgs, block_on, rpc, utc};
use super::output::{OutputFormat, Table};

#[derive(Debug, Subcommand)]
pub enum LaunchCommand {
    /// Submit worker jobs to Slurm: one array element per worker, each pinned to its GPUs, stopped by a signal
    /// it answers with a checkpoint, requeueable. --dry-run prints the batch script; --watch keeps the number
    /// of worker jobs matched to the queued work.
    Slurm(Box<SlurmArgs>),
    /// Where each worker job launched from the state folder stands: Slurm's state, the worker it became and
    /// its current job.
    Status(StatusArgs),
    /// Cancel launched worker jobs: the ones named, or --all.
    Cancel(CancelArgs),
    /// Write the Kubernetes Indexed Job for the same workers (render only: --dry-run).
    K8s(K8sArgs),
}

/// What every launched worker is.
#[derive(Debug, Args)]
pub struct WorkerFlags {
    /// GPUs per worker (each worker offers each GPU as one lease slot); 0 for CPU-only workers.
    #[arg(long, default_value_t = 1)]
    pub gpus_per_worker: u32,
    /// CPU cores per worker (the worker's --threads).
    #[arg(long, default_value_t = 8)]
    pub cpus: u32,
    /// Memory per worker, Slurm's notation (64G, 500M) [default: the partition's].
    #[arg(long)]
    pub mem: Option<String>,
    /// Seconds between the stop signal (time limit, preemption, cancel) and the kill: the worker checkpoints
    /// and hands its lease back within it.
    #[arg(long, default_value_t = 120)]
    pub grace: u32,
    /// Extra argument for tandem-worker (repeat for several).
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SlurmArgs {
    /// Worker jobs to submit (array elements).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    #[arg(long)]
    pub partition: Option<String>,
    /// How the GPUs are asked for: --gres=gpu:N or --gpus-per-task=N.
    #[arg(long, value_enum, default_value_t = GpuFlag::Gres)]
    pub gpu_flag: GpuFlag,
    /// Wall-time limit per worker job (Slurm's notation: 24:00:00, 2-00:00:00).
    #[arg(long)]
    pub time: Option<String>,
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long)]
    pub qos: Option<String>,
    /// Extra #SBATCH option, e.g. --sbatch=--constraint=a100 (repeat for several).
    #[arg(long = "sbatch", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// Slurm job name.
    #[arg(long, default_value = "tandem-worker")]
    pub job_name: String,
    #[command(flatten)]
    pub worker: WorkerFlags,
    /// The launch state folder: scripts, logs, work folders, the worker token and the ledger. It must be on a
    /// file system the compute nodes share.
    #[arg(long, default_value = ".tandem/slurm")]
    pub state_dir: PathBuf,
    /// tandem-worker as the compute nodes see it [default: next to this tandem].
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// A worker token file (mode 600) to use [default: one created through the coordinator with the caller's
    /// admin token, kept in the state folder; none when the caller has no token].
    #[arg(long)]
    pub worker_token_file: Option<PathBuf>,
    /// The workers' input cache [default: the worker's, ~/.cache/tandem].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print the batch script and submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep running: submit worker jobs while queued work outnumbers idle workers (up to --max-workers),
    /// cancel the ones idle for --idle-timeout. Every launch and cancel is printed and kept in the ledger.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: worker jobs held at once, at most.
    #[arg(long, default_value_t = 4)]
    pub max_workers: u32,
    /// With --watch: seconds a worker may sit idle, with no work queued, before its job is cancelled.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout: u64,
    /// With --watch: seconds between looks at the queue.
    #[arg(long, default_value_t = 10.0)]
    pub interval: f64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, default_value = ".tandem/slurm")]
    pub state_dir: PathBuf,
    /// table, json (one object per worker job: slurm_job, state, detail, worker) or csv.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Worker jobs to cancel (1234 for a whole launch, 1234_0 for one element).
    pub jobs: Vec<String>,
    /// Cancel every launched worker job Slurm still holds.
    #[arg(long, conflicts_with = "jobs")]
    pub all: bool,
    /// Send this signal only (e.g. TERM: the worker checkpoints, hands its lease back and exits) instead of
    /// cancelling.
    #[arg(long)]
    pub signal: Option<String>,
    #[arg(long, default_value = ".tandem/slurm")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct K8sArgs {
    /// Print the Job's YAML (required: Tandem does not talk to a Kubernetes API).
    #[arg(long, required = true)]
    pub dry_run: bool,
    /// Pods (workers) in the Indexed Job.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Container image with tandem-worker on its PATH.
    #[arg(long)]
    pub image: String,
    /// Job name.
    #[arg(long, default_value = "tandem-workers")]
    pub name: String,
    #[arg(long)]
    pub namespace: Option<String>,
    /// Secret holding the worker token under key `token` (kubectl create secret generic NAME
    /// --from-file=token=FILE); none when the coordinator needs no token.
    #[arg(long)]
    pub token_secret: Option<String>,
    #[command(flatten)]
    pub worker: WorkerFlags,
    /// Coordinator URL the pods connect to.
    #[arg(long)]
    pub coordinator: String,
}

pub fn run(command: LaunchCommand) -> anyhow::Result<ExitCode> {
    match command {
        LaunchCommand::Slurm(args) => launch_slurm(*args),
        LaunchCommand::Status(args) => status(args),
        LaunchCommand::Cancel(args) => cancel(args),
        LaunchCommand::K8s(args) => {
            let request = KubeRequest {
                worker: worker_spec(&args.worker, &args.coordinator, None, None),
                name: args.name,
                namespace: args.namespace,
                workers: args.workers,
                image: args.image,
                token_secret: args.token_secret,
            };
            print!("{}", request.render()?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn worker_spec(
    flags: &WorkerFlags,
    coordinator: &str,
    token_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
) -> WorkerSpec {
    WorkerSpec {
        coordinator: coordinator.to_string(),
        token_file,
        ca_cert,
        gpus: flags.gpus_per_worker,
        cpus: flags.cpus,
        mem: flags.mem.clone(),
        grace_s: flags.grace,
        worker_args: flags.worker_args.clone(),
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current folder")?
            .join(path)
    })
}

/// The worker token file: the one given (checked to be private), the one kept in the state folder, or one
/// created now through the coordinator (the caller's token must be an admin's). `None` for a coordinator that
/// needs no token (the caller has none).
async fn worker_token_file(args: &SlurmArgs, state_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if let Some(path) = &args.worker_token_file {
        let path = absolute(path)?;
        let mode = std::fs::metadata(&path)
            .with_context(|| format!("--worker-token-file {}", path.display()))?
            .permissions()
            .mode()
            & 0o777;
        anyhow::ensure!(
            mode & 0o077 == 0,
            "--worker-token-file {}: readable by group or others (mode {mode:03o}); chmod 600 it",
            path.display()
        );
        return Ok(Some(path));
    }
    if args.client.token.is_none() {
        return Ok(None);
    }
    let path = state_dir.join("worker.token");
    if path.is_file() {
        return Ok(Some(path));
    }
    let mut client = args.client.connect().await?;
    let reply = client
        .create_token(pb::CreateTokenRequest {
            worker: "slurm".into(),
            ..Default::default()
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "creating a worker token for the Slurm workers needs an admin token ({}); or pass \
                 --worker-token-file (tandem token create --worker NAME)",
                status.message()
            )
        })?
        .into_inner();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{}", reply.token).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "created worker token {} for the Slurm workers in {} (mode 600)",
        reply.token_id,
        path.display()
    );
    Ok(Some(path))
}

/// Creates the state folder (mode 700) with its `logs`, `work` and `scripts` folders.
fn prepare_state_dir(state_dir: &Path) -> anyhow::Result<()> {
    for sub in ["", "logs", "work", "scripts"] {
        let dir = state_dir.join(sub);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 700 {}", state_dir.display()))?;
    Ok(())
}

fn launch_slurm(args: SlurmArgs) -> anyhow::Result<ExitCode> {
    let state_dir = absolute(&args.state_dir)?;
    let worker_bin = match &args.worker_bin {
        Some(path) => absolute(path)?,
        None => std::env::current_exe()
            .context("locating the tandem executable")?
            .with_file_name("tandem-worker"),
    };
    let ca_cert = args.client.ca_cert.as_deref().map(absolute).transpose()?;
    let request = |token_file: Option<PathBuf>, workers: u32| SlurmRequest {
        worker: worker_spec(
            &args.worker,
            &args.client.coordinator,
            token_file,
            ca_cert.clone(),
        ),
        job_name: args.job_name.clone(),
        workers,
        partition: args.partition.clone(),
        gpu_flag: args.gpu_flag,
        time: args.time.clone(),
        account: args.account.clone(),
        qos: args.qos.clone(),
        extra_sbatch: args.sbatch.clone(),
        worker_bin: worker_bin.clone(),
        state_dir: state_dir.clone(),
        cache_dir: args.cache_dir.clone(),
    };
    if args.dry_run {
        let token = args
            .worker_token_file
            .as_deref()
            .map(absolute)
            .transpose()?
            .or_else(|| {
                args.client
                    .token
                    .as_ref()
                    .map(|_| state_dir.join("worker.token"))
            });
        print!("{}", request(token, args.workers.max(1)).render()?);
        return Ok(ExitCode::SUCCESS);
    }
    // Every flag is checked before anything touches the cluster or the coordinator.
    request(None, args.workers.max(1)).check()?;
    anyhow::ensure!(
        worker_bin.is_file(),
        "--worker-bin {}: not found (build it with cargo build --release -p tandem-worker, or name it)",
        worker_bin.display()
    );
    prepare_state_dir(&state_dir)?;
    let slurm = Slurm::default();
    let ledger = Ledger::new(&state_dir);
    block_on(async {
        let token_file = worker_token_file(&args, &state_dir).await?;
        let submit = |workers: u32, reason: &str| -> anyhow::Result<String> {
            submit(
                &slurm,
                &ledger,
                &request(token_file.clone(), workers),
                reason,
            )
        };
        if !args.watch {
            let job = submit(args.workers, "requested")?;
            println!(
                "submitted Slurm job {job}: {} worker(s), {job}_0..{job}_{}; logs in {}",
                args.workers,
                args.workers - 1,
                state_dir.join("logs").display()
            );
            return anyhow::Ok(ExitCode::SUCCESS);
        }
        watch(&args, &slurm, &ledger, submit).await
    })?
}

/// Writes the script and submits it; records the launch. Nothing is left half-done: a launch the ledger cannot
/// record is cancelled again.
fn submit(
    slurm: &Slurm,
    ledger: &Ledger,
    request: &SlurmRequest,
    reason: &str,
) -> anyhow::Result<String> {
    let script = request.render()?;
    let path = request
        .state_dir
        .join("scripts")
        .join(format!("launch-{}.sh", tandem_coordinator::store::now_ms()));
    std::fs::write(&path, &script).with_context(|| format!("writing {}", path.display()))?;
    let job = slurm.submit(&path)?;
    let recorded = ledger.append(Event::Launch {
        job: job.clone(),
        workers: request.workers,
        script: path.display().to_string(),
        reason: reason.to_string(),
    });
    if let Err(err) = recorded {
        let _ = slurm.cancel(std::slice::from_ref(&job), None);
        return Err(err).context(format!("Slurm job {job} was cancelled again"));
    }
    tracing::info!(job = %job, workers = request.workers, reason, "launched worker jobs");
    Ok(job)
}

/// Live workers by the cluster job they run in (a requeued job's latest, live registration first).
fn workers_by_job(workers: &[pb::WorkerInfo]) -> BTreeMap<String, &pb::WorkerInfo> {
    let mut by_job: BTreeMap<String, &pb::WorkerInfo> = BTreeMap::new();
    for w in workers {
        let Some(job) = &w.cluster_job else { continue };
        let better = match by_job.get(&job.job_id) {
            None => true,
            Some(seen) => (w.alive, w.last_seen_ms) > (seen.alive, seen.last_seen_ms),
        };
        if better {
            by_job.insert(job.job_id.clone(), w);
        }
    }
    by_job
}

/// Ready jobs a launched worker could take: queued with no reason to wait, or waiting only because no live
/// worker exists or runs their kind.
async fn queued_jobs(client: &mut Client) -> anyhow::Result<(u32, u32)> {
    let experiments = client
        .list_experiments(pb::ListExperimentsRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .experiments;
    let (mut fit, mut unfit) = (0, 0);
    for experiment in experiments.iter().filter(|e| e.state == "running") {
        let status = client
            .get_experiment(pb::GetExperimentRequest {
                experiment_id: experiment.id.clone(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        for job in status
            .jobs
            .iter()
            .filter(|j| j.state == pb::JobState::Ready as i32)
        {
            if job.waiting_reason.is_empty() || job.waiting_reason.starts_with("no live worker") {
                fit += 1;
            } else {
                unfit += 1;
            }
        }
    }
    Ok((fit, unfit))
}

/// State the watch loop carries from round to round.
struct Watch<'a, F> {
    slurm: &'a Slurm,
    ledger: &'a Ledger,
    submit: F,
    policy: Policy,
    elastic: Elastic,
    last_unfit: u32,
}

impl<F: Fn(u32, &str) -> anyhow::Result<String>> Watch<'_, F> {
    /// One look at the coordinator and Slurm, and what it decides.
    async fn round(&mut self, client: &mut Client) -> anyhow::Result<()> {
        let workers = client
            .list_workers(pb::ListWorkersRequest {})
            .await
            .map_err(rpc)?
            .into_inner()
            .workers;
        let (queued, unfit) = queued_jobs(client).await?;
        if unfit != self.last_unfit && unfit > 0 {
            println!(
                "{} {unfit} queued job(s) need more than any live worker offers (see tandem status); these \
                 workers would not fit them either unless launched with more GPUs, CPUs or memory",
                utc(tandem_coordinator::store::now_ms())
            );
        }
        self.last_unfit = unfit;
        let ours = ledger::launched_elements(&self.ledger.read()?);
        let held: Vec<QueuedJob> = self
            .slurm
            .queue()?
            .into_iter()
            .filter(|j| slurm::is_active(&j.state) && ours.contains(&j.id))
            .collect();
        let by_job = workers_by_job(&workers);
        let elements: Vec<elastic::Element> = held
            .iter()
            .map(|j| elastic::Element {
                id: j.id.clone(),
                worker: match by_job.get(&j.id) {
                    Some(w) if w.alive && !w.jobs.is_empty() => elastic::WorkerState::Busy,
                    Some(w) if w.alive => elastic::WorkerState::Idle,
                    _ => elastic::WorkerState::Starting,
                },
            })
            .collect();
        let other_idle_workers = workers
            .iter()
            .filter(|w| w.alive && w.jobs.is_empty())
            .filter(|w| {
                w.cluster_job
                    .as_ref()
                    .is_none_or(|c| !held.iter().any(|j| j.id == c.job_id))
            })
            .count() as u32;
        let now_ms = tandem_coordinator::store::now_ms();
        let decision = self.elastic.decide(
            &elastic::Observation {
                now_ms,
                queued_jobs: queued,
                other_idle_workers,
                elements,
            },
            self.policy,
        );
        if decision.launch > 0 {
            let job = (self.submit)(decision.launch, &decision.launch_reason)?;
            println!(
                "{} launch: Slurm job {job}, {} worker(s): {}",
                utc(now_ms),
                decision.launch,
                decision.launch_reason
            );
        }
        for (id, reason) in &decision.cancel {
            self.slurm.cancel(std::slice::from_ref(id), None)?;
            self.ledger.append(Event::Cancel {
                jobs: vec![id.clone()],
                reason: reason.clone(),
            })?;
            tracing::info!(job = %id, reason = %reason, "cancelled worker job");
            println!("{} cancel: Slurm job {id}: {reason}", utc(now_ms));
        }
        Ok(())
    }
}

/// The elastic loop: a round every `--interval` until SIGTERM or Ctrl-C. A round that fails (the coordinator
/// or Slurm briefly unreachable) is reported and retried at the next interval; the launched jobs are untouched.
/// A coordinator that cannot be reached at the start is an error.
async fn watch(
    args: &SlurmArgs,
    slurm: &Slurm,
    ledger: &Ledger,
    submit: impl Fn(u32, &str) -> anyhow::Result<String>,
) -> anyhow::Result<ExitCode> {
    let policy = Policy {
        max_workers: args.max_workers.max(1),
        idle_timeout_ms: args.idle_timeout * 1000,
    };
    let interval = Duration::from_secs_f64(args.interval.max(0.2));
    let mut state = Watch {
        slurm,
        ledger,
        submit,
        policy,
        elastic: Elastic::default(),
        last_unfit: 0,
    };
    println!(
        "watching {} for queued work: at most {} worker job(s), idle ones cancelled after {} s (Ctrl-C stops \
         watching; worker jobs keep running)",
        args.client.coordinator, policy.max_workers, args.idle_timeout
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // A wrong address fails at once; later outages are retried (the channel reconnects by itself).
    let mut client = args.client.connect().await?;
    loop {
        if let Err(err) = state.round(&mut client).await {
            println!(
                "{} round failed, retrying in {:.1} s: {err:#}",
                utc(tandem_coordinator::store::now_ms()),
                interval.as_secs_f64()
            );
            tracing::warn!(error = %format!("{err:#}"), "elastic round failed");
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    println!("stopped watching; launched worker jobs keep running (tandem launch status / cancel)");
    Ok(ExitCode::SUCCESS)
}

/// One launched worker job as `status` shows it.
struct Row {
    id: String,
    state: String,
    detail: String,
    worker: Option<pb::WorkerInfo>,
}

fn rows(state_dir: &Path, slurm: &Slurm, workers: &[pb::WorkerInfo]) -> anyhow::Result<Vec<Row>> {
    let entries = Ledger::new(state_dir).read()?;
    let queue: BTreeMap<String, QueuedJob> = slurm
        .queue()?
        .into_iter()
        .map(|j| (j.id.clone(), j))
        .collect();
    let by_job = workers_by_job(workers);
    let arrays: Vec<String> = ledger::launches(&entries)
        .map(|(job, _)| job.to_string())
        .collect();
    let ended = slurm.ended_states(&arrays);
    Ok(ledger::launched_elements(&entries)
        .into_iter()
        .map(|id| {
            let (state, detail) = match queue.get(&id) {
                Some(j) if j.state == "PENDING" => (j.state.clone(), j.reason.clone()),
                Some(j) => (j.state.clone(), j.node.clone()),
                None => (
                    ended
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| "ENDED (no longer known to Slurm)".into()),
                    String::new(),
                ),
            };
            Row {
                worker: by_job.get(&id).map(|w| (*w).clone()),
                id,
                state,
                detail,
            }
        })
        .collect())
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let state_dir = absolute(&args.state_dir)?;
    let slurm = Slurm::default();
    let workers = match block_on(async {
        let mut client = args.client.connect().await?;
        anyhow::Ok(
            client
                .list_workers(pb::ListWorkersRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .workers,
        )
    })? {
        Ok(workers) => workers,
        Err(err) => {
            eprintln!("warning: {err:#}; showing Slurm's view only");
            Vec::new()
        }
    };
    let rows = rows(&state_dir, &slurm, &workers)?;
    if rows.is_empty() && args.format == OutputFormat::Table {
        println!("no worker jobs launched from {}", state_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["slurm job", "state", "node / reason", "worker", "jobs"]);
    for r in &rows {
        let (worker, jobs) = match &r.worker {
            Some(w) => (
                format!("{}{}", w.id, if w.alive { "" } else { " (gone)" }),
                if w.jobs.is_empty() {
                    "idle".to_string()
                } else {
                    w.jobs.join(",")
                },
            ),
            None => ("-".into(), "-".into()),
        };
        let json = json!({"slurm_job": r.id, "state": r.state, "detail": r.detail,
               "worker": r.worker.as_ref().map(|w| json!({"id": w.id, "alive": w.alive, "jobs": w.jobs,
                   "host": w.host}))});
        table.row(
            vec![
                r.id.clone(),
                r.state.clone(),
                r.detail.clone(),
                worker,
                jobs,
            ],
            Some(json),
        );
    }
    print!("{}", table.render(args.format));
    Ok(ExitCode::SUCCESS)
}

fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let state_dir = absolute(&args.state_dir)?;
    let ledger = Ledger::new(&state_dir);
    let launched = ledger::launched_elements(&ledger.read()?);
    let slurm = Slurm::default();
    let ids: Vec<String> = if args.all {
        slurm
            .queue()?
            .into_iter()
            .filter(|j| slurm::is_active(&j.state) && launched.contains(&j.id))
            .map(|j| j.id)
            .collect()
    } else {
        anyhow::ensure!(
            !args.jobs.is_empty(),
            "name the worker jobs to cancel, or pass --all"
        );
        for id in &args.jobs {
            let known = launched
                .iter()
                .any(|l| l == id || l.split('_').next() == Some(id.as_str()));
            anyhow::ensure!(
                known,
                "{id}: not a worker job launched from {} (tandem launch status lists them)",
                state_dir.display()
            );
        }
        args.jobs.clone()
    };
    if ids.is_empty() {
        println!("no launched worker job is held by Slurm");
        return Ok(ExitCode::SUCCESS);
    }
    slurm.cancel(&ids, args.signal.as_deref())?;
    let reason = match &args.signal {
        Some(signal) => format!("signal {signal} requested"),
        None => "cancel requested".into(),
    };
    ledger.append(Event::Cancel {
        jobs: ids.clone(),
        reason: reason.clone(),
    })?;
    println!("{}: {}", reason, ids.join(" "));
    Ok(ExitCode::SUCCESS)
}
