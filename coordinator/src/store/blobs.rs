//! Content-addressed blob files: `<store>/blobs/<first two hex>/<sha256>`. A blob's name is its verified
//! SHA-256, so no name can escape the store folder; bytes are re-hashed on write and on read.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::StoreError;

/// True when `s` is 64 lower-case hex digits.
/// Reads up to `size` bytes (fewer only at the end of `reader`): one chunk of a streamed blob.
pub fn read_chunk(reader: &mut impl std::io::Read, size: usize) -> std::io::Result<Vec<u8>> {
    let mut data = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        match reader.read(&mut data[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    data.truncate(filled);
    Ok(data)
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The blob folder of a store.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

/// An upload in progress: bytes go to a temporary file while being hashed.
pub struct BlobWriter {
    store: BlobStore,
    tmp_path: PathBuf,
    file: File,
    hasher: Sha256,
    written: u64,
    limit: u64,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<BlobStore, StoreError> {
        for sub in ["blobs", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        // Left-over partial uploads from a crash are garbage.
        let tmp = root.join("tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(BlobStore {
            root: root.to_path_buf(),
        })
    }

    /// The file of blob `sha256`; errors when `sha256` is not a hex SHA-256 (so it cannot name anything else).
    pub fn path_of(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        if !is_sha256_hex(sha256) {
            return Err(StoreError::BadHash(sha256.to_string()));
        }
        Ok(self.root.join("blobs").join(&sha256[..2]).join(sha256))
    }

    pub fn contains(&self, sha256: &str) -> bool {
        self.path_of(sha256).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Starts an upload of at most `limit` bytes.
    pub fn writer(&self, limit: u64) -> Result<BlobWriter, StoreError> {
        let mut name = [0u8; 16];
        let _ = rand::RngReader(rand::rngs::SysRng).read_exact(&mut name);
        let tmp_path = self.root.join("tmp").join(hex(&name));
        let file = File::create(&tmp_path).map_err(|source| StoreError::Io {
            path: tmp_path.clone(),
            source,
        })?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp_path,
            file,
            hasher: Sha256::new(),
            written: 0,
            limit,
        })
    }

    /// Stores `bytes` (already in memory) and returns their hash.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let sha = sha256_hex(bytes);
        let mut writer = self.writer(u64::MAX)?;
        writer.write(bytes)?;
        writer.finish(&sha)?;
        Ok(sha)
    }

    /// Reads blob `sha256` whole and checks its hash.
    pub fn read_verified(&self, sha256: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(sha256)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!("blob {sha256}")));
            }
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(StoreError::HashMismatch {
                expected: sha256.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Re-hashes blob `sha256` without keeping it in memory; returns the actual hash.
    pub fn rehash(&self, sha256: &str) -> Result<String, StoreError> {
        let path = self.path_of(sha256)?;
        let mut file = File::open(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex(&hasher.finalize()))
    }
}

impl BlobWriter {
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.written += data.len() as u64;
        if self.written > self.limit {
            return Err(StoreError::TooLarge { limit: self.limit });
        }
        self.hasher.update(data);
        self.file.write_all(data).map_err(|source| StoreError::Io {
            path: self.tmp_path.clone(),
            source,
        })
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies the bytes against `expected_sha256`, then moves them durably into place. A mismatch deletes
    /// the upload and errors with both hashes.
    pub fn finish(mut self, expected_sha256: &str) -> Result<(), StoreError> {
        let actual = hex(&std::mem::take(&mut self.hasher).finalize());
        if actual != expected_sha256 {
            return Err(StoreError::HashMismatch {
                expected: expected_sha256.to_string(),
                actual,
            });
        }
        let dest = self.store.path_of(&actual)?;
        let tmp_path = self.tmp_path.clone();
        self.file.sync_all().map_err(|source| StoreError::Io {
            path: tmp_path.clone(),
            source,
        })?;
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        fs::rename(&tmp_path, &dest).map_err(|source| StoreError::Io {
            path: dest.clone(),
            source,
        })?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After `finish` the file has moved and this is a no-op; an abandoned upload is removed.
        let _ = fs::remove_file(&self.tmp_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_verifies_and_mismatch_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let sha = blobs.put_bytes(b"adapter bytes").unwrap();
        assert_eq!(blobs.read_verified(&sha).unwrap(), b"adapter bytes");

        let mut writer = blobs.writer(1024).unwrap();
        writer.write(b"corrupted").unwrap();
        let err = writer.finish(&sha).unwrap_err();
        assert!(matches!(err, StoreError::HashMismatch { .. }), "{err}");

        // Corrupt the stored file: reading notices.
        fs::write(blobs.path_of(&sha).unwrap(), b"tampered").unwrap();
        assert!(matches!(
            blobs.read_verified(&sha),
            Err(StoreError::HashMismatch { .. })
        ));
        assert_ne!(blobs.rehash(&sha).unwrap(), sha);
    }

    #[test]
    fn names_that_are_not_hashes_cannot_address_files() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        for bad in [
            "../../etc/passwd",
            "",
            "ABCDEF",
            &"g".repeat(64),
            &format!("{}/..", "a".repeat(61)),
        ] {
            assert!(
                matches!(blobs.path_of(bad), Err(StoreError::BadHash(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn uploads_over_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let mut writer = blobs.writer(4).unwrap();
        assert!(matches!(
            writer.write(b"12345"),
            Err(StoreError::TooLarge { limit: 4 })
        ));
    }
}
