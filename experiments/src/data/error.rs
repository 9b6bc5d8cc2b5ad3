//! Errors of the dataset readers; each names the file and, where there is one, the line and data row.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: has no column {column:?} for {role} (its columns: {})", path.display(), available.join(", "))]
    MissingColumn {
        path: PathBuf,
        column: String,
        role: &'static str,
        available: Vec<String>,
    },
    #[error("{}:{line}: data row {row}: {reason} (accepted: a row with every column and non-empty {what}; set bad_rows = \"drop\" in the manifest, or --bad-rows drop, to skip such rows)", path.display())]
    BadRow {
        path: PathBuf,
        line: u64,
        row: usize,
        reason: String,
        what: String,
    },
    #[error("{}:{line}: unterminated quote: the quoted field opened here never closes (accepted: every opening \" closed by a \"; write a literal quote as \"\")", path.display())]
    UnterminatedQuote { path: PathBuf, line: u64 },
    #[error("{}:{line}: {message}", path.display())]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{}: the file has no header row", path.display())]
    NoHeader { path: PathBuf },
    #[error("{}: {message}", path.display())]
    Zip { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Layout { path: PathBuf, message: String },
}
