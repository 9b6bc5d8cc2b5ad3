//! The verdict of a replay (`tandem audit --replay`, the dashboard's audit view): a finished replay against the
//! job it re-ran, output artifact by SHA-256 and metric series bit for bit (timing series skipped).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use tandem_proto as pb;

/// Whether a series measures time (throughput, durations): it differs run to run by nature.
pub fn is_timing_series(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    base == "tokens_per_s" || base.ends_with("_per_s") || base.ends_with("_seconds")
}

/// SHA-256 over a series' (step, value bits) pairs: equal digests mean bitwise-equal series.
fn series_digest(steps: &[u64], values: &[f64]) -> String {
    let mut hasher = Sha256::new();
    for (step, value) in steps.iter().zip(values) {
        hasher.update(step.to_le_bytes());
        hasher.update(value.to_bits().to_le_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The replay's checks against the original, and the series skipped as timings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayChecks {
    pub checks: Vec<pb::AuditCheck>,
    pub skipped: Vec<String>,
}

/// A check that passes when `expected == actual`.
pub fn check(subject: String, expected: String, actual: String, detail: String) -> pb::AuditCheck {
    pb::AuditCheck {
        ok: expected == actual,
        subject,
        expected,
        actual,
        detail,
    }
}

/// Compares a finished replay with its original: the run itself succeeded, every output artifact has the
/// same SHA-256 (and none is missing or extra), every non-timing metric series has the same points bit for
/// bit.
pub fn compare_replay(status: &pb::ReplayStatus) -> ReplayChecks {
    let mut out = ReplayChecks::default();
    let replay = status.replay.clone().unwrap_or_default();
    let succeeded = replay.state == pb::JobState::Succeeded as i32;
    out.checks.push(pb::AuditCheck {
        subject: format!("replay run {}", status.replay_id),
        expected: "succeeded".into(),
        actual: pb::JobState::try_from(replay.state)
            .unwrap_or(pb::JobState::Unspecified)
            .label()
            .to_string(),
        ok: succeeded,
        detail: if succeeded {
            format!("attempt {} on {}", replay.attempts, replay.worker)
        } else {
            replay.last_error.clone()
        },
    });
    if !succeeded {
        return out;
    }
    let outputs = |list: &[pb::ArtifactRef]| -> BTreeMap<String, String> {
        list.iter()
            .filter(|a| a.role == "output")
            .map(|a| (a.name.clone(), a.sha256.clone()))
            .collect()
    };
    let original = outputs(&status.original_artifacts);
    let replayed = outputs(&status.replay_artifacts);
    let mut names: Vec<&String> = original.keys().chain(replayed.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let expected = original.get(name).cloned().unwrap_or_default();
        let actual = replayed.get(name).cloned().unwrap_or_default();
        let detail = match (expected.is_empty(), actual.is_empty()) {
            (false, true) => "the replay did not produce it".to_string(),
            (true, false) => "the replay produced it, the original did not".to_string(),
            _ if expected == actual => "same bytes".to_string(),
            _ => "different bytes".to_string(),
        };
        out.checks.push(check(
            format!("replay artifact {name}"),
            expected,
            actual,
            detail,
        ));
    }
    let series = |list: &[pb::MetricSeries]| -> BTreeMap<String, (Vec<u64>, Vec<f64>)> {
        list.iter()
            .map(|s| (s.name.clone(), (s.steps.clone(), s.values.clone())))
            .collect()
    };
    let original = series(&status.original_series);
    let replayed = series(&status.replay_series);
    let mut names: Vec<&String> = original.keys().chain(replayed.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        if is_timing_series(name) {
            out.skipped.push(name.clone());
            continue;
        }
        let empty = (Vec::new(), Vec::new());
        let (es, ev) = original.get(name).unwrap_or(&empty);
        let (rs, rv) = replayed.get(name).unwrap_or(&empty);
        let detail = series_difference(es, ev, rs, rv);
        let digest = |present: bool, steps: &[u64], values: &[f64]| {
            if present {
                series_digest(steps, values)
            } else {
                String::new()
            }
        };
        let mut c = check(
            format!("replay series {name}"),
            digest(original.contains_key(name), es, ev),
            digest(replayed.contains_key(name), rs, rv),
            String::new(),
        );
        c.ok = c.ok && detail.is_none();
        c.detail = detail.unwrap_or_else(|| format!("{} points, bitwise equal", ev.len()));
        out.checks.push(c);
    }
    out
}

/// Where two series first differ (`None`: bitwise equal).
fn series_difference(es: &[u64], ev: &[f64], rs: &[u64], rv: &[f64]) -> Option<String> {
    for (i, ((s1, v1), (s2, v2))) in es.iter().zip(ev).zip(rs.iter().zip(rv)).enumerate() {
        if s1 != s2 {
            return Some(format!("point {i}: step {s1} vs {s2}"));
        }
        if v1.to_bits() != v2.to_bits() {
            return Some(format!("point {i} (step {s1}): {v1:e} vs {v2:e}"));
        }
    }
    if ev.len() != rv.len() {
        return Some(format!("{} points vs {}", ev.len(), rv.len()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(name: &str, sha: &str, role: &str) -> pb::ArtifactRef {
        pb::ArtifactRef {
            job_id: "j".into(),
            name: name.into(),
            sha256: sha.into(),
            size: 1,
            role: role.into(),
        }
    }

    fn series(name: &str, values: &[f64]) -> pb::MetricSeries {
        pb::MetricSeries {
            job_id: "j".into(),
            name: name.into(),
            steps: (0..values.len() as u64).collect(),
            values: values.to_vec(),
            times_ms: vec![0; values.len()],
        }
    }

    fn status(
        replay_artifacts: Vec<pb::ArtifactRef>,
        replay_series: Vec<pb::MetricSeries>,
    ) -> pb::ReplayStatus {
        pb::ReplayStatus {
            replay_id: "replay-000001-j".into(),
            job_id: "j".into(),
            done: true,
            replay: Some(pb::JobStatus {
                state: pb::JobState::Succeeded as i32,
                attempts: 1,
                worker: "w1".into(),
                ..Default::default()
            }),
            original_artifacts: vec![
                artifact("output.bin", "aa", "output"),
                artifact("checkpoint.json", "cc", "checkpoint"),
            ],
            original_series: vec![
                series("train_loss", &[2.0, 1.5]),
                series("tokens_per_s", &[100.0]),
                series("step_seconds", &[0.5]),
            ],
            replay_artifacts,
            replay_series,
            ..Default::default()
        }
    }

    #[test]
    fn identical_outputs_pass_and_timings_are_skipped() {
        let s = status(
            vec![
                artifact("output.bin", "aa", "output"),
                artifact("checkpoint.json", "dd", "checkpoint"),
            ],
            vec![
                series("train_loss", &[2.0, 1.5]),
                series("tokens_per_s", &[93.0]),
            ],
        );
        let c = compare_replay(&s);
        assert!(c.checks.iter().all(|c| c.ok), "{:#?}", c.checks);
        let subjects: Vec<_> = c.checks.iter().map(|c| c.subject.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "replay run replay-000001-j",
                "replay artifact output.bin",
                "replay series train_loss"
            ]
        );
        assert_eq!(c.skipped, ["step_seconds", "tokens_per_s"]);
        assert!(c.checks[2].detail.contains("2 points, bitwise equal"));
    }

    #[test]
    fn any_difference_fails_and_says_where() {
        let next_up = f64::from_bits(1.5f64.to_bits() + 1);
        let s = status(
            vec![
                artifact("output.bin", "ab", "output"),
                artifact("extra.txt", "ee", "output"),
            ],
            vec![series("train_loss", &[2.0, next_up])],
        );
        let c = compare_replay(&s);
        let failed: BTreeMap<&str, &str> = c
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| (c.subject.as_str(), c.detail.as_str()))
            .collect();
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert_eq!(failed["replay artifact output.bin"], "different bytes");
        assert_eq!(
            failed["replay artifact extra.txt"],
            "the replay produced it, the original did not"
        );
        assert!(
            failed["replay series train_loss"].starts_with("point 1 (step 1)"),
            "{failed:?}"
        );
        // A missing series and a shorter series fail too.
        let c = compare_replay(&status(
            vec![artifact("output.bin", "aa", "output")],
            vec![series("train_loss", &[2.0])],
        ));
        let loss = c
            .checks
            .iter()
            .find(|c| c.subject == "replay series train_loss")
            .unwrap();
        assert!(!loss.ok);
        assert_eq!(loss.detail, "2 points vs 1");
    }

    #[test]
    fn a_failed_replay_is_a_failed_check() {
        let mut s = status(vec![], vec![]);
        s.replay = Some(pb::JobStatus {
            state: pb::JobState::Failed as i32,
            last_error: "input corrupted".into(),
            ..Default::default()
        });
        let c = compare_replay(&s);
        assert_eq!(c.checks.len(), 1);
        assert!(!c.checks[0].ok);
        assert_eq!(c.checks[0].detail, "input corrupted");
    }

    #[test]
    fn timing_series_are_recognised_by_name() {
        for t in [
            "tokens_per_s",
            "train/tokens_per_s",
            "samples_per_s",
            "step_seconds",
        ] {
            assert!(is_timing_series(t), "{t}");
        }
        for v in ["train_loss", "val_perplexity", "eval/bleu4", "per_sample"] {
            assert!(!is_timing_series(v), "{v}");
        }
    }
}
