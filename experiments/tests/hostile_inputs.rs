//! Hostile user files: manifests, CSV datasets and MIMIC-CXR reports made of arbitrary or damaged bytes must be
//! refused with an error (or read), never a panic. Property tests over random bytes and over seeded damage of
//! the real fixtures, and over hostile MIMIC-CXR folder trees (binary reports, folders and sockets named like
//! reports, symbolic links out of the tree and in loops, names outside the layout or not UTF-8, deep nesting):
//! every entry is either read or counted in the summary with its reason.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use common::Project;
use proptest::prelude::*;
use tandem_experiments::data::mimic::{DropReason, MimicSummary, SkipReason};
use tandem_experiments::data::{self, mimic};
use tandem_experiments::manifest::{self, BadRows, LoadOptions};

/// The base manifest with `edits` applied: each overwrites one byte (position modulo the length) or cuts the
/// text.
fn damaged(base: &str, edits: &[(usize, u8, bool)]) -> Vec<u8> {
    let mut bytes = base.as_bytes().to_vec();
    for &(at, byte, cut) in edits {
        if bytes.is_empty() {
            break;
        }
        let at = at % bytes.len();
        if cut {
            bytes.truncate(at);
        } else {
            bytes[at] = byte;
        }
    }
    bytes
}

/// Loads a manifest written as raw bytes; a panic fails the property, an error must name the file.
fn load_bytes(project: &Project, bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = project.root().join("manifests/m.toml");
    std::fs::write(&path, bytes).unwrap();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        manifest::load(&path, LoadOptions { check_files: true })
    }));
    match outcome {
        Err(_) => Err(TestCaseError::fail("manifest::load panicked")),
        Ok(Err(e)) => {
            let text = e.to_string();
            prop_assert!(
                text.contains("m.toml"),
                "error does not name the file: {text}"
            );
            Ok(())
        }
        Ok(Ok(_)) => Ok(()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn damaged_manifests_are_refused_without_a_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), prop::bool::weighted(0.1)), 1..6)
    ) {
        let project = Project::new();
        load_bytes(&project, &damaged(&Project::base_text(), &edits))?;
    }

    #[test]
    fn arbitrary_bytes_are_not_a_manifest(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let project = Project::new();
        load_bytes(&project, &bytes)?;
    }

    #[test]
    fn arbitrary_csv_bytes_are_read_or_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        header in prop::bool::ANY,
        drop in prop::bool::ANY,
    ) {
        let mut all = if header { b"findings,impression\n".to_vec() } else { Vec::new() };
        all.extend(bytes);
        let options = data::CsvOptions {
            input_column: "findings".into(),
            target_column: "impression".into(),
            group_column: None,
            bad_rows: if drop { BadRows::Drop } else { BadRows::Error },
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            data::table::parse_csv(&all, Path::new("hostile.csv"), &options)
        }));
        match outcome {
            Err(_) => return Err(TestCaseError::fail("parse_csv panicked")),
            Ok(Err(e)) => prop_assert!(e.to_string().contains("hostile.csv"), "{e}"),
            Ok(Ok(_)) => {}
        }
    }

    #[test]
    fn arbitrary_report_text_splits_into_sections_without_a_panic(text in "\\PC{0,400}") {
        let outcome = catch_unwind(|| {
            let s = mimic::extract_sections(&text);
            let _ = mimic::normalize_whitespace(&text);
            s
        });
        prop_assert!(outcome.is_ok(), "extract_sections panicked");
    }

    #[test]
    fn report_like_text_splits_without_a_panic(
        parts in prop::collection::vec(
            prop::sample::select(vec![
                "FINDINGS:", "IMPRESSION:", "findings", "Impression", ":", "\n", " ", "\r\n", "FINAL REPORT",
                "EXAMINATION:", "Lungs are clear.", "COMPARISON:", "\u{feff}", "__", "1.",
            ]),
            0..40,
        )
    ) {
        let text: String = parts.concat();
        prop_assert!(catch_unwind(|| mimic::extract_sections(&text)).is_ok());
    }
}

/// A report with both sections.
const REPORT: &str =
    "FINAL REPORT\nFINDINGS: The lungs are clear.\nIMPRESSION: No acute cardiopulmonary process.\n";

/// One entry of a hostile report tree; the `i`-th entry of a tree gets its own subject and study ids.
#[derive(Debug, Clone)]
enum Entry {
    /// A well-formed report.
    Report,
    /// A report file holding these bytes (random, binary, empty, not UTF-8).
    Bytes(Vec<u8>),
    /// A folder where a report file belongs, holding one stray file.
    FolderNamedLikeReport,
    /// A link named like a report, to a report outside the tree.
    LinkOutToReport,
    /// A link named like a subject folder, to a folder of reports outside the tree.
    LinkOutToFolder,
    /// Two links leading to each other.
    LinkLoop,
    /// A link to the tree's root (a loop if followed).
    LinkToRoot,
    /// A link to nothing.
    Dangling,
    /// A link named like a report, to a regular file elsewhere in the tree: read through the link.
    LinkInToFile,
    /// A socket named like a report (reading it would fail; a fifo would block).
    Socket,
    /// A file whose name does not match the layout.
    OtherName(&'static str),
    /// A report name with a byte that is not UTF-8.
    NonUtf8Name,
    /// A report below a folder whose name is not UTF-8 (the ids come from the last three parts).
    UnderNonUtf8Folder,
    /// A stray file this many folders deep.
    Deep(usize),
}

/// What `read_reports` must report for a tree: the summary without the skipped entries' first paths.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    reports: usize,
    kept: usize,
    dropped: BTreeMap<DropReason, usize>,
    other_files: usize,
    skipped: BTreeMap<SkipReason, usize>,
}

impl Expected {
    fn of(summary: &MimicSummary) -> Self {
        Self {
            reports: summary.reports,
            kept: summary.kept,
            dropped: summary.dropped.clone(),
            other_files: summary.other_files,
            skipped: summary
                .skipped
                .iter()
                .map(|(reason, s)| (*reason, s.count))
                .collect(),
        }
    }

    /// A report file with `bytes`, classified as the reader must (sections by `extract_sections`, which the
    /// unit tests pin down).
    fn report(&mut self, bytes: &[u8]) {
        self.reports += 1;
        let drop = match std::str::from_utf8(bytes) {
            Err(_) => Some(DropReason::NotUtf8),
            Ok(text) => {
                let s = mimic::extract_sections(text);
                match (s.findings, s.impression) {
                    (Some(_), Some(_)) => None,
                    (None, None) => Some(DropReason::MissingBoth),
                    (None, _) => Some(DropReason::MissingFindings),
                    (_, None) => Some(DropReason::MissingImpression),
                }
            }
        };
        match drop {
            None => self.kept += 1,
            Some(reason) => *self.dropped.entry(reason).or_default() += 1,
        }
    }

    fn skip(&mut self, reason: SkipReason, n: usize) {
        *self.skipped.entry(reason).or_default() += n;
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn link(target: &Path, at: &Path) {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    symlink(target, at).unwrap();
}

/// Builds `entries` under `root` (with `outside`, a sibling folder, for links out of it) and returns what the
/// reader must find.
fn build_tree(root: &Path, outside: &Path, entries: &[Entry]) -> Expected {
    let mut expected = Expected::default();
    std::fs::create_dir_all(root.join("files")).unwrap();
    for (i, entry) in entries.iter().enumerate() {
        let subject = format!("p1{i:07}");
        let folder = root.join(format!("files/p1{}", i % 10)).join(&subject);
        let study = format!("s5{i:07}.txt");
        let report = folder.join(&study);
        match entry {
            Entry::Report => {
                write(&report, REPORT.as_bytes());
                expected.report(REPORT.as_bytes());
            }
            Entry::Bytes(bytes) => {
                write(&report, bytes);
                expected.report(bytes);
            }
            Entry::FolderNamedLikeReport => {
                write(&report.join("stray.txt"), b"x");
                expected.skip(SkipReason::FolderNamedLikeReport, 1);
                expected.other_files += 1;
            }
            Entry::LinkOutToReport => {
                let target = outside.join(format!("{i}.txt"));
                write(&target, REPORT.as_bytes());
                link(&target, &report);
                expected.skip(SkipReason::LinkOutside, 1);
            }
            Entry::LinkOutToFolder => {
                let target = outside.join(format!("subject{i}"));
                write(&target.join(&study), REPORT.as_bytes());
                link(&target, &folder);
                expected.skip(SkipReason::LinkOutside, 1);
            }
            Entry::LinkLoop => {
                let (a, b) = (format!("loop{i}a"), format!("loop{i}b"));
                link(Path::new(&b), &root.join("files").join(&a));
                link(Path::new(&a), &root.join("files").join(&b));
                expected.skip(SkipReason::BrokenLink, 2);
            }
            Entry::LinkToRoot => {
                link(Path::new("../.."), &folder.join(format!("up{i}")));
                expected.skip(SkipReason::LinkToFolder, 1);
            }
            Entry::Dangling => {
                link(
                    Path::new(&format!("nowhere{i}")),
                    &root.join(format!("dangling{i}")),
                );
                expected.skip(SkipReason::BrokenLink, 1);
            }
            Entry::LinkInToFile => {
                let target = root.join(format!("store/{i}.txt"));
                write(&target, REPORT.as_bytes());
                link(&target, &report);
                expected.other_files += 1;
                expected.report(REPORT.as_bytes());
            }
            Entry::Socket => {
                std::fs::create_dir_all(&folder).unwrap();
                std::os::unix::net::UnixListener::bind(&report).unwrap();
                expected.skip(SkipReason::SpecialFile, 1);
            }
            Entry::OtherName(name) => {
                write(&folder.join(name), REPORT.as_bytes());
                expected.other_files += 1;
            }
            Entry::NonUtf8Name => {
                let mut name = study.clone().into_bytes();
                name[3] = 0xff;
                write(&folder.join(OsStr::from_bytes(&name)), REPORT.as_bytes());
                expected.other_files += 1;
            }
            Entry::UnderNonUtf8Folder => {
                let top = [0xff, 0xfe, b'0' + (i % 10) as u8];
                let path = root
                    .join(OsStr::from_bytes(&top))
                    .join(report.strip_prefix(root).unwrap());
                write(&path, REPORT.as_bytes());
                expected.report(REPORT.as_bytes());
            }
            Entry::Deep(n) => {
                // `deep{i}` is 1 level below the root, each `d` one more.
                let mut dir = root.join(format!("deep{i}"));
                for _ in 0..*n {
                    dir.push("d");
                }
                write(&dir.join("leaf.txt"), b"x");
                if n + 1 > mimic::MAX_DEPTH {
                    expected.skip(SkipReason::TooDeep, 1);
                } else {
                    expected.other_files += 1;
                }
            }
        }
    }
    expected
}

/// Reads the tree under catch_unwind and checks the outcome against `expected`: a panic fails, an error must be
/// "no reports found" naming the root (and only when the tree holds no report), a summary must account for
/// every entry, and each skip reason's first path must be an entry of the tree.
fn read_as_expected(root: &Path, expected: &Expected) -> Result<(), String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| mimic::read_reports(root)))
        .map_err(|_| "read_reports panicked".to_string())?;
    match outcome {
        Err(e) => {
            let text = e.to_string();
            if expected.reports > 0 || !text.contains("no reports found") {
                return Err(format!("refused: {text}"));
            }
            if !text.contains(&root.display().to_string()) {
                return Err(format!("the error does not name the folder: {text}"));
            }
            for reason in expected.skipped.keys() {
                if !text.contains(reason.describe()) {
                    return Err(format!(
                        "the error does not say why entries were skipped: {text}"
                    ));
                }
            }
        }
        Ok((reports, summary)) => {
            let found = Expected::of(&summary);
            if &found != expected {
                return Err(format!("found {found:?}, expected {expected:?}"));
            }
            if reports.len() != summary.kept
                || reports
                    .iter()
                    .any(|r| r.findings.is_empty() || r.impression.is_empty())
            {
                return Err(format!(
                    "kept reports do not match the summary: {reports:?}"
                ));
            }
            for (reason, s) in &summary.skipped {
                if !s.first.starts_with(root) || std::fs::symlink_metadata(&s.first).is_err() {
                    return Err(format!(
                        "{reason:?}: first path {} is not an entry of the tree",
                        s.first.display()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn each_hostile_tree_entry_is_read_or_counted_with_its_reason() {
    let entries = [
        Entry::Bytes(Vec::new()),
        Entry::Bytes(vec![0xff, 0xfe, 0x00, 0x89]),
        Entry::Bytes(b"FINDINGS: ok\x00\x01\x02\nIMPRESSION: \x7f\n".to_vec()),
        Entry::FolderNamedLikeReport,
        Entry::LinkOutToReport,
        Entry::LinkOutToFolder,
        Entry::LinkLoop,
        Entry::LinkToRoot,
        Entry::Dangling,
        Entry::LinkInToFile,
        Entry::Socket,
        Entry::OtherName("notes.csv"),
        Entry::OtherName("s123.txt"),
        Entry::OtherName("S50000012.TXT"),
        Entry::NonUtf8Name,
        Entry::UnderNonUtf8Folder,
        Entry::Deep(mimic::MAX_DEPTH - 1),
        Entry::Deep(mimic::MAX_DEPTH + 8),
    ];
    let mut failures = Vec::new();
    for entry in entries {
        // Each entry alone next to one good report, so that a miscount names its entry.
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        let expected = build_tree(&root, &outside, &[Entry::Report, entry.clone()]);
        if let Err(why) = read_as_expected(&root, &expected) {
            failures.push(format!("{entry:?}: {why}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_tree_behind_a_link_reads_like_the_tree_and_links_alone_are_no_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
    let expected = build_tree(
        &root,
        &outside,
        &[Entry::Report, Entry::LinkInToFile, Entry::LinkToRoot],
    );
    // The folder given may itself be a link: links inside it are judged against where it leads.
    let alias = tmp.path().join("alias");
    symlink(&root, &alias).unwrap();
    read_as_expected(&alias, &expected).unwrap();
    // A tree whose reports are all behind links out of it: no reports, and the error says why.
    let only_links = tmp.path().join("only-links");
    let expected = build_tree(
        &only_links,
        &outside,
        &[Entry::LinkOutToFolder, Entry::Dangling],
    );
    assert_eq!(expected.reports, 0);
    read_as_expected(&only_links, &expected).unwrap();
}

#[test]
fn nesting_past_path_max_is_an_error_naming_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    write(
        &root.join("files/p10/p10000000/s50000000.txt"),
        REPORT.as_bytes(),
    );
    // Three chains of 8 folders with 250-byte names, nested bottom-up by renames so that no call names a path
    // longer than PATH_MAX (4096 bytes); the deepest path is about 6 KB, 27 levels (under MAX_DEPTH).
    let name = "n".repeat(250);
    let chain = |top: &Path| {
        let mut leaf = top.to_path_buf();
        for _ in 0..8 {
            leaf.push(&name);
        }
        std::fs::create_dir_all(&leaf).unwrap();
        leaf
    };
    let c = chain(&tmp.path().join("c"));
    std::fs::write(c.join("s50000001.txt"), REPORT).unwrap();
    let b = chain(&tmp.path().join("b"));
    std::fs::rename(tmp.path().join("c"), b.join("c")).unwrap();
    let a = chain(&root.join("long"));
    std::fs::rename(tmp.path().join("b"), a.join("b")).unwrap();
    let outcome = catch_unwind(|| mimic::read_reports(&root)).expect("read_reports panicked");
    let text = outcome.unwrap_err().to_string();
    assert!(
        text.contains(&root.join("long").join(&name).display().to_string()),
        "the error does not name the folder: {text}"
    );
}

/// One hostile entry, as proptest draws them.
fn hostile_entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        Just(Entry::Report),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Entry::Bytes),
        prop::collection::vec(
            prop::sample::select(vec![
                "FINDINGS:",
                "IMPRESSION:",
                "\n",
                " ",
                "Lungs clear.",
                "\u{fffd}",
                "\u{0}",
                "CONCLUSION:",
            ]),
            0..12,
        )
        .prop_map(|parts| Entry::Bytes(parts.concat().into_bytes())),
        Just(Entry::FolderNamedLikeReport),
        Just(Entry::LinkOutToReport),
        Just(Entry::LinkOutToFolder),
        Just(Entry::LinkLoop),
        Just(Entry::LinkToRoot),
        Just(Entry::Dangling),
        Just(Entry::LinkInToFile),
        Just(Entry::Socket),
        prop::sample::select(vec![
            "notes.csv",
            "s123.txt",
            "index.html",
            ".s50000000.txt",
            "s5.txt.bak"
        ])
        .prop_map(Entry::OtherName),
        Just(Entry::NonUtf8Name),
        Just(Entry::UnderNonUtf8Folder),
        (1..mimic::MAX_DEPTH + 12).prop_map(Entry::Deep),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn hostile_report_trees_are_read_with_every_entry_accounted_for(
        entries in prop::collection::vec(hostile_entry(), 1..12)
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        let expected = build_tree(&root, &outside, &entries);
        if let Err(why) = read_as_expected(&root, &expected) {
            return Err(TestCaseError::fail(why));
        }
    }
}
