//! End-to-end test helpers: start a real coordinator (`tandem serve`) and real workers (`tandem-worker`) on
//! loopback, run CLI commands, and wait for conditions.
//!
//! The binaries are built once per test process with `cargo build --bins` (cargo does not build a
//! dependency's binaries for a test) and copied into a private folder, so a concurrent build cannot swap
//! them mid-test. Set `TANDEM_TEST_BIN_DIR` to use prebuilt binaries instead.

pub mod browser;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Paths of the two binaries under test.
#[derive(Debug)]
pub struct Bins {
    pub tandem: PathBuf,
    pub worker: PathBuf,
}

/// Builds (once) and returns the binaries.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        if let Ok(dir) = std::env::var("TANDEM_TEST_BIN_DIR") {
            let dir = PathBuf::from(dir);
            return Bins {
                tandem: dir.join("tandem"),
                worker: dir.join("tandem-worker"),
            };
        }
        let exe = std::env::current_exe().expect("test executable path");
        // <target>/<profile>/deps/<test-exe>
        let target = exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf();
        let status = Command::new(cargo)
            .current_dir(&workspace)
            .env("CARGO_TARGET_DIR", &target)
            // Set for the test process only; build scripts that watch it (ring, rustls) would otherwise re-run
            // and rebuild their dependents on every test binary's build.
            .env_remove("CARGO_MANIFEST_DIR")
            .args([
                "build",
                "-p",
                "tandem-coordinator",
                "-p",
                "tandem-worker",
                "--bins",
            ])
            .status()
            .expect("running cargo build for the tandem binaries");
        assert!(status.success(), "building the tandem binaries failed");
        let debug = target.join("debug");
        // Copies left by earlier test processes that have exited are garbage.
        if let Ok(entries) = std::fs::read_dir(&debug) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("tandem-tests-bin-")
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let private = debug.join(format!("tandem-tests-bin-{}", std::process::id()));
        std::fs::create_dir_all(&private).expect("private bin dir");
        // A copy, not a hard link: a later build may rewrite the linked file in place.
        let link = |name: &str| {
            let from = debug.join(name);
            let to = private.join(name);
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
            to
        };
        Bins {
            tandem: link("tandem"),
            worker: link("tandem-worker"),
        }
    })
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes (then panics naming `what`).
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long end-to-end tests wait for an experiment.
pub const LONG: Duration = Duration::from_secs(60);

/// A coordinator with the FAST settings on a fresh store, a team token (team `radiology`) and a worker token.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub coordinator: Coordinator,
    pub team: String,
    /// A second team's token (team `cardiology`), for isolation checks.
    pub other_team: String,
    pub worker_token: String,
}

impl Lab {
    /// Starts the coordinator with the [`FAST`] settings.
    pub fn start() -> Lab {
        Self::start_with(FAST)
    }

    /// Starts the coordinator with `args` (e.g. a longer lease).
    pub fn start_with(args: &[&str]) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let team = create_token(&store, "--team", Some("radiology"));
        let other_team = create_token(&store, "--team", Some("cardiology"));
        let worker_token = create_token(&store, "--worker", Some("node"));
        let coordinator = Coordinator::start(&store, args);
        Lab {
            dir,
            coordinator,
            team,
            other_team,
            worker_token,
        }
    }

    /// A worker named `name` with the lab's worker token.
    pub fn worker(&self, name: &str) -> Worker {
        Worker::start(
            &self.coordinator.url,
            Some(&self.worker_token),
            name,
            self.dir.path(),
        )
    }

    /// Submits a JSON job graph as `file`; returns the experiment id.
    pub fn submit(&self, file: &str, graph: serde_json::Value) -> String {
        let path = write_manifest(self.dir.path(), file, &graph);
        tandem_ok(
            &self.coordinator.url,
            Some(&self.team),
            &["submit", path.to_str().unwrap()],
        )
        .trim()
        .to_string()
    }

    /// `tandem ARGS` as the team.
    pub fn tandem(&self, args: &[&str]) -> Output {
        tandem(&self.coordinator.url, Some(&self.team), args)
    }

    /// `tandem ARGS` as the team; panics unless it succeeds.
    pub fn tandem_ok(&self, args: &[&str]) -> String {
        tandem_ok(&self.coordinator.url, Some(&self.team), args)
    }

    /// `tandem status --format json` of an experiment.
    pub fn status(&self, experiment: &str) -> serde_json::Value {
        status_json(&self.coordinator.url, Some(&self.team), experiment)
    }

    /// Waits (up to [`LONG`]) for an experiment to reach `state`.
    pub fn wait_state(&self, experiment: &str, state: &str) -> serde_json::Value {
        wait_for(&format!("experiment {experiment} {state}"), LONG, || {
            let status = self.status(experiment);
            (status["state"] == state).then_some(status)
        })
    }
}

/// A `tandem serve` process.
pub struct Coordinator {
    child: Option<Child>,
    pub addr: String,
    pub url: String,
    pub store: PathBuf,
    pub args: Vec<String>,
    /// Environment variables set for the next start (e.g. `TANDEM_CRASH_AT` for the chaos suite).
    env: Vec<(String, String)>,
    log: PathBuf,
}

/// Settings that keep the tests fast: short leases, frequent heartbeats, short back-off.
pub const FAST: &[&str] = &[
    "--lease-ttl-ms",
    "1500",
    "--heartbeat-ms",
    "100",
    "--backoff-ms",
    "100",
    "--max-attempts",
    "4",
];

impl Coordinator {
    /// Starts a coordinator on a free loopback port with `args` added.
    pub fn start(store: &Path, args: &[&str]) -> Coordinator {
        Self::start_on(
            store,
            "127.0.0.1:0",
            args.iter().map(|s| s.to_string()).collect(),
            Vec::new(),
        )
    }

    fn start_on(
        store: &Path,
        listen: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Coordinator {
        let log = store.with_extension(format!("serve-{}.log", std::process::id()));
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("coordinator log");
        let mut child = Command::new(&bins().tandem)
            .arg("serve")
            .arg("--store")
            .arg(store)
            .args(["--listen", listen])
            .args(&args)
            .env("RUST_LOG", "info")
            .env_remove("TANDEM_CRASH_AT")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting tandem serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the listen line");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http"))
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line from tandem serve: {line:?} (log {})",
                    log.display()
                )
            })
            .to_string();
        let addr = url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string();
        Coordinator {
            child: Some(child),
            addr,
            url,
            store: store.to_path_buf(),
            args,
            env,
            log,
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same store and address (workers reconnect to the same URL).
    pub fn restart(&mut self) {
        assert!(
            self.restart_with_env(&[]),
            "the coordinator crashed while starting"
        );
    }

    /// [`Coordinator::restart`] with `env` set for the new process. False when the process killed itself at
    /// a crash point before it served (recovery at start-up writes to the store, so an armed point can be
    /// reached there).
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) -> bool {
        self.kill();
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let addr = self.addr.clone();
        for _ in 0..40 {
            let crashes_before = self.log().matches(CRASH_LINE).count();
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Self::start_on(&self.store, &addr, self.args.clone(), self.env.clone())
            }));
            match started {
                Ok(mut fresh) => {
                    self.child = fresh.child.take();
                    return true;
                }
                Err(_) if self.log().matches(CRASH_LINE).count() > crashes_before => return false,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        panic!("could not restart the coordinator on {addr}");
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the coordinator is running")
            .id()
    }

    /// The process's peak and current resident memory (`VmHWM`, `VmRSS`), MiB.
    pub fn resident_mib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading the coordinator's /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
                / 1024
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// True once the process has exited (a crash point killed it), or when none runs.
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().map(|s| s.is_some()).unwrap_or(true),
            None => true,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the coordinator logs when an armed crash point kills it.
pub const CRASH_LINE: &str = "crash point reached";

/// A `tandem-worker` process.
pub struct Worker {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(url: &str, token: Option<&str>, name: &str, dir: &Path) -> Worker {
        Self::start_with(url, token, name, dir, &[])
    }

    /// [`Worker::start`] with `extra` arguments (e.g. `--ca-cert PEM`).
    pub fn start_with(
        url: &str,
        token: Option<&str>,
        name: &str,
        dir: &Path,
        extra: &[&str],
    ) -> Worker {
        Self::start_with_env(url, token, name, dir, extra, &[])
    }

    /// [`Worker::start_with`] with environment variables `env` set for the worker process.
    pub fn start_with_env(
        url: &str,
        token: Option<&str>,
        name: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        let log = dir.join(format!("{name}.log"));
        let stderr = File::create(&log).expect("worker log");
        let mut command = Command::new(&bins().worker);
        command
            .args([
                "agent",
                "--coordinator",
                url,
                "--name",
                name,
                "--threads",
                "1",
                "--enable-test-kinds",
            ])
            .arg("--work-dir")
            .arg(dir.join(name))
            // The test's own machine cache, shared by its workers (never the user's ~/.cache).
            .arg("--cache-dir")
            .arg(dir.join("input-cache"))
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("TANDEM_TOKEN")
            .env_remove("TANDEM_WORKER_TOKEN")
            .env_remove("TANDEM_CA_CERT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        Worker {
            child: Some(command.spawn().expect("starting tandem-worker")),
            log,
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (a `kill -s` name such as `STOP` or `CONT`) to the running process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the worker is running");
        let status = Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().map(|s| s.success()).unwrap_or(false)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `tandem ARGS` against `url` with `token`.
pub fn tandem(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(&bins().tandem);
    command
        .args(args)
        .env("TANDEM_COORDINATOR", url)
        .env_remove("TANDEM_TOKEN")
        .env_remove("TANDEM_CA_CERT");
    if let Some(token) = token {
        command.env("TANDEM_TOKEN", token);
    }
    command.output().expect("running tandem")
}

/// Runs `tandem ARGS`, asserts success, returns stdout.
pub fn tandem_ok(url: &str, token: Option<&str>, args: &[&str]) -> String {
    let out = tandem(url, token, args);
    assert!(
        out.status.success(),
        "tandem {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates a token directly in a (not yet served) store.
pub fn create_token(store: &Path, role_flag: &str, name: Option<&str>) -> String {
    let mut command = Command::new(&bins().tandem);
    command.args(["token", "create", role_flag]);
    if let Some(name) = name {
        command.arg(name);
    }
    let out = command
        .arg("--store")
        .arg(store)
        .output()
        .expect("tandem token create");
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `tandem status ID --format json`, parsed.
pub fn status_json(url: &str, token: Option<&str>, experiment: &str) -> serde_json::Value {
    let out = tandem_ok(url, token, &["status", experiment, "--format", "json"]);
    serde_json::from_str(&out).expect("status JSON")
}

/// Writes a job-graph manifest into `dir` and returns its path.
pub fn write_manifest(dir: &Path, file: &str, graph: &serde_json::Value) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, serde_json::to_vec_pretty(graph).expect("json"))
        .expect("writing manifest");
    path
}

/// A quick training table for [`tiny_manifest`] (stage 2 always uses it): two updates, validated and
/// checkpointed after each.
pub const TINY_STAGE1_TRAINING: &str = "batch_size = 2
grad_accum = 1
lr = 1e-3
warmup_steps = 0
epochs = 1.0
max_steps = 2
eval_every = 1
log_every = 1
checkpoint_every = 1
max_length = 256";

/// A two-stage manifest over the committed fixtures (the tiny LLaMA, 20 IU X-ray reports for stage 1, 12
/// SYNTHETIC rows in 2 folds for stage 2), everything on one CPU thread per job. `quantization` is `none` or
/// `nf4`, `stage1_training` the body of `[stage1.training]`, `cells` the quoted evaluation cells.
pub fn tiny_manifest(name: &str, quantization: &str, stage1_training: &str, cells: &str) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    format!(
        r#"name = "{name}"
seed = 7
sweeps = []

[model]
family = "llama"
path = "{model}"
quantization = "{quantization}"
compute_dtype = "f32"

[lora]
r = 4
alpha = 8.0
dropout = 0.0
target_modules = ["q_proj", "v_proj"]

[stage1.dataset]
path = "{stage1}"
format = "csv"
input_column = "findings"
target_column = "impression"

[stage1.split]
kind = "holdout"
train = 0.7
val = 0.15
test = 0.15

[stage1.prompt]
train = "Findings: {{input}}\nImpression:"
inference = "Findings: {{input}}\nImpression:"

[stage1.training]
{stage1_training}

[stage1.generation]
max_new_tokens = 4
max_eval_rows = 3

[stage2.dataset]
path = "{stage2}"
format = "csv"
input_column = "impression"
target_column = "summary"
group_column = "patient_id"

[stage2.split]
kind = "kfold"
folds = 2
val_fraction = 0.25

[stage2.prompt]
train = "Impression: {{input}}\nSummary:"
inference = "Impression: {{input}}\nSummary:"

[stage2.training]
{stage2_training}

[stage2.generation]
max_new_tokens = 4
num_beams = 1
max_eval_rows = 3

[evaluation]
metrics = ["bleu", "rouge", "meteor"]
cells = [{cells}]

[resources.train]
gpus = 0
cpu_threads = 1

[resources.eval]
gpus = 0
cpu_threads = 1
"#,
        model = repo.join("worker/tests/fixtures/tiny-llama").display(),
        stage1 = repo.join("tests/fixtures/runners/iu-20.csv").display(),
        stage2 = repo
            .join("tests/fixtures/runners/synthetic-12.csv")
            .display(),
        stage2_training = TINY_STAGE1_TRAINING,
    )
}

/// `message` with `token` as its bearer credential.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A single-threaded runtime for one blocking gRPC exchange.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An experiment's results (status, series, artifacts, manifest) as `token` sees them.
pub fn results(url: &str, token: &str, experiment: &str) -> tandem_proto::ResultsReply {
    try_results(url, token, experiment).unwrap_or_else(|e| panic!("results of {experiment}: {e}"))
}

/// [`results`], or why the call failed (the coordinator may be down).
pub fn try_results(
    url: &str,
    token: &str,
    experiment: &str,
) -> Result<tandem_proto::ResultsReply, String> {
    runtime().block_on(async {
        let mut client =
            tandem_proto::client_service_client::ClientServiceClient::connect(url.to_string())
                .await
                .map_err(|e| e.to_string())?;
        let reply = client
            .results(with_token(
                tandem_proto::ResultsRequest {
                    experiment_id: experiment.into(),
                },
                token,
            ))
            .await
            .map_err(|e| e.to_string())?;
        Ok(reply.into_inner())
    })
}

/// Every stored metric series of an experiment, by (job name, series name).
pub fn series(url: &str, token: &str, experiment: &str) -> Series {
    series_of(results(url, token, experiment))
}

/// Metric series by (job name, series name).
pub type Series = BTreeMap<(String, String), Vec<(u64, f64)>>;

/// The series of a results reply, by (job name, series name).
pub fn series_of(reply: tandem_proto::ResultsReply) -> Series {
    let names: BTreeMap<String, String> = reply
        .status
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| (j.id, j.name))
        .collect();
    reply
        .series
        .into_iter()
        .map(|s| {
            (
                (names[&s.job_id].clone(), s.name),
                s.steps.into_iter().zip(s.values).collect(),
            )
        })
        .collect()
}

/// An experiment's stored artifacts.
pub fn artifacts(url: &str, token: &str, experiment: &str) -> Vec<tandem_proto::ArtifactRef> {
    results(url, token, experiment).artifacts
}

/// The job named `name` in `tandem status --format json` output.
pub fn job<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap()
}

/// The tiny two-stage manifest with QLoRA and a stage-1 training long enough to be killed (400 updates,
/// a checkpoint every 10).
pub fn long_training_manifest(dir: &Path) -> PathBuf {
    training_manifest(dir, "crash-real", 400)
}

/// The tiny two-stage manifest named `name` with a QLoRA stage-1 training of `updates` updates, a checkpoint
/// every 10, and one evaluation cell that needs the stage-1 adapter (the planner plans only what a cell needs).
pub fn training_manifest(dir: &Path, name: &str, updates: u32) -> PathBuf {
    let training = TINY_STAGE1_TRAINING
        .replace("epochs = 1.0", "epochs = 100.0")
        .replace("max_steps = 2", &format!("max_steps = {updates}"))
        .replace("eval_every = 1", "eval_every = 100")
        .replace("checkpoint_every = 1", "checkpoint_every = 10");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        tiny_manifest(name, "nf4", &training, r#""stage1:stage1""#),
    )
    .unwrap();
    path
}
