//! Crash points for the chaos suite: named places in the coordinator where a test can make the process kill
//! itself with SIGKILL, so a crash lands exactly between two steps (a commit made but not answered, a batch
//! received but not stored) instead of wherever a timer from outside happens to hit.
//!
//! Armed by the environment variable `TANDEM_CRASH_AT=POINT:N` (the N-th time this process passes `POINT`,
//! counting from 1). Unset, a crash point is one relaxed atomic load. The points are listed in [`POINTS`]; an
//! unknown name in the variable is refused at start-up so a typo cannot make a chaos test pass vacuously.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable that arms a crash point.
pub const CRASH_AT_VAR: &str = "TANDEM_CRASH_AT";

/// Every crash point, in the order a job meets them.
pub const POINTS: &[&str] = &[
    // An experiment's manifest received, before anything is stored; then stored, before the reply.
    "submit.received",
    "submit.committed",
    // A lease granted and stored, before the worker hears of it.
    "lease.committed",
    // A heartbeat's renewal stored, before the reply.
    "heartbeat.committed",
    // A metric stream read in full, before its batches are stored; then stored, before the ack.
    "metrics.received",
    "metrics.stored",
    // An artifact's bytes received, before the blob is finished; then recorded, before the reply.
    "artifact.received",
    "artifact.recorded",
    // A job's outcome (complete, fail, release) stored, before the reply.
    "outcome.committed",
    // The store's group commit: before the flush, and after it but before the waiters are answered.
    "store.before_flush",
    "store.after_flush",
];

struct Armed {
    point: &'static str,
    at: u64,
    passed: AtomicU64,
}

/// An invalid `TANDEM_CRASH_AT` value.
#[derive(Debug, thiserror::Error)]
#[error(
    "{CRASH_AT_VAR}={value:?}: expected POINT:N with N >= 1 and POINT one of {}",
    POINTS.join(", ")
)]
pub struct BadCrashSpec {
    value: String,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

fn parse(value: &str) -> Result<Armed, BadCrashSpec> {
    let bad = || BadCrashSpec {
        value: value.to_string(),
    };
    let (name, at) = value.rsplit_once(':').ok_or_else(bad)?;
    let point = POINTS.iter().find(|p| **p == name).ok_or_else(bad)?;
    let at: u64 = at.parse().ok().filter(|n| *n >= 1).ok_or_else(bad)?;
    Ok(Armed {
        point,
        at,
        passed: AtomicU64::new(0),
    })
}

/// Reads `TANDEM_CRASH_AT` once; call at start-up so a bad value stops the server before it serves.
pub fn arm_from_env() -> Result<Option<(&'static str, u64)>, BadCrashSpec> {
    let armed = match std::env::var(CRASH_AT_VAR) {
        Ok(value) if !value.is_empty() => Some(parse(&value)?),
        _ => None,
    };
    let armed = ARMED.get_or_init(|| armed);
    Ok(armed.as_ref().map(|a| (a.point, a.at)))
}

/// Kills this process with SIGKILL when `point` is the armed one and this is its N-th pass.
pub fn crash_point(point: &'static str) {
    let Some(Some(armed)) = ARMED.get() else {
        return;
    };
    if armed.point != point {
        return;
    }
    let passed = armed.passed.fetch_add(1, Ordering::SeqCst) + 1;
    if passed == armed.at {
        tracing::warn!(
            point,
            passed,
            "crash point reached: killing the coordinator"
        );
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL cannot be caught; the process does not get past this point.
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_known_point_and_a_positive_count() {
        let armed = parse("metrics.stored:3").unwrap();
        assert_eq!((armed.point, armed.at), ("metrics.stored", 3));
        for bad in [
            "metrics.stored",
            "metrics.stored:0",
            "nope:1",
            "lease.committed:x",
        ] {
            let err = parse(bad).err().expect(bad).to_string();
            assert!(
                err.contains(CRASH_AT_VAR) && err.contains("lease.committed"),
                "{err}"
            );
        }
    }
}
