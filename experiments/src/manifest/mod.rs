//! Experiment manifests: the TOML a lab writes, its validation, its canonical form and content hash.
//!
//! Parsing has two layers (as ripgrep's low/high args): `raw` mirrors the TOML with spans and denies unknown
//! keys; `resolve` fills the thesis defaults per stage and validates, collecting every problem into one
//! [`ManifestError::Invalid`] whose lines read `FILE:LINE:COL: field.path: message (accepted: ...)`.

pub mod defaults;
pub mod diagnostic;
pub mod hash;
pub mod overrides;
pub mod paths;
mod raw;
mod resolve;
pub mod training_sweep;
pub mod types;

pub use diagnostic::{Diagnostic, Diagnostics, ManifestError};
pub use hash::{ContentHash, FileHash, HashError, content_hash};
pub use resolve::{LoadOptions, load, parse_str};
pub use training_sweep::{
    AshaSpec, FieldValue, SearchMethod, Selection, TrainField, TrainPoint, TrainingSweep,
};
pub use types::*;
