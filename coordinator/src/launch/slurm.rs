//! Slurm's commands, run as processes: `sbatch` submits a launch, `squeue` (and, for jobs that left the
//! queue, `sacct` or `scontrol`) says where each worker job stands, `scancel` stops them. Their output is
//! parsed here; a refusal comes back in Slurm's own words with the flag that caused it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::LaunchError;

/// Environment variables that hold the launching user's credentials: never passed into a worker job.
pub const SECRET_VARS: &[&str] = &["TANDEM_TOKEN", "TANDEM_WORKER_TOKEN", "TANDEM_TOKEN_FILE"];

/// Where Slurm's commands are found.
#[derive(Clone, Debug, Default)]
pub struct Slurm {
    /// The folder holding `sbatch` and the others; `None`: the PATH.
    pub bin_dir: Option<PathBuf>,
}

/// One worker job (array element) as `squeue` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    /// `1234_5`.
    pub id: String,
    /// `PENDING`, `RUNNING`, `COMPLETING`, `REQUEUED`, ...
    pub state: String,
    /// The node it runs on (empty while pending).
    pub node: String,
    /// Why it waits (`Priority`, `Resources`, `BeginTime`, ...), `None` when it runs.
    pub reason: String,
}

impl Slurm {
    fn command(&self, name: &str) -> Command {
        match &self.bin_dir {
            Some(dir) => Command::new(dir.join(name)),
            None => Command::new(name),
        }
    }

    /// Runs `name args`, returning its stdout; a refusal carries stderr and the flag `culprit` blames.
    fn run(
        &self,
        name: &str,
        args: &[String],
        culprit: impl Fn(&str) -> Option<String>,
    ) -> Result<String, LaunchError> {
        self.run_with(name, args, |_| {}, culprit)
    }

    /// [`Slurm::run`] with the command adjusted by `adjust` first.
    fn run_with(
        &self,
        name: &str,
        args: &[String],
        adjust: impl FnOnce(&mut Command),
        culprit: impl Fn(&str) -> Option<String>,
    ) -> Result<String, LaunchError> {
        let shown = std::iter::once(name.to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = self.command(name);
        command.args(args);
        adjust(&mut command);
        let output = command.output().map_err(|source| LaunchError::Missing {
            command: name.to_string(),
            source,
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            let stderr = if stderr.is_empty() {
                format!("exit status {}", output.status)
            } else {
                stderr
            };
            return Err(LaunchError::Refused {
                command: shown,
                flag: culprit(&stderr),
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Submits `script`; returns the (array) job id Slurm gave it. sbatch passes the caller's environment to
    /// the job, so the caller's own credentials are removed from it first: the workers use their token file.
    pub fn submit(&self, script: &Path) -> Result<String, LaunchError> {
        let out = self.run_with(
            "sbatch",
            &["--parsable".into(), script.display().to_string()],
            |command| {
                for secret in SECRET_VARS {
                    command.env_remove(secret);
                }
            },
            |stderr| sbatch_culprit(stderr).map(str::to_string),
        )?;
        parse_job_id(&out).ok_or_else(|| LaunchError::Output {
            command: "sbatch --parsable".into(),
            output: out.clone(),
        })
    }

    /// The caller's jobs in the queue, one line per array element.
    pub fn queue(&self) -> Result<Vec<QueuedJob>, LaunchError> {
        let out = self.run(
            "squeue",
            &[
                "--me".into(),
                "--noheader".into(),
                "--array".into(),
                "--format=%i|%T|%N|%r".into(),
            ],
            |_| None,
        )?;
        Ok(parse_queue(&out))
    }

    /// The final states of worker jobs that left the queue, by element id (`1234_5`), for the array jobs
    /// `arrays`: from one `sacct` call where accounting is kept, else from one `scontrol` call while Slurm still
    /// remembers the jobs (MinJobAge). An element neither knows is absent.
    pub fn ended_states(&self, arrays: &[String]) -> BTreeMap<String, String> {
        if arrays.is_empty() {
            return BTreeMap::new();
        }
        let sacct = self.run(
            "sacct",
            &[
                "--noheader".into(),
                "--parsable2".into(),
                "--allocations".into(),
                "--format=JobID,State".into(),
                format!("--jobs={}", arrays.join(",")),
            ],
            |_| None,
        );
        let mut states: BTreeMap<String, String> = match sacct {
            Ok(out) => out
                .lines()
                .filter_map(|l| l.split_once('|'))
                .map(|(job, state)| (job.trim().to_string(), state.trim().to_string()))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        if let Ok(out) = self.run(
            "scontrol",
            &["--oneliner".into(), "show".into(), "job".into()],
            |_| None,
        ) {
            for (id, state) in scontrol_states(&out) {
                states.entry(id).or_insert(state);
            }
        }
        states
    }

    /// Cancels `ids` (array elements or whole arrays) with `scancel`, optionally with a signal only
    /// (`Some("TERM")`: the job is told to stop, not killed).
    pub fn cancel(&self, ids: &[String], signal: Option<&str>) -> Result<(), LaunchError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args: Vec<String> = Vec::new();
        if let Some(signal) = signal {
            args.push(format!("--signal={signal}"));
        }
        args.extend(ids.iter().cloned());
        self.run("scancel", &args, |_| None).map(|_| ())
    }
}

/// The job id in `sbatch --parsable` output: `1234` or `1234;cluster`.
pub fn parse_job_id(out: &str) -> Option<String> {
    let id = out.trim().split(';').next()?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

/// `squeue --format=%i|%T|%N|%r` lines.
pub fn parse_queue(out: &str) -> Vec<QueuedJob> {
    out.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split('|');
            let id = fields.next()?.trim().to_string();
            let state = fields.next()?.trim().to_string();
            let node = fields.next().unwrap_or("").trim().to_string();
            let reason = fields.next().unwrap_or("").trim().to_string();
            (!id.is_empty()).then_some(QueuedJob {
                id,
                state,
                node,
                reason,
            })
        })
        .collect()
}

/// `JobState=` of every job in `scontrol --oneliner show job` output (one line per job or array element), by
/// element id: `ARRAYJOB_TASK` for an array element, else the job id.
fn scontrol_states(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|line| {
            let fields: BTreeMap<&str, &str> = line
                .split_whitespace()
                .filter_map(|f| f.split_once('='))
                .collect();
            let id = match (fields.get("ArrayJobId"), fields.get("ArrayTaskId")) {
                (Some(array), Some(task)) => format!("{array}_{task}"),
                _ => fields.get("JobId")?.to_string(),
            };
            Some((id, fields.get("JobState")?.to_string()))
        })
        .collect()
}

/// The `tandem launch slurm` flag an sbatch refusal points at, from Slurm's words.
pub fn sbatch_culprit(stderr: &str) -> Option<&'static str> {
    let s = stderr.to_ascii_lowercase();
    // Account first: Slurm's account refusal also names "account/partition combination".
    let culprit = if s.contains("account") {
        "--account"
    } else if s.contains("partition") {
        "--partition"
    } else if s.contains("gres") || s.contains("generic resource") || s.contains("gpu") {
        "--gpus-per-worker"
    } else if s.contains("qos") {
        "--qos"
    } else if s.contains("--time") || s.contains("time limit") {
        "--time"
    } else if s.contains("memory") {
        "--mem"
    } else if s.contains("cpu") || s.contains("node configuration") {
        "--cpus"
    } else {
        return None;
    };
    Some(culprit)
}

/// Whether a `squeue` state means the job still holds, or will hold, a worker.
pub fn is_active(state: &str) -> bool {
    matches!(
        state,
        "PENDING"
            | "CONFIGURING"
            | "RUNNING"
            | "COMPLETING"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESIZING"
            | "SUSPENDED"
            | "STOPPED"
            | "SIGNALING"
            | "STAGE_OUT"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_output_gives_the_job_id() {
        assert_eq!(parse_job_id("1234\n"), Some("1234".into()));
        assert_eq!(parse_job_id("1234;tandem-test\n"), Some("1234".into()));
        assert_eq!(parse_job_id("Submitted batch job 1234"), None);
        assert_eq!(parse_job_id(""), None);
    }

    #[test]
    fn squeue_lines_are_parsed_per_element() {
        let jobs = parse_queue("12_0|RUNNING|node7|None\n12_1|PENDING||Resources\n\n");
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            jobs[1],
            QueuedJob {
                id: "12_1".into(),
                state: "PENDING".into(),
                node: String::new(),
                reason: "Resources".into()
            }
        );
    }

    #[test]
    fn scontrol_finds_the_element_s_state() {
        let out = "JobId=14 ArrayJobId=12 ArrayTaskId=2 JobName=tandem-worker JobState=COMPLETED Reason=None\n\
                   JobId=13 ArrayJobId=12 ArrayTaskId=1 JobName=tandem-worker JobState=CANCELLED Reason=None\n";
        let states = scontrol_states(out);
        assert_eq!(states.get("12_1").map(String::as_str), Some("CANCELLED"));
        assert_eq!(states.get("12_2").map(String::as_str), Some("COMPLETED"));
        assert_eq!(states.get("12_3"), None);
        assert_eq!(
            scontrol_states("JobId=9 JobState=FAILED\n")
                .get("9")
                .map(String::as_str),
            Some("FAILED")
        );
    }

    #[test]
    fn slurm_s_refusals_point_at_the_flag() {
        for (stderr, flag) in [
            (
                "sbatch: error: invalid partition specified: nope",
                "--partition",
            ),
            (
                "sbatch: error: Invalid generic resource (gres) specification",
                "--gpus-per-worker",
            ),
            (
                "sbatch: error: Invalid account or account/partition combination specified",
                "--account",
            ),
            ("sbatch: error: Invalid qos specification", "--qos"),
            ("sbatch: error: Invalid --time specification", "--time"),
            (
                "sbatch: error: Memory specification can not be satisfied",
                "--mem",
            ),
        ] {
            assert_eq!(sbatch_culprit(stderr), Some(flag), "{stderr}");
        }
        assert_eq!(sbatch_culprit("sbatch: error: something new"), None);
    }

    #[test]
    fn a_missing_slurm_is_one_clear_error() {
        let slurm = Slurm {
            bin_dir: Some("/nonexistent/slurm/bin".into()),
        };
        let err = slurm
            .submit(Path::new("/tmp/x.sh"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sbatch: cannot run it"), "{err}");
        assert!(err.contains("is Slurm installed"), "{err}");
    }
}
