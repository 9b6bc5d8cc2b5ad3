//! Validation of a planned job graph before it is queued.

use std::collections::HashMap;

use super::api::PlannedJob;
use super::error::{SchedulerError, SchedulerResult};
use crate::store::JobState;

/// Checks a planned graph: unique non-empty ids and kinds, dependencies present in the graph (or already
/// succeeded), no cycles. Errors name the job and field.
pub fn validate_graph(
    jobs: &[PlannedJob],
    existing: impl Fn(&str) -> Option<JobState>,
) -> SchedulerResult<()> {
    let mut index = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        if job.id.is_empty() {
            return Err(SchedulerError::InvalidArgument(format!(
                "jobs[{i}].id: must not be empty"
            )));
        }
        if job.kind.is_empty() {
            return Err(SchedulerError::InvalidArgument(format!(
                "jobs[{i}] ({}).kind: must not be empty",
                job.name
            )));
        }
        if index.insert(job.id.as_str(), i).is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "jobs[{i}].id: duplicate job id {}",
                job.id
            )));
        }
    }
    for (i, job) in jobs.iter().enumerate() {
        for (d, dep) in job.deps.iter().enumerate() {
            if !index.contains_key(dep.as_str()) && existing(dep) != Some(JobState::Succeeded) {
                return Err(SchedulerError::InvalidArgument(format!(
                    "jobs[{i}] ({}).deps[{d}]: unknown job {dep} (must be a job of this experiment)",
                    job.name
                )));
            }
        }
    }
    // Kahn's algorithm over the in-graph edges.
    let mut indegree = vec![0usize; jobs.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    for (i, job) in jobs.iter().enumerate() {
        for dep in &job.deps {
            if let Some(&d) = index.get(dep.as_str()) {
                indegree[i] += 1;
                children[d].push(i);
            }
        }
    }
    let mut queue: Vec<usize> = (0..jobs.len()).filter(|&i| indegree[i] == 0).collect();
    let mut seen = 0;
    while let Some(i) = queue.pop() {
        seen += 1;
        for &c in &children[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                queue.push(c);
            }
        }
    }
    if seen != jobs.len() {
        let stuck = (0..jobs.len())
            .find(|&i| indegree[i] > 0)
            .expect("a job in the cycle");
        return Err(SchedulerError::InvalidArgument(format!(
            "jobs[{stuck}] ({}).deps: dependency cycle",
            jobs[stuck].name
        )));
    }
    Ok(())
}
