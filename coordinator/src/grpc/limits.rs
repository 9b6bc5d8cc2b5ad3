//! What one caller may ask of the gRPC surface: message, manifest, metric-stream and upload sizes, and how many
//! streams a caller may hold open at once. Each bound keeps a flooding worker or client from exhausting the
//! coordinator's memory; each refusal names the limit and the flag or default that sets it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio_stream::Stream;
use tonic::Status;

/// Size and concurrency limits of the gRPC surface.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest single message (decoding and encoding), bytes.
    pub max_message_bytes: usize,
    /// Largest artifact upload, bytes.
    pub max_upload_bytes: u64,
    /// Largest input blob a client uploads (one model shard, GGUF file or dataset), bytes.
    pub max_input_bytes: u64,
    /// Largest submitted manifest, bytes.
    pub max_manifest_bytes: usize,
    /// Largest number of metric batches in one `StreamMetrics` call.
    pub max_batches_per_stream: usize,
    /// Largest number of points in one metric batch.
    pub max_points_per_batch: usize,
    /// Largest total of encoded metric batches one `StreamMetrics` call may hold before it is stored, bytes.
    pub max_metric_stream_bytes: usize,
    /// Streams (watches, downloads, uploads, metric streams) one caller may hold open at once.
    pub max_open_streams: usize,
    /// Metric points per second one job may send, on average (a faster sender is read more slowly) ...
    pub metric_points_per_s: f64,
    /// ... and in one burst.
    pub metric_points_burst: f64,
    /// Bytes of artifacts (outputs and the latest checkpoint of each name) one job may hold in the store.
    pub max_job_artifact_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 << 20,
            max_upload_bytes: 8 << 30,
            max_input_bytes: 256 << 30,
            max_manifest_bytes: 4 << 20,
            max_batches_per_stream: 4096,
            max_points_per_batch: 65_536,
            max_metric_stream_bytes: 16 << 20,
            max_open_streams: 64,
            metric_points_per_s: 20_000.0,
            metric_points_burst: 200_000.0,
            max_job_artifact_bytes: 64 << 30,
        }
    }
}

impl Limits {
    /// Refuses a manifest larger than the limit.
    pub fn check_manifest(&self, bytes: usize) -> Result<(), Status> {
        if bytes > self.max_manifest_bytes {
            return Err(Status::invalid_argument(format!(
                "manifest: {bytes} bytes exceeds the limit of {} bytes",
                self.max_manifest_bytes
            )));
        }
        Ok(())
    }
}

/// Token buckets of metric points, one per job. A job over its rate is slowed down, not refused: its stream
/// is read only once the bucket has refilled, so HTTP/2 flow control holds the sender back and nothing is lost.
#[derive(Debug, Default)]
pub struct PointBuckets {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl PointBuckets {
    /// Charges `points` to `job`'s bucket (refilled at `rate` per second up to `burst`) and returns how long to
    /// wait before reading more of its stream: zero while the bucket holds enough, else the time its debt
    /// takes to refill.
    pub fn charge(&self, job: &str, points: usize, rate: f64, burst: f64) -> Duration {
        if rate.is_infinite() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = buckets.entry(job.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        *tokens -= points as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / rate)
        }
    }
}

/// Open streams per caller.
#[derive(Debug, Default)]
pub struct StreamSlots {
    open: Mutex<HashMap<String, usize>>,
}

impl StreamSlots {
    /// Takes one of `caller`'s `max` stream slots, or refuses with `RESOURCE_EXHAUSTED`; the slot is given
    /// back when the returned guard drops (when the stream ends or the client goes away).
    pub fn take(self: &Arc<Self>, caller: &str, max: usize) -> Result<StreamSlot, Status> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(caller.to_string()).or_default();
        if *count >= max {
            return Err(Status::resource_exhausted(format!(
                "{caller} already holds {max} open streams (the limit); close one and retry"
            )));
        }
        *count += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            caller: caller.to_string(),
        })
    }

    /// Streams `caller` holds open now.
    pub fn open(&self, caller: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(caller).copied().unwrap_or(0)
    }
}

/// One taken stream slot.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    caller: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

/// A server stream that holds its caller's slot until it ends or is dropped.
pub struct Slotted<S> {
    inner: Pin<Box<S>>,
    _slot: StreamSlot,
}

impl<S> Slotted<S> {
    pub fn new(inner: S, slot: StreamSlot) -> Slotted<S> {
        Slotted {
            inner: Box::pin(inner),
            _slot: slot,
        }
    }
}

impl<S: Stream> Stream for Slotted<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_at_most_max_slots_and_gets_them_back_on_drop() {
        let slots = Arc::new(StreamSlots::default());
        let held: Vec<StreamSlot> = (0..3).map(|_| slots.take("team:a", 3).unwrap()).collect();
        let refused = slots.take("team:a", 3).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("team:a") && refused.message().contains('3'));
        // Another caller is not affected.
        let _other = slots.take("team:b", 3).unwrap();
        drop(held);
        assert_eq!(slots.open("team:a"), 0);
        let _again = slots.take("team:a", 3).unwrap();
    }

    #[test]
    fn a_job_over_its_point_rate_waits_for_its_debt_and_others_do_not() {
        let buckets = PointBuckets::default();
        assert_eq!(buckets.charge("j1", 100, 10.0, 100.0), Duration::ZERO);
        // 50 points over an empty bucket at 10 per second: about 5 s of debt.
        let wait = buckets.charge("j1", 50, 10.0, 100.0);
        assert!((4.9..=5.0).contains(&wait.as_secs_f64()), "{wait:?}");
        assert_eq!(buckets.charge("j2", 100, 10.0, 100.0), Duration::ZERO);
        assert_eq!(
            buckets.charge("j3", 1, f64::INFINITY, f64::INFINITY),
            Duration::ZERO
        );
    }

    #[test]
    fn manifests_over_the_limit_are_refused_naming_both_sizes() {
        let limits = Limits {
            max_manifest_bytes: 10,
            ..Limits::default()
        };
        assert!(limits.check_manifest(10).is_ok());
        let err = limits.check_manifest(11).unwrap_err();
        assert!(err.message().contains("11 bytes") && err.message().contains("10 bytes"));
    }
}
