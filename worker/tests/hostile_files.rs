//! Hostile model files: seeded byte mutations and truncations of real checkpoints (the tiny LLaMA's
//! safetensors and config, SmolLM2's GGUF header, a PEFT adapter, the tokenizer.json files and a GGUF's
//! tokenizer metadata) must give an error that names the file, never a panic. Each case runs under
//! `catch_unwind`, so a panic is reported with the mutation that caused it. Declared counts and lengths far
//! beyond the file must be refused without being allocated: a counting allocator records the largest single
//! allocation each case makes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde_json::{Value, json};
use tandem_worker::engine::llama::{self, Llama};
use tandem_worker::engine::{EngineError, peft, t5};
use tokenizers::Tokenizer;

/// The system allocator, recording per thread the largest single request (so parallel tests do not mix).
struct LargestAlloc;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot may already be gone while a thread exits.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to `System`; only a thread-local counter is updated besides.
unsafe impl GlobalAlloc for LargestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAlloc = LargestAlloc;

/// Runs `f` and returns its result with the largest single allocation it made on this thread, in bytes.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(Cell::get))
}

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

/// A report sentence every tokenizer must handle.
const PROBE: &str =
    "Heart size is normal. No pleural effusion; no pneumothorax (unchanged since 2019).";

/// Uses a loaded tokenizer as the worker does: encodes the probe with and without special tokens and decodes the
/// ids back. Panics (a failed case) when encoding fails, when an id has no row in the model's `vocab_size`
/// embeddings, or when the encoding is far longer than the text (padded to a length the file declared): a
/// tokenizer the loader accepted must be usable.
fn use_tokenizer(tok: &Tokenizer, vocab_size: usize) {
    for special in [false, true] {
        let enc = tok
            .encode(PROBE, special)
            .unwrap_or_else(|e| panic!("the loaded tokenizer cannot encode the probe: {e}"));
        let ids = enc.get_ids();
        assert!(
            ids.len() <= 2 * PROBE.len() + 8,
            "{} ids for a {}-byte text",
            ids.len(),
            PROBE.len()
        );
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            panic!("the loaded tokenizer gave id {id}; the model has {vocab_size} embeddings");
        }
        tok.decode(ids, true)
            .unwrap_or_else(|e| panic!("the loaded tokenizer cannot decode its own ids: {e}"));
    }
}

/// Opens the tiny LLaMA folder `dir` and uses its tokenizer.
fn open_llama_tokenizer(dir: &Path) -> Result<(), EngineError> {
    let c = llama::open(dir)?;
    use_tokenizer(&c.tokenizer, c.config.vocab_size);
    Ok(())
}

#[test]
fn damaged_tokenizer_json_is_refused_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    // Byte-level BPE (LLaMA) and Unigram with Metaspace (T5): the two kinds of tokenizer.json the worker reads.
    let dir = tmp.path().join("tiny-llama");
    copy_dir(&fixture("tiny-llama"), &dir);
    survive(
        &fixture("tiny-llama").join("tokenizer.json"),
        &dir.join("tokenizer.json"),
        usize::MAX,
        200,
        &|| open_llama_tokenizer(&dir),
    );
    let t5_dir = tmp.path().join("tiny-t5");
    copy_dir(&fixture("tiny-t5/relu"), &t5_dir);
    survive(
        &fixture("tiny-t5/relu").join("tokenizer.json"),
        &t5_dir.join("tokenizer.json"),
        usize::MAX,
        200,
        &|| {
            let (model, tok) = t5::load(&t5_dir)?;
            use_tokenizer(&tok, model.config.vocab_size);
            Ok(())
        },
    );
}

/// Runs one hostile case: no panic, done within a second, no single allocation over `max_alloc` bytes, and
/// either accepted or refused with an error naming `file` (and `key`, when given). Returns whether it was
/// accepted; failures (a panic among them) are collected in `failures`. The case runs once unmeasured first:
/// one-time work of the process (loading debug info for the backtrace an error captures under
/// `RUST_BACKTRACE=1`, lazy statics) is not the file's doing.
fn hostile_case(
    what: &str,
    file: &str,
    key: Option<&str>,
    max_alloc: usize,
    failures: &mut Vec<String>,
    open: &dyn Fn() -> Result<(), EngineError>,
) -> bool {
    let _ = catch_unwind(AssertUnwindSafe(open));
    let start = Instant::now();
    let (outcome, largest) = largest_allocation(|| catch_unwind(AssertUnwindSafe(open)));
    let took = start.elapsed();
    if took > Duration::from_secs(1) {
        failures.push(format!("{what}: took {took:?}"));
    }
    if largest > max_alloc {
        failures.push(format!(
            "{what}: allocated {largest} bytes at once (the bound is {max_alloc})"
        ));
    }
    match outcome {
        Err(_) => failures.push(format!("{what}: panicked")),
        Ok(Err(e)) => {
            let msg = e.to_string();
            if !msg.contains(file) || key.is_some_and(|k| !msg.contains(k)) {
                failures.push(format!(
                    "{what}: the error does not name {file}{}: {msg}",
                    key.map(|k| format!(" and `{k}`")).unwrap_or_default()
                ));
            }
            eprintln!("{what}: refused: {msg}");
        }
        Ok(Ok(())) => {
            eprintln!("{what}: accepted");
            return true;
        }
    }
    false
}

#[test]
fn hostile_tokenizer_json_settings_are_refused_or_harmless() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-llama");
    copy_dir(&fixture("tiny-llama"), &dir);
    let original = std::fs::read(fixture("tiny-llama").join("tokenizer.json")).unwrap();
    let base: Value = serde_json::from_slice(&original).unwrap();
    // A token the probe encodes to, so that moving its id shows in the probe's ids.
    let tok = Tokenizer::from_bytes(&original).unwrap();
    let probe_ids = tok.encode(PROBE, false).unwrap().get_ids().to_vec();
    let used = tok.id_to_token(probe_ids[2]).unwrap();
    let edited = |edit: &dyn Fn(&mut Value)| {
        let mut json = base.clone();
        edit(&mut json);
        serde_json::to_vec(&json).unwrap()
    };
    let padding = |strategy: Value, multiple: Value| {
        json!({"strategy": strategy, "direction": "Right", "pad_to_multiple_of": multiple, "pad_id": 2,
               "pad_type_id": 0, "pad_token": "<pad>"})
    };
    let deep = String::from_utf8(original.clone()).unwrap().replace(
        "\"normalizer\": null",
        &format!(
            "\"normalizer\": {}{}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    );
    // (what, bytes, must it be refused)
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "padding to a fixed 2^40 tokens",
            edited(&|j| j["padding"] = padding(json!({"Fixed": 1u64 << 40}), Value::Null)),
            false,
        ),
        (
            "padding to a multiple of 2^40 tokens",
            edited(&|j| j["padding"] = padding(json!("BatchLongest"), json!(1u64 << 40))),
            false,
        ),
        (
            "truncation to 0 tokens while the template adds BOS",
            edited(
                &|j| j["truncation"] = json!({"direction": "Right", "max_length": 0, "strategy": "LongestFirst", "stride": 0}),
            ),
            false,
        ),
        (
            "a vocabulary id beyond the model's vocab_size",
            edited(&|j| j["model"]["vocab"][&used] = json!(4_000_000_000u64)),
            true,
        ),
        (
            "an added token id beyond u32",
            edited(&|j| j["added_tokens"][0]["id"] = json!(1u64 << 40)),
            true,
        ),
        (
            "an added token id beyond the model's vocab_size",
            edited(&|j| {
                j["added_tokens"].as_array_mut().unwrap().push(json!({"id": 100_000, "content": "<extra>",
                    "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
            }),
            true,
        ),
        (
            "a post-processor BOS id beyond the model's vocab_size",
            edited(&|j| {
                j["post_processor"]["special_tokens"]["<s>"]["ids"] = json!([4_000_000_000u64])
            }),
            true,
        ),
        (
            "a merge of tokens not in the vocabulary",
            edited(&|j| {
                j["model"]["merges"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!(["zzq", "qzz"]))
            }),
            true,
        ),
        (
            "an unknown model type",
            edited(&|j| j["model"]["type"] = json!("Bogus")),
            true,
        ),
        (
            "BPE dropout 2",
            edited(&|j| j["model"]["dropout"] = json!(2.0)),
            true,
        ),
        (
            "an unknown token missing from the vocabulary",
            edited(&|j| j["model"]["unk_token"] = json!("<nope>")),
            false,
        ),
        ("arrays nested 100000 deep", deep.into_bytes(), true),
        ("an empty file", Vec::new(), true),
        ("JSON null", b"null".to_vec(), true),
        (
            "non-UTF-8 bytes",
            [&[0xff, 0xfe][..], &original[..]].concat(),
            true,
        ),
    ];
    let target = dir.join("tokenizer.json");
    let mut failures = Vec::new();
    for (what, bytes, must_refuse) in cases {
        std::fs::write(&target, &bytes).unwrap();
        let accepted = hostile_case(
            what,
            "tokenizer.json",
            None,
            64 << 20,
            &mut failures,
            &|| open_llama_tokenizer(&dir),
        );
        if must_refuse && accepted {
            failures.push(format!("{what}: accepted"));
        }
    }
    std::fs::write(&target, &original).unwrap();
    open_llama_tokenizer(&dir).expect("the undamaged tokenizer.json opens");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// GGUF value types, as the spec numbers them.
const GGUF_U32: u32 = 4;
const GGUF_I32: u32 = 5;
const GGUF_F32: u32 = 6;
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;
const GGUF_U64: u32 = 10;

/// A GGUF string: its u64 length, then its bytes.
fn gguf_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

/// A LLaMA GGUF written by hand (v3: metadata with the tiny LLaMA's byte-level BPE vocabulary and merges, one
/// F32 tensor `output_norm.weight`), so that a case can hold what a damaged file holds.
#[derive(Clone)]
struct TinyGguf {
    tokens: Vec<Vec<u8>>,
    merges: Option<Vec<Vec<u8>>>,
    /// Writes the vocabulary as an array of u32 instead of strings.
    tokens_as_integers: bool,
    model: &'static str,
    bos: u64,
    alignment: Option<u32>,
    /// u64 values written after the others (a key written twice: the last value counts).
    extra: Vec<(&'static str, u64)>,
}

impl TinyGguf {
    fn new() -> Self {
        let json: Value = serde_json::from_slice(
            &std::fs::read(fixture("tiny-llama").join("tokenizer.json")).unwrap(),
        )
        .unwrap();
        let vocab = json["model"]["vocab"].as_object().unwrap();
        let mut tokens = vec![Vec::new(); vocab.len()];
        for (token, id) in vocab {
            tokens[id.as_u64().unwrap() as usize] = token.as_bytes().to_vec();
        }
        let merges = json["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()).into_bytes())
            .collect();
        Self {
            tokens,
            merges: Some(merges),
            tokens_as_integers: false,
            model: "gpt2",
            bos: 0,
            alignment: None,
            extra: Vec::new(),
        }
    }

    /// The file's bytes and where named fields start (`<key>.count` for an array's length, `<key>[0]` for its
    /// first element, `tensor.dims`, `tensor.offset`).
    fn bytes(&self) -> (Vec<u8>, BTreeMap<String, usize>) {
        let mut kv = Kvs::default();
        for (name, value) in [("general.architecture", "llama"), ("general.name", "tiny")] {
            kv.key(name, GGUF_STRING);
            gguf_str(&mut kv.bytes, value.as_bytes());
        }
        if let Some(a) = self.alignment {
            kv.key("general.alignment", GGUF_U32);
            kv.bytes.extend(a.to_le_bytes());
        }
        for (name, value) in [
            ("llama.embedding_length", 64u32),
            ("llama.attention.head_count", 4),
            ("llama.attention.head_count_kv", 2),
            ("llama.feed_forward_length", 128),
            ("llama.block_count", 2),
            ("llama.context_length", 256),
            ("llama.rope.dimension_count", 16),
            ("tokenizer.ggml.eos_token_id", 1),
            ("tokenizer.ggml.padding_token_id", 2),
        ] {
            kv.key(name, GGUF_U32);
            kv.bytes.extend(value.to_le_bytes());
        }
        kv.key("llama.rope.freq_base", GGUF_F32);
        kv.bytes.extend(500_000f32.to_le_bytes());
        match u32::try_from(self.bos) {
            Ok(b) => {
                kv.key("tokenizer.ggml.bos_token_id", GGUF_U32);
                kv.bytes.extend(b.to_le_bytes());
            }
            Err(_) => {
                kv.key("tokenizer.ggml.bos_token_id", GGUF_U64);
                kv.bytes.extend(self.bos.to_le_bytes());
            }
        }
        kv.key("tokenizer.ggml.model", GGUF_STRING);
        gguf_str(&mut kv.bytes, self.model.as_bytes());
        if self.tokens_as_integers {
            kv.array("tokenizer.ggml.tokens", GGUF_U32, self.tokens.len());
            for i in 0..self.tokens.len() as u32 {
                kv.bytes.extend(i.to_le_bytes());
            }
        } else {
            kv.strings("tokenizer.ggml.tokens", &self.tokens);
        }
        if let Some(merges) = &self.merges {
            kv.strings("tokenizer.ggml.merges", merges);
        }
        // Token types: the first three (BOS, EOS, PAD) are control tokens (3), the rest normal (1).
        kv.array("tokenizer.ggml.token_type", GGUF_I32, self.tokens.len());
        for i in 0..self.tokens.len() {
            kv.bytes.extend(if i < 3 { 3i32 } else { 1 }.to_le_bytes());
        }
        for (name, value) in &self.extra {
            kv.key(name, GGUF_U64);
            kv.bytes.extend(value.to_le_bytes());
        }
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(1u64.to_le_bytes());
        out.extend(kv.n.to_le_bytes());
        let base = out.len();
        out.extend(kv.bytes);
        let mut at: BTreeMap<String, usize> =
            kv.at.into_iter().map(|(k, v)| (k, v + base)).collect();
        gguf_str(&mut out, b"output_norm.weight");
        out.extend(1u32.to_le_bytes());
        at.insert("tensor.dims".into(), out.len());
        out.extend(64u64.to_le_bytes());
        out.extend(0u32.to_le_bytes()); // F32
        at.insert("tensor.offset".into(), out.len());
        out.extend(0u64.to_le_bytes());
        out.resize(out.len().div_ceil(32) * 32, 0);
        for _ in 0..64 {
            out.extend(1f32.to_le_bytes());
        }
        (out, at)
    }
}

/// GGUF metadata being written: the bytes, how many keys, where named fields start.
#[derive(Default)]
struct Kvs {
    bytes: Vec<u8>,
    n: u64,
    at: BTreeMap<String, usize>,
}

impl Kvs {
    fn key(&mut self, name: &str, ty: u32) {
        gguf_str(&mut self.bytes, name.as_bytes());
        self.bytes.extend(ty.to_le_bytes());
        self.n += 1;
    }

    /// An array's key, element type and length; the elements follow.
    fn array(&mut self, name: &str, element: u32, len: usize) {
        self.key(name, GGUF_ARRAY);
        self.bytes.extend(element.to_le_bytes());
        self.at.insert(format!("{name}.count"), self.bytes.len());
        self.bytes.extend((len as u64).to_le_bytes());
        self.at.insert(format!("{name}[0]"), self.bytes.len());
    }

    fn strings(&mut self, name: &str, items: &[Vec<u8>]) {
        self.array(name, GGUF_STRING, items.len());
        for item in items {
            gguf_str(&mut self.bytes, item);
        }
    }
}

/// `bytes` with `with` written at `at`.
fn patched(bytes: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at..at + with.len()].copy_from_slice(with);
    out
}

/// Opens a GGUF LLaMA as a job does: config, tokenizer, one tensor; then uses the tokenizer.
fn open_gguf(path: &Path) -> Result<(), EngineError> {
    let mut c = llama::open(path)?;
    c.store.get("model.norm.weight", &[c.config.hidden_size])?;
    use_tokenizer(&c.tokenizer, c.config.vocab_size);
    Ok(())
}

#[test]
fn damaged_gguf_tokenizer_metadata_is_refused_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let original = tmp.path().join("original.gguf");
    let target = tmp.path().join("tiny.gguf");
    std::fs::write(&original, TinyGguf::new().bytes().0).unwrap();
    survive(&original, &target, usize::MAX, 400, &|| open_gguf(&target));
}

#[test]
fn hostile_gguf_tokenizer_fields_are_refused_without_allocating_them() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny.gguf");
    let tiny = TinyGguf::new();
    let (good, at) = tiny.bytes();
    let le = |v: u64| v.to_le_bytes();
    let tokens_count = at["tokenizer.ggml.tokens.count"];
    let first_token = at["tokenizer.ggml.tokens[0]"];
    let merges_count = at["tokenizer.ggml.merges.count"];
    let with = |edit: &dyn Fn(&mut TinyGguf)| {
        let mut t = tiny.clone();
        edit(&mut t);
        t.bytes().0
    };
    let n = tiny.tokens.len() as u64;
    let tokens = Some("tokenizer.ggml.tokens");
    let merges = Some("tokenizer.ggml.merges");
    let bos = Some("tokenizer.ggml.bos_token_id");
    // (what, bytes, a key the error must name)
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "2^40 tokens declared",
            patched(&good, tokens_count, &le(1 << 40)),
            None,
        ),
        (
            "u64::MAX tokens declared",
            patched(&good, tokens_count, &le(u64::MAX)),
            None,
        ),
        (
            "2^63 tokens declared (negative as i64)",
            patched(&good, tokens_count, &le(1 << 63)),
            None,
        ),
        (
            "2^30 - 1 tokens declared",
            patched(&good, tokens_count, &le((1 << 30) - 1)),
            None,
        ),
        (
            "one token more declared than stored",
            patched(&good, tokens_count, &le(n + 1)),
            None,
        ),
        (
            "no tokens declared",
            patched(&good, tokens_count, &le(0)),
            None,
        ),
        (
            "2^40 merges declared",
            patched(&good, merges_count, &le(1 << 40)),
            None,
        ),
        (
            "a first token of 2^40 bytes",
            patched(&good, first_token, &le(1 << 40)),
            None,
        ),
        (
            "a first token of u64::MAX bytes",
            patched(&good, first_token, &le(u64::MAX)),
            None,
        ),
        (
            "a first token longer than the file",
            patched(&good, first_token, &le(good.len() as u64)),
            None,
        ),
        (
            "the header's metadata count 2^40",
            patched(&good, 16, &le(1 << 40)),
            None,
        ),
        (
            "the header's tensor count u64::MAX",
            patched(&good, 8, &le(u64::MAX)),
            None,
        ),
        (
            "a tensor of 2^62 elements",
            patched(&good, at["tensor.dims"], &le(1 << 62)),
            None,
        ),
        (
            "a tensor at offset u64::MAX",
            patched(&good, at["tensor.offset"], &le(u64::MAX)),
            None,
        ),
        ("alignment 0", with(&|t| t.alignment = Some(0)), None),
        (
            "head count and head dim of 2^40 each",
            with(&|t| {
                t.extra = vec![
                    ("llama.attention.head_count", 1 << 40),
                    ("llama.rope.dimension_count", 1 << 40),
                ]
            }),
            None,
        ),
        (
            "an EOS id of 2^40",
            with(&|t| t.extra = vec![("tokenizer.ggml.eos_token_id", 1 << 40)]),
            Some("tokenizer.ggml.eos_token_id"),
        ),
        (
            "a token of non-UTF-8 bytes",
            with(&|t| t.tokens[100] = vec![b'a', 0xff, 0xfe]),
            tokens,
        ),
        (
            "two non-UTF-8 tokens that read alike",
            with(&|t| {
                t.tokens[100] = vec![0xff];
                t.tokens[101] = vec![0xfe];
            }),
            tokens,
        ),
        (
            "a token repeated",
            with(&|t| t.tokens[101] = t.tokens[100].clone()),
            tokens,
        ),
        ("no merges", with(&|t| t.merges = None), merges),
        (
            "a merge of one token",
            with(&|t| t.merges.as_mut().unwrap()[0] = b"ar".to_vec()),
            merges,
        ),
        (
            "a merge of tokens not in the vocabulary",
            with(&|t| t.merges.as_mut().unwrap()[0] = b"zzq qzz".to_vec()),
            None,
        ),
        (
            "tokens stored as integers",
            with(&|t| t.tokens_as_integers = true),
            tokens,
        ),
        ("no vocabulary at all", with(&|t| t.tokens.clear()), None),
        (
            "tokenizer model \"llama\"",
            with(&|t| t.model = "llama"),
            Some("tokenizer.ggml.model"),
        ),
        (
            "a BOS id beyond the vocabulary",
            with(&|t| t.bos = 5000),
            bos,
        ),
        ("a BOS id beyond u32", with(&|t| t.bos = 1 << 32), bos),
    ];
    let mut failures = Vec::new();
    for (what, bytes, key) in cases {
        std::fs::write(&path, &bytes).unwrap();
        // The file is about 10 KB; whatever it declares, no single allocation may reach 1 MiB.
        if hostile_case(what, "tiny.gguf", key, 1 << 20, &mut failures, &|| {
            open_gguf(&path)
        }) {
            failures.push(format!("{what}: accepted"));
        }
    }
    std::fs::write(&path, &good).unwrap();
    let ((), largest) = largest_allocation(|| open_gguf(&path).expect("the undamaged GGUF opens"));
    eprintln!(
        "the undamaged {}-byte GGUF: largest allocation {largest} bytes",
        good.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
