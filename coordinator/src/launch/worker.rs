//! What every launched worker is, whichever cluster starts it: the coordinator it serves, its token file, the
//! GPUs, CPUs and memory it asks for, and the grace it gets between the stop signal and the kill.

use std::path::PathBuf;

use super::LaunchError;

/// The settings one launched worker runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSpec {
    /// The coordinator URL the worker connects to (reachable from the compute nodes).
    pub coordinator: String,
    /// The worker token file as the worker sees it (`None`: the coordinator needs no token).
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate for an https coordinator, as the worker sees it.
    pub ca_cert: Option<PathBuf>,
    /// GPUs per worker; the worker offers each as one lease slot.
    pub gpus: u32,
    /// CPU cores per worker (the worker's `--threads`).
    pub cpus: u32,
    /// Memory per worker in Slurm's notation (`64G`, `500M`); `None`: the partition's default.
    pub mem: Option<String>,
    /// Seconds between the stop signal (preemption, time limit, cancel) and the kill: the worker checkpoints
    /// and hands its lease back within it.
    pub grace_s: u32,
    /// Extra arguments for `tandem-worker`.
    pub worker_args: Vec<String>,
}

/// The longest value taken into a script (far above any real path or URL).
const MAX_VALUE: usize = 4096;

impl WorkerSpec {
    /// Checks what both renderers rely on; the error names the flag.
    pub fn check(&self) -> Result<(), LaunchError> {
        plain_text("--coordinator", &self.coordinator)?;
        if !(self.coordinator.starts_with("http://") || self.coordinator.starts_with("https://")) {
            return Err(LaunchError::invalid(
                "--coordinator",
                format!(
                    "{:?} is not an http:// or https:// URL the workers can reach",
                    self.coordinator
                ),
            ));
        }
        for (flag, path) in [
            ("--worker-token-file", &self.token_file),
            ("--ca-cert", &self.ca_cert),
        ] {
            if let Some(path) = path {
                plain_text(flag, &path.to_string_lossy())?;
            }
        }
        if self.cpus == 0 {
            return Err(LaunchError::invalid("--cpus", "at least 1"));
        }
        if let Some(mem) = &self.mem {
            check_memory(mem)?;
        }
        if self.grace_s < 10 {
            return Err(LaunchError::invalid(
                "--grace",
                format!(
                    "{} s leaves no time to checkpoint; at least 10 s accepted",
                    self.grace_s
                ),
            ));
        }
        for arg in &self.worker_args {
            plain_text("--worker-arg", arg)?;
        }
        Ok(())
    }

    /// Seconds the worker itself waits for its hand-back: the grace less a margin for the upload to land.
    pub fn shutdown_grace_s(&self) -> u32 {
        self.grace_s - self.grace_s.min(60) / 6
    }
}

/// A value without control characters (no line breaks in a script) and of a sane length.
pub(crate) fn plain_text(flag: &str, value: &str) -> Result<(), LaunchError> {
    if value.chars().any(char::is_control) {
        return Err(LaunchError::invalid(
            flag,
            format!("{value:?} holds a control character (a line break?); not accepted"),
        ));
    }
    if value.len() > MAX_VALUE {
        return Err(LaunchError::invalid(
            flag,
            format!("{} bytes; at most {MAX_VALUE} accepted", value.len()),
        ));
    }
    Ok(())
}

/// Slurm's memory notation: a whole number with an optional unit K, M, G or T.
fn check_memory(mem: &str) -> Result<(), LaunchError> {
    let digits = mem.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let unit_len = mem.len() - digits.len();
    if digits.is_empty() || unit_len > 1 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LaunchError::invalid(
            "--mem",
            format!(
                "{mem:?}: expected a whole number with an optional unit K, M, G or T (e.g. 64G)"
            ),
        ));
    }
    Ok(())
}

/// `value` as one POSIX shell word: bare when it holds only safe characters, else single-quoted.
pub fn shell_word(value: &str) -> String {
    let safe = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if safe {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn spec() -> WorkerSpec {
        WorkerSpec {
            coordinator: "https://coord.lab.example:7070".into(),
            token_file: Some("/home/ana/.tandem/slurm/worker.token".into()),
            ca_cert: None,
            gpus: 1,
            cpus: 8,
            mem: Some("64G".into()),
            grace_s: 120,
            worker_args: vec![],
        }
    }

    #[test]
    fn shell_words_quote_what_the_shell_would_read() {
        assert_eq!(
            shell_word("/opt/tandem/bin/tandem-worker"),
            "/opt/tandem/bin/tandem-worker"
        );
        assert_eq!(shell_word("http://10.0.0.1:7070"), "http://10.0.0.1:7070");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("$(rm -rf ~)"), "'$(rm -rf ~)'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: Vec<(WorkerSpec, &str)> = vec![
            (
                WorkerSpec {
                    coordinator: "coord:7070".into(),
                    ..spec()
                },
                "--coordinator",
            ),
            (
                WorkerSpec {
                    coordinator: "http://a\nb".into(),
                    ..spec()
                },
                "--coordinator",
            ),
            (WorkerSpec { cpus: 0, ..spec() }, "--cpus"),
            (
                WorkerSpec {
                    mem: Some("64GB".into()),
                    ..spec()
                },
                "--mem",
            ),
            (
                WorkerSpec {
                    mem: Some("G".into()),
                    ..spec()
                },
                "--mem",
            ),
            (
                WorkerSpec {
                    grace_s: 5,
                    ..spec()
                },
                "--grace",
            ),
            (
                WorkerSpec {
                    worker_args: vec!["--x\n".into()],
                    ..spec()
                },
                "--worker-arg",
            ),
            (
                WorkerSpec {
                    token_file: Some("/a\rb".into()),
                    ..spec()
                },
                "--worker-token-file",
            ),
        ];
        for (bad, flag) in cases {
            let err = bad.check().unwrap_err().to_string();
            assert!(err.starts_with(flag), "{err} (expected {flag})");
        }
        spec().check().unwrap();
        WorkerSpec {
            mem: Some("500M".into()),
            ..spec()
        }
        .check()
        .unwrap();
    }

    #[test]
    fn the_worker_keeps_a_margin_of_its_grace_for_the_upload() {
        assert_eq!(
            WorkerSpec {
                grace_s: 120,
                ..spec()
            }
            .shutdown_grace_s(),
            110
        );
        assert_eq!(
            WorkerSpec {
                grace_s: 30,
                ..spec()
            }
            .shutdown_grace_s(),
            25
        );
        assert_eq!(
            WorkerSpec {
                grace_s: 10,
                ..spec()
            }
            .shutdown_grace_s(),
            9
        );
    }
}
