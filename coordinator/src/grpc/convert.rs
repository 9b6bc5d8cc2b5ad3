//! Conversions between store/scheduler records and protocol messages.

use tandem_proto as pb;

use crate::scheduler::{ExperimentView, JobView};
use crate::store::{ArtifactRecord, DeviceRecord, InputRef, JobState, Resources};

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

pub fn experiment_status(view: &ExperimentView) -> pb::ExperimentStatus {
    let r = &view.record;
    pb::ExperimentStatus {
        summary: Some(pb::ExperimentSummary {
            id: r.id.clone(),
            name: r.name.clone(),
            team: r.team.clone(),
            submitter: r.submitter.clone(),
            state: view.state.to_string(),
            created_ms: r.created_ms,
            jobs: view.jobs.len() as u32,
            jobs_done: view
                .jobs
                .iter()
                .filter(|j| j.job.state == JobState::Succeeded)
                .count() as u32,
        }),
        manifest_sha256: r.manifest_sha256.clone(),
        jobs: view.jobs.iter().map(job_status).collect(),
        inputs: r.inputs.iter().map(|i| input_ref("", i)).collect(),
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
