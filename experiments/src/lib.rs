//! The experiment domain of Tandem, with no I/O beyond files: manifests (schema, validation, hashing), datasets
//! (MIMIC-CXR, IU X-ray, CSV, synthetic longitudinal), splits and k-fold, the planner (manifest -> job graph),
//! evaluation metrics, and result tables.

pub mod data;
pub mod manifest;
pub mod metrics;
pub mod planner;
pub mod report;
