//! Tandem worker: the agent that leases jobs from a coordinator and the engine that runs one job.

pub mod agent;
pub mod engine;
