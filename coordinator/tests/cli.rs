//! The `tandem` binary's manifest, data and plan commands, run as a user would: exit codes, JSON shapes, and
//! the shipped manifests and data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("the tandem binary runs")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A small project: a GGUF-looking model, a stage-1 CSV, a grouped stage-2 CSV and a manifest.
fn project() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("tiny.gguf"), b"GGUF\x03\x00\x00\x00weights").unwrap();
    let mut s1 = String::from("findings,impression\n");
    for i in 0..30 {
        s1.push_str(&format!("Finding {i}.,Impression {i}.\n"));
    }
    std::fs::write(root.join("s1.csv"), s1).unwrap();
    let mut s2 = String::from("patient_id,impression,summary\n");
    for i in 0..24 {
        s2.push_str(&format!("P{},Impression {i}.,Summary {i}.\n", i % 8));
    }
    std::fs::write(root.join("s2.csv"), s2).unwrap();
    let manifest = root.join("m.toml");
    std::fs::write(
        &manifest,
        "name = \"cli\"\n[model]\nfamily = \"llama\"\npath = \"tiny.gguf\"\n[stage1.dataset]\npath = \"s1.csv\"\n[stage2.dataset]\npath = \"s2.csv\"\ngroup_column = \"patient_id\"\n",
    )
    .unwrap();
    (dir, manifest)
}

#[test]
fn validate_exits_0_with_a_summary_line() {
    let (_dir, manifest) = project();
    let out = tandem(&["validate", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1);
    assert!(
        stdout.starts_with("ok: ") && stdout.contains("experiment cli"),
        "{stdout}"
    );
}

#[test]
fn validate_exits_2_listing_every_problem() {
    let (dir, manifest) = project();
    let text_in = std::fs::read_to_string(&manifest).unwrap()
        + "[lora]\nr = 0\nalpah = 1\n[stage1.training]\nlr = -1.0\n";
    std::fs::write(&manifest, text_in).unwrap();
    std::fs::remove_file(dir.path().join("tiny.gguf")).unwrap();
    let out = tandem(&["validate", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let file = manifest.display().to_string();
    for expected in [
        format!("{file}:4:8: model.path:"),
        format!("{file}:11:5: lora.r: must be at least 1, got 0"),
        format!("{file}:12:1: lora.alpah: unknown field `alpah`"),
        format!("{file}:14:6: stage1.training.lr: out of range: -1 (accepted: a number > 0)"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 problems"), "{stderr}");
    // --schema-only skips the missing model file but not the value errors.
    let out = tandem(&["validate", "--schema-only", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!text(&out.stderr).contains("model.path"));
}

#[test]
fn the_shipped_manifests_validate_schema_only() {
    for name in ["thesis-llama", "thesis-t5", "quickstart"] {
        let path = repo().join(format!("experiments/manifests/{name}.toml"));
        let out = tandem(&["validate", "--schema-only", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
    }
}

#[test]
fn plan_json_lists_jobs_with_ids_kinds_deps_and_config_hashes() {
    let (_dir, manifest) = project();
    let out = tandem(&["plan", manifest.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = plan["jobs"].as_array().unwrap();
    // 2 data-prep + 6 train + (2 + 5 x 8) evals (5 sweep temperatures) + report.
    assert_eq!(jobs.len(), 2 + 6 + 42 + 1);
    let ids: Vec<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    for job in jobs {
        assert_eq!(job["config_hash"].as_str().unwrap().len(), 64);
        for dep in job["deps"].as_array().unwrap() {
            assert!(ids.contains(&dep.as_str().unwrap()));
        }
    }
    let kinds: Vec<&str> = jobs.iter().map(|j| j["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "train").count(), 6);
    assert_eq!(*kinds.last().unwrap(), "report");
    // The default is a readable tree.
    let out = tandem(&["plan", manifest.to_str().unwrap()]);
    let tree = text(&out.stdout);
    assert!(
        tree.contains("└─ ") && tree.contains("train(stage2, fold 4)"),
        "{tree}"
    );
}

#[test]
fn manifest_hash_prints_a_sha256_that_follows_the_files() {
    let (dir, manifest) = project();
    let first = text(&tandem(&["manifest", "hash", manifest.to_str().unwrap()]).stdout);
    let digest = first.split_whitespace().next().unwrap().to_owned();
    assert_eq!(digest.len(), 64);
    std::fs::write(
        dir.path().join("s2.csv"),
        std::fs::read_to_string(dir.path().join("s2.csv")).unwrap() + "P1,x,y\n",
    )
    .unwrap();
    let second = text(&tandem(&["manifest", "hash", manifest.to_str().unwrap()]).stdout);
    assert_ne!(digest, second.split_whitespace().next().unwrap());
    let files = text(
        &tandem(&[
            "manifest",
            "hash",
            "--format",
            "files",
            manifest.to_str().unwrap(),
        ])
        .stdout,
    );
    assert_eq!(files.lines().count(), 4, "{files}");
}

#[test]
fn data_split_and_kfold_print_json_row_indices() {
    let csv =
        repo().join("experiments/data/synthetic-longitudinal/SYNTHETIC-oncology-impressions.csv");
    let csv = csv.to_str().unwrap();
    let out = tandem(&["data", "split", csv, "--seed", "3", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let split: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut all: Vec<u64> = ["train", "val", "test"]
        .iter()
        .flat_map(|p| {
            split[p]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
        })
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..173).collect::<Vec<u64>>());
    assert_eq!(split["test"].as_array().unwrap().len(), 17);

    let out = tandem(&[
        "data",
        "kfold",
        csv,
        "--folds",
        "5",
        "--seed",
        "3",
        "--group",
        "patient_id",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let again = tandem(&[
        "data",
        "kfold",
        csv,
        "--folds",
        "5",
        "--seed",
        "3",
        "--group",
        "patient_id",
        "--format",
        "json",
    ]);
    assert_eq!(out.stdout, again.stdout, "same seed, same folds");
    let folds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let folds = folds["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 5);
    let mut tested: Vec<u64> = folds
        .iter()
        .flat_map(|f| {
            f["test"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
        })
        .collect();
    tested.sort_unstable();
    assert_eq!(tested, (0..173).collect::<Vec<u64>>());
    assert_eq!(folds[2]["fold"], 2);
}

#[test]
fn data_split_names_a_bad_row_and_exits_2() {
    let csv = repo().join("experiments/data/iu-xray/indiana_reports.csv");
    let out = tandem(&["data", "split", csv.to_str().unwrap(), "--seed", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("indiana_reports.csv:4: data row 2: empty \"findings\""),
        "{stderr}"
    );
    let out = tandem(&[
        "data",
        "split",
        csv.to_str().unwrap(),
        "--seed",
        "1",
        "--bad-rows",
        "drop",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("3331 usable rows of 3851"));
}

#[test]
fn data_synth_and_mimic_write_csvs() {
    let dir = tempfile::tempdir().unwrap();
    let out_csv = dir.path().join("SYNTHETIC.csv");
    let out = tandem(&[
        "data",
        "synth",
        "--patients",
        "3",
        "--seed",
        "5",
        "-o",
        out_csv.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("SYNTHETIC: "));
    let written = std::fs::read_to_string(&out_csv).unwrap();
    assert!(
        written
            .starts_with("patient_id,exam_index,exam_date,modality,impression,summary,synthetic\n")
    );

    let tree = dir.path().join("mimic/files/p10/p10000032");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(
        tree.join("s50414267.txt"),
        "FINDINGS: Clear lungs.\nIMPRESSION: Normal.\n",
    )
    .unwrap();
    std::fs::write(tree.join("s50414268.txt"), "FINDINGS: Clear lungs.\n").unwrap();
    let mimic_csv = dir.path().join("mimic.csv");
    let out = tandem(&[
        "data",
        "mimic",
        dir.path().join("mimic").to_str().unwrap(),
        "-o",
        mimic_csv.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("2 reports read, 1 kept, 1 dropped"),
        "{stdout}"
    );
    assert!(stdout.contains("no IMPRESSION"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(mimic_csv).unwrap(),
        "subject_id,study_id,findings,impression\n10000032,50414267,Clear lungs.,Normal.\n"
    );
}

/// `tandem ... | head`: output into a pipe whose reader has gone ends the process quietly (SIGPIPE, as for any
/// Unix tool), never with a panic and exit 101.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let csv = repo().join("experiments/data/iu-xray/indiana_reports.csv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        // 79 kB of JSON: more than a pipe holds, so the writer meets the closed pipe.
        .args([
            "data",
            "kfold",
            csv.to_str().unwrap(),
            "--folds",
            "5",
            "--seed",
            "1",
        ])
        .args(["--bad-rows", "drop", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}: {stderr}"
    );
}

/// A token given through the environment never shows in `--help`.
#[test]
fn help_never_prints_the_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["submit", "--help"])
        .env("TANDEM_TOKEN", "secret-token-value")
        .output()
        .unwrap();
    let help = text(&out.stdout);
    assert!(help.contains("TANDEM_TOKEN"), "{help}");
    assert!(!help.contains("secret-token-value"), "{help}");
}

#[test]
fn set_overrides_a_value_typed_and_validated_like_the_file_and_changes_the_hash() {
    let (_dir, manifest) = project();
    let m = manifest.to_str().unwrap();
    let hash = |extra: &[&str]| {
        let mut args = vec!["manifest", "hash", m];
        args.extend_from_slice(extra);
        let out = tandem(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let plain = hash(&[]);
    let overridden = hash(&["--set", "lora.r=64"]);
    assert_ne!(
        plain, overridden,
        "an override is part of the manifest's identity"
    );
    assert_eq!(
        overridden,
        hash(&["--set", "lora.r=8", "--set", "lora.r=64"]),
        "the last one wins"
    );

    let out = tandem(&[
        "validate",
        m,
        "--set",
        "lora.r=64",
        "--set",
        "stage1.training.lr=2e-5",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("LoRA r=64"),
        "{}",
        text(&out.stdout)
    );

    // Typed and range-checked like the file, the field named; a malformed override exits 2 naming it.
    for (set, expected) in [
        ("lora.r=\"many\"", "lora.r"),
        ("stage1.training.lr=-1", "stage1.training.lr: out of range"),
        ("lora.rank=3", "lora.rank: unknown field"),
        ("lora.r", "--set \"lora.r\": expected KEY=VALUE"),
        (
            "name.first=1",
            "--set name.first: name is a value, not a table",
        ),
    ] {
        let out = tandem(&["validate", m, "--set", set]);
        assert_eq!(out.status.code(), Some(2), "{set}");
        assert!(
            text(&out.stderr).contains(expected),
            "{set}: {}",
            text(&out.stderr)
        );
    }
    // The plan follows the override.
    let out = tandem(&["plan", m, "--format", "json", "--set", "lora.r=64"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"r\": 64"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn bash_completion_completes_subcommands_and_flags() {
    let out = tandem(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tandem.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // Source it in a real bash and ask for completions as bash's completion machinery would.
    let complete = |words: &str, cword: usize| {
        let probe = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; \
             _tandem tandem \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let subcommands = complete("tandem lau", 1);
    assert_eq!(subcommands.trim(), "launch", "{subcommands}");
    let flags = complete("tandem launch slurm --gpu", 3);
    assert!(
        flags.contains("--gpus-per-worker") && flags.contains("--gpu-flag"),
        "{flags}"
    );
    for shell in ["zsh", "fish"] {
        let out = tandem(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("launch"), "{shell}");
    }
}
