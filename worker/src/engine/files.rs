//! Writing the files jobs produce (adapters, checkpoints, outputs): a failure names the path and how many bytes
//! were to be written, so a full disk says what it was asked to hold.

use std::path::Path;

use super::error::{EngineError, Result};

/// Writes `bytes` to `path` (replacing it).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| EngineError::Write {
        path: path.to_path_buf(),
        bytes: bytes.len() as u64,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_names_the_path_and_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-folder/out.bin");
        let err = write(&path, &[0u8; 1234]).unwrap_err().to_string();
        assert!(
            err.contains("1234 bytes") && err.contains("missing-folder/out.bin"),
            "{err}"
        );
    }
}
