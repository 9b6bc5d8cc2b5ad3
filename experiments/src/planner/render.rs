//! The readable form of a plan: a tree under each job's last dependency (its most specific parent), with the
//! report listed last, and a one-line count per kind.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{JobConfig, JobKind, Plan};

/// Renders the plan as an indented tree (ids shortened to 12 hex digits).
pub fn render_tree(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "experiment {} (manifest sha256 {}): {} jobs: {}",
        plan.experiment,
        &plan.manifest_sha256[..plan.manifest_sha256.len().min(12)],
        plan.jobs.len(),
        JobKind::ALL
            .into_iter()
            .filter(|&k| plan.count(k) > 0 || k != JobKind::Select && k != JobKind::Summarize)
            .map(|k| format!("{} {}", plan.count(k), k.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut children: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (index, job) in plan.jobs.iter().enumerate() {
        match (job.kind, job.deps.last()) {
            (JobKind::Report, _) | (_, None) => roots.push(index),
            (_, Some(parent)) => children.entry(parent.as_str()).or_default().push(index),
        }
    }
    for &root in &roots {
        write_job(plan, root, &children, "", &mut out, true);
    }
    out
}

fn write_job(
    plan: &Plan,
    index: usize,
    children: &BTreeMap<&str, Vec<usize>>,
    prefix: &str,
    out: &mut String,
    root: bool,
) {
    let job = &plan.jobs[index];
    let mut line = format!("{} {}", &job.id[..12], job.label);
    if job.kind == JobKind::Report {
        line.push_str(&format!("  <- all {} evals", job.deps.len()));
    } else if let JobConfig::Select(select) = &job.config {
        line.push_str(&format!("  <- all {} points", select.candidates.len()));
    } else if job.deps.len() > 1 {
        let others: Vec<String> = job.deps[..job.deps.len() - 1]
            .iter()
            .map(|d| {
                plan.job(d)
                    .map_or_else(|| d[..12].to_owned(), |j| j.label.clone())
            })
            .collect();
        line.push_str(&format!("  (also needs {})", others.join(", ")));
    }
    let _ = writeln!(out, "{line}");
    let Some(kids) = children.get(job.id.as_str()) else {
        return;
    };
    for (position, &kid) in kids.iter().enumerate() {
        let last = position + 1 == kids.len();
        let _ = write!(out, "{prefix}{}", if last { "└─ " } else { "├─ " });
        let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
        write_job(plan, kid, children, &deeper, out, false);
    }
    let _ = root;
}
