//! Pure placement: which ready job a worker with `free` resources gets. Fits the request, shares fairly
//! between teams (the team with the fewest running jobs goes first), then priority, then submission order.

use std::collections::HashMap;

use crate::store::Resources;

/// A ready job the scheduler considers for one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub team: String,
    pub priority: i32,
    pub submit_seq: u64,
    pub request: Resources,
}

/// Index of the candidate to lease, or `None` when nothing fits.
///
/// Among candidates that fit `free`: the team with the fewest `running` jobs wins (ties: the team whose best
/// job was submitted first); within that team, the highest priority, then the earliest submission.
pub fn choose(
    free: &Resources,
    candidates: &[Candidate],
    running: &HashMap<String, u32>,
) -> Option<usize> {
    let mut best: Option<(u32, usize)> = None;
    for (index, candidate) in candidates.iter().enumerate() {
        if !free.fits(&candidate.request) {
            continue;
        }
        let load = running.get(&candidate.team).copied().unwrap_or(0);
        best = match best {
            None => Some((load, index)),
            Some((best_load, best_index)) => {
                let current = &candidates[best_index];
                let better = if load != best_load {
                    load < best_load
                } else if candidate.team == current.team {
                    (-(candidate.priority as i64), candidate.submit_seq)
                        < (-(current.priority as i64), current.submit_seq)
                } else {
                    // Different teams, equal load: the team whose best job is older.
                    let team_best = |team: &str| {
                        candidates
                            .iter()
                            .filter(|c| c.team == team && free.fits(&c.request))
                            .map(|c| c.submit_seq)
                            .min()
                            .unwrap_or(u64::MAX)
                    };
                    team_best(&candidate.team) < team_best(&current.team)
                };
                if better {
                    Some((load, index))
                } else {
                    Some((best_load, best_index))
                }
            }
        };
    }
    best.map(|(_, index)| index)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn resources() -> impl Strategy<Value = Resources> {
        (
            0u32..3,
            prop::sample::select(vec![0u64, 8_000, 16_000, 80_000]),
            0u32..9,
        )
            .prop_map(|(gpus, gpu_memory_mib, cpu_threads)| Resources {
                gpus,
                gpu_memory_mib,
                cpu_threads,
            })
    }

    fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec(
            (
                prop::sample::select(vec!["a", "b", "c"]),
                -2i32..3,
                resources(),
            ),
            0..24,
        )
        .prop_map(|items| {
            items
                .into_iter()
                .enumerate()
                .map(|(seq, (team, priority, request))| Candidate {
                    team: team.to_string(),
                    priority,
                    submit_seq: seq as u64,
                    request,
                })
                .collect()
        })
    }

    fn running() -> impl Strategy<Value = HashMap<String, u32>> {
        (0u32..4, 0u32..4, 0u32..4).prop_map(|(a, b, c)| {
            HashMap::from([
                ("a".to_string(), a),
                ("b".to_string(), b),
                ("c".to_string(), c),
            ])
        })
    }

    proptest! {
        #[test]
        fn chosen_job_fits_and_something_is_chosen_when_anything_fits(
            free in resources(), cands in candidates(), run in running()
        ) {
            let any_fits = cands.iter().any(|c| free.fits(&c.request));
            match choose(&free, &cands, &run) {
                Some(i) => prop_assert!(free.fits(&cands[i].request)),
                None => prop_assert!(!any_fits),
            }
        }

        #[test]
        fn least_loaded_team_goes_first(free in resources(), cands in candidates(), run in running()) {
            if let Some(i) = choose(&free, &cands, &run) {
                let chosen_load = run[&cands[i].team];
                for c in cands.iter().filter(|c| free.fits(&c.request)) {
                    prop_assert!(run[&c.team] >= chosen_load);
                }
            }
        }

        #[test]
        fn within_the_team_priority_then_age(free in resources(), cands in candidates(), run in running()) {
            if let Some(i) = choose(&free, &cands, &run) {
                let chosen = &cands[i];
                for c in cands.iter().filter(|c| c.team == chosen.team && free.fits(&c.request)) {
                    prop_assert!(
                        (-(chosen.priority as i64), chosen.submit_seq) <= (-(c.priority as i64), c.submit_seq)
                    );
                }
            }
        }
    }

    #[test]
    fn gpu_memory_is_checked_per_gpu_and_only_for_gpu_jobs() {
        let worker = Resources {
            gpus: 1,
            gpu_memory_mib: 16_000,
            cpu_threads: 4,
        };
        assert!(worker.fits(&Resources {
            gpus: 1,
            gpu_memory_mib: 12_000,
            cpu_threads: 2
        }));
        assert!(!worker.fits(&Resources {
            gpus: 1,
            gpu_memory_mib: 24_000,
            cpu_threads: 2
        }));
        assert!(!worker.fits(&Resources {
            gpus: 2,
            gpu_memory_mib: 1,
            cpu_threads: 1
        }));
        assert!(worker.fits(&Resources {
            gpus: 0,
            gpu_memory_mib: 99_999,
            cpu_threads: 4
        }));
        assert!(!worker.fits(&Resources {
            gpus: 0,
            gpu_memory_mib: 0,
            cpu_threads: 5
        }));
    }
}
