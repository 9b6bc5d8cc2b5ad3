//! A checkpoint folder as one file (the coordinator stores one checkpoint blob per job): a magic line, then for
//! each file its relative path and bytes, length-prefixed. Paths are checked on unpacking.

use std::io::{Read, Write};
use std::path::{Component, Path};

const MAGIC: &[u8; 10] = b"TANDEMCK1\n";

/// Writes every file under `dir` (sorted, recursive) into `out`.
pub fn pack(dir: &Path, out: &Path) -> std::io::Result<()> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    w.write_all(MAGIC)?;
    for rel in files {
        let bytes = std::fs::read(dir.join(&rel))?;
        let name = rel.as_bytes();
        w.write_all(&(name.len() as u32).to_le_bytes())?;
        w.write_all(name)?;
        w.write_all(&(bytes.len() as u64).to_le_bytes())?;
        w.write_all(&bytes)?;
    }
    w.flush()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Recreates the files of bundle `file` under `dir`.
pub fn unpack(file: &Path, dir: &Path) -> std::io::Result<()> {
    let mut r = std::io::BufReader::new(std::fs::File::open(file)?);
    let mut magic = [0u8; 10];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid(format!(
            "{}: not a Tandem checkpoint bundle",
            file.display()
        )));
    }
    loop {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut name = vec![0u8; u32::from_le_bytes(len) as usize];
        r.read_exact(&mut name)?;
        let name = String::from_utf8(name)
            .map_err(|_| invalid(format!("{}: a file name is not UTF-8", file.display())))?;
        let rel = Path::new(&name);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(invalid(format!("{}: unsafe path {name:?}", file.display())));
        }
        let mut size = [0u8; 8];
        r.read_exact(&mut size)?;
        let mut bytes = Vec::new();
        (&mut r)
            .take(u64::from_le_bytes(size))
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 != u64::from_le_bytes(size) {
            return Err(invalid(format!(
                "{}: truncated at {name:?}",
                file.display()
            )));
        }
        let target = dir.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, bytes)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_file() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("adapter")).unwrap();
        std::fs::write(src.join("state.json"), b"{\"step\":2}").unwrap();
        std::fs::write(src.join("adapter/w.bin"), [0u8, 1, 2, 255]).unwrap();
        let file = tmp.path().join("ck.bin");
        pack(&src, &file).unwrap();
        let dst = tmp.path().join("dst");
        unpack(&file, &dst).unwrap();
        assert_eq!(
            std::fs::read(dst.join("state.json")).unwrap(),
            b"{\"step\":2}"
        );
        assert_eq!(
            std::fs::read(dst.join("adapter/w.bin")).unwrap(),
            [0u8, 1, 2, 255]
        );
    }

    #[test]
    fn rejects_other_files_and_escaping_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("x");
        std::fs::write(&file, b"not a bundle").unwrap();
        assert!(unpack(&file, tmp.path()).is_err());
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&5u32.to_le_bytes());
        bytes.extend_from_slice(b"../ev");
        bytes.extend_from_slice(&0u64.to_le_bytes());
        std::fs::write(&file, bytes).unwrap();
        assert!(unpack(&file, &tmp.path().join("d")).is_err());
    }
}
