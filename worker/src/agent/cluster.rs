//! The cluster scheduler's job a worker runs in, read from the environment Slurm gives a job step (or the
//! downward-API variables `tandem launch k8s` puts in a pod): reported at registration so `tandem workers` and
//! `tandem launch status` can say which job each worker is.

use tandem_proto as pb;

/// The cluster job this process runs in, from variables read through `var`: Slurm's `SLURM_*`, else the pod
/// `TANDEM_K8S_POD` on node `TANDEM_K8S_NODE`; `None` outside both.
pub fn cluster_job(var: impl Fn(&str) -> Option<String>) -> Option<pb::ClusterJob> {
    if let Some(job) = slurm_job(&var) {
        return Some(job);
    }
    let pod = var("TANDEM_K8S_POD").filter(|p| !p.trim().is_empty())?;
    Some(pb::ClusterJob {
        scheduler: "kubernetes".into(),
        job_id: pod.trim().to_string(),
        node: var("TANDEM_K8S_NODE")
            .unwrap_or_default()
            .trim()
            .to_string(),
        gpus: var("CUDA_VISIBLE_DEVICES")
            .unwrap_or_default()
            .trim()
            .to_string(),
        ..Default::default()
    })
}

/// The Slurm job this process runs in, from `SLURM_*` variables read through `var`; `None` outside Slurm.
///
/// An array element is named `ARRAYJOB_TASK` (as `squeue -r` and `scancel` name it); the GPUs are Slurm's
/// `SLURM_JOB_GPUS` (physical indices), else `CUDA_VISIBLE_DEVICES`, else `SLURM_STEP_GPUS`.
fn slurm_job(var: &impl Fn(&str) -> Option<String>) -> Option<pb::ClusterJob> {
    let get = |name: &str| {
        var(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let job_id = get("SLURM_JOB_ID")?;
    let job_id = match (get("SLURM_ARRAY_JOB_ID"), get("SLURM_ARRAY_TASK_ID")) {
        (Some(array), Some(task)) => format!("{array}_{task}"),
        _ => job_id,
    };
    let gpus = get("SLURM_JOB_GPUS")
        .or_else(|| get("CUDA_VISIBLE_DEVICES"))
        .or_else(|| get("SLURM_STEP_GPUS"))
        .unwrap_or_default();
    Some(pb::ClusterJob {
        scheduler: "slurm".into(),
        job_id,
        node: get("SLURMD_NODENAME").unwrap_or_default(),
        partition: get("SLURM_JOB_PARTITION").unwrap_or_default(),
        gpus,
        restarts: get("SLURM_RESTART_COUNT")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn outside_slurm_there_is_no_cluster_job() {
        assert_eq!(cluster_job(env(&[("CUDA_VISIBLE_DEVICES", "0")])), None);
        assert_eq!(cluster_job(env(&[("SLURM_JOB_ID", " ")])), None);
    }

    #[test]
    fn an_array_element_is_named_as_squeue_names_it() {
        let job = cluster_job(env(&[
            ("SLURM_JOB_ID", "1240"),
            ("SLURM_ARRAY_JOB_ID", "1237"),
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURMD_NODENAME", "gpu-node-7"),
            ("SLURM_JOB_PARTITION", "a100"),
            ("SLURM_JOB_GPUS", "2,3"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
            ("SLURM_RESTART_COUNT", "2"),
        ]))
        .unwrap();
        assert_eq!(
            job,
            pb::ClusterJob {
                scheduler: "slurm".into(),
                job_id: "1237_3".into(),
                node: "gpu-node-7".into(),
                partition: "a100".into(),
                gpus: "2,3".into(),
                restarts: 2,
            }
        );
    }

    #[test]
    fn a_plain_job_without_gpus_or_restarts() {
        let job = cluster_job(env(&[
            ("SLURM_JOB_ID", "77"),
            ("SLURM_RESTART_COUNT", "not a number"),
        ]))
        .unwrap();
        assert_eq!(
            (job.job_id.as_str(), job.gpus.as_str(), job.restarts),
            ("77", "", 0)
        );
    }

    #[test]
    fn a_pod_names_itself_and_its_node() {
        let job = cluster_job(env(&[
            ("TANDEM_K8S_POD", "tandem-workers-2-x7k2p"),
            ("TANDEM_K8S_NODE", "gpu-pool-3"),
        ]))
        .unwrap();
        assert_eq!(
            (
                job.scheduler.as_str(),
                job.job_id.as_str(),
                job.node.as_str()
            ),
            ("kubernetes", "tandem-workers-2-x7k2p", "gpu-pool-3")
        );
    }
}
