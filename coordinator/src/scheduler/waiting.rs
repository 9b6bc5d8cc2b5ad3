//! Why a ready job waits when no live worker could hold it: its resources exceed every live worker's offer (GPUs,
//! GPU memory per GPU, CPU threads), no live worker offers a GPU, or none runs its kind. Such a job stays queued
//! (it is never failed for it) and leases as soon as a worker that fits registers; `tandem status` shows why.

use crate::store::{Resources, WorkerRecord};

/// Why a ready job of `kind` asking for `request` fits none of the `live` workers' offers, or `None` when one of
/// them could hold it (it then waits only for its turn).
pub(super) fn reason(kind: &str, request: &Resources, live: &[&WorkerRecord]) -> Option<String> {
    if live.is_empty() {
        return Some("no live worker".into());
    }
    let mut runs: Vec<&WorkerRecord> = live
        .iter()
        .copied()
        .filter(|w| w.kinds.iter().any(|k| k == kind))
        .collect();
    if runs.is_empty() {
        return Some(format!("no live worker runs {kind} jobs"));
    }
    if runs.iter().any(|w| w.resources.fits(request)) {
        return None;
    }
    if request.gpus > 0 && runs.iter().all(|w| w.resources.gpus == 0) {
        return Some(format!(
            "needs {}; no live worker offers a GPU",
            gpus(request.gpus, request.gpu_memory_mib)
        ));
    }
    // Ties go to the first name, so the reason does not change from one call to the next.
    runs.sort_by(|a, b| b.name.cmp(&a.name));
    let largest = runs
        .into_iter()
        .max_by_key(|w| {
            let r = &w.resources;
            (r.gpus, r.gpu_memory_mib, r.cpu_threads)
        })
        .expect("at least one worker runs the kind");
    let offer = &largest.resources;
    let mut needs = Vec::new();
    let mut offers = Vec::new();
    if request.gpus > 0
        && (request.gpus > offer.gpus || request.gpu_memory_mib > offer.gpu_memory_mib)
    {
        needs.push(gpus(request.gpus, request.gpu_memory_mib));
        offers.push(gpus(offer.gpus, offer.gpu_memory_mib));
    }
    if request.cpu_threads > offer.cpu_threads {
        needs.push(threads(request.cpu_threads));
        offers.push(threads(offer.cpu_threads));
    }
    Some(format!(
        "needs {}; the largest live worker offers {} (worker {})",
        needs.join(" and "),
        offers.join(" and "),
        largest.name
    ))
}

/// `2 GPUs with 80 GiB each`, `1 GPU with 39.1 GiB`, `no GPU`.
fn gpus(count: u32, memory_mib: u64) -> String {
    match count {
        0 => "no GPU".into(),
        1 => format!("1 GPU with {}", gib(memory_mib)),
        n => format!("{n} GPUs with {} each", gib(memory_mib)),
    }
}

fn threads(count: u32) -> String {
    match count {
        1 => "1 CPU thread".into(),
        n => format!("{n} CPU threads"),
    }
}

/// MiB as GiB: whole numbers as such, others to one decimal.
fn gib(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::worker_record;

    fn worker(name: &str, gpus: u32, gpu_memory_mib: u64, cpu_threads: u32) -> WorkerRecord {
        let mut record = worker_record(&format!("w-{name}"), name);
        record.resources = Resources {
            gpus,
            gpu_memory_mib,
            cpu_threads,
        };
        record.kinds = vec!["train".into()];
        record
    }

    fn request(gpus: u32, gib: u64, cpu_threads: u32) -> Resources {
        Resources {
            gpus,
            gpu_memory_mib: gib * 1024,
            cpu_threads,
        }
    }

    #[test]
    fn names_the_largest_worker_and_what_falls_short() {
        let small = worker("cpu-node", 0, 0, 64);
        let big = worker("gpu-node-3", 1, 40 * 1024, 16);
        assert_eq!(
            reason("train", &request(2, 80, 2), &[&small, &big]).unwrap(),
            "needs 2 GPUs with 80 GiB each; the largest live worker offers 1 GPU with 40 GiB (worker gpu-node-3)"
        );
        assert_eq!(
            reason("train", &request(1, 24, 32), &[&big]).unwrap(),
            "needs 32 CPU threads; the largest live worker offers 16 CPU threads (worker gpu-node-3)"
        );
        let odd = worker("odd", 1, 40_000, 1);
        assert_eq!(
            reason("train", &request(1, 80, 2), &[&odd]).unwrap(),
            "needs 1 GPU with 80 GiB and 2 CPU threads; the largest live worker offers 1 GPU with 39.1 GiB \
             and 1 CPU thread (worker odd)"
        );
    }

    #[test]
    fn a_gpu_job_without_any_gpu_worker_says_so() {
        let cpu = worker("cpu-node", 0, 0, 64);
        assert_eq!(
            reason("train", &request(1, 24, 2), &[&cpu]).unwrap(),
            "needs 1 GPU with 24 GiB; no live worker offers a GPU"
        );
    }

    #[test]
    fn no_reason_when_a_live_worker_could_hold_it() {
        let big = worker("gpu-node", 2, 80 * 1024, 16);
        assert_eq!(reason("train", &request(2, 80, 16), &[&big]), None);
        assert_eq!(reason("train", &request(0, 0, 1), &[&big]), None);
    }

    #[test]
    fn no_worker_or_none_of_the_kind() {
        assert_eq!(
            reason("train", &request(0, 0, 1), &[]).unwrap(),
            "no live worker"
        );
        let big = worker("gpu-node", 2, 80 * 1024, 16);
        assert_eq!(
            reason("eval", &request(0, 0, 1), &[&big]).unwrap(),
            "no live worker runs eval jobs"
        );
    }
}
