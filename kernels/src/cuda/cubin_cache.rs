//! The on-disk cache of NVRTC-compiled CUBINs, so a worker compiles each kernel family once per machine instead of
//! at every start. One file per (source file, architecture), named by a SHA-256 over everything that determines
//! the binary: the shared header and the source text, the NVRTC options and the NVRTC version. A changed kernel,
//! option or compiler therefore never reuses a stale binary.
//!
//! A file is written to a temporary name and renamed into place, and carries its own length and SHA-256, so a
//! write cut short (a killed worker, a full disk) is detected on read; such a file is reported, compiled again
//! and replaced. A cache folder that cannot be created or written costs only the compile time: it is reported
//! once per file at warn level and never fails the caller.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::compile::{COMMON, KernelSource};
use crate::error::KernelError;

/// File magic and format version.
const MAGIC: &[u8; 8] = b"TNDCUBN1";

/// The kernel cache folder: `$TANDEM_KERNEL_CACHE_DIR`, else `$XDG_CACHE_HOME/tandem/kernels`, else
/// `$HOME/.cache/tandem/kernels`; `None` when none of them is set.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    var("TANDEM_KERNEL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("tandem/kernels")))
        .or_else(|| var("HOME").map(|d| PathBuf::from(d).join(".cache/tandem/kernels")))
}

/// Where a CUBIN came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CubinOrigin {
    /// Read from the cache file.
    Cached(PathBuf),
    /// Compiled now and written to the cache file.
    CompiledAndStored(PathBuf),
    /// Compiled now, not stored (no cache folder, or it could not be written: the reason).
    CompiledOnly(String),
}

/// The cache: a folder, or none (every request compiles).
#[derive(Clone, Debug)]
pub struct CubinCache {
    dir: Option<PathBuf>,
}

/// The cache key of `source` compiled for `sm_{arch}` with `options` by NVRTC `nvrtc` (major, minor): lowercase
/// hex SHA-256.
pub fn key(source: &KernelSource, arch: u32, options: &[String], nvrtc: (i32, i32)) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(MAGIC);
    field(COMMON.as_bytes());
    field(source.name.as_bytes());
    field(source.code.as_bytes());
    field(&arch.to_le_bytes());
    for o in options {
        field(o.as_bytes());
    }
    field(&nvrtc.0.to_le_bytes());
    field(&nvrtc.1.to_le_bytes());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Header + body: magic, body length (u64 LE), body SHA-256, body.
fn encode(cubin: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cubin.len() + 48);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(cubin.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(cubin));
    out.extend_from_slice(cubin);
    out
}

/// The body of a cache file, or why it is not a whole, intact one.
fn decode(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < 48 || &bytes[..8] != MAGIC {
        return Err("not a Tandem CUBIN cache file (bad magic or too short)".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len) as usize;
    let body = &bytes[48..];
    if body.len() != len {
        return Err(format!(
            "holds {} bytes of CUBIN, its header says {len} (cut short?)",
            body.len()
        ));
    }
    if Sha256::digest(body).as_slice() != &bytes[16..48] {
        return Err("its CUBIN does not match the checksum in its header".into());
    }
    Ok(body)
}

impl CubinCache {
    /// A cache in `dir` (created on first store).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
        }
    }

    /// No cache: every request compiles.
    pub fn disabled() -> Self {
        Self { dir: None }
    }

    /// The cache in [`default_dir`], or disabled when no folder is known.
    pub fn from_env() -> Self {
        Self { dir: default_dir() }
    }

    /// The folder, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The file a key is stored in.
    fn path(&self, source: &KernelSource, arch: u32, key: &str) -> Option<PathBuf> {
        let stem = source.name.trim_end_matches(".cu");
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{stem}-sm{arch}-{}.cubin", &key[..16])))
    }

    /// The CUBIN for `key`: read from the cache when an intact file is there, else made by `compile` and stored.
    /// Only `compile`'s error is an error; cache trouble is logged and costs a compile.
    pub fn get_or_compile(
        &self,
        source: &KernelSource,
        arch: u32,
        key: &str,
        compile: impl FnOnce() -> Result<Vec<u8>, KernelError>,
    ) -> Result<(Vec<u8>, CubinOrigin), KernelError> {
        let Some(path) = self.path(source, arch, key) else {
            return Ok((
                compile()?,
                CubinOrigin::CompiledOnly("no cache folder".into()),
            ));
        };
        match std::fs::read(&path) {
            Ok(bytes) => match decode(&bytes) {
                Ok(body) => return Ok((body.to_vec(), CubinOrigin::Cached(path))),
                Err(why) => tracing::warn!(
                    file = %path.display(),
                    reason = %why,
                    "cached CUBIN is damaged; compiling again and replacing it"
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read cached CUBIN; compiling")
            }
        }
        let cubin = compile()?;
        match store(&path, &cubin) {
            Ok(()) => Ok((cubin, CubinOrigin::CompiledAndStored(path))),
            Err(why) => {
                tracing::warn!(file = %path.display(), reason = %why, "cannot store the compiled CUBIN; continuing without the cache");
                Ok((cubin, CubinOrigin::CompiledOnly(why)))
            }
        }
    }
}

/// Writes `cubin` to `path` through a temporary file in the same folder and a rename, so readers see a whole
/// file or none.
fn store(path: &Path, cubin: &[u8]) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no folder", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, encode(cubin)).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("renaming {} to {}: {e}", tmp.display(), path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::compile::{ATTENTION, LORA, nvrtc_version, options};
    use std::cell::Cell;

    fn opts(arch: u32) -> Vec<String> {
        options(arch)
    }

    #[test]
    fn the_key_changes_with_everything_that_shapes_the_binary() {
        let base = key(&LORA, 90, &opts(90), (13, 0));
        assert_eq!(base.len(), 64);
        assert_eq!(base, key(&LORA, 90, &opts(90), (13, 0)), "deterministic");
        let edited = KernelSource {
            name: "lora.cu",
            code: "// one more comment\n",
        };
        for (what, other) in [
            ("source", key(&ATTENTION, 90, &opts(90), (13, 0))),
            ("text", key(&edited, 90, &opts(90), (13, 0))),
            ("arch", key(&LORA, 80, &opts(90), (13, 0))),
            ("options", key(&LORA, 90, &opts(80), (13, 0))),
            ("nvrtc", key(&LORA, 90, &opts(90), (13, 1))),
        ] {
            assert_ne!(base, other, "{what} must change the key");
        }
    }

    #[test]
    fn a_second_request_reads_the_file_and_does_not_compile() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CubinCache::at(dir.path().join("kernels"));
        let k = key(&LORA, 90, &opts(90), (13, 0));
        let calls = Cell::new(0);
        let compile = || {
            calls.set(calls.get() + 1);
            Ok(vec![7u8, 1, 2, 3, 250])
        };
        let (first, origin) = cache.get_or_compile(&LORA, 90, &k, compile).unwrap();
        let CubinOrigin::CompiledAndStored(path) = origin else {
            panic!("{origin:?}")
        };
        assert!(
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("lora-sm90-")
        );
        let (second, origin) = cache.get_or_compile(&LORA, 90, &k, compile).unwrap();
        assert_eq!((first.clone(), calls.get()), (second, 1));
        assert_eq!(origin, CubinOrigin::Cached(path));
        // Another architecture is another file.
        let k80 = key(&LORA, 80, &opts(80), (13, 0));
        cache.get_or_compile(&LORA, 80, &k80, compile).unwrap();
        assert_eq!(calls.get(), 2);
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("kernels"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_cut_short_or_altered_file_is_compiled_again_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CubinCache::at(dir.path());
        let k = key(&LORA, 90, &opts(90), (13, 0));
        let good = vec![9u8; 300];
        let (_, origin) = cache
            .get_or_compile(&LORA, 90, &k, || Ok(good.clone()))
            .unwrap();
        let CubinOrigin::CompiledAndStored(path) = origin else {
            panic!("{origin:?}")
        };
        let whole = std::fs::read(&path).unwrap();
        let mut flipped = whole.clone();
        flipped[100] ^= 1;
        for damaged in [
            whole[..whole.len() - 10].to_vec(),
            flipped,
            b"junk".to_vec(),
        ] {
            std::fs::write(&path, &damaged).unwrap();
            let calls = Cell::new(0);
            let (got, origin) = cache
                .get_or_compile(&LORA, 90, &k, || {
                    calls.set(calls.get() + 1);
                    Ok(good.clone())
                })
                .unwrap();
            assert_eq!((got, calls.get()), (good.clone(), 1));
            assert_eq!(origin, CubinOrigin::CompiledAndStored(path.clone()));
            assert_eq!(
                std::fs::read(&path).unwrap(),
                whole,
                "the file is whole again"
            );
        }
    }

    #[test]
    fn an_unwritable_or_missing_cache_only_costs_a_compile_and_compile_errors_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the folder should be: the folder cannot be created.
        let blocker = dir.path().join("not-a-folder");
        std::fs::write(&blocker, b"x").unwrap();
        let cache = CubinCache::at(blocker.join("kernels"));
        let k = key(&LORA, 90, &opts(90), (13, 0));
        let (got, origin) = cache
            .get_or_compile(&LORA, 90, &k, || Ok(vec![1, 2]))
            .unwrap();
        assert_eq!(got, vec![1, 2]);
        assert!(
            matches!(&origin, CubinOrigin::CompiledOnly(why) if why.contains("not-a-folder")),
            "{origin:?}"
        );
        let (_, origin) = CubinCache::disabled()
            .get_or_compile(&LORA, 90, &k, || Ok(vec![3]))
            .unwrap();
        assert_eq!(origin, CubinOrigin::CompiledOnly("no cache folder".into()));
        let err = CubinCache::at(dir.path().join("c"))
            .get_or_compile(&LORA, 90, &k, || {
                Err(KernelError::invalid("lora.cu", "bad"))
            })
            .unwrap_err();
        assert!(err.to_string().contains("bad"), "{err}");
        assert!(
            !dir.path().join("c").exists()
                || std::fs::read_dir(dir.path().join("c"))
                    .unwrap()
                    .next()
                    .is_none()
        );
    }

    /// With NVRTC present: a real compile is stored, and the file gives back the same CUBIN.
    #[test]
    fn a_real_nvrtc_cubin_round_trips_through_the_cache() {
        let Ok(version) = nvrtc_version() else {
            assert!(
                !crate::cuda::compile::nvrtc_required(),
                "NVRTC is required here"
            );
            println!("skipped: NVRTC not found");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = CubinCache::at(dir.path());
        let k = key(&LORA, 90, &opts(90), version);
        let compile = || crate::cuda::compile::compile_cubin(&LORA, 90);
        let (first, o1) = cache.get_or_compile(&LORA, 90, &k, compile).unwrap();
        let (second, o2) = cache
            .get_or_compile(&LORA, 90, &k, || panic!("must come from the cache"))
            .unwrap();
        assert!(matches!(o1, CubinOrigin::CompiledAndStored(_)), "{o1:?}");
        assert!(matches!(o2, CubinOrigin::Cached(_)), "{o2:?}");
        assert_eq!(first, second);
        assert!(first.starts_with(b"\x7fELF"), "a CUBIN is an ELF file");
    }
}
