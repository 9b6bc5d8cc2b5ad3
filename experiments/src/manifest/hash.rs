//! Canonical form and content hash of a manifest.
//!
//! The canonical form is the resolved manifest (defaults filled in) as JSON with sorted keys and no
//! whitespace, in which every referenced path is replaced by the digest of what it points at
//! (`"sha256:<hex>"`). Paths therefore do not enter the hash at all: moving the project folder, or pointing at
//! a copy of the same bytes elsewhere, keeps the hash; changing any byte of a referenced file changes it.
//! Whitespace, comments and key order of the TOML never reach the canonical form.
//!
//! The digest of a single file is its SHA-256. The digest of a folder (a Hugging Face model, a MIMIC-CXR tree)
//! is the SHA-256 of its `SHA256SUMS`-style listing: one line `<sha256>  <relative/path>\n` per file that
//! matters, sorted by path. The manifest hash is `SHA-256("tandem-manifest-v1\n" + canonical JSON)`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::types::{DatasetFormat, Manifest};

/// Why a manifest could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{role}: cannot read {}: {source}", path.display())]
    Read {
        role: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{role}: {} has no files to hash", path.display())]
    Empty { role: String, path: PathBuf },
}

/// One hashed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileHash {
    /// The manifest field that references it: `model.path`, `stage1.dataset.path`, ...
    pub role: String,
    pub path: PathBuf,
    /// Path inside the referenced folder (`/`-separated), or the file name for a single file.
    pub relative: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The manifest's content hash with everything that went into it, so an audit can re-check each file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContentHash {
    /// SHA-256 of the canonical form: the manifest hash.
    pub sha256: String,
    /// The canonical JSON itself.
    pub canonical: String,
    /// Digest per referenced input (role -> `sha256:<hex>`), as it appears in the canonical form.
    pub inputs: BTreeMap<String, String>,
    /// Every file hashed, in role then path order.
    pub files: Vec<FileHash>,
    /// The roles whose path is a folder (digest of a listing); the others are single files.
    pub folders: std::collections::BTreeSet<String>,
}

const DOMAIN: &str = "tandem-manifest-v1\n";
const BUFFER: usize = 1 << 20;

/// Hex of SHA-256 over `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams a file through SHA-256 (1 MiB at a time); returns the hex digest and the byte count.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

/// JSON with object keys sorted at every level and no insignificant whitespace.
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        leaf => out.push_str(&leaf.to_string()),
    }
}

/// SHA-256 of the canonical JSON of any serialisable value (used for job configs too).
pub fn canonical_sha256<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_value(value).expect("plain data serialises to JSON");
    sha256_hex(canonical_json(&json).as_bytes())
}

/// Whether a file of a Hugging Face model folder matters for the weights it holds.
fn model_file_matters(relative: &str) -> bool {
    matches!(
        relative,
        "config.json" | "tokenizer.json" | "model.safetensors.index.json"
    ) || !relative.contains('/') && relative.ends_with(".safetensors")
}

/// The files behind each path the manifest references: role -> files (sorted by relative path).
pub fn referenced_files(
    manifest: &Manifest,
) -> Result<BTreeMap<String, Vec<(String, PathBuf)>>, HashError> {
    let mut roles: Vec<(String, PathBuf, bool)> =
        vec![("model.path".into(), manifest.model.path.clone(), true)];
    for (name, stage) in [("stage1", &manifest.stage1), ("stage2", &manifest.stage2)] {
        let _ = DatasetFormat::Csv;
        roles.push((
            format!("{name}.dataset.path"),
            stage.dataset.path.clone(),
            false,
        ));
    }
    if let Some(encoder) = &manifest.evaluation.bertscore_model {
        roles.push(("evaluation.bertscore_model".into(), encoder.clone(), true));
    }
    let mut out = BTreeMap::new();
    for (role, path, is_model) in roles {
        let read_error = |source| HashError::Read {
            role: role.clone(),
            path: path.clone(),
            source,
        };
        let metadata = std::fs::metadata(&path).map_err(read_error)?;
        let files = if metadata.is_file() {
            let name = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            vec![(name, path.clone())]
        } else {
            let mut files = Vec::new();
            walk(&path, "", &mut files).map_err(|source| HashError::Read {
                role: role.clone(),
                path: path.clone(),
                source,
            })?;
            if is_model {
                files.retain(|(relative, _)| model_file_matters(relative));
            }
            files.sort();
            files
        };
        if files.is_empty() {
            return Err(HashError::Empty { role, path });
        }
        out.insert(role, files);
    }
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let metadata = std::fs::metadata(&path)?;
        if metadata.is_dir() {
            walk(&path, &relative, out)?;
        } else if metadata.is_file() {
            out.push((relative, path));
        }
    }
    Ok(())
}

/// The `SHA256SUMS`-style listing of a folder: one line `<sha256>  <relative/path>\n` per file, in the order
/// given (callers pass files sorted by relative path). A folder's digest is the SHA-256 of this text.
pub fn listing<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut text = String::new();
    for (sha256, relative) in files {
        text.push_str(sha256);
        text.push_str("  ");
        text.push_str(relative);
        text.push('\n');
    }
    text
}

/// The digest of a referenced path as it enters the canonical form (`sha256:<hex>`): a file's SHA-256, or the
/// SHA-256 of a folder's listing (for a model folder, `model_files_only`, only the files that matter).
pub fn digest_path(path: &Path, model_files_only: bool) -> std::io::Result<String> {
    if std::fs::metadata(path)?.is_file() {
        return Ok(format!("sha256:{}", sha256_file(path)?.0));
    }
    let mut files = Vec::new();
    walk(path, "", &mut files)?;
    if model_files_only {
        files.retain(|(relative, _)| model_file_matters(relative));
    }
    files.sort();
    let mut hashed = Vec::with_capacity(files.len());
    for (relative, file) in files {
        hashed.push((sha256_file(&file)?.0, relative));
    }
    let text = listing(hashed.iter().map(|(s, r)| (s.as_str(), r.as_str())));
    Ok(format!("sha256:{}", sha256_hex(text.as_bytes())))
}

/// Hashes every referenced file and the canonical manifest.
pub fn content_hash(manifest: &Manifest) -> Result<ContentHash, HashError> {
    let mut files = Vec::new();
    let mut inputs = BTreeMap::new();
    let mut folders = std::collections::BTreeSet::new();
    for (role, entries) in referenced_files(manifest)? {
        let single = entries.len() == 1
            && std::fs::metadata(&entries[0].1).is_ok_and(|m| m.is_file())
            && is_file_role(manifest, &role);
        let first = files.len();
        for (relative, path) in entries {
            let (sha256, bytes) = sha256_file(&path).map_err(|source| HashError::Read {
                role: role.clone(),
                path: path.clone(),
                source,
            })?;
            tracing::debug!(role = %role, path = %path.display(), bytes, "hashed");
            files.push(FileHash {
                role: role.clone(),
                path,
                relative,
                sha256,
                bytes,
            });
        }
        let digest = if single {
            files.last().expect("one file").sha256.clone()
        } else {
            folders.insert(role.clone());
            let text = listing(
                files[first..]
                    .iter()
                    .map(|f| (f.sha256.as_str(), f.relative.as_str())),
            );
            sha256_hex(text.as_bytes())
        };
        inputs.insert(role, format!("sha256:{digest}"));
    }
    let canonical = canonical_form(manifest, &inputs);
    let sha256 = sha256_hex(format!("{DOMAIN}{canonical}").as_bytes());
    Ok(ContentHash {
        sha256,
        canonical,
        inputs,
        files,
        folders,
    })
}

/// Whether the role's path is itself a file (not a folder).
fn is_file_role(manifest: &Manifest, role: &str) -> bool {
    let path = match role {
        "model.path" => &manifest.model.path,
        "stage1.dataset.path" => &manifest.stage1.dataset.path,
        "stage2.dataset.path" => &manifest.stage2.dataset.path,
        _ => match &manifest.evaluation.bertscore_model {
            Some(path) => path,
            None => return false,
        },
    };
    path.is_file()
}

/// The canonical JSON of `manifest`, paths replaced by the given input digests (role -> digest).
pub fn canonical_form(manifest: &Manifest, inputs: &BTreeMap<String, String>) -> String {
    let mut json = serde_json::to_value(manifest).expect("a manifest serialises to JSON");
    for (role, digest) in inputs {
        let pointer = match role.as_str() {
            "model.path" => "/model/path",
            "stage1.dataset.path" => "/stage1/dataset/path",
            "stage2.dataset.path" => "/stage2/dataset/path",
            "evaluation.bertscore_model" => "/evaluation/bertscore_model",
            _ => continue,
        };
        if let Some(slot) = json.pointer_mut(pointer) {
            *slot = serde_json::Value::String(digest.clone());
        }
    }
    canonical_json(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let value: serde_json::Value =
            serde_json::from_str(r#"{"b": {"z": 1, "a": [2, {"y": 1, "x": 0.5}]}, "a": "s"}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&value),
            r#"{"a":"s","b":{"a":[2,{"x":0.5,"y":1}],"z":1}}"#
        );
    }

    #[test]
    fn file_hash_streams_and_matches_the_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let (digest, bytes) = sha256_file(&path).unwrap();
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(bytes, 3);
        // Larger than one buffer.
        let big = vec![7u8; BUFFER * 2 + 5];
        std::fs::write(&path, &big).unwrap();
        assert_eq!(sha256_file(&path).unwrap().0, sha256_hex(&big));
    }
}
