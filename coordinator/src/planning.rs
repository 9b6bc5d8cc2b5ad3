//! Turns a submitted manifest into planned jobs with content-hashed ids.
//!
//! Accepted formats:
//! - `toml`: a Tandem experiment manifest. The client (which has the files) runs the planner of
//!   `tandem-experiments` and sends the resulting job graph along (`tandem.v1.JobSpec`, encoded once by
//!   `planner::wire`); here every job id is re-derived from its kind and config bytes and the graph is checked,
//!   so a client cannot queue work under a forged id.
//! - `jobgraph+json`: an explicit job graph (tests, benchmarks, arbitrary job kinds). A job's id is the SHA-256
//!   of the canonical JSON of its kind, config, dependency ids and input hashes.
//!
//! Either way the same work always gets the same id and is served from the cache.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use serde_json::Value;
use tandem_experiments::planner::inputs::{is_file_name, is_sha256_hex};
use tandem_proto as pb;

use crate::scheduler::PlannedJob;
use crate::store::{InputRef, PlacementRecord, Resources, sha256_hex};

pub const FORMAT_JOBGRAPH: &str = "jobgraph+json";
pub const FORMAT_TOML: &str = "toml";

/// Version tag mixed into job-graph job ids (change it when what a job id means changes).
const JOBGRAPH_CODE_VERSION: &str = "tandem-jobgraph/1";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{manifest}: {message}")]
    Invalid { manifest: String, message: String },
    #[error(
        "{manifest}: unknown manifest format {format:?}; accepted: {FORMAT_TOML}, {FORMAT_JOBGRAPH}"
    )]
    UnknownFormat { manifest: String, format: String },
}

/// An expanded manifest.
#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    pub jobs: Vec<PlannedJob>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphFile {
    name: String,
    /// Input files, relative to the manifest's folder (read and sent by the CLI).
    #[serde(default)]
    #[allow(dead_code)]
    files: Vec<String>,
    jobs: Vec<GraphJob>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphJob {
    name: String,
    kind: String,
    #[serde(default)]
    deps: Vec<String>,
    #[serde(default)]
    resources: Option<ResourcesIn>,
    #[serde(default)]
    config: Value,
    #[serde(default)]
    inputs: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesIn {
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    gpu_memory_mib: u64,
    #[serde(default)]
    cpu_threads: u32,
}

/// Expands `manifest` (named `manifest_name` in errors) given the experiment's input refs (their blobs are
/// checked by the scheduler). For `toml`, `jobs` is the client's planned graph and `experiment_name` the
/// manifest's name as the client read it; the manifest bytes are kept for audits, not parsed again.
pub fn expand(
    format: &str,
    manifest_name: &str,
    manifest: &[u8],
    experiment_name: &str,
    jobs: &[pb::JobSpec],
    inputs: &[InputRef],
) -> Result<Plan, PlanError> {
    match format {
        FORMAT_JOBGRAPH => expand_jobgraph(manifest_name, manifest, inputs),
        FORMAT_TOML => expand_planned(manifest_name, experiment_name, jobs, inputs),
        other => Err(PlanError::UnknownFormat {
            manifest: manifest_name.into(),
            format: other.into(),
        }),
    }
}

/// The submitted input refs as store records, each checked: a hex digest, a unique non-empty name, and a file
/// name that is one path component (or none, for a folder).
pub fn input_refs(manifest_name: &str, refs: &[pb::InputRef]) -> Result<Vec<InputRef>, PlanError> {
    let mut names = HashSet::new();
    refs.iter()
        .enumerate()
        .map(|(i, r)| {
            let invalid = |message: String| PlanError::Invalid {
                manifest: manifest_name.into(),
                message: format!("inputs[{i}] ({}).{message}", r.role),
            };
            if r.role.is_empty() || r.role.contains('\0') || !names.insert(r.role.as_str()) {
                return Err(invalid("role: empty, invalid or duplicate".into()));
            }
            if !is_sha256_hex(&r.sha256) {
                return Err(invalid(format!(
                    "sha256: {:?} is not 64 lower-case hex digits",
                    r.sha256
                )));
            }
            let file_name_ok = match r.folder {
                true => r.file_name.is_empty(),
                false => is_file_name(&r.file_name),
            };
            if !file_name_ok {
                return Err(invalid(format!(
                    "file_name: {:?} (accepted: one path component for a file, empty for a folder)",
                    r.file_name
                )));
            }
            Ok(input_ref(r.role.clone(), r))
        })
        .collect()
}

fn input_ref(name: String, r: &pb::InputRef) -> InputRef {
    InputRef {
        name,
        sha256: r.sha256.clone(),
        size: r.size,
        folder: r.folder,
        file_name: r.file_name.clone(),
    }
}

/// Where a job-graph job sits, read from its config's top-level `stage` and `fold` keys; `None` when the
/// config names no stage.
pub fn placement_from_config(config: &Value) -> Option<PlacementRecord> {
    let stage = config.get("stage")?.as_str().filter(|s| !s.is_empty())?;
    Some(PlacementRecord {
        stage: stage.to_string(),
        fold: config
            .get("fold")
            .and_then(Value::as_u64)
            .and_then(|f| u32::try_from(f).ok()),
        ..PlacementRecord::default()
    })
}

/// A wire placement as a record (and back, in `grpc::convert`).
pub fn placement_record(p: &pb::JobPlacement) -> PlacementRecord {
    PlacementRecord {
        stage: p.stage.clone(),
        fold: p.fold,
        model_stage: p.model_stage.clone(),
        task: p.task.clone(),
        sweep: p
            .sweep
            .as_ref()
            .map(|s| (s.stage.clone(), s.parameter.clone(), s.value)),
        configured: p.configured,
    }
}

/// JSON with object keys sorted at every level, so equal values hash equally.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let ordered: BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, sorted(v))).collect();
                let mut out = serde_json::Map::new();
                for (k, v) in ordered {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // Building the map in key order gives sorted output whether or not serde_json preserves order.
    serde_json::to_string(&sorted(value)).unwrap_or_default()
}

fn expand_jobgraph(
    manifest_name: &str,
    manifest: &[u8],
    inputs: &[InputRef],
) -> Result<Plan, PlanError> {
    let invalid = |message: String| PlanError::Invalid {
        manifest: manifest_name.into(),
        message,
    };
    let graph: GraphFile = serde_json::from_slice(manifest)
        .map_err(|e| invalid(format!("line {} column {}: {e}", e.line(), e.column())))?;
    if graph.name.trim().is_empty() {
        return Err(invalid("name: must not be empty".into()));
    }
    if graph.jobs.is_empty() {
        return Err(invalid("jobs: an experiment needs at least one job".into()));
    }
    let mut by_name = HashMap::new();
    for (i, job) in graph.jobs.iter().enumerate() {
        if job.name.trim().is_empty() {
            return Err(invalid(format!("jobs[{i}].name: must not be empty")));
        }
        if job.kind.trim().is_empty() {
            return Err(invalid(format!(
                "jobs[{i}] ({}).kind: must not be empty",
                job.name
            )));
        }
        if by_name.insert(job.name.as_str(), i).is_some() {
            return Err(invalid(format!(
                "jobs[{i}].name: duplicate job name {:?}",
                job.name
            )));
        }
    }
    let input_by_name: HashMap<&str, &InputRef> =
        inputs.iter().map(|r| (r.name.as_str(), r)).collect();
    for (i, job) in graph.jobs.iter().enumerate() {
        for (d, dep) in job.deps.iter().enumerate() {
            if !by_name.contains_key(dep.as_str()) {
                return Err(invalid(format!(
                    "jobs[{i}] ({}).deps[{d}]: unknown job {dep:?}; known jobs: {}",
                    job.name,
                    graph
                        .jobs
                        .iter()
                        .map(|j| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        for (k, input) in job.inputs.iter().enumerate() {
            if !input_by_name.contains_key(input.as_str()) {
                return Err(invalid(format!(
                    "jobs[{i}] ({}).inputs[{k}]: {input:?} is not among the submitted files ({})",
                    job.name,
                    inputs
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    // Ids in dependency order (a cycle leaves jobs without an id).
    let mut ids: Vec<Option<String>> = vec![None; graph.jobs.len()];
    loop {
        let mut progressed = false;
        for (i, job) in graph.jobs.iter().enumerate() {
            if ids[i].is_some() {
                continue;
            }
            let dep_ids: Option<Vec<String>> = job
                .deps
                .iter()
                .map(|d| ids[by_name[d.as_str()]].clone())
                .collect();
            let Some(dep_ids) = dep_ids else { continue };
            let input_hashes: Vec<Value> = job
                .inputs
                .iter()
                .map(|n| serde_json::json!([n, input_by_name[n.as_str()].sha256]))
                .collect();
            let identity = serde_json::json!({
                "code": JOBGRAPH_CODE_VERSION,
                "kind": job.kind,
                "config": job.config,
                "deps": dep_ids,
                "inputs": input_hashes,
            });
            ids[i] = Some(sha256_hex(canonical_json(&identity).as_bytes()));
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    if let Some(i) = ids.iter().position(Option::is_none) {
        return Err(invalid(format!(
            "jobs[{i}] ({}).deps: dependency cycle",
            graph.jobs[i].name
        )));
    }
    let jobs = graph
        .jobs
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let resources = job.resources.as_ref().map_or(
                Resources {
                    gpus: 0,
                    gpu_memory_mib: 0,
                    cpu_threads: 1,
                },
                |r| Resources {
                    gpus: r.gpus,
                    gpu_memory_mib: r.gpu_memory_mib,
                    cpu_threads: r.cpu_threads,
                },
            );
            PlannedJob {
                id: ids[i].clone().expect("all ids computed"),
                kind: job.kind.clone(),
                name: job.name.clone(),
                deps: job
                    .deps
                    .iter()
                    .map(|d| ids[by_name[d.as_str()]].clone().expect("computed"))
                    .collect(),
                resources,
                config: canonical_json(&job.config).into_bytes(),
                placement: placement_from_config(&job.config),
                inputs: job
                    .inputs
                    .iter()
                    .map(|n| (*input_by_name[n.as_str()]).clone())
                    .collect(),
            }
        })
        .collect();
    Ok(Plan {
        name: graph.name,
        jobs,
    })
}

fn expand_planned(
    manifest_name: &str,
    experiment_name: &str,
    specs: &[pb::JobSpec],
    inputs: &[InputRef],
) -> Result<Plan, PlanError> {
    use tandem_experiments::planner::{JobKind, identity_of_bytes};
    let invalid = |message: String| PlanError::Invalid {
        manifest: manifest_name.into(),
        message,
    };
    if specs.is_empty() {
        return Err(invalid(
            "a toml manifest is submitted with its planned job graph (use `tandem submit`)".into(),
        ));
    }
    let name = match experiment_name.trim() {
        "" => manifest_name.to_string(),
        name => name.to_string(),
    };
    let known: HashSet<&str> = inputs.iter().map(|r| r.sha256.as_str()).collect();
    let mut jobs = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let kind = JobKind::parse(&spec.kind).ok_or_else(|| {
            invalid(format!(
                "planned job graph: jobs[{i}] ({}).kind: {:?} is not a planner kind (accepted: data-prep, train, eval, report)",
                spec.name, spec.kind
            ))
        })?;
        // The id covers the exact config bytes: checked by hashing them, without decoding them.
        let (_, id) = identity_of_bytes(kind, &spec.config);
        if id != spec.id {
            return Err(invalid(format!(
                "planned job graph: jobs[{i}] ({}).id: {} does not match its config (expected {id}); re-plan with this version",
                spec.name, spec.id
            )));
        }
        let job_inputs: Vec<InputRef> = input_refs(manifest_name, &spec.inputs)
            .map_err(|e| invalid(format!("planned job graph: jobs[{i}] ({}): {e}", spec.name)))?;
        if let Some(unknown) = job_inputs
            .iter()
            .find(|r| !known.contains(r.sha256.as_str()))
        {
            return Err(invalid(format!(
                "planned job graph: jobs[{i}] ({}).inputs: {} ({}) is not among the experiment's inputs",
                spec.name, unknown.name, unknown.sha256
            )));
        }
        let resources = spec.resources.unwrap_or_default();
        jobs.push(PlannedJob {
            id: spec.id.clone(),
            kind: kind.as_str().to_string(),
            name: spec.name.clone(),
            deps: spec.deps.clone(),
            resources: Resources {
                gpus: resources.gpus,
                gpu_memory_mib: resources.gpu_memory_mib,
                cpu_threads: resources.cpu_threads,
            },
            config: spec.config.clone(),
            placement: spec.placement.as_ref().map(placement_record),
            inputs: job_inputs,
        });
    }
    Ok(Plan { name, jobs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> Vec<InputRef> {
        vec![InputRef {
            name: "data.csv".into(),
            sha256: sha256_hex(b"x"),
            size: 1,
            folder: false,
            file_name: "data.csv".into(),
        }]
    }

    #[test]
    fn ids_are_content_hashes_independent_of_names_and_key_order() {
        let a = br#"{"name":"e","jobs":[{"name":"p","kind":"test.emit","config":{"a":1,"b":2},"inputs":["data.csv"]},
            {"name":"c","kind":"test.emit","deps":["p"]}]}"#;
        let b = br#"{"name":"other","jobs":[{"name":"parent","kind":"test.emit","config":{"b":2,"a":1},"inputs":["data.csv"]},
            {"name":"child","kind":"test.emit","deps":["parent"]}]}"#;
        let pa = expand(FORMAT_JOBGRAPH, "a.json", a, "", &[], &input()).unwrap();
        let pb = expand(FORMAT_JOBGRAPH, "b.json", b, "", &[], &input()).unwrap();
        assert_eq!(pa.jobs[0].id, pb.jobs[0].id);
        assert_eq!(pa.jobs[1].id, pb.jobs[1].id);
        assert_eq!(pa.jobs[1].deps, vec![pa.jobs[0].id.clone()]);
        // A different input changes the parent and, through it, the child.
        let other = vec![InputRef {
            name: "data.csv".into(),
            sha256: sha256_hex(b"y"),
            size: 1,
            folder: false,
            file_name: "data.csv".into(),
        }];
        let pc = expand(FORMAT_JOBGRAPH, "a.json", a, "", &[], &other).unwrap();
        assert_ne!(pa.jobs[0].id, pc.jobs[0].id);
        assert_ne!(pa.jobs[1].id, pc.jobs[1].id);
    }

    fn report_job(experiment: &str) -> tandem_experiments::planner::JobSpec {
        use tandem_experiments::manifest::ResourceRequest;
        use tandem_experiments::planner::{JobConfig, JobKind, JobSpec, ReportConfig, identity};
        let config = JobConfig::Report(ReportConfig {
            experiment: experiment.into(),
            evals: vec![],
            metrics: vec![],
            cells: vec![],
        });
        let (config_hash, id) = identity(&config);
        JobSpec {
            id,
            kind: JobKind::Report,
            label: "report".into(),
            deps: vec![],
            config_hash,
            resources: ResourceRequest {
                gpus: 0,
                gpu_memory_gb: 0,
                cpu_threads: 1,
            },
            stage: None,
            fold: None,
            model_stage: None,
            task: None,
            sweep: None,
            configured: true,
            inputs: Default::default(),
            config,
        }
    }

    #[test]
    fn planned_graphs_are_accepted_only_with_ids_matching_their_configs() {
        use tandem_experiments::planner::wire;
        let manifest = b"name = \"thesis\"\n";
        let good = vec![wire::encode(&report_job("thesis"))];
        let plan = expand(FORMAT_TOML, "m.toml", manifest, "thesis", &good, &[]).unwrap();
        assert_eq!(plan.name, "thesis");
        assert_eq!(plan.jobs[0].kind, "report");
        assert_eq!(plan.jobs[0].resources.cpu_threads, 1);
        assert_eq!(plan.jobs[0].config, good[0].config, "kept as sent");
        let mut forged = good.clone();
        forged[0].id = report_job("other").id;
        let err = expand(FORMAT_TOML, "m.toml", manifest, "thesis", &forged, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("jobs[0] (report).id") && err.contains("does not match"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"name":"e","jobs":[{"name":"a","kind":"k","deps":["zz"]}]}"#, "jobs[0] (a).deps[0]"),
            (br#"{"name":"e","jobs":[{"name":"a","kind":""}]}"#, "jobs[0] (a).kind"),
            (br#"{"name":"e","jobs":[{"name":"a","kind":"k","inputs":["nope.csv"]}]}"#, "jobs[0] (a).inputs[0]"),
            (br#"{"name":"e","jobs":[{"name":"a","kind":"k","deps":["b"]},{"name":"b","kind":"k","deps":["a"]}]}"#, "cycle"),
            (b"{\"name\":\"e\",\n\"jobz\":[]}", "line 2"),
        ];
        for (manifest, needle) in cases {
            let err = expand(FORMAT_JOBGRAPH, "m.json", manifest, "", &[], &input())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(needle) && err.starts_with("m.json: "),
                "{err} lacks {needle}"
            );
        }
        let err = expand("yaml", "m.yaml", b"", "", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("jobgraph+json"), "{err}");
        let err = expand(FORMAT_TOML, "m.toml", b"name = \"x\"", "x", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("planned job graph"), "{err}");
    }

    #[test]
    fn placements_read_the_top_level_stage_and_fold() {
        let p = placement_from_config(&serde_json::json!({"stage": "stage2", "fold": 3})).unwrap();
        assert_eq!((p.stage.as_str(), p.fold), ("stage2", Some(3)));
        let p =
            placement_from_config(&serde_json::json!({"stage": "stage1", "fold": null})).unwrap();
        assert_eq!((p.stage.as_str(), p.fold), ("stage1", None));
        assert!(placement_from_config(&serde_json::json!({"steps": 3})).is_none());
    }

    #[test]
    fn input_refs_refuse_bad_digests_names_and_file_names() {
        let good = pb::InputRef {
            role: "model".into(),
            sha256: sha256_hex(b"x"),
            folder: false,
            file_name: "m.gguf".into(),
            size: 1,
        };
        assert_eq!(
            input_refs("m", std::slice::from_ref(&good)).unwrap()[0].file_name,
            "m.gguf"
        );
        for (bad, needle) in [
            (
                pb::InputRef {
                    sha256: "abc".into(),
                    ..good.clone()
                },
                "sha256",
            ),
            (
                pb::InputRef {
                    file_name: "../m.gguf".into(),
                    ..good.clone()
                },
                "file_name",
            ),
            (
                pb::InputRef {
                    folder: true,
                    ..good.clone()
                },
                "file_name",
            ),
            (
                pb::InputRef {
                    role: String::new(),
                    ..good.clone()
                },
                "role",
            ),
        ] {
            let err = input_refs("m", &[bad]).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let err = input_refs("m", &[good.clone(), good])
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate"), "{err}");
    }
}
