//! Queue order inside one submission: the job with the longest chain of work still to come after it goes
//! first (critical path first), ties in plan order. Stage-1 training is leased before the evaluations that
//! could run beside it, and the next stage-2 fold before the finished folds' evaluations, which shortens an
//! experiment on a few workers without changing what runs.

use std::collections::HashMap;

use super::PlannedJob;

/// Each job's rank in queue order (0 goes first): by descending height, then by position in `jobs`. A job's
/// height is the number of jobs on the longest dependency chain that starts at it and stays inside `jobs`
/// (a job nothing depends on has height 1). Dependencies outside `jobs` (already known jobs) are ignored.
pub fn critical_path_ranks(jobs: &[PlannedJob]) -> HashMap<String, u64> {
    let index: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.id.as_str(), i))
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    let mut pending_deps = vec![0usize; jobs.len()];
    for (i, job) in jobs.iter().enumerate() {
        for dep in &job.deps {
            if let Some(&d) = index.get(dep.as_str()) {
                dependents[d].push(i);
                pending_deps[i] += 1;
            }
        }
    }
    // Kahn's order (dependencies before dependents), then heights from the sinks back.
    let mut topo: Vec<usize> = (0..jobs.len()).filter(|&i| pending_deps[i] == 0).collect();
    let mut next = 0;
    while next < topo.len() {
        let at = topo[next];
        next += 1;
        for &child in &dependents[at] {
            pending_deps[child] -= 1;
            if pending_deps[child] == 0 {
                topo.push(child);
            }
        }
    }
    let mut height = vec![1u64; jobs.len()];
    for &at in topo.iter().rev() {
        height[at] = 1 + dependents[at].iter().map(|&c| height[c]).max().unwrap_or(0);
    }
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(height[i]), i));
    order
        .into_iter()
        .enumerate()
        .map(|(rank, i)| (jobs[i].id.clone(), rank as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Resources;

    fn job(id: &str, deps: &[&str]) -> PlannedJob {
        PlannedJob {
            id: id.into(),
            kind: "test.emit".into(),
            name: id.into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            resources: Resources::default(),
            config: Vec::new(),
            inputs: Vec::new(),
            placement: None,
        }
    }

    #[test]
    fn the_longest_chain_goes_first_then_plan_order() {
        // The quickstart's shape: prep -> eval(base); prep -> train1 -> eval(stage1); train1 -> fold0 -> eval;
        // train1 -> fold1 -> eval; every eval -> report.
        let jobs = vec![
            job("prep", &[]),
            job("eval base", &["prep"]),
            job("train1", &["prep"]),
            job("eval stage1", &["train1"]),
            job("fold0", &["train1"]),
            job("eval fold0", &["fold0"]),
            job("fold1", &["train1"]),
            job("eval fold1", &["fold1"]),
            job(
                "report",
                &["eval base", "eval stage1", "eval fold0", "eval fold1"],
            ),
        ];
        let ranks = critical_path_ranks(&jobs);
        let mut order: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        order.sort_by_key(|id| ranks[*id]);
        assert_eq!(
            order,
            [
                "prep",
                "train1",
                "fold0",
                "fold1",
                "eval base",
                "eval stage1",
                "eval fold0",
                "eval fold1",
                "report"
            ]
        );
    }

    #[test]
    fn outside_dependencies_and_independent_jobs_keep_plan_order() {
        let jobs = vec![job("b", &["already-known"]), job("a", &[]), job("c", &[])];
        let ranks = critical_path_ranks(&jobs);
        assert_eq!((ranks["b"], ranks["a"], ranks["c"]), (0, 1, 2));
    }
}
