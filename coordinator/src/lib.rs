//! Tandem coordinator: the sled store, the scheduler and the gRPC services; the `tandem` CLI sits on top.
//!
//! - [`store`]: durable state behind a small trait (sled), blobs by SHA-256, group commit.
//! - [`scheduler`]: the job state machine, leases, placement, cache and recovery; a plain async API.
//! - [`planning`]: turns a submitted manifest into planned jobs (content-hashed ids).
//! - [`auth`]: bearer tokens (stored hashed) and who may do what.
//! - [`grpc`]: thin tonic adapters over the scheduler, and [`server`] which serves them.

pub mod auth;
pub mod grpc;
pub mod planning;
pub mod scheduler;
pub mod server;
pub mod store;
