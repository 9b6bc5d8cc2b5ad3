//! What one caller may ask of the gRPC surface: message, manifest, metric-stream and upload sizes, and how many
//! streams a caller may hold open at once. Each bound keeps a flooding worker or client from exhausting the
//! coordinator's memory; each refusal names the limit and the flag or default that sets it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

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
