//! Workers launched, stopped, requeued and killed by a real Slurm: a one-node cluster on this machine
//! (`scripts/slurm/cluster.sh`: munged, slurmctld, slurmd; started once per test process, as root), serving a
//! real coordinator over loopback. Every worker here is started by `sbatch` through `tandem launch slurm`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::json;
use tandem_tests::{
    Coordinator, FAST, TINY_STAGE1_TRAINING, artifacts, bins, create_token, job, series,
    status_json, tandem_ok, tiny_manifest, training_manifest, wait_for, write_manifest,
};

const LONG: Duration = Duration::from_secs(300);

/// Starts the test cluster once; returns its `SLURM_CONF`.
fn cluster() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm/cluster.sh");
        let out = Command::new(&script)
            .arg("start")
            .output()
            .expect("running scripts/slurm/cluster.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the test cluster did not start (the Slurm tests need root and apt-get):\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .expect("cluster.sh prints SLURM_CONF");
        PathBuf::from(conf)
    })
}

/// A coordinator, its tokens and one launch state folder.
struct SlurmLab {
    dir: tempfile::TempDir,
    coordinator: Coordinator,
    team: String,
    admin: String,
    state: PathBuf,
}

impl SlurmLab {
    fn start() -> SlurmLab {
        let conf = cluster();
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let team = create_token(&store, "--team", Some("radiology"));
        let admin = create_token(&store, "--admin", None);
        let coordinator = Coordinator::start(&store, FAST);
        let state = dir.path().join("slurm");
        assert!(conf.is_file());
        SlurmLab {
            dir,
            coordinator,
            team,
            admin,
            state,
        }
    }

    /// `tandem ARGS` as the admin, with the cluster's SLURM_CONF and info-level logs (which the launched
    /// workers inherit through sbatch's exported environment).
    fn tandem(&self, args: &[&str]) -> Output {
        Command::new(&bins().tandem)
            .args(args)
            .env("SLURM_CONF", cluster())
            .env("TANDEM_COORDINATOR", &self.coordinator.url)
            .env("TANDEM_TOKEN", &self.admin)
            .env("RUST_LOG", "info")
            .env_remove("TANDEM_CA_CERT")
            .output()
            .expect("running tandem")
    }

    fn tandem_ok(&self, args: &[&str]) -> String {
        let out = self.tandem(args);
        assert!(
            out.status.success(),
            "tandem {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The flags every launch here uses: CPU-only one-thread workers from the test binaries, a short grace,
    /// the test's own input cache.
    fn launch_flags(&self) -> Vec<String> {
        let mut flags: Vec<String> = [
            "launch",
            "slurm",
            "--gpus-per-worker",
            "0",
            "--cpus",
            "1",
            "--grace",
            "30",
            "--worker-arg=--enable-test-kinds",
        ]
        .map(String::from)
        .to_vec();
        for (flag, path) in [
            ("--state-dir", self.state.clone()),
            ("--worker-bin", bins().worker.clone()),
            ("--cache-dir", self.dir.path().join("input-cache")),
        ] {
            flags.push(flag.into());
            flags.push(path.display().to_string());
        }
        flags
    }

    /// Submits `workers` worker jobs; returns the Slurm job id.
    fn launch(&self, workers: u32) -> String {
        let mut flags = self.launch_flags();
        flags.extend(["--workers".into(), workers.to_string()]);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let out = self.tandem_ok(&flags);
        out.strip_prefix("submitted Slurm job ")
            .and_then(|rest| rest.split(':').next())
            .unwrap_or_else(|| panic!("unexpected launch output: {out}"))
            .to_string()
    }

    fn slurm(&self, command: &str, args: &[&str]) -> String {
        let out = Command::new(command)
            .args(args)
            .env("SLURM_CONF", cluster())
            .output()
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        assert!(
            out.status.success(),
            "{command} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `tandem launch status --format json`, by Slurm job.
    fn launch_status(&self) -> serde_json::Value {
        let out = self.tandem_ok(&[
            "launch",
            "status",
            "--state-dir",
            self.state.to_str().unwrap(),
            "--format",
            "json",
        ]);
        serde_json::from_str(&out).unwrap()
    }

    fn element_state(&self, element: &str) -> String {
        let status = self.launch_status();
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["slurm_job"] == element)
            .map(|r| r["state"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{element} not in {status:#}"))
    }

    /// The batch log of an array element (both runs of a requeued element, appended).
    fn log(&self, element: &str) -> String {
        std::fs::read_to_string(self.state.join(format!("logs/tandem-worker-{element}.out")))
            .unwrap_or_default()
    }

    fn submit(&self, manifest: &Path) -> String {
        tandem_ok(
            &self.coordinator.url,
            Some(&self.team),
            &["submit", manifest.to_str().unwrap()],
        )
        .trim()
        .to_string()
    }

    fn wait_succeeded(&self, experiment: &str, logs: &[&str]) -> serde_json::Value {
        let started = std::time::Instant::now();
        loop {
            let status = status_json(&self.coordinator.url, Some(&self.team), experiment);
            if status["state"] == "succeeded" {
                return status;
            }
            // A worker that exits on an error of its own (bad flags, no token) fails the test at once.
            let logs: String = logs
                .iter()
                .map(|e| format!("--- {e}\n{}", self.log(e)))
                .collect();
            assert!(
                status["state"] == "running"
                    && started.elapsed() < LONG
                    && !logs.lines().any(|l| l.starts_with("error: ")),
                "experiment not done: {status:#}\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The digests of the experiment's stored checkpoints (a job keeps its latest).
    fn checkpoints(&self, experiment: &str) -> Vec<String> {
        artifacts(&self.coordinator.url, &self.team, experiment)
            .into_iter()
            .filter(|a| a.role == "checkpoint")
            .map(|a| a.sha256)
            .collect()
    }

    /// Waits for a checkpoint other than those in `seen`.
    fn wait_checkpoint(&self, experiment: &str, seen: &[String]) {
        wait_for("a new training checkpoint", LONG, || {
            self.checkpoints(experiment)
                .iter()
                .any(|c| !seen.contains(c))
                .then_some(())
        });
    }

    /// Waits until Slurm holds none of the launched jobs any more.
    fn wait_all_ended(&self) {
        wait_for(
            "the launched worker jobs to end",
            Duration::from_secs(60),
            || {
                let status = self.launch_status();
                status
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| {
                        let s = r["state"].as_str().unwrap();
                        !["PENDING", "RUNNING", "COMPLETING", "CONFIGURING"].contains(&s)
                    })
                    .then_some(())
            },
        );
    }
}

impl Drop for SlurmLab {
    fn drop(&mut self) {
        let _ = self.tandem(&[
            "launch",
            "cancel",
            "--all",
            "--state-dir",
            self.state.to_str().unwrap(),
        ]);
    }
}

/// The update a training resumed at, from the worker's log line "training resumed at update N".
fn resumed_at(log: &str) -> Option<u64> {
    log.lines().find_map(|l| {
        let at = l.find("training resumed at update ")?;
        l[at + "training resumed at update ".len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// Asserts each update 1..=steps logged its training loss exactly once.
fn assert_each_update_once(lab: &SlurmLab, experiment: &str, steps: u64) {
    let metrics = series(&lab.coordinator.url, &lab.team, experiment);
    let mut seen: Vec<u64> = metrics[&("train(stage1)".into(), "train_loss".into())]
        .iter()
        .map(|p| p.0)
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (1..=steps).collect::<Vec<_>>(),
        "every update exactly once"
    );
}

#[test]
fn the_tiny_experiment_completes_on_workers_started_by_sbatch() {
    let lab = SlurmLab::start();
    let manifest = lab.dir.path().join("e2e.toml");
    std::fs::write(
        &manifest,
        tiny_manifest(
            "slurm-e2e",
            "none",
            TINY_STAGE1_TRAINING,
            r#""stage1:stage1", "two-stage:stage2""#,
        ),
    )
    .unwrap();
    let experiment = lab.submit(&manifest);
    // The admin's launch creates a worker token through the coordinator, kept in a file only its owner reads.
    let job = lab.launch(2);
    let token_file = lab.state.join("worker.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let shown = lab.slurm("scontrol", &["show", "job", &format!("{job}_0")]);
    assert!(
        !shown.contains(&token),
        "the token is visible to scontrol: {shown}"
    );

    let status = lab.wait_succeeded(&experiment, &[&format!("{job}_0"), &format!("{job}_1")]);
    let workers: serde_json::Value =
        serde_json::from_str(&lab.tandem_ok(&["workers", "--format", "json"])).unwrap();
    let slurm_workers: Vec<&str> = workers
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["cluster_job"]["scheduler"] == "slurm")
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(slurm_workers.len(), 2, "{workers:#}");
    for w in workers.as_array().unwrap() {
        let element = w["cluster_job"]["job_id"].as_str().unwrap();
        assert!(
            element == format!("{job}_0") || element == format!("{job}_1"),
            "{w}"
        );
        assert_eq!(w["cluster_job"]["state"], "RUNNING", "{w}");
    }
    // Every job ran on one of them.
    for j in status["jobs"].as_array().unwrap() {
        if j["cached"] == true {
            continue;
        }
        let worker = j["worker"].as_str().unwrap();
        assert!(
            slurm_workers.contains(&worker),
            "{} ran on {worker}",
            j["name"]
        );
    }
    let text = lab.tandem_ok(&["workers"]);
    assert!(text.contains(&format!("slurm {job}_0")), "{text}");

    lab.tandem_ok(&[
        "launch",
        "cancel",
        "--all",
        "--state-dir",
        lab.state.to_str().unwrap(),
    ]);
    lab.wait_all_ended();
    let ledger = std::fs::read_to_string(lab.state.join("launches.jsonl")).unwrap();
    assert_eq!(
        ledger.lines().count(),
        2,
        "one launch, one cancel: {ledger}"
    );
}

#[test]
fn a_requeued_worker_job_hands_back_and_its_next_run_resumes_from_the_checkpoint() {
    let lab = SlurmLab::start();
    let manifest = training_manifest(lab.dir.path(), "requeue", 120);
    let experiment = lab.submit(&manifest);
    let job = lab.launch(1);
    let element = format!("{job}_0");
    lab.wait_checkpoint(&experiment, &[]);
    // Slurm stops the job (SIGTERM to its step, SIGKILL after KillWait) and queues it again.
    lab.slurm("scontrol", &["requeue", &element]);
    wait_for(
        "the requeued job to be pending",
        Duration::from_secs(60),
        || (lab.element_state(&element) == "PENDING").then_some(()),
    );
    // Slurm holds a requeued job back for about two minutes; start it now.
    lab.slurm(
        "scontrol",
        &["update", &format!("JobId={element}"), "StartTime=now"],
    );
    let status = lab.wait_succeeded(&experiment, &[&element]);

    let log = lab.log(&element);
    assert!(
        log.contains("shutting down: checkpointing and handing back the lease"),
        "{log}"
    );
    assert!(
        log.contains("outcome=\"handed back\"") || log.contains("outcome=handed back"),
        "{log}"
    );
    assert!(
        log.contains("(restart 1)"),
        "the requeued run did not start: {log}"
    );
    let at = resumed_at(&log).unwrap_or_else(|| panic!("the next run did not resume: {log}"));
    // The stopped worker checkpointed where it stopped (after the first periodic checkpoint, at update 10).
    assert!((10..120).contains(&at), "resumed at {at}");
    // A hand-back is not a failed attempt.
    assert_eq!(job_attempts(&status), 1);
    assert_each_update_once(&lab, &experiment, 120);
    let workers: serde_json::Value =
        serde_json::from_str(&lab.tandem_ok(&["workers", "--format", "json"])).unwrap();
    assert!(
        workers
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["cluster_job"]["restarts"] == 1),
        "{workers:#}"
    );
}

fn job_attempts(status: &serde_json::Value) -> u64 {
    job(status, "train(stage1)")["attempts"].as_u64().unwrap()
}

#[test]
fn scancel_term_hands_back_cleanly_and_a_killed_worker_s_lease_expires() {
    let lab = SlurmLab::start();
    let manifest = training_manifest(lab.dir.path(), "preempt", 160);
    let experiment = lab.submit(&manifest);
    let first = format!("{}_0", lab.launch(1));
    lab.wait_checkpoint(&experiment, &[]);
    // A stop signal: the worker checkpoints, hands back and exits 0, so Slurm records the job COMPLETED.
    lab.slurm("scancel", &["--signal=TERM", &first]);
    wait_for(
        "the stopped worker job to end",
        Duration::from_secs(60),
        || (lab.element_state(&first) == "COMPLETED").then_some(()),
    );
    let checkpoints = lab.checkpoints(&experiment);

    // The next worker resumes; killed outright once it has checkpointed again.
    let second = format!("{}_0", lab.launch(1));
    lab.wait_checkpoint(&experiment, &checkpoints);
    // Killed outright, as by a node failure: Slurm itself turns `scancel --signal=KILL` into a graceful cancel
    // (SIGTERM, then SIGKILL after KillWait), so the worker process is sent SIGKILL directly.
    let killed = Command::new("pkill")
        .args(["-KILL", "-f"])
        // The worker process itself (its command line starts with its path), not the srun that started it.
        .arg(format!(
            "^{} agent .*name slurm-{second} ",
            bins().worker.display()
        ))
        .status()
        .unwrap();
    assert!(killed.success(), "no worker process of {second} found");
    let third = format!("{}_0", lab.launch(1));
    let status = lab.wait_succeeded(&experiment, &[&first, &second, &third]);

    let (log2, log3) = (lab.log(&second), lab.log(&third));
    assert!(resumed_at(&log2).is_some_and(|at| at >= 10), "{log2}");
    // The killed worker wrote no checkpoint of its own: the third resumes from its last periodic one.
    let at = resumed_at(&log3).unwrap_or_else(|| panic!("{log3}"));
    assert!(
        at > resumed_at(&log2).unwrap() && at.is_multiple_of(10),
        "resumed at {at}\n--- first\n{}\n--- second\n{log2}\n--- third\n{log3}",
        lab.log(&first)
    );
    assert!(
        !log2.contains("handing back the lease"),
        "SIGKILL leaves no time: {log2}"
    );
    // The hand-back is not a failed attempt; the killed one is.
    assert_eq!(job_attempts(&status), 2);
    assert_each_update_once(&lab, &experiment, 160);
}

#[test]
fn elastic_mode_starts_workers_for_queued_work_and_cancels_them_when_idle() {
    let lab = SlurmLab::start();
    let manifest = write_manifest(
        lab.dir.path(),
        "burst.json",
        &json!({"name": "burst", "jobs": [
            {"name": "a", "kind": "test.emit", "config": {"steps": 20, "seed": 1, "step_ms": 100}},
            {"name": "b", "kind": "test.emit", "config": {"steps": 20, "seed": 2, "step_ms": 100}},
            {"name": "c", "kind": "test.emit", "config": {"steps": 20, "seed": 3, "step_ms": 100}}
        ]}),
    );
    let experiment = lab.submit(&manifest);
    let mut flags = lab.launch_flags();
    flags.extend(
        [
            "--watch",
            "--max-workers",
            "2",
            "--idle-timeout",
            "3",
            "--interval",
            "0.5",
        ]
        .map(String::from),
    );
    let out_path = lab.dir.path().join("watch.out");
    let mut watch = Command::new(&bins().tandem)
        .args(&flags)
        .env("SLURM_CONF", cluster())
        .env("TANDEM_COORDINATOR", &lab.coordinator.url)
        .env("TANDEM_TOKEN", &lab.admin)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(lab.dir.path().join("watch.err")).unwrap())
        .spawn()
        .unwrap();
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    wait_for("the experiment on elastic workers", LONG, || {
        let status = status_json(&lab.coordinator.url, Some(&lab.team), &experiment);
        assert_ne!(status["state"], "failed", "{status:#}\n{}", output());
        (status["state"] == "succeeded").then_some(())
    });
    // Three jobs queued, at most two workers: one launch of two.
    let launches: Vec<String> = output()
        .lines()
        .filter(|l| l.contains(" launch: "))
        .map(String::from)
        .collect();
    assert_eq!(launches.len(), 1, "{}", output());
    assert!(
        launches[0].contains(", 2 worker(s): 3 job(s) queued"),
        "{}",
        output()
    );
    // Idle for 3 s with nothing queued: both cancelled, and Slurm holds neither.
    wait_for("idle workers cancelled", Duration::from_secs(60), || {
        (output().matches(" cancel: ").count() == 2).then_some(())
    });
    assert!(output().contains("idle for "), "{}", output());
    lab.wait_all_ended();
    // SIGTERM ends the watch loop cleanly.
    terminate(&mut watch);
    assert!(output().contains("stopped watching"), "{}", output());
}

/// Sends SIGTERM to `child` (through the `kill` command) and waits for a clean exit.
fn terminate(child: &mut std::process::Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn slurm_s_refusals_and_a_missing_slurm_name_the_cause_and_submit_nothing() {
    let lab = SlurmLab::start();
    let ledger = lab.state.join("launches.jsonl");
    let mut flags = lab.launch_flags();
    flags.extend(["--partition".into(), "no-such-partition".into()]);
    let out = lab.tandem(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("(caused by --partition)") && stderr.contains("invalid partition"),
        "{stderr}"
    );
    // A GPU the CPU-only partition cannot give.
    let mut flags = lab.launch_flags();
    let at = flags.iter().position(|f| f == "--gpus-per-worker").unwrap();
    flags[at + 1] = "1".into();
    let out = lab.tandem(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(caused by --gpus-per-worker)") && stderr.contains("gres"),
        "{stderr}"
    );
    assert!(!ledger.exists() || std::fs::read_to_string(&ledger).unwrap().is_empty());

    // No Slurm on PATH: one line naming sbatch.
    let out = Command::new(&bins().tandem)
        .args(lab.launch_flags())
        .env("PATH", "/nonexistent")
        .env("TANDEM_COORDINATOR", &lab.coordinator.url)
        .env("TANDEM_TOKEN", &lab.admin)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("error: sbatch: cannot run it"),
        "{stderr}"
    );

    // A worker whose token file cannot be read exits naming it.
    let missing = lab.dir.path().join("no-token");
    let out = Command::new(&bins().worker)
        .args([
            "agent",
            "--coordinator",
            &lab.coordinator.url,
            "--token-file",
        ])
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("--token-file {}", missing.display())),
        "{stderr}"
    );
}
