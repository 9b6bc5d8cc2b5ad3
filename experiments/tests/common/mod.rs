//! Shared fixtures for the manifest, hash and planner tests: a small project folder with a GGUF-looking model,
//! a stage-1 CSV, a grouped stage-2 CSV and a manifest pointing at them with relative paths.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const BASE: &str = r#"name = "fixture"
seed = 7

[model]
family = "llama"
path = "models/tiny.gguf"

[stage1.dataset]
path = "data/stage1.csv"

[stage2.dataset]
path = "data/stage2.csv"
group_column = "patient"

[[sweeps]]
stage = "stage2"
parameter = "temperature"
values = [0.4, 0.6]
"#;

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("models")).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(root.join("manifests")).unwrap();
        std::fs::write(
            root.join("models/tiny.gguf"),
            b"GGUF\x03\x00\x00\x00tiny weights",
        )
        .unwrap();
        let mut stage1 = String::from("findings,impression\n");
        for i in 0..40 {
            stage1.push_str(&format!(
                "\"Finding {i}, lungs {}.\",Impression {i} {}\n",
                if i % 2 == 0 { "clear" } else { "hazy" },
                "word ".repeat(i % 12)
            ));
        }
        std::fs::write(root.join("data/stage1.csv"), stage1).unwrap();
        let mut stage2 = String::from("patient,impression,summary\n");
        for i in 0..36 {
            stage2.push_str(&format!(
                "P{},Since then lesion {i} grew.,Progression {i}.\n",
                i % 9
            ));
        }
        std::fs::write(root.join("data/stage2.csv"), stage2).unwrap();
        Project { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` as `manifests/<name>` and returns its path.
    pub fn manifest(&self, name: &str, text: &str) -> PathBuf {
        let path = self.root().join("manifests").join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The base manifest with its relative paths one level up (manifests/ sits beside models/ and data/).
    pub fn base_text() -> String {
        BASE.replace("\"models/", "\"../models/")
            .replace("\"data/", "\"../data/")
    }
}

/// Copies a folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
