//! Thin tonic adapters: authenticate, translate the request, call the [`Scheduler`] (or the results, audit
//! and token modules over it), translate the answer. Errors become statuses in one place (`status.rs`).
//! [`ClientApi`] serves the CLI, [`WorkerApi`] serves workers.

mod client;
mod convert;
mod status;
mod worker;

use std::pin::Pin;
use std::sync::Arc;

use tandem_proto as pb;
use tokio_stream::Stream;
use tonic::{Request, Status};

pub use client::ClientApi;
pub use worker::WorkerApi;

use crate::auth::{Auth, Principal};
use crate::scheduler::Scheduler;

/// Size limits of the gRPC surface.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest single message (decoding and encoding), bytes.
    pub max_message_bytes: usize,
    /// Largest artifact upload, bytes.
    pub max_upload_bytes: u64,
    /// Largest number of metric batches in one `StreamMetrics` call.
    pub max_batches_per_stream: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 << 20,
            max_upload_bytes: 8 << 30,
            max_batches_per_stream: 4096,
        }
    }
}

/// What both services share.
#[derive(Clone)]
pub struct Shared {
    pub scheduler: Arc<Scheduler>,
    pub auth: Arc<Auth>,
    pub limits: Limits,
}

impl Shared {
    /// The caller of `request`, from its `authorization` header.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        Ok(self.auth.authenticate(authorization)?)
    }

    /// Streams blob `sha256` in chunks after verifying its hash.
    fn stream_blob(&self, sha256: &str) -> Result<ChunkStream, Status> {
        let bytes = self.scheduler.verified_blob(sha256)?;
        let header = pb::ArtifactHeader {
            sha256: sha256.to_string(),
            size: bytes.len() as u64,
            ..Default::default()
        };
        let mut chunks: Vec<Result<pb::ArtifactChunk, Status>> = Vec::new();
        let mut first = Some(header);
        if bytes.is_empty() {
            chunks.push(Ok(pb::ArtifactChunk {
                header: first.take(),
                data: Vec::new(),
            }));
        }
        for piece in bytes.chunks(CHUNK_BYTES) {
            chunks.push(Ok(pb::ArtifactChunk {
                header: first.take(),
                data: piece.to_vec(),
            }));
        }
        Ok(Box::pin(tokio_stream::iter(chunks)))
    }
}

/// A stream of artifact chunks (downloads).
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>>;

/// Chunk size for artifact downloads.
pub const CHUNK_BYTES: usize = 1 << 20;
