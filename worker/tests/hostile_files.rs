//! Hostile model files: seeded byte mutations and truncations of real checkpoints (the tiny LLaMA's
//! safetensors and config, SmolLM2's GGUF header, a PEFT adapter) must give an error that names the file, never
//! a panic. Each case runs under `catch_unwind`, so a panic is reported with the mutation that caused it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use tandem_worker::engine::llama::{self, Llama};
use tandem_worker::engine::{EngineError, peft};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One way of damaging a file.
#[derive(Debug, Clone)]
enum Damage {
    /// Bytes at `at` overwritten with `with`.
    Overwrite { at: usize, with: Vec<u8> },
    /// The file cut to `len` bytes.
    Truncate { len: usize },
}

/// Seeded damage within the first `region` bytes: single flipped bytes, length-like fields set to extremes
/// (0, 1, 0xff.., i64::MAX), and truncations to fewer than `len` bytes.
fn damages(seed: u64, count: usize, region: usize, len: usize) -> Vec<Damage> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut below = |n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    let extremes: [&[u8]; 5] = [
        &[0xff; 8],
        &[0; 8],
        &[1, 0, 0, 0, 0, 0, 0, 0],
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        &[0x00, 0x00, 0x00, 0x80],
    ];
    (0..count)
        .map(|i| match i % 3 {
            0 => Damage::Overwrite {
                at: below(region),
                with: vec![below(256) as u8],
            },
            1 => Damage::Overwrite {
                at: below(region),
                with: extremes[below(extremes.len())].to_vec(),
            },
            _ => Damage::Truncate { len: below(len) },
        })
        .collect()
}

/// Runs `open` on every damaged copy of `original` written to `target`; fails on any panic and on an error
/// that does not name the file. Overwrites patch the target in place and are undone after each case;
/// truncations run last, each writing only the kept prefix, so a large file is copied twice in all.
fn survive(
    original: &Path,
    target: &Path,
    region: usize,
    count: usize,
    open: &dyn Fn() -> Result<(), EngineError>,
) {
    use std::os::unix::fs::FileExt;
    let bytes = std::fs::read(original).unwrap();
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    let region = region.min(bytes.len());
    let mut cases = damages(7, count, region, region);
    cases.sort_by_key(|d| matches!(d, Damage::Truncate { .. }));
    std::fs::write(target, &bytes).unwrap();
    let mut refused = 0;
    for (i, d) in cases.iter().enumerate() {
        match d {
            Damage::Overwrite { at, with } => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(target)
                    .unwrap();
                let end = (at + with.len()).min(bytes.len());
                file.write_all_at(&with[..end - at], *at as u64).unwrap();
            }
            Damage::Truncate { len } => std::fs::write(target, &bytes[..*len]).unwrap(),
        }
        let outcome = catch_unwind(AssertUnwindSafe(open));
        if let Damage::Overwrite { at, with } = d {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(target)
                .unwrap();
            let end = (at + with.len()).min(bytes.len());
            file.write_all_at(&bytes[*at..end], *at as u64).unwrap();
        }
        match outcome {
            Err(_) => panic!("{name}: case {i}, {d:?}: panicked"),
            Ok(Err(e)) => {
                refused += 1;
                let msg = e.to_string();
                assert!(
                    msg.contains(&name) || msg.contains("tokenizer") || msg.contains("config"),
                    "{name}: case {i}, {d:?}: the error does not name the file: {msg}"
                );
            }
            Ok(Ok(())) => {}
        }
    }
    std::fs::write(target, &bytes).unwrap();
    open().expect("the undamaged file opens");
    eprintln!("{name}: {count} damaged copies, {refused} refused with an error, none panicked");
    assert!(refused > count / 4, "most damage must be noticed");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Loads a model folder and reads every tensor it declares.
fn load_all(dir: &Path) -> Result<(), EngineError> {
    let (_model, _tok): (Llama, _) = llama::load(dir)?;
    Ok(())
}

#[test]
fn damaged_safetensors_and_configs_are_refused_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-llama");
    copy_dir(&fixture("tiny-llama"), &dir);
    let st = fixture("tiny-llama").join("model.safetensors");
    let header =
        8 + u64::from_le_bytes(std::fs::read(&st).unwrap()[..8].try_into().unwrap()) as usize;
    survive(&st, &dir.join("model.safetensors"), header, 300, &|| {
        load_all(&dir)
    });
    survive(
        &fixture("tiny-llama").join("config.json"),
        &dir.join("config.json"),
        usize::MAX,
        150,
        &|| load_all(&dir),
    );
}

#[test]
fn damaged_peft_adapters_are_refused_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    copy_dir(&fixture("tiny-llama").join("adapter"), &adapter);
    let model = std::cell::RefCell::new(llama::load(&fixture("tiny-llama")).unwrap().0);
    let open = || peft::load(&mut *model.borrow_mut(), &adapter, None).map(|_| ());
    for file in [peft::CONFIG_FILE, peft::WEIGHTS_FILE] {
        survive(
            &fixture("tiny-llama").join("adapter").join(file),
            &adapter.join(file),
            usize::MAX,
            200,
            &open,
        );
    }
}

#[test]
fn a_damaged_gguf_header_is_refused_without_a_panic() {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        eprintln!(
            "skipped: {} is not in the cache (run scripts/fetch-models.sh)",
            gguf.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("damaged.gguf");
    // The header (metadata with the whole vocabulary, then the tensor table) is the first ~2 MiB; tensor data
    // after it is read only for the tensors a job loads.
    let open = || -> Result<(), EngineError> {
        let mut c = llama::open(&target)?;
        c.store.get("model.norm.weight", &[c.config.hidden_size])?;
        Ok(())
    };
    survive(&gguf, &target, 2 << 20, 40, &open);
}
