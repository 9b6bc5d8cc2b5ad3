//! Experiment manifests: the TOML a lab writes, its validation, its canonical form and content hash.

pub mod defaults;
pub mod types;

pub use types::*;
