//! The job contract on the wire: a planned [`JobSpec`] is encoded once, by the client that planned it, into
//! `tandem.v1.JobSpec` (typed fields; the config as canonical JSON bytes whose SHA-256 the job id covers), kept
//! as received by the coordinator (which checks the id by hashing those bytes, without decoding them), and
//! decoded once by the worker that runs it.

use serde::de::DeserializeOwned;
use tandem_proto as pb;

use super::job::{InputRef, JobConfig, JobKind, JobSpec, SweepPoint, identity_of_bytes};
use crate::manifest::ResourceRequest;
use crate::manifest::hash::canonical_json;

/// Why a wire job spec is not a planner job.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("job {job}: {field}: {message}")]
    Field {
        job: String,
        field: &'static str,
        message: String,
    },
}

/// The canonical JSON bytes of a config: what is hashed into the job id and sent.
pub fn config_bytes(config: &JobConfig) -> Vec<u8> {
    let value = serde_json::to_value(config).expect("a job config serialises to JSON");
    canonical_json(&value).into_bytes()
}

fn enum_name<T: serde::Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => unreachable!("a unit enum serialises to a string, got {other:?}"),
    }
}

fn parse_enum<T: DeserializeOwned>(
    job: &str,
    field: &'static str,
    text: &str,
) -> Result<T, WireError> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|e| {
        WireError::Field {
            job: job.to_string(),
            field,
            message: format!("{text:?}: {e}"),
        }
    })
}

fn optional_enum<T: DeserializeOwned>(
    job: &str,
    field: &'static str,
    text: &str,
) -> Result<Option<T>, WireError> {
    match text {
        "" => Ok(None),
        _ => parse_enum(job, field, text).map(Some),
    }
}

/// An input as sent: `role` is the job's name for it (or the manifest field, for an experiment's inputs).
pub fn input_to_pb(role: &str, input: &InputRef) -> pb::InputRef {
    pb::InputRef {
        role: role.to_string(),
        sha256: input.sha256_hex().to_string(),
        folder: input.folder,
        file_name: input.file_name.clone(),
        size: input.size,
    }
}

/// Encodes a planned job for submission.
pub fn encode(spec: &JobSpec) -> pb::JobSpec {
    pb::JobSpec {
        id: spec.id.clone(),
        kind: spec.kind.as_str().to_string(),
        name: spec.label.clone(),
        deps: spec.deps.clone(),
        resources: Some(pb::Resources {
            gpus: spec.resources.gpus,
            gpu_memory_mib: u64::from(spec.resources.gpu_memory_gb) * 1024,
            cpu_threads: spec.resources.cpu_threads,
        }),
        config: config_bytes(&spec.config),
        inputs: spec
            .inputs
            .iter()
            .map(|(role, input)| input_to_pb(role, input))
            .collect(),
        placement: Some(pb::JobPlacement {
            job_id: spec.id.clone(),
            stage: spec.stage.map(enum_name).unwrap_or_default(),
            fold: spec.fold.map(|f| f as u32),
            model_stage: spec.model_stage.map(enum_name).unwrap_or_default(),
            task: spec.task.map(enum_name).unwrap_or_default(),
            sweep: spec.sweep.map(|point| pb::SweepValue {
                stage: enum_name(point.stage),
                parameter: enum_name(point.parameter),
                value: point.value,
            }),
            configured: spec.configured,
        }),
        replay_of: String::new(),
    }
}

/// Decodes a leased job: its config is parsed (once), and its id is checked against the kind and config bytes.
pub fn decode(job: &pb::JobSpec) -> Result<JobSpec, WireError> {
    let field = |field: &'static str, message: String| WireError::Field {
        job: job.id.clone(),
        field,
        message,
    };
    let kind = JobKind::parse(&job.kind).ok_or_else(|| {
        field(
            "kind",
            format!(
                "{:?} is not a planner kind (accepted: data-prep, train, eval, report)",
                job.kind
            ),
        )
    })?;
    let config: JobConfig = serde_json::from_slice(&job.config).map_err(|e| {
        field(
            "config",
            format!("line {} column {}: {e}", e.line(), e.column()),
        )
    })?;
    if config.kind() != kind {
        return Err(field(
            "config",
            format!(
                "a config of kind {} in a job of kind {}",
                config.kind().as_str(),
                kind.as_str()
            ),
        ));
    }
    // A replay carries its own id; the config is the replayed job's, whose id it must give.
    let planned_id = match job.replay_of.as_str() {
        "" => &job.id,
        original => original,
    };
    let (config_hash, id) = identity_of_bytes(kind, &job.config);
    if id != planned_id {
        return Err(field(
            "id",
            format!("does not match the kind and config (expected {id})"),
        ));
    }
    let resources = job.resources.unwrap_or_default();
    let placement = job.placement.clone().unwrap_or_default();
    let sweep = match &placement.sweep {
        Some(point) => Some(SweepPoint {
            stage: parse_enum(&job.id, "placement.sweep.stage", &point.stage)?,
            parameter: parse_enum(&job.id, "placement.sweep.parameter", &point.parameter)?,
            value: point.value,
        }),
        None => None,
    };
    Ok(JobSpec {
        id: planned_id.to_string(),
        kind,
        label: job.name.clone(),
        deps: job.deps.clone(),
        config_hash,
        resources: ResourceRequest {
            gpus: resources.gpus,
            gpu_memory_gb: (resources.gpu_memory_mib / 1024) as u32,
            cpu_threads: resources.cpu_threads,
        },
        stage: optional_enum(&job.id, "placement.stage", &placement.stage)?,
        fold: placement.fold.map(|f| f as usize),
        model_stage: optional_enum(&job.id, "placement.model_stage", &placement.model_stage)?,
        task: optional_enum(&job.id, "placement.task", &placement.task)?,
        sweep,
        configured: placement.configured,
        inputs: job
            .inputs
            .iter()
            .map(|input| {
                (
                    input.role.clone(),
                    InputRef {
                        path: Default::default(),
                        sha256: format!("sha256:{}", input.sha256),
                        folder: input.folder,
                        file_name: input.file_name.clone(),
                        size: input.size,
                    },
                )
            })
            .collect(),
        config,
    })
}
