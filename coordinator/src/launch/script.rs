//! The Slurm batch script of one launch: an array job whose every element runs one `tandem-worker` as a job
//! step, pinned to the GPUs Slurm gave it, asking for a stop signal before its time is up, and requeueable.
//!
//! Why the worker runs under `srun` (a job step) and not in the batch shell: Slurm's stop signals reach job
//! steps, not the batch shell (`--signal=TERM@grace` without `B:`, and `scancel --signal=TERM` without
//! `--batch`). So one path serves a time limit, a preemption, a cancel and a requeue: the worker gets SIGTERM,
//! checkpoints at its next update, hands the lease back and exits 0.

use std::path::PathBuf;

use super::LaunchError;
use super::worker::{WorkerSpec, plain_text, shell_word};

/// How the GPU request is written: `--gres=gpu:N` (every Slurm) or `--gpus-per-task=N` (Slurm 19.05+ with
/// `select/cons_tres`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuFlag {
    #[default]
    Gres,
    Gpus,
}

/// One `tandem launch slurm`: `workers` array elements, each one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlurmRequest {
    pub worker: WorkerSpec,
    /// Slurm job name (`squeue` shows it).
    pub job_name: String,
    /// Array elements (workers) to submit.
    pub workers: u32,
    pub partition: Option<String>,
    pub gpu_flag: GpuFlag,
    /// Wall-time limit in Slurm's notation (`4:00:00`, `2-00:00:00`).
    pub time: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Extra `#SBATCH` options, each one line (`--constraint=a100`).
    pub extra_sbatch: Vec<String>,
    /// `tandem-worker` as the compute nodes see it.
    pub worker_bin: PathBuf,
    /// The launch state folder (on a file system the compute nodes share): logs and work folders go here.
    pub state_dir: PathBuf,
    /// The workers' input cache (`None`: the worker's default, `~/.cache/tandem`).
    pub cache_dir: Option<PathBuf>,
}

/// The most array elements one launch submits (Slurm's default `MaxArraySize` is 1001).
pub const MAX_WORKERS: u32 = 1000;

impl SlurmRequest {
    /// Checks every value that goes into the script; the error names the flag and what is accepted.
    pub fn check(&self) -> Result<(), LaunchError> {
        self.worker.check()?;
        slurm_name("--job-name", &self.job_name)?;
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(LaunchError::invalid(
                "--workers",
                format!("{}: 1 to {MAX_WORKERS} accepted", self.workers),
            ));
        }
        for (flag, value) in [
            ("--partition", &self.partition),
            ("--account", &self.account),
            ("--qos", &self.qos),
        ] {
            if let Some(value) = value {
                slurm_name(flag, value)?;
            }
        }
        if let Some(time) = &self.time {
            check_time(time)?;
        }
        for line in &self.extra_sbatch {
            plain_text("--sbatch", line)?;
            if !line.starts_with('-') {
                return Err(LaunchError::invalid(
                    "--sbatch",
                    format!("{line:?}: expected an sbatch option such as --constraint=a100"),
                ));
            }
        }
        for (flag, path) in [
            ("--worker-bin", Some(&self.worker_bin)),
            ("--state-dir", Some(&self.state_dir)),
            ("--cache-dir", self.cache_dir.as_ref()),
        ] {
            if let Some(path) = path {
                plain_text(flag, &path.to_string_lossy())?;
                if !path.is_absolute() {
                    return Err(LaunchError::invalid(
                        flag,
                        format!(
                            "{}: an absolute path is needed (the job runs elsewhere)",
                            path.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The batch script, readable as a cluster admin would want it: every request on its own `#SBATCH` line,
    /// the worker's command spelled out, nothing secret in it (the token is a file path).
    pub fn render(&self) -> Result<String, LaunchError> {
        self.check()?;
        let w = &self.worker;
        let state = self.state_dir.to_string_lossy();
        let mut s = String::new();
        let mut line = |text: String| {
            s.push_str(&text);
            s.push('\n');
        };
        line("#!/bin/bash".into());
        line(format!(
            "# Tandem workers: each array element runs one tandem-worker for the coordinator at {}.",
            w.coordinator
        ));
        line("# Written by `tandem launch slurm`; stop signals reach the worker (a job step), which checkpoints,".into());
        line("# hands its lease back and exits 0; the job is requeueable.".into());
        line(format!("#SBATCH --job-name={}", self.job_name));
        line(format!("#SBATCH --array=0-{}", self.workers - 1));
        if let Some(partition) = &self.partition {
            line(format!("#SBATCH --partition={partition}"));
        }
        if let Some(account) = &self.account {
            line(format!("#SBATCH --account={account}"));
        }
        if let Some(qos) = &self.qos {
            line(format!("#SBATCH --qos={qos}"));
        }
        line("#SBATCH --nodes=1".into());
        line("#SBATCH --ntasks=1".into());
        line(format!("#SBATCH --cpus-per-task={}", w.cpus));
        if w.gpus > 0 {
            line(match self.gpu_flag {
                GpuFlag::Gres => format!("#SBATCH --gres=gpu:{}", w.gpus),
                GpuFlag::Gpus => format!("#SBATCH --gpus-per-task={}", w.gpus),
            });
        }
        if let Some(mem) = &w.mem {
            line(format!("#SBATCH --mem={mem}"));
        }
        if let Some(time) = &self.time {
            line(format!("#SBATCH --time={time}"));
        }
        line(format!("#SBATCH --signal=TERM@{}", w.grace_s));
        line("#SBATCH --requeue".into());
        line("#SBATCH --open-mode=append".into());
        line(format!("#SBATCH --output={state}/logs/%x-%A_%a.out"));
        for extra in &self.extra_sbatch {
            line(format!("#SBATCH {extra}"));
        }
        line(String::new());
        line("set -euo pipefail".into());
        line("# The worker reads its token from --token-file only; no credential rides in the environment.".into());
        line(format!("unset {}", super::slurm::SECRET_VARS.join(" ")));
        line(r#"element="${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID:-0}""#.into());
        line(r#"echo "tandem worker job $element on $(hostname) (restart ${SLURM_RESTART_COUNT:-0}) at $(date -u +%FT%TZ)""#.into());
        if w.gpus > 0 {
            line("# Pin the worker to the GPUs Slurm gave this job (clusters without task/cgroup leave it unset).".into());
            line(
                r#"export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-${SLURM_JOB_GPUS:-}}""#
                    .into(),
            );
        }
        // One worker argument per line: a flag with its value, or an extra --worker-arg as given.
        let path = |p: &std::path::Path| shell_word(&p.to_string_lossy());
        let mut args: Vec<String> = vec![format!("--coordinator {}", shell_word(&w.coordinator))];
        if let Some(token) = &w.token_file {
            args.push(format!("--token-file {}", path(token)));
        }
        if let Some(ca) = &w.ca_cert {
            args.push(format!("--ca-cert {}", path(ca)));
        }
        args.extend([
            r#"--name "slurm-$element""#.to_string(),
            format!("--gpus {}", w.gpus),
            r#"--threads "$SLURM_CPUS_PER_TASK""#.to_string(),
            format!(
                r#"--work-dir {}"/$element""#,
                shell_word(&format!("{state}/work"))
            ),
            format!("--shutdown-grace-s {}", w.shutdown_grace_s()),
        ]);
        if let Some(cache) = &self.cache_dir {
            args.push(format!("--cache-dir {}", path(cache)));
        }
        args.extend(w.worker_args.iter().map(|a| shell_word(a)));
        line(format!(
            "exec srun --ntasks=1 --cpus-per-task=\"$SLURM_CPUS_PER_TASK\" {} agent \\",
            path(&self.worker_bin)
        ));
        let last = args.len() - 1;
        for (i, arg) in args.iter().enumerate() {
            line(format!("    {arg}{}", if i == last { "" } else { " \\" }));
        }
        Ok(s)
    }
}

/// A Slurm partition, account, QOS or job name: letters, digits and `_.-` (a partition may be a comma list).
fn slurm_name(flag: &str, value: &str) -> Result<(), LaunchError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-,".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(LaunchError::invalid(
            flag,
            format!("{value:?}: letters, digits and _ . - , accepted (at most 128)"),
        ))
    }
}

/// Slurm's time notation: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`, or `UNLIMITED`.
fn check_time(time: &str) -> Result<(), LaunchError> {
    let numbers = |s: &str| {
        !s.is_empty()
            && s.split(':')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let ok = match time.split_once('-') {
        _ if time.eq_ignore_ascii_case("unlimited") || time.eq_ignore_ascii_case("infinite") => {
            true
        }
        Some((days, rest)) => {
            numbers(days) && !days.contains(':') && numbers(rest) && rest.split(':').count() <= 3
        }
        None => numbers(time) && time.split(':').count() <= 3,
    };
    if ok {
        Ok(())
    } else {
        Err(LaunchError::invalid(
            "--time",
            format!(
                "{time:?}: expected M, M:S, H:M:S, D-H, D-H:M, D-H:M:S or UNLIMITED (e.g. 24:00:00)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::worker::tests::spec;
    use super::*;

    fn request() -> SlurmRequest {
        SlurmRequest {
            worker: spec(),
            job_name: "tandem-worker".into(),
            workers: 4,
            partition: Some("gpu".into()),
            gpu_flag: GpuFlag::Gres,
            time: Some("24:00:00".into()),
            account: Some("radiology".into()),
            qos: None,
            extra_sbatch: vec!["--constraint=a100".into()],
            worker_bin: "/opt/tandem/bin/tandem-worker".into(),
            state_dir: "/home/ana/.tandem/slurm".into(),
            cache_dir: None,
        }
    }

    #[test]
    fn the_script_asks_for_each_resource_on_its_own_line() {
        let script = request().render().unwrap();
        for expected in [
            "#!/bin/bash\n",
            "#SBATCH --job-name=tandem-worker\n",
            "#SBATCH --array=0-3\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --account=radiology\n",
            "#SBATCH --cpus-per-task=8\n",
            "#SBATCH --gres=gpu:1\n",
            "#SBATCH --mem=64G\n",
            "#SBATCH --time=24:00:00\n",
            "#SBATCH --signal=TERM@120\n",
            "#SBATCH --requeue\n",
            "#SBATCH --output=/home/ana/.tandem/slurm/logs/%x-%A_%a.out\n",
            "#SBATCH --constraint=a100\n",
            "export CUDA_VISIBLE_DEVICES=\"${CUDA_VISIBLE_DEVICES:-${SLURM_JOB_GPUS:-}}\"\n",
            "exec srun --ntasks=1 --cpus-per-task=\"$SLURM_CPUS_PER_TASK\" /opt/tandem/bin/tandem-worker agent \\\n",
            "    --coordinator https://coord.lab.example:7070 \\\n",
            "    --token-file /home/ana/.tandem/slurm/worker.token \\\n",
            "    --gpus 1 \\\n",
            "    --shutdown-grace-s 110\n",
        ] {
            assert!(
                script.contains(expected),
                "missing {expected:?} in\n{script}"
            );
        }
        assert!(!script.contains("--qos"), "{script}");
        // Every #SBATCH line comes before the first command (sbatch stops reading them there).
        let first_command = script.find("set -euo").unwrap();
        assert!(script.rfind("#SBATCH").unwrap() < first_command);
    }

    #[test]
    fn a_cpu_worker_asks_for_no_gpu_and_the_gpus_flag_is_honoured() {
        let cpu = SlurmRequest {
            worker: WorkerSpec { gpus: 0, ..spec() },
            ..request()
        };
        let script = cpu.render().unwrap();
        assert!(
            !script.contains("gpu:") && !script.contains("CUDA_VISIBLE_DEVICES"),
            "{script}"
        );
        let gpus = SlurmRequest {
            gpu_flag: GpuFlag::Gpus,
            worker: WorkerSpec { gpus: 2, ..spec() },
            ..request()
        };
        assert!(
            gpus.render()
                .unwrap()
                .contains("#SBATCH --gpus-per-task=2\n")
        );
    }

    #[test]
    fn the_script_passes_bash_s_syntax_check_with_awkward_paths() {
        let awkward = SlurmRequest {
            worker_bin: "/opt/it's here/tandem-worker".into(),
            state_dir: "/home/a b/$HOME".into(),
            cache_dir: Some("/scratch/cache dir".into()),
            worker: WorkerSpec {
                worker_args: vec!["--enable-test-kinds".into()],
                ..spec()
            },
            ..request()
        };
        let script = awkward.render().unwrap();
        assert!(
            script.contains("'/opt/it'\\''s here/tandem-worker'"),
            "{script}"
        );
        assert!(
            script.contains("'/home/a b/$HOME/work'\"/$element\""),
            "{script}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.sh");
        std::fs::write(&path, &script).unwrap();
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn bad_requests_name_their_flag() {
        let cases: Vec<(SlurmRequest, &str)> = vec![
            (
                SlurmRequest {
                    workers: 0,
                    ..request()
                },
                "--workers",
            ),
            (
                SlurmRequest {
                    workers: 5000,
                    ..request()
                },
                "--workers",
            ),
            (
                SlurmRequest {
                    partition: Some("gpu;rm".into()),
                    ..request()
                },
                "--partition",
            ),
            (
                SlurmRequest {
                    account: Some("".into()),
                    ..request()
                },
                "--account",
            ),
            (
                SlurmRequest {
                    qos: Some("high prio".into()),
                    ..request()
                },
                "--qos",
            ),
            (
                SlurmRequest {
                    time: Some("24h".into()),
                    ..request()
                },
                "--time",
            ),
            (
                SlurmRequest {
                    time: Some("1-2:3:4:5".into()),
                    ..request()
                },
                "--time",
            ),
            (
                SlurmRequest {
                    extra_sbatch: vec!["constraint=a100".into()],
                    ..request()
                },
                "--sbatch",
            ),
            (
                SlurmRequest {
                    extra_sbatch: vec!["--x\n#SBATCH --y".into()],
                    ..request()
                },
                "--sbatch",
            ),
            (
                SlurmRequest {
                    worker_bin: "tandem-worker".into(),
                    ..request()
                },
                "--worker-bin",
            ),
            (
                SlurmRequest {
                    job_name: "a b".into(),
                    ..request()
                },
                "--job-name",
            ),
        ];
        for (bad, flag) in cases {
            let err = bad.render().unwrap_err().to_string();
            assert!(err.starts_with(flag), "{err} (expected {flag})");
        }
        for time in [
            "30",
            "30:00",
            "4:00:00",
            "2-0",
            "2-12:00",
            "2-12:00:00",
            "UNLIMITED",
        ] {
            SlurmRequest {
                time: Some(time.into()),
                ..request()
            }
            .check()
            .unwrap();
        }
    }
}
