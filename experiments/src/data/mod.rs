//! Datasets: the generic CSV loader (IU X-ray, converted MIMIC-CXR, user CSVs), the MIMIC-CXR report-tree
//! reader, the synthetic longitudinal oncology generator, and seeded splits / k-fold.

pub mod error;
pub mod mimic;
pub mod patients;
pub mod split;
pub mod synth;
pub mod table;

pub use error::DataError;
pub use split::{Fold, Split, SplitError, SplitItem};
pub use table::{CsvOptions, Dataset, DropCounts, Example};
