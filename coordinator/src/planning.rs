//! Turns a submitted manifest into planned jobs with content-hashed ids.
//!
//! Accepted formats:
//! - `toml`: a Tandem experiment manifest. The client (which has the files) runs the planner of
//!   `tandem-experiments` and sends the resulting job graph along; here every job id is re-derived from its
//!   config (`planner::identity`) and the graph is checked, so a client cannot queue work under a forged id.
//! - `jobgraph+json`: an explicit job graph (tests, benchmarks, arbitrary job kinds). A job's id is the SHA-256
//!   of the canonical JSON of its kind, config, dependency ids and input hashes.
//!
//! Either way the same work always gets the same id and is served from the cache.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::Value;

use crate::scheduler::PlannedJob;
use crate::store::{InputRef, Resources, sha256_hex};

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

/// Expands `manifest` (named `manifest_name` in errors) given the submitted input files.
/// For `toml`, `plan` is the client's planned graph (JSON list of `planner::JobSpec`).
pub fn expand(
    format: &str,
    manifest_name: &str,
    manifest: &[u8],
    plan: &[u8],
    inputs: &[InputRef],
) -> Result<Plan, PlanError> {
    match format {
        FORMAT_JOBGRAPH => expand_jobgraph(manifest_name, manifest, inputs),
        FORMAT_TOML => expand_planned(manifest_name, manifest, plan, inputs),
        other => Err(PlanError::UnknownFormat {
            manifest: manifest_name.into(),
            format: other.into(),
        }),
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
    manifest: &[u8],
    plan: &[u8],
    inputs: &[InputRef],
) -> Result<Plan, PlanError> {
    use tandem_experiments::planner::{JobSpec, identity};
    let invalid = |message: String| PlanError::Invalid {
        manifest: manifest_name.into(),
        message,
    };
    let text =
        std::str::from_utf8(manifest).map_err(|e| invalid(format!("not UTF-8 text: {e}")))?;
    let name = text
        .parse::<toml::Table>()
        .map_err(|e| invalid(format!("not TOML: {e}")))?
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or(manifest_name)
        .to_string();
    if plan.is_empty() {
        return Err(invalid(
            "a toml manifest is submitted with its planned job graph (use `tandem submit`)".into(),
        ));
    }
    let specs: Vec<JobSpec> = serde_json::from_slice(plan).map_err(|e| {
        invalid(format!(
            "planned job graph: line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    if specs.is_empty() {
        return Err(invalid("planned job graph: no jobs".into()));
    }
    let by_sha: HashMap<String, &InputRef> = inputs
        .iter()
        .map(|r| (format!("sha256:{}", r.sha256), r))
        .collect();
    let mut jobs = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let (_, id) = identity(&spec.config);
        if id != spec.id {
            return Err(invalid(format!(
                "planned job graph: jobs[{i}] ({}).id: {} does not match its config (expected {id}); re-plan with this version",
                spec.label, spec.id
            )));
        }
        let config = serde_json::to_vec(spec).map_err(|e| invalid(format!("jobs[{i}]: {e}")))?;
        jobs.push(PlannedJob {
            id: spec.id.clone(),
            kind: spec.kind.as_str().to_string(),
            name: spec.label.clone(),
            deps: spec.deps.clone(),
            resources: Resources {
                gpus: spec.resources.gpus,
                gpu_memory_mib: spec.resources.gpu_memory_gb as u64 * 1024,
                cpu_threads: spec.resources.cpu_threads,
            },
            config,
            // The files the client sent that this job reads (by digest); others stay with the worker.
            inputs: spec
                .inputs
                .values()
                .filter_map(|r| by_sha.get(&r.sha256).map(|i| (*i).clone()))
                .collect(),
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
        }]
    }

    #[test]
    fn ids_are_content_hashes_independent_of_names_and_key_order() {
        let a = br#"{"name":"e","jobs":[{"name":"p","kind":"test.emit","config":{"a":1,"b":2},"inputs":["data.csv"]},
            {"name":"c","kind":"test.emit","deps":["p"]}]}"#;
        let b = br#"{"name":"other","jobs":[{"name":"parent","kind":"test.emit","config":{"b":2,"a":1},"inputs":["data.csv"]},
            {"name":"child","kind":"test.emit","deps":["parent"]}]}"#;
        let pa = expand(FORMAT_JOBGRAPH, "a.json", a, &[], &input()).unwrap();
        let pb = expand(FORMAT_JOBGRAPH, "b.json", b, &[], &input()).unwrap();
        assert_eq!(pa.jobs[0].id, pb.jobs[0].id);
        assert_eq!(pa.jobs[1].id, pb.jobs[1].id);
        assert_eq!(pa.jobs[1].deps, vec![pa.jobs[0].id.clone()]);
        // A different input changes the parent and, through it, the child.
        let other = vec![InputRef {
            name: "data.csv".into(),
            sha256: sha256_hex(b"y"),
            size: 1,
        }];
        let pc = expand(FORMAT_JOBGRAPH, "a.json", a, &[], &other).unwrap();
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
        let manifest = b"name = \"thesis\"\n";
        let good = serde_json::to_vec(&vec![report_job("thesis")]).unwrap();
        let plan = expand(FORMAT_TOML, "m.toml", manifest, &good, &[]).unwrap();
        assert_eq!(plan.name, "thesis");
        assert_eq!(plan.jobs[0].kind, "report");
        assert_eq!(plan.jobs[0].resources.cpu_threads, 1);
        let mut forged = report_job("thesis");
        forged.id = report_job("other").id;
        let bad = serde_json::to_vec(&vec![forged]).unwrap();
        let err = expand(FORMAT_TOML, "m.toml", manifest, &bad, &[])
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
            let err = expand(FORMAT_JOBGRAPH, "m.json", manifest, &[], &input())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(needle) && err.starts_with("m.json: "),
                "{err} lacks {needle}"
            );
        }
        let err = expand("yaml", "m.yaml", b"", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("jobgraph+json"), "{err}");
        let err = expand(FORMAT_TOML, "m.toml", b"name = \"x\"", b"", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("planned job graph"), "{err}");
    }
}
