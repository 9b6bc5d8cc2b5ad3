//! An experiment's audit: its manifest, inputs and artifacts re-hashed against the recorded SHA-256s, the
//! environment (worker, code version, devices) each job ran in, and its audit log.

use crate::scheduler::{Scheduler, SchedulerResult, TeamScope};
use crate::store::{AuditEntry, DeviceRecord, JobRecord, WorkerRecord, sha256_hex};

/// One content check: what the record says a file hashes to and what it hashes to now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCheck {
    /// "manifest <name>", "input <name>", "artifact <job>/<name> (<role>)".
    pub subject: String,
    pub expected: String,
    /// Empty when the file could not be read.
    pub actual: String,
    pub ok: bool,
    /// Why the file could not be read, if it could not.
    pub detail: String,
}

/// The worker (and its code version and devices) a job ran on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobEnvironment {
    pub job_id: String,
    pub worker: String,
    pub worker_version: String,
    pub git_commit: String,
    pub cargo_lock_sha256: String,
    pub host: String,
    pub devices: Vec<DeviceRecord>,
}

/// The audit of one experiment.
#[derive(Clone, Debug)]
pub struct AuditReport {
    pub checks: Vec<AuditCheck>,
    pub environments: Vec<JobEnvironment>,
    /// Empty unless the log was asked for.
    pub log: Vec<AuditEntry>,
}

impl AuditReport {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// A check of `subject` against `expected`, given its hash now or why it could not be read.
pub fn hash_check(subject: String, expected: &str, actual: Result<String, String>) -> AuditCheck {
    let (actual, detail) = match actual {
        Ok(actual) => (actual, String::new()),
        Err(detail) => (String::new(), detail),
    };
    AuditCheck {
        subject,
        ok: actual == expected,
        expected: expected.to_string(),
        actual,
        detail,
    }
}

/// The worker that ran `job`'s last successful attempt (else its last attempt), with the record
/// `worker_record` finds for it; `None` when the job never ran.
pub fn environment(
    job: &JobRecord,
    worker_record: impl FnOnce(&str) -> Option<WorkerRecord>,
) -> Option<JobEnvironment> {
    let worker_id = job
        .attempt_log
        .iter()
        .rev()
        .find(|a| a.outcome == "succeeded")
        .or(job.attempt_log.last())
        .map(|a| a.worker.clone())?;
    let worker = worker_record(&worker_id);
    let field =
        |f: fn(&WorkerRecord) -> &String| worker.as_ref().map(f).cloned().unwrap_or_default();
    Some(JobEnvironment {
        job_id: job.id.clone(),
        worker_version: field(|w| &w.version),
        git_commit: field(|w| &w.git_commit),
        cargo_lock_sha256: field(|w| &w.cargo_lock_sha256),
        host: field(|w| &w.host),
        devices: worker.map(|w| w.devices).unwrap_or_default(),
        worker: worker_id,
    })
}

/// Audits experiment `experiment_id`, if `scope` may see it; with `include_log`, its audit log too.
pub fn audit_experiment(
    scheduler: &Scheduler,
    scope: TeamScope<'_>,
    experiment_id: &str,
    include_log: bool,
) -> SchedulerResult<AuditReport> {
    let view = scheduler.experiment(scope, experiment_id)?;
    let record = &view.record;
    let manifest = scheduler.manifest(&record.id)?;
    let mut checks = vec![hash_check(
        format!("manifest {}", record.manifest_name),
        &record.manifest_sha256,
        Ok(sha256_hex(&manifest)),
    )];
    let rehash = |sha256: &str| scheduler.rehash_blob(sha256).map_err(|e| e.to_string());
    for input in &record.inputs {
        checks.push(hash_check(
            format!("input {}", input.name),
            &input.sha256,
            rehash(&input.sha256),
        ));
    }
    let mut environments = Vec::new();
    for job in &view.jobs {
        for artifact in scheduler.artifacts(&job.job.id)? {
            checks.push(hash_check(
                format!(
                    "artifact {}/{} ({})",
                    job.job.name, artifact.name, artifact.role
                ),
                &artifact.sha256,
                rehash(&artifact.sha256),
            ));
        }
        environments.extend(environment(&job.job, |id| scheduler.worker(id)));
    }
    let log = if include_log {
        scheduler.audit_log(record)?
    } else {
        Vec::new()
    };
    Ok(AuditReport {
        checks,
        environments,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{job_record, worker_record};
    use crate::store::{AttemptRecord, JobState};

    fn attempt(worker: &str, outcome: &str) -> AttemptRecord {
        AttemptRecord {
            number: 1,
            worker: worker.into(),
            started_ms: 0,
            ended_ms: Some(1),
            outcome: outcome.into(),
            error: None,
        }
    }

    fn job(attempts: Vec<AttemptRecord>) -> JobRecord {
        JobRecord {
            state: JobState::Succeeded,
            attempts: attempts.len() as u32,
            attempt_log: attempts,
            ..job_record("j")
        }
    }

    #[test]
    fn checks_pass_only_when_the_hash_matches_and_name_read_failures() {
        assert!(hash_check("input a".into(), "ab", Ok("ab".into())).ok);
        let changed = hash_check("input a".into(), "ab", Ok("cd".into()));
        assert!(!changed.ok);
        assert_eq!(changed.actual, "cd");
        let missing = hash_check("input a".into(), "ab", Err("not found".into()));
        assert!(!missing.ok);
        assert_eq!(
            (missing.actual.as_str(), missing.detail.as_str()),
            ("", "not found")
        );
    }

    #[test]
    fn the_environment_is_the_last_successful_attempt_s_worker() {
        let ran = job(vec![attempt("w1", "succeeded"), attempt("w2", "failed")]);
        let env = environment(&ran, |id| {
            Some(WorkerRecord {
                version: format!("version of {id}"),
                ..worker_record(id, "gpu-box")
            })
        })
        .unwrap();
        assert_eq!(
            (env.worker.as_str(), env.worker_version.as_str()),
            ("w1", "version of w1")
        );
        let failed = job(vec![attempt("w2", "failed")]);
        let env = environment(&failed, |_| None).unwrap();
        assert_eq!(
            (env.worker.as_str(), env.worker_version.as_str()),
            ("w2", "")
        );
        assert!(environment(&job(vec![]), |_| None).is_none());
    }
}
