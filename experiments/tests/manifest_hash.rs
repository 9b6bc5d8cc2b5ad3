//! The manifest content hash: stable under whitespace, comments, key order, explicit defaults and moving the
//! project folder; changed by any byte of a referenced file and by any setting.

mod common;

use common::{Project, copy_tree};
use proptest::prelude::*;
use tandem_experiments::manifest::{self, LoadOptions, content_hash};

fn hash_of(project: &Project, name: &str, text: &str) -> String {
    let path = project.manifest(name, text);
    let m = manifest::load(&path, LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    content_hash(&m).unwrap().sha256
}

const REORDERED: &str = r#"
# the same experiment, written differently
[[sweeps]]
values = [ 0.4,
           0.6 ]   # two points
parameter = "temperature"
stage = "stage2"

[stage2.dataset]
group_column = "patient"
path = "../data/stage2.csv"

[model]
path   = "../models/tiny.gguf"
family = "llama"

[stage1.dataset]
path = "../data/stage1.csv"
"#;

#[test]
fn whitespace_comments_key_order_and_explicit_defaults_do_not_change_it() {
    let project = Project::new();
    let base = hash_of(&project, "a.toml", &Project::base_text());
    let reordered = format!("seed = 7\nname = \"fixture\"\n{REORDERED}");
    assert_eq!(base, hash_of(&project, "b.toml", &reordered));
    let explicit = format!(
        "{}\n[lora]\nr = 32\nalpha = 64\n[stage2.training]\nbatch_size = 4\n",
        Project::base_text()
    );
    assert_eq!(base, hash_of(&project, "c.toml", &explicit));
}

#[test]
fn any_setting_changes_it() {
    let project = Project::new();
    let base = hash_of(&project, "a.toml", &Project::base_text());
    let changed = format!("{}\n[stage2.training]\nlr = 2e-5\n", Project::base_text());
    assert_ne!(base, hash_of(&project, "b.toml", &changed));
}

#[test]
fn any_byte_of_a_referenced_file_changes_it() {
    let project = Project::new();
    let base = hash_of(&project, "a.toml", &Project::base_text());
    for file in ["models/tiny.gguf", "data/stage1.csv", "data/stage2.csv"] {
        let path = project.root().join(file);
        let original = std::fs::read(&path).unwrap();
        let mut changed = original.clone();
        let last = changed.len() - 2;
        changed[last] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        assert_ne!(
            base,
            hash_of(&project, "a.toml", &Project::base_text()),
            "{file}"
        );
        std::fs::write(&path, &original).unwrap();
    }
    assert_eq!(base, hash_of(&project, "a.toml", &Project::base_text()));
}

#[test]
fn moving_the_project_folder_keeps_it_and_the_per_file_hashes_are_reported() {
    let project = Project::new();
    let path = project.manifest("a.toml", &Project::base_text());
    let m = manifest::load(&path, LoadOptions::default()).unwrap();
    let here = content_hash(&m).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    copy_tree(project.root(), &elsewhere.path().join("moved"));
    let moved = manifest::load(
        &elsewhere.path().join("moved/manifests/a.toml"),
        LoadOptions::default(),
    )
    .unwrap();
    let there = content_hash(&moved).unwrap();
    assert_eq!(here.sha256, there.sha256);
    assert_eq!(here.canonical, there.canonical);
    assert!(
        !here
            .canonical
            .contains(&project.root().display().to_string()),
        "paths must not enter the canonical form"
    );
    // Per-file hashes, for audits.
    let roles: Vec<&str> = here.files.iter().map(|f| f.role.as_str()).collect();
    assert_eq!(
        roles,
        ["model.path", "stage1.dataset.path", "stage2.dataset.path"]
    );
    let gguf = &here.files[0];
    assert_eq!(
        gguf.sha256,
        tandem_experiments::manifest::hash::sha256_file(&gguf.path)
            .unwrap()
            .0
    );
    assert_eq!(here.inputs["model.path"], format!("sha256:{}", gguf.sha256));
}

#[test]
fn a_hugging_face_folder_hashes_the_files_that_matter() {
    let project = Project::new();
    let hf = project.root().join("models/hf");
    std::fs::create_dir_all(&hf).unwrap();
    for (name, body) in [
        ("config.json", "{}"),
        ("tokenizer.json", "{\"v\":1}"),
        ("model.safetensors", "weights"),
        ("README.md", "docs"),
    ] {
        std::fs::write(hf.join(name), body).unwrap();
    }
    let text = Project::base_text().replace("../models/tiny.gguf", "../models/hf");
    let base = hash_of(&project, "a.toml", &text);
    let path = project.manifest("a.toml", &text);
    let files: Vec<String> = content_hash(&manifest::load(&path, LoadOptions::default()).unwrap())
        .unwrap()
        .files
        .iter()
        .filter(|f| f.role == "model.path")
        .map(|f| f.relative.clone())
        .collect();
    assert_eq!(
        files,
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    std::fs::write(hf.join("README.md"), "other docs").unwrap();
    assert_eq!(
        base,
        hash_of(&project, "a.toml", &text),
        "README does not matter"
    );
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        let before = std::fs::read(hf.join(name)).unwrap();
        std::fs::write(hf.join(name), [before.as_slice(), b" "].concat()).unwrap();
        assert_ne!(base, hash_of(&project, "a.toml", &text), "{name}");
        std::fs::write(hf.join(name), before).unwrap();
    }
}

/// A manifest with the given settings, its `[stage1.training]` keys in the given order, with optional comments
/// and extra whitespace.
fn render(
    lr: f64,
    r: usize,
    batch: usize,
    order: &[usize],
    comments: bool,
    spaces: usize,
) -> String {
    let pad = " ".repeat(spaces);
    let keys = [
        format!("lr{pad}= {lr:e}"),
        format!("batch_size ={pad}{batch}"),
        format!("warmup_steps = 100{pad}"),
    ];
    let mut text = Project::base_text();
    text.push_str(&format!("\n[lora]\nr = {r}\n\n[stage1.training]\n"));
    for &i in order {
        if comments {
            text.push_str("# a comment\n");
        }
        text.push_str(&keys[i]);
        text.push('\n');
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn hash_is_stable_under_formatting_and_changes_with_values(
        lr in 1e-6f64..1e-2,
        r in 1usize..64,
        batch in 1usize..16,
        order in Just(vec![0usize, 1, 2]).prop_shuffle(),
        comments in any::<bool>(),
        spaces in 0usize..4,
    ) {
        let project = Project::new();
        let plain = hash_of(&project, "a.toml", &render(lr, r, batch, &[0, 1, 2], false, 1));
        prop_assert_eq!(&plain, &hash_of(&project, "b.toml", &render(lr, r, batch, &order, comments, spaces)));
        prop_assert_ne!(&plain, &hash_of(&project, "c.toml", &render(lr, r + 1, batch, &order, comments, spaces)));
        prop_assert_ne!(&plain, &hash_of(&project, "d.toml", &render(lr * 2.0, r, batch, &order, comments, spaces)));
    }
}

#[test]
fn device_auto_spelled_out_keeps_it_and_another_device_changes_it() {
    let project = Project::new();
    let base = hash_of(&project, "a.toml", &Project::base_text());
    let device = |value: &str| {
        Project::base_text().replace(
            "family = \"llama\"",
            &format!("family = \"llama\"\ndevice = \"{value}\""),
        )
    };
    assert_eq!(base, hash_of(&project, "b.toml", &device("auto")));
    assert_ne!(base, hash_of(&project, "c.toml", &device("cuda")));
}
