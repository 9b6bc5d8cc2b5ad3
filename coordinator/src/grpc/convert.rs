//! Conversions between store/scheduler records (and the results and audit types) and protocol messages.

use tandem_proto as pb;

use crate::audit::{AuditCheck, JobEnvironment};
use crate::results::{JobPlacement, MetricSeries, ReplayComparison};
use crate::scheduler::{ExperimentView, JobView, WatchUpdate, WorkerView};
use crate::store::{
    ArtifactRecord, AuditEntry, ClusterJobRecord, DeviceRecord, ExperimentRecord, InputRef,
    JobRecord, JobState, PlacementRecord, Resources, TokenRecord,
};

pub fn resources_to_pb(r: &Resources) -> pb::Resources {
    pb::Resources {
        gpus: r.gpus,
        gpu_memory_mib: r.gpu_memory_mib,
        cpu_threads: r.cpu_threads,
    }
}

pub fn resources_from_pb(r: Option<&pb::Resources>) -> Resources {
    r.map(|r| Resources {
        gpus: r.gpus,
        gpu_memory_mib: r.gpu_memory_mib,
        cpu_threads: r.cpu_threads,
    })
    .unwrap_or_default()
}

/// The most devices one worker may report, and the longest device name accepted (the driver's names are
/// under 100 bytes).
const MAX_DEVICES: usize = 256;
const MAX_DEVICE_NAME: usize = 256;

/// The devices a registering worker reports, checked: at most [`MAX_DEVICES`], each with a name of at most
/// [`MAX_DEVICE_NAME`] bytes and no control characters. The error names the field.
pub fn devices_from_pb(devices: &[pb::Device]) -> Result<Vec<DeviceRecord>, String> {
    if devices.len() > MAX_DEVICES {
        return Err(format!(
            "devices: {} reported, at most {MAX_DEVICES} accepted",
            devices.len()
        ));
    }
    devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if d.name.len() > MAX_DEVICE_NAME || d.name.chars().any(char::is_control) {
                return Err(format!(
                    "devices[{i}].name: at most {MAX_DEVICE_NAME} bytes without control characters accepted"
                ));
            }
            Ok(DeviceRecord {
                ordinal: d.ordinal,
                name: d.name.clone(),
                memory_mib: d.memory_mib,
                compute_capability: d.compute_capability,
            })
        })
        .collect()
}

/// The longest cluster-job field accepted (Slurm's own names are far shorter).
const MAX_CLUSTER_FIELD: usize = 256;

/// The cluster job a registering worker reports, checked: each text field at most [`MAX_CLUSTER_FIELD`] bytes
/// without control characters (they are printed in tables and logs). `None` when the worker reports none.
pub fn cluster_job_from_pb(
    job: Option<&pb::ClusterJob>,
) -> Result<Option<ClusterJobRecord>, String> {
    let Some(job) = job else { return Ok(None) };
    for (field, value) in [
        ("scheduler", &job.scheduler),
        ("job_id", &job.job_id),
        ("node", &job.node),
        ("partition", &job.partition),
        ("gpus", &job.gpus),
    ] {
        if value.len() > MAX_CLUSTER_FIELD || value.chars().any(char::is_control) {
            return Err(format!(
                "cluster_job.{field}: at most {MAX_CLUSTER_FIELD} bytes without control characters accepted"
            ));
        }
    }
    Ok(Some(ClusterJobRecord {
        scheduler: job.scheduler.clone(),
        job_id: job.job_id.clone(),
        node: job.node.clone(),
        partition: job.partition.clone(),
        gpus: job.gpus.clone(),
        restarts: job.restarts,
    }))
}

pub fn cluster_job_to_pb(job: &ClusterJobRecord) -> pb::ClusterJob {
    pb::ClusterJob {
        scheduler: job.scheduler.clone(),
        job_id: job.job_id.clone(),
        node: job.node.clone(),
        partition: job.partition.clone(),
        gpus: job.gpus.clone(),
        restarts: job.restarts,
    }
}

pub fn devices_to_pb(devices: &[DeviceRecord]) -> Vec<pb::Device> {
    devices
        .iter()
        .map(|d| pb::Device {
            ordinal: d.ordinal,
            name: d.name.clone(),
            memory_mib: d.memory_mib,
            compute_capability: d.compute_capability,
        })
        .collect()
}

pub fn state_to_pb(s: JobState) -> pb::JobState {
    match s {
        JobState::Blocked => pb::JobState::Blocked,
        JobState::Ready => pb::JobState::Ready,
        JobState::Leased => pb::JobState::Leased,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

pub fn job_status(view: &JobView) -> pb::JobStatus {
    let job = &view.job;
    pb::JobStatus {
        id: job.id.clone(),
        kind: job.kind.clone(),
        name: job.name.clone(),
        state: state_to_pb(job.state) as i32,
        attempts: job.attempts,
        worker: job.worker.clone().unwrap_or_default(),
        last_error: job.last_error.clone().unwrap_or_default(),
        cached: view.cached,
        deps: job.deps.clone(),
        progress_step: view.progress.step,
        progress_total: view.progress.total,
        last_metric: view.progress.last_metric.clone(),
        last_value: view.progress.last_value,
        waiting_reason: view.waiting_reason.clone().unwrap_or_default(),
    }
}

/// A leased job as the worker receives it: the config bytes as the planner encoded them, typed inputs and
/// placement.
pub fn job_spec_to_pb(job: &JobRecord, config: Vec<u8>) -> pb::JobSpec {
    pb::JobSpec {
        id: job.id.clone(),
        kind: job.kind.clone(),
        name: job.name.clone(),
        deps: job.deps.clone(),
        resources: Some(resources_to_pb(&job.resources)),
        config,
        inputs: job.inputs.iter().map(input_to_pb).collect(),
        placement: job
            .placement
            .as_ref()
            .map(|p| placement_record_to_pb(&job.id, p)),
        replay_of: job.replay_of.clone().unwrap_or_default(),
    }
}

pub fn input_to_pb(r: &InputRef) -> pb::InputRef {
    pb::InputRef {
        role: r.name.clone(),
        sha256: r.sha256.clone(),
        folder: r.folder,
        file_name: r.file_name.clone(),
        size: r.size,
    }
}

pub fn placement_record_to_pb(job_id: &str, p: &PlacementRecord) -> pb::JobPlacement {
    pb::JobPlacement {
        job_id: job_id.to_string(),
        stage: p.stage.clone(),
        fold: p.fold,
        model_stage: p.model_stage.clone(),
        task: p.task.clone(),
        sweep: p
            .sweep
            .as_ref()
            .map(|(stage, parameter, value)| pb::SweepValue {
                stage: stage.clone(),
                parameter: parameter.clone(),
                value: *value,
            }),
        configured: p.configured,
    }
}

pub fn input_ref(job_id: &str, r: &InputRef) -> pb::ArtifactRef {
    pb::ArtifactRef {
        job_id: job_id.to_string(),
        name: r.name.clone(),
        sha256: r.sha256.clone(),
        size: r.size,
        role: "input".into(),
    }
}

pub fn artifact_ref(a: &ArtifactRecord) -> pb::ArtifactRef {
    pb::ArtifactRef {
        job_id: a.job_id.clone(),
        name: a.name.clone(),
        sha256: a.sha256.clone(),
        size: a.size,
        role: a.role.clone(),
    }
}

pub fn experiment_summary(
    record: &ExperimentRecord,
    state: &str,
    jobs: usize,
    jobs_done: usize,
) -> pb::ExperimentSummary {
    pb::ExperimentSummary {
        id: record.id.clone(),
        name: record.name.clone(),
        team: record.team.clone(),
        submitter: record.submitter.clone(),
        state: state.to_string(),
        created_ms: record.created_ms,
        jobs: jobs as u32,
        jobs_done: jobs_done as u32,
    }
}

pub fn worker_info(worker: WorkerView) -> pb::WorkerInfo {
    let record = worker.record;
    pb::WorkerInfo {
        resources: Some(resources_to_pb(&record.resources)),
        devices: devices_to_pb(&record.devices),
        cluster_job: record.cluster_job.as_ref().map(cluster_job_to_pb),
        id: record.id,
        name: record.name,
        kinds: record.kinds,
        last_seen_ms: record.last_seen_ms,
        alive: worker.alive,
        jobs: worker.jobs,
        version: record.version,
        host: record.host,
    }
}

pub fn token_info(token: TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        token_id: token.id,
        role: token.role.label().to_string(),
        name: token.name,
        created_ms: token.created_ms,
        revoked: token.revoked,
    }
}

pub fn experiment_status(view: &ExperimentView) -> pb::ExperimentStatus {
    let r = &view.record;
    pb::ExperimentStatus {
        summary: Some(experiment_summary(
            r,
            view.state,
            view.jobs.len(),
            view.jobs
                .iter()
                .filter(|j| j.job.state == JobState::Succeeded)
                .count(),
        )),
        manifest_sha256: r.manifest_sha256.clone(),
        jobs: view.jobs.iter().map(job_status).collect(),
        inputs: r.inputs.iter().map(|i| input_ref("", i)).collect(),
    }
}

pub fn series_to_pb(series: Vec<MetricSeries>) -> Vec<pb::MetricSeries> {
    series
        .into_iter()
        .map(|s| pb::MetricSeries {
            job_id: s.job_id,
            name: s.name,
            steps: s.steps,
            values: s.values,
            times_ms: s.times_ms,
        })
        .collect()
}

pub fn placement_to_pb(placement: JobPlacement) -> pb::JobPlacement {
    pb::JobPlacement {
        job_id: placement.job_id,
        stage: placement.stage,
        fold: placement.fold,
        ..Default::default()
    }
}

pub fn artifacts_to_pb(artifacts: &[ArtifactRecord]) -> Vec<pb::ArtifactRef> {
    artifacts.iter().map(artifact_ref).collect()
}

pub fn audit_check_to_pb(check: AuditCheck) -> pb::AuditCheck {
    pb::AuditCheck {
        subject: check.subject,
        expected: check.expected,
        actual: check.actual,
        ok: check.ok,
        detail: check.detail,
    }
}

pub fn environment_to_pb(environment: JobEnvironment) -> pb::JobEnvironment {
    pb::JobEnvironment {
        job_id: environment.job_id,
        worker: environment.worker,
        worker_version: environment.worker_version,
        git_commit: environment.git_commit,
        cargo_lock_sha256: environment.cargo_lock_sha256,
        host: environment.host,
        devices: devices_to_pb(&environment.devices),
    }
}

pub fn audit_entry_to_pb(entry: AuditEntry) -> pb::AuditLogEntry {
    pb::AuditLogEntry {
        time_ms: entry.time_ms,
        actor: entry.actor,
        action: entry.action,
        experiment_id: entry.experiment_id.unwrap_or_default(),
        job_id: entry.job_id.unwrap_or_default(),
        detail: entry.detail,
    }
}

pub fn watch_event(experiment_id: &str, update: WatchUpdate) -> pb::WatchEvent {
    match update {
        WatchUpdate::Job {
            job,
            message,
            experiment_state,
        } => pb::WatchEvent {
            experiment_id: experiment_id.to_string(),
            job: Some(job_status(&job)),
            message,
            experiment_done: false,
            experiment_state: experiment_state.to_string(),
        },
        WatchUpdate::Done { state } => pb::WatchEvent {
            experiment_id: experiment_id.to_string(),
            job: None,
            message: format!("experiment {state}"),
            experiment_done: true,
            experiment_state: state.to_string(),
        },
    }
}

/// A replay beside the job it re-ran, as `GetReplay` answers and the dashboard's audit view judges it.
pub fn replay_status(replay_id: &str, comparison: ReplayComparison) -> pb::ReplayStatus {
    let replay = &comparison.replay;
    pb::ReplayStatus {
        replay_id: replay_id.to_string(),
        experiment_id: replay.job.experiments.first().cloned().unwrap_or_default(),
        job_id: comparison.original.id.clone(),
        done: replay.job.state.is_terminal(),
        original_artifacts: artifacts_to_pb(&comparison.original_artifacts),
        replay_artifacts: artifacts_to_pb(&comparison.replay_artifacts),
        replay: Some(job_status(replay)),
        original_series: series_to_pb(comparison.original_series),
        replay_series: series_to_pb(comparison.replay_series),
        original_environment: comparison.original_environment.map(environment_to_pb),
        replay_environment: comparison.replay_environment.map(environment_to_pb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str) -> pb::Device {
        pb::Device {
            ordinal: 0,
            name: name.into(),
            memory_mib: 81559,
            compute_capability: 90,
        }
    }

    #[test]
    fn reported_devices_round_trip() {
        let sent = vec![device("NVIDIA H100 80GB HBM3")];
        let stored = devices_from_pb(&sent).unwrap();
        assert_eq!(stored[0].memory_mib, 81559);
        assert_eq!(devices_to_pb(&stored), sent);
    }

    #[test]
    fn bad_device_reports_are_refused_naming_the_field() {
        let err = devices_from_pb(&[device("ok"), device("bad\nname")]).unwrap_err();
        assert!(err.starts_with("devices[1].name"), "{err}");
        let err = devices_from_pb(&[device(&"x".repeat(MAX_DEVICE_NAME + 1))]).unwrap_err();
        assert!(err.starts_with("devices[0].name"), "{err}");
        let err = devices_from_pb(&vec![device("a"); MAX_DEVICES + 1]).unwrap_err();
        assert!(err.starts_with("devices:"), "{err}");
    }
}
