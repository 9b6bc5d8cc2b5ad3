//! Tandem coordinator: the sled store, the scheduler and the gRPC services; the `tandem` CLI sits on top.
//!
//! - [`store`]: durable state behind a small trait (sled), blobs by SHA-256, group commit.
//! - [`scheduler`]: the job state machine, leases, placement, cache and recovery; a plain async API.
//! - [`planning`]: turns a submitted manifest into planned jobs (content-hashed ids).
//! - [`chaos`]: crash points a chaos test arms to kill the coordinator at an exact step.
//! - [`auth`]: bearer tokens (stored hashed) and who may do what; [`tokens`]: creating and revoking them.
//! - [`results`]: metric series, placements and artifacts of an experiment or a replay.
//! - [`audit`]: an experiment's content checks, job environments and audit log.
//! - [`launch`]: workers started through Slurm (and rendered for Kubernetes): scripts, commands, elasticity.
//! - [`grpc`]: thin tonic adapters over the above, and [`server`] which serves them.

pub mod audit;
pub mod auth;
pub mod chaos;
pub mod dashboard;
pub mod grpc;
pub mod launch;
pub mod planning;
pub mod replay_verdict;
pub mod results;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod tokens;
pub mod tracking;
