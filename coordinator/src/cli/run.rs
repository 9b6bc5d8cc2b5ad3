//! `tandem run M`: one experiment end to end on this machine. Starts an embedded coordinator on a loopback
//! port with its store under `.tandem/` (or `--store`), starts `--workers N` local `tandem-worker` processes,
//! submits M, shows `watch`, then prints the thesis tables and where the exported tables, plots and adapters
//! are.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tandem_coordinator::grpc::Limits;
use tandem_coordinator::scheduler::SchedulerConfig;
use tandem_coordinator::server::{ServeOptions, start};
use tandem_experiments::planner::artifacts;
use tandem_proto as pb;

use super::client::{ClientArgs, block_on, fetch_results, rpc};
use super::results::{ResultsFormat, fetch_report};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The manifest (`.toml` experiment manifest or `.json` job graph).
    pub manifest: PathBuf,
    /// Local worker processes to start.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[command(flatten)]
    pub overrides: super::validate::Overrides,
    /// Queue a training sweep larger than its `max_points`.
    #[arg(long)]
    pub yes: bool,
    /// Store folder of the embedded coordinator (reused across runs: finished jobs come from the cache).
    #[arg(long, default_value = ".tandem/store")]
    pub store: PathBuf,
    /// CPU threads per worker (default: the machine's cores divided among the workers).
    #[arg(long)]
    pub threads: Option<u32>,
    /// Let the workers run the deterministic test job kind `test.emit`.
    #[arg(long)]
    pub enable_test_kinds: bool,
    /// Where to export the experiment (manifest, metrics, adapters) when it finishes.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Refuses a plan with jobs no local worker can take (they would wait forever): more GPUs, GPU memory or CPU
/// threads than any of the registered local workers offers (the first worker offers the machine's GPUs).
fn check_fit(
    jobs: &[pb::JobSpec],
    offers: &[tandem_coordinator::store::Resources],
) -> anyhow::Result<()> {
    use tandem_coordinator::grpc::resources_from_pb;
    let mut unfit: Vec<String> = jobs
        .iter()
        .filter_map(|j| {
            let r = resources_from_pb(j.resources.as_ref());
            (!offers.iter().any(|o| o.fits(&r))).then(|| {
                format!(
                    "{} ({} GPU(s) of {} MiB, {} CPU thread(s))",
                    j.name, r.gpus, r.gpu_memory_mib, r.cpu_threads
                )
            })
        })
        .collect();
    if unfit.is_empty() {
        return Ok(());
    }
    let count = unfit.len();
    unfit.truncate(3);
    let offered: Vec<String> = offers
        .iter()
        .map(|o| {
            format!(
                "{} GPU(s) of {} MiB, {} thread(s)",
                o.gpus, o.gpu_memory_mib, o.cpu_threads
            )
        })
        .collect();
    anyhow::bail!(
        "{count} job(s) ask for more than a local worker offers (the workers offer: {}), e.g. {}: lower \
         [resources] in the manifest, set model.device = \"cpu\" to train on the CPU, or use --workers / --threads",
        offered.join("; "),
        unfit.join(", ")
    )
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let super::submit::Prepared { request, blobs } =
        match super::submit::request(&args.manifest, None, &[], 0, &args.overrides, args.yes)? {
            Ok(prepared) => prepared,
            Err(code) => return Ok(code),
        };
    let worker_exe = std::env::current_exe()
        .context("locating the tandem executable")?
        .with_file_name("tandem-worker");
    anyhow::ensure!(
        worker_exe.is_file(),
        "{} not found: build it (cargo build --release -p tandem-worker) next to tandem",
        worker_exe.display()
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let threads = args
        .threads
        .unwrap_or((cores / args.workers.max(1) as u32).max(1));
    let root = args
        .store
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".tandem"));
    block_on(async move {
        let options = ServeOptions {
            store_dir: args.store.clone(),
            listen: "127.0.0.1:0".parse()?,
            insecure_local: true,
            tls: None,
            scheduler: SchedulerConfig {
                heartbeat_interval_ms: 1_000,
                lease_ttl_ms: 10_000,
                ..SchedulerConfig::default()
            },
            limits: Limits::default(),
            // The dashboard on a free loopback port (no token needed: this coordinator is local).
            http: Some("127.0.0.1:0".parse()?),
        };
        let coordinator = start(options)
            .await
            .with_context(|| format!("starting the coordinator on {}", args.store.display()))?;
        let url = format!("http://{}", coordinator.addr);
        eprintln!("coordinator on {url}, store {}", args.store.display());
        if let Some(http) = coordinator.http_addr {
            eprintln!("dashboard on http://{http}/");
        }
        let mut children = Vec::new();
        // Names unique to this run, so workers of earlier runs on the same store are not counted.
        let prefix = format!("local-{}-", std::process::id());
        for i in 0..args.workers {
            let log = root.join(format!("worker-{i}.log"));
            std::fs::create_dir_all(&root)?;
            let mut command = Command::new(&worker_exe);
            command
                .args([
                    "agent",
                    "--coordinator",
                    &url,
                    "--name",
                    &format!("{prefix}{i}"),
                    "--threads",
                    &threads.to_string(),
                ])
                .arg("--work-dir")
                .arg(root.join(format!("worker-{i}")))
                // One input cache for the local workers: each input is fetched once.
                .arg("--cache-dir")
                .arg(root.join("cache"))
                .env_remove("TANDEM_TOKEN")
                .env_remove("TANDEM_WORKER_TOKEN")
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(&log)
                        .with_context(|| format!("creating {}", log.display()))?,
                );
            // The worker logs are files: keep job-level lines (no report text is logged at info level).
            if std::env::var_os("RUST_LOG").is_none() {
                command.env("RUST_LOG", "info");
            }
            if args.enable_test_kinds {
                command.arg("--enable-test-kinds");
            }
            // The first worker offers the machine's GPUs (one job per GPU); the others compute on the CPU, so
            // no GPU is offered twice.
            if i > 0 {
                command.args(["--gpus", "0"]);
            }
            // Workers end with this process, however it ends (even SIGKILL): nothing is left running.
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl is async-signal-safe; the closure touches nothing else in the forked child.
                unsafe {
                    command.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    });
                }
            }
            children.push(
                command
                    .spawn()
                    .with_context(|| format!("starting {}", worker_exe.display()))?,
            );
        }
        let _workers = Workers(children);
        let client_args = ClientArgs {
            coordinator: url.clone(),
            token: None,
            ca_cert: None,
        };
        let mut client = client_args.connect().await?;
        // Every job kind must be offered by a worker, or the experiment would wait forever.
        let started = Instant::now();
        let offered = loop {
            let listed = client
                .list_workers(pb::ListWorkersRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            let alive: Vec<_> = listed
                .workers
                .into_iter()
                .filter(|w| w.alive && w.name.starts_with(&prefix))
                .collect();
            if alive.len() >= args.workers || started.elapsed() > Duration::from_secs(30) {
                let offers: Vec<tandem_coordinator::store::Resources> = alive
                    .iter()
                    .map(|w| tandem_coordinator::grpc::resources_from_pb(w.resources.as_ref()))
                    .collect();
                check_fit(&request.jobs, &offers)?;
                break alive
                    .into_iter()
                    .flat_map(|w| w.kinds)
                    .collect::<std::collections::BTreeSet<_>>();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let reply = super::submit::send(&mut client, request, &blobs).await?;
        let experiment = reply.experiment_id;
        eprintln!(
            "experiment {experiment}: {} jobs ({} from the cache)",
            reply.jobs, reply.cached
        );
        let status = client
            .get_experiment(pb::GetExperimentRequest {
                experiment_id: experiment.clone(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        let missing: std::collections::BTreeSet<_> = status
            .jobs
            .iter()
            .filter(|j| !j.cached && !offered.contains(&j.kind))
            .map(|j| j.kind.clone())
            .collect();
        if !missing.is_empty() {
            client
                .cancel(pb::CancelRequest {
                    experiment_id: experiment.clone(),
                })
                .await
                .map_err(rpc)?;
            anyhow::bail!(
                "no local worker runs job kind(s) {} (workers offer: {}); experiment {experiment} cancelled",
                missing.into_iter().collect::<Vec<_>>().join(", "),
                offered.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        let state = super::watch::follow(&mut client, &experiment).await?;
        let results = fetch_results(&mut client, &experiment).await?;
        println!();
        // A broken result must not keep the run from exporting what there is.
        match fetch_report(&mut client, &results, ResultsFormat::Md).await {
            Ok(report) => report.print(ResultsFormat::Md),
            Err(err) => eprintln!("results tables: {err:#}"),
        }
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| root.join("runs").join(&experiment));
        let exported = super::export::export(&mut client, &experiment, &out).await?;
        println!();
        println!(
            "metrics, artifacts and the manifest are in {}",
            out.display()
        );
        if !exported.tables.is_empty() {
            println!(
                "tables: {}",
                exported
                    .tables
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(first) = exported.plots.first() {
            println!(
                "plots ({} files): {}",
                exported.plots.len(),
                first.parent().unwrap_or(first).display()
            );
        }
        let adapters: Vec<_> = std::fs::read_dir(out.join("artifacts"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|d| d.path().join(artifacts::ADAPTER_WEIGHTS).is_file())
            .map(|d| d.path().display().to_string())
            .collect();
        if !adapters.is_empty() {
            println!("adapters: {}", adapters.join(", "));
        }
        drop(client);
        coordinator.shutdown().await?;
        anyhow::Ok(if state == "succeeded" {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })?
}
