//! Thin tonic adapters: authenticate, translate the request, call the [`Scheduler`] (or the results, audit
//! and token modules over it), translate the answer. Errors become statuses in one place (`status.rs`).
//! [`ClientApi`] serves the CLI, [`WorkerApi`] serves workers.

mod client;
pub mod convert;
pub mod limits;
mod status;
mod worker;

use std::pin::Pin;
use std::sync::Arc;

use tandem_proto as pb;
use tokio_stream::Stream;
use tonic::{Request, Status};

pub use client::ClientApi;
pub use convert::resources_from_pb;
pub use limits::Limits;
pub use worker::WorkerApi;

use crate::auth::{Auth, Principal};
use crate::scheduler::Scheduler;

/// What both services share.
#[derive(Clone)]
pub struct Shared {
    pub scheduler: Arc<Scheduler>,
    pub auth: Arc<Auth>,
    pub limits: Limits,
    pub streams: Arc<limits::StreamSlots>,
    pub metric_points: Arc<limits::PointBuckets>,
}

impl Shared {
    /// One of `principal`'s open-stream slots (see [`Limits::max_open_streams`]).
    fn stream_slot(&self, caller: &str) -> Result<limits::StreamSlot, Status> {
        self.streams.take(caller, self.limits.max_open_streams)
    }

    /// The caller of `request`, from its `authorization` header.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        Ok(self.auth.authenticate(authorization)?)
    }

    /// Streams blob `sha256` from its file in chunks (never whole in memory: a model shard is gigabytes),
    /// hashing as it goes; a blob whose bytes no longer match its name ends the stream with `DATA_LOSS`, so a
    /// receiver never takes corrupt bytes for good ones.
    fn stream_blob(&self, sha256: &str) -> Result<ChunkStream, Status> {
        let (path, size) = self.scheduler.blob_file(sha256)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let sha256 = sha256.to_string();
        tokio::task::spawn_blocking(move || send_blob(&path, size, &sha256, &tx));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

type ChunkSender = tokio::sync::mpsc::Sender<Result<pb::ArtifactChunk, Status>>;

/// Sends the chunks of one blob file, then a `DATA_LOSS` error if its hash is not `sha256`. Stops early when
/// the receiver went away.
fn send_blob(path: &std::path::Path, size: u64, sha256: &str, tx: &ChunkSender) {
    use sha2::Digest;
    let fail = |status: Status| {
        let _ = tx.blocking_send(Err(status));
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) => return fail(Status::internal(format!("blob {sha256}: {err}"))),
    };
    let mut hasher = sha2::Sha256::new();
    let mut header = Some(pb::ArtifactHeader {
        sha256: sha256.to_string(),
        size,
        ..Default::default()
    });
    loop {
        let data = match crate::store::read_chunk(&mut file, CHUNK_BYTES) {
            Ok(data) => data,
            Err(err) => return fail(Status::internal(format!("blob {sha256}: {err}"))),
        };
        hasher.update(&data);
        let last = data.len() < CHUNK_BYTES;
        if (!data.is_empty() || header.is_some())
            && tx
                .blocking_send(Ok(pb::ArtifactChunk {
                    header: header.take(),
                    data,
                }))
                .is_err()
        {
            return;
        }
        if last {
            break;
        }
    }
    let actual = crate::store::hex(&hasher.finalize());
    if actual != sha256 {
        tracing::error!(blob = sha256, actual = %actual, "stored blob is corrupt");
        fail(Status::data_loss(format!(
            "blob {sha256} is corrupt in the store: its bytes hash to {actual}"
        )));
    }
}

/// A stream of artifact chunks (downloads).
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>>;

/// Chunk size for artifact downloads.
pub const CHUNK_BYTES: usize = 1 << 20;
