//! A job's inputs (models, tokenizers, datasets) fetched by digest from the coordinator into a cache shared
//! by every worker of the machine, and laid out as the files the engine reads.
//!
//! `<cache>/blobs/<sha256>` holds verified blobs (renamed into place only after their hash matched);
//! `<cache>/inputs/<sha256>/` holds an input laid out: a file input as `<file name>`, a folder input as its
//! listed files at their relative paths, each a hard link to its blob (a copy where links are refused). Both
//! are built under temporary names and renamed when complete, and one lock file per input makes a second
//! worker of the machine wait for the first one's download instead of fetching the same bytes again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_experiments::planner::inputs::{is_file_name, is_sha256_hex, parse_listing};
use tandem_proto as pb;

use super::transfer::{TransferError, WorkerClient, download_to_cache};

/// Why an input could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input {role} ({sha256}): {source}")]
    Transfer {
        role: String,
        sha256: String,
        source: TransferError,
    },
    #[error("input {role} ({sha256}): {message}")]
    Invalid {
        role: String,
        sha256: String,
        message: String,
    },
    #[error("input {role}: i/o on {}: {source}", path.display())]
    Io {
        role: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl InputError {
    /// Bad refs cannot get better on retry; transfers and i/o may.
    pub fn is_permanent(&self) -> bool {
        matches!(self, InputError::Invalid { .. })
    }
}

/// The machine-wide input cache.
#[derive(Debug, Clone)]
pub struct InputCache {
    root: PathBuf,
}

/// How often a worker waiting for another one's download checks the lock.
const LOCK_POLL: Duration = Duration::from_millis(200);

impl InputCache {
    pub fn new(root: impl Into<PathBuf>) -> InputCache {
        InputCache { root: root.into() }
    }

    fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Where input `sha256` is laid out once fetched.
    pub fn input_dir(&self, sha256: &str) -> PathBuf {
        self.root.join("inputs").join(sha256)
    }

    /// The path the engine reads for `input` (a file, or a folder), fetching what this machine lacks.
    pub async fn fetch(
        &self,
        client: &WorkerClient,
        input: &pb::InputRef,
    ) -> Result<PathBuf, InputError> {
        let invalid = |message: String| InputError::Invalid {
            role: input.role.clone(),
            sha256: input.sha256.clone(),
            message,
        };
        let io = |path: &Path| {
            let (role, path) = (input.role.clone(), path.to_path_buf());
            move |source| InputError::Io { role, path, source }
        };
        if !is_sha256_hex(&input.sha256) {
            return Err(invalid("not a hex SHA-256".into()));
        }
        if !input.folder && !is_file_name(&input.file_name) {
            return Err(invalid(format!(
                "file name {:?} is not one path component",
                input.file_name
            )));
        }
        let dir = self.input_dir(&input.sha256);
        let laid_out = |dir: &Path| match input.folder {
            true => dir.to_path_buf(),
            false => dir.join(&input.file_name),
        };
        if laid_out(&dir).exists() {
            return Ok(laid_out(&dir));
        }
        let locks = self.root.join("locks");
        std::fs::create_dir_all(&locks).map_err(io(&locks))?;
        let lock_path = locks.join(format!("{}.lock", input.sha256));
        let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
        let mut waited = false;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !waited {
                        tracing::info!(role = %input.role, input = %input.sha256, "another worker of this machine is fetching it; waiting");
                        waited = true;
                    }
                    tokio::time::sleep(LOCK_POLL).await;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
            }
        }
        // Locked (released when `lock` drops): the other worker may have finished meanwhile.
        if laid_out(&dir).exists() {
            return Ok(laid_out(&dir));
        }
        let started = std::time::Instant::now();
        let blob = |sha256: String| async move {
            download_to_cache(client, &sha256, &self.blobs())
                .await
                .map_err(|source| InputError::Transfer {
                    role: input.role.clone(),
                    sha256,
                    source,
                })
        };
        let staging =
            self.root
                .join("inputs")
                .join(format!(".{}.{}.part", input.sha256, std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        if input.folder {
            let listing_path = blob(input.sha256.clone()).await?;
            let listing = std::fs::read(&listing_path).map_err(io(&listing_path))?;
            let files = parse_listing(&listing).map_err(|e| invalid(e.to_string()))?;
            for file in files {
                let from = blob(file.sha256.clone()).await?;
                let to = staging.join(&file.relative);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                link_or_copy(&from, &to).map_err(io(&to))?;
            }
        } else {
            let from = blob(input.sha256.clone()).await?;
            let to = staging.join(&input.file_name);
            link_or_copy(&from, &to).map_err(io(&to))?;
        }
        std::fs::rename(&staging, &dir).map_err(io(&dir))?;
        tracing::info!(
            role = %input.role,
            input = %input.sha256,
            bytes = input.size,
            seconds = started.elapsed().as_secs_f64(),
            "input fetched into the machine cache"
        );
        drop(lock);
        Ok(laid_out(&dir))
    }
}

fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(_) => std::fs::copy(from, to).map(|_| ()),
    }
}

/// The default machine-wide cache: `$XDG_CACHE_HOME/tandem`, else `$HOME/.cache/tandem`, else
/// `<work dir>/cache`.
pub fn default_cache_dir(work_dir: &Path) -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("tandem");
    }
    if let Some(home) = var("HOME") {
        return PathBuf::from(home).join(".cache").join("tandem");
    }
    work_dir.join("cache")
}
