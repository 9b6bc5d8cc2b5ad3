//! Thin tonic adapters: authenticate, translate the request, call the [`Scheduler`], map the result.
//! [`ClientApi`] serves the CLI, [`WorkerApi`] serves workers.

mod client;
mod convert;
mod worker;

use std::sync::Arc;

use tonic::Status;

pub use client::ClientApi;
pub use worker::WorkerApi;

use crate::auth::Auth;
use crate::scheduler::{Scheduler, SchedulerError};
use crate::store::StoreError;

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

/// Chunk size for artifact downloads.
pub const CHUNK_BYTES: usize = 1 << 20;

pub fn status_of(err: SchedulerError) -> Status {
    match err {
        SchedulerError::NotFound(m) => Status::not_found(m),
        SchedulerError::PermissionDenied(m) => Status::permission_denied(m),
        SchedulerError::InvalidArgument(m) => Status::invalid_argument(m),
        SchedulerError::LeaseLost { .. } => Status::failed_precondition(err.to_string()),
        SchedulerError::Cancelled(_) => Status::aborted(err.to_string()),
        SchedulerError::UnknownWorker(_) => Status::not_found(err.to_string()),
        SchedulerError::Store(store) => store_status(store),
    }
}

pub fn store_status(err: StoreError) -> Status {
    match err {
        StoreError::BadHash(_) => Status::invalid_argument(err.to_string()),
        StoreError::TooLarge { .. } => Status::resource_exhausted(err.to_string()),
        StoreError::NotFound(_) => Status::not_found(err.to_string()),
        StoreError::HashMismatch { .. } => Status::data_loss(err.to_string()),
        other => {
            tracing::error!(error = %other, "store failure");
            Status::internal(other.to_string())
        }
    }
}
