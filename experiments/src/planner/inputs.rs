//! An experiment's input files as content-addressed blobs: what a client uploads before it submits, and how a
//! folder's listing is read back (by the coordinator to check that every listed file is stored, by a worker to
//! rebuild the folder in its cache). A file is one blob named by its SHA-256; a folder is its listing (see
//! [`hash::listing`]) named by the listing's SHA-256, plus one blob per listed file.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use crate::manifest::hash::{self, ContentHash};

/// Where the bytes of a blob to upload come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum BlobSource {
    /// A file on the submitter's machine.
    File(PathBuf),
    /// A folder's listing, made here.
    Listing(String),
}

/// One blob an experiment needs in the coordinator's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputBlob {
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    pub size: u64,
    pub source: BlobSource,
}

/// Every blob behind the manifest's inputs (each once): each file, and each folder's listing.
pub fn blobs(content: &ContentHash) -> Vec<InputBlob> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for file in &content.files {
        if seen.insert(file.sha256.clone()) {
            out.push(InputBlob {
                sha256: file.sha256.clone(),
                size: file.bytes,
                source: BlobSource::File(file.path.clone()),
            });
        }
    }
    for role in &content.folders {
        let text = hash::listing(
            content
                .files
                .iter()
                .filter(|f| &f.role == role)
                .map(|f| (f.sha256.as_str(), f.relative.as_str())),
        );
        let sha256 = hash::sha256_hex(text.as_bytes());
        if seen.insert(sha256.clone()) {
            out.push(InputBlob {
                sha256,
                size: text.len() as u64,
                source: BlobSource::Listing(text),
            });
        }
    }
    out
}

/// One line of a folder listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    pub sha256: String,
    /// `/`-separated path inside the folder; never absolute, never with `.` or `..` components.
    pub relative: String,
}

/// Why a listing blob cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListingError {
    #[error(
        "folder listing line {line}: {message} (accepted: \"<64 hex sha256>  <relative/path>\")"
    )]
    Line { line: usize, message: String },
    #[error("folder listing: no files")]
    Empty,
    #[error("folder listing: not UTF-8 text")]
    NotText,
}

/// Whether `relative` is a path that stays inside the folder it is joined to.
pub fn is_safe_relative(relative: &str) -> bool {
    !relative.is_empty()
        && !relative.starts_with('/')
        && !relative.contains('\\')
        && !relative.contains('\0')
        && relative
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Whether `name` is one path component that stays where it is joined (a file input's name).
pub fn is_file_name(name: &str) -> bool {
    is_safe_relative(name) && !name.contains('/')
}

/// Whether `s` is 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads a folder listing, refusing paths that would leave the folder, duplicates and unsorted lines.
pub fn parse_listing(bytes: &[u8]) -> Result<Vec<ListedFile>, ListingError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ListingError::NotText)?;
    let mut files: Vec<ListedFile> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let bad = |message: String| ListingError::Line {
            line: index + 1,
            message,
        };
        let (sha256, relative) = line
            .split_once("  ")
            .ok_or_else(|| bad("no two-space separator".into()))?;
        if !is_sha256_hex(sha256) {
            return Err(bad(format!("{sha256:?} is not a hex SHA-256")));
        }
        if !is_safe_relative(relative) {
            return Err(bad(format!("path {relative:?} leaves the folder")));
        }
        if let Some(previous) = files.last()
            && previous.relative.as_str() >= relative
        {
            return Err(bad(format!(
                "path {relative:?} is not after {:?} (duplicate or unsorted)",
                previous.relative
            )));
        }
        files.push(ListedFile {
            sha256: sha256.to_string(),
            relative: relative.to_string(),
        });
    }
    if files.is_empty() {
        return Err(ListingError::Empty);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn listings_round_trip_and_hostile_paths_are_refused() {
        let text = hash::listing([(A, "config.json"), (A, "sub/model.safetensors")]);
        let files = parse_listing(text.as_bytes()).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].relative, "sub/model.safetensors");
        for (bad, needle) in [
            (format!("{A}  ../etc/passwd\n"), "leaves the folder"),
            (format!("{A}  /abs\n"), "leaves the folder"),
            (format!("{A}  a//b\n"), "leaves the folder"),
            (format!("{A}  b\n{A}  a\n"), "unsorted"),
            (format!("{A}  a\n{A}  a\n"), "duplicate"),
            ("xyz  a\n".to_string(), "not a hex SHA-256"),
            (format!("{A} a\n"), "separator"),
        ] {
            let err = parse_listing(bad.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
        assert_eq!(parse_listing(b""), Err(ListingError::Empty));
    }
}
