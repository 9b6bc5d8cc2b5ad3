//! MIMIC-CXR free-text reports: reads the official tree (`files/pNN/pNNNNNNNN/sNNNNNNNN.txt`, as a folder or
//! inside a .zip), extracts FINDINGS and IMPRESSION, drops reports missing either (counted by reason),
//! normalises whitespace and writes the thesis's CSV (subject_id, study_id, findings, impression).
//!
//! Section rules: a header is a line that starts with a known section name in any case, with or without a
//! trailing colon (`FINDINGS:`, `Findings`, `impression:`, `IMPRESSIONS:`, `CONCLUSION:`), or any ALL-CAPS name
//! followed by a colon (`EXAMINATION:`, `PA AND LATERAL VIEWS:`). Text on the header's line after the colon
//! belongs to the section. A section runs to the next header or the end of the report. The impression is the
//! first non-empty IMPRESSION/IMPRESSIONS section, else the first non-empty CONCLUSION/CONCLUSIONS section;
//! the findings are the first non-empty FINDINGS section. An ALL-CAPS line without a colon is text (impressions
//! are sometimes written in capitals), unless it is a known section name.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::DataError;

/// One kept report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MimicReport {
    pub subject_id: String,
    pub study_id: String,
    pub findings: String,
    pub impression: String,
}

/// Why a report was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum DropReason {
    MissingFindings,
    MissingImpression,
    MissingBoth,
    NotUtf8,
}

impl DropReason {
    pub fn describe(self) -> &'static str {
        match self {
            DropReason::MissingFindings => "no FINDINGS section",
            DropReason::MissingImpression => "no IMPRESSION (or CONCLUSION) section",
            DropReason::MissingBoth => "neither FINDINGS nor IMPRESSION",
            DropReason::NotUtf8 => "not valid UTF-8",
        }
    }
}

/// Why an entry of a report folder was not read. Links are followed only to regular files inside the folder:
/// a link out of it is not silently read (pass the folder it leads to instead), and a link to a folder would
/// read that folder twice, or forever in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum SkipReason {
    LinkOutside,
    BrokenLink,
    LinkToFolder,
    SpecialFile,
    FolderNamedLikeReport,
    TooDeep,
}

impl SkipReason {
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::LinkOutside => {
                "symbolic links leading out of the folder (not followed; pass the folder they lead to)"
            }
            SkipReason::BrokenLink => "symbolic links that lead nowhere (dangling, or in a loop)",
            SkipReason::LinkToFolder => {
                "symbolic links to folders inside the folder (not followed: each folder is read once)"
            }
            SkipReason::SpecialFile => "special files (fifos, sockets, devices), not read",
            SkipReason::FolderNamedLikeReport => {
                "folders named like a report file (sNNNNNNNN.txt); read as folders"
            }
            SkipReason::TooDeep => "folders nested more than 32 levels deep (not read)",
        }
    }
}

/// Entries skipped for one reason: how many, and the first one met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub count: usize,
    pub first: PathBuf,
}

/// What a conversion read, kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MimicSummary {
    /// Report files found (regular files, or links to regular files inside the folder, at paths matching the
    /// layout).
    pub reports: usize,
    pub kept: usize,
    pub dropped: BTreeMap<DropReason, usize>,
    /// Files in the tree that are not reports of the layout (ignored).
    pub other_files: usize,
    /// Entries of a folder tree that were not read as files, by reason.
    pub skipped: BTreeMap<SkipReason, Skipped>,
}

impl MimicSummary {
    pub fn dropped_total(&self) -> usize {
        self.dropped.values().sum()
    }

    pub fn skipped_total(&self) -> usize {
        self.skipped.values().map(|s| s.count).sum()
    }

    fn skip(&mut self, reason: SkipReason, path: &Path) {
        self.skipped
            .entry(reason)
            .or_insert_with(|| Skipped {
                count: 0,
                first: path.to_path_buf(),
            })
            .count += 1;
    }

    /// One line per skip reason: count, description, first path.
    pub fn describe_skipped(&self) -> Vec<String> {
        self.skipped
            .iter()
            .map(|(reason, s)| {
                format!(
                    "{} {} (first: {})",
                    s.count,
                    reason.describe(),
                    s.first.display()
                )
            })
            .collect()
    }
}

/// The deepest folder read, in levels below the folder given; the layout needs 4
/// (`files/pNN/pNNNNNNNN/sNNNNNNNN.txt`). `SkipReason::TooDeep` names the number.
pub const MAX_DEPTH: usize = 32;

/// The sections found in one report (whitespace already normalised).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sections {
    pub findings: Option<String>,
    pub impression: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    Findings,
    Impression,
    Conclusion,
    Other,
}

const KNOWN: &[(&str, Header)] = &[
    ("FINDINGS", Header::Findings),
    ("FINDING", Header::Findings),
    ("IMPRESSION", Header::Impression),
    ("IMPRESSIONS", Header::Impression),
    ("CONCLUSION", Header::Conclusion),
    ("CONCLUSIONS", Header::Conclusion),
    ("FINAL REPORT", Header::Other),
    ("EXAMINATION", Header::Other),
    ("EXAM", Header::Other),
    ("INDICATION", Header::Other),
    ("INDICATIONS", Header::Other),
    ("HISTORY", Header::Other),
    ("CLINICAL HISTORY", Header::Other),
    ("CLINICAL INFORMATION", Header::Other),
    ("REASON FOR EXAMINATION", Header::Other),
    ("REASON FOR EXAM", Header::Other),
    ("TECHNIQUE", Header::Other),
    ("COMPARISON", Header::Other),
    ("COMPARISONS", Header::Other),
    ("NOTIFICATION", Header::Other),
    ("RECOMMENDATION", Header::Other),
    ("RECOMMENDATIONS", Header::Other),
    ("ADDENDUM", Header::Other),
    ("WET READ", Header::Other),
];

/// Collapses every run of whitespace to one space and trims.
pub fn normalize_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn known(name: &str) -> Option<Header> {
    let name = normalize_whitespace(name).to_uppercase();
    KNOWN
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, header)| *header)
}

fn is_caps_name(name: &str) -> bool {
    let name = name.trim();
    let letters = name.chars().filter(|c| c.is_ascii_alphabetic()).count();
    name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && letters >= 2
        && name.len() <= 60
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || " /&-()'".contains(c))
}

/// The header on `line` and the text after it, if the line is a header.
fn header(line: &str) -> Option<(Header, &str)> {
    let trimmed = line.trim();
    if let Some((name, rest)) = trimmed.split_once(':') {
        if let Some(kind) = known(name) {
            return Some((kind, rest));
        }
        if is_caps_name(name) {
            return Some((Header::Other, rest));
        }
    }
    known(trimmed).map(|kind| (kind, ""))
}

/// Extracts FINDINGS and IMPRESSION (or CONCLUSION) from a report.
pub fn extract_sections(report: &str) -> Sections {
    let mut sections: Vec<(Header, String)> = Vec::new();
    for line in report.lines() {
        match header(line) {
            Some((kind, rest)) => sections.push((kind, rest.to_owned())),
            None => {
                if let Some((_, text)) = sections.last_mut() {
                    text.push('\n');
                    text.push_str(line);
                }
            }
        }
    }
    let first = |wanted: Header| {
        sections
            .iter()
            .filter(|(kind, _)| *kind == wanted)
            .map(|(_, text)| normalize_whitespace(text))
            .find(|text| !text.is_empty())
    };
    Sections {
        findings: first(Header::Findings),
        impression: first(Header::Impression).or_else(|| first(Header::Conclusion)),
    }
}

/// Subject and study ids from a path ending in `pNN/pNNNNNNNN/sNNNNNNNN.txt`.
pub fn ids_from_path(path: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = path.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
    let [.., bucket, subject, study] = parts.as_slice() else {
        return None;
    };
    let digits = |s: &str, prefix: char, n: usize| {
        s.strip_prefix(prefix)
            .filter(|d| d.len() == n && d.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
    };
    digits(bucket, 'p', 2)?;
    let subject = digits(subject, 'p', 8)?;
    let study = digits(study.strip_suffix(".txt")?, 's', 8)?;
    Some((subject, study))
}

/// Reads every report under `path` (a folder or a .zip), in (subject, study) order.
pub fn read_reports(path: &Path) -> Result<(Vec<MimicReport>, MimicSummary), DataError> {
    let mut raw: Vec<((String, String), Vec<u8>)> = Vec::new();
    let mut summary = MimicSummary::default();
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        for file in walk(path, &mut summary)? {
            let relative = file
                .strip_prefix(path)
                .unwrap_or(&file)
                .to_string_lossy()
                .replace('\\', "/");
            match ids_from_path(&relative) {
                Some(ids) => {
                    let bytes = std::fs::read(&file).map_err(|source| DataError::Io {
                        path: file.clone(),
                        source,
                    })?;
                    raw.push((ids, bytes));
                }
                None => summary.other_files += 1,
            }
        }
    } else if path.extension().is_some_and(|x| x == "zip") {
        let file = std::fs::File::open(path).map_err(io)?;
        let zip_error = |e: zip::result::ZipError| DataError::Zip {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut archive = zip::ZipArchive::new(file).map_err(zip_error)?;
        for index in 0..archive.len() {
            let mut entry = archive.by_index(index).map_err(zip_error)?;
            if entry.is_dir() {
                continue;
            }
            let name = entry.name().map_err(zip_error)?.into_owned();
            match ids_from_path(&name) {
                Some(ids) => {
                    let mut bytes = Vec::new();
                    entry.read_to_end(&mut bytes).map_err(|e| DataError::Zip {
                        path: path.to_path_buf(),
                        message: format!("{name}: {e}"),
                    })?;
                    raw.push((ids, bytes));
                }
                None => summary.other_files += 1,
            }
        }
    } else if path.exists() {
        return Err(DataError::Layout {
            path: path.to_path_buf(),
            message:
                "not a folder or a .zip (accepted: a MIMIC-CXR report folder, or a .zip of one)"
                    .into(),
        });
    } else {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file or folder",
        )));
    }
    if raw.is_empty() {
        let skipped = summary.describe_skipped();
        return Err(DataError::Layout {
            path: path.to_path_buf(),
            message: format!(
                "no reports found (accepted: files laid out as files/pNN/pNNNNNNNN/sNNNNNNNN.txt){}",
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!("; skipped: {}", skipped.join("; "))
                }
            ),
        });
    }
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    let mut reports = Vec::new();
    for ((subject_id, study_id), bytes) in raw {
        summary.reports += 1;
        let Ok(text) = String::from_utf8(bytes) else {
            *summary.dropped.entry(DropReason::NotUtf8).or_default() += 1;
            continue;
        };
        let sections = extract_sections(&text);
        match (sections.findings, sections.impression) {
            (Some(findings), Some(impression)) => reports.push(MimicReport {
                subject_id,
                study_id,
                findings,
                impression,
            }),
            (None, None) => *summary.dropped.entry(DropReason::MissingBoth).or_default() += 1,
            (None, _) => {
                *summary
                    .dropped
                    .entry(DropReason::MissingFindings)
                    .or_default() += 1
            }
            (_, None) => {
                *summary
                    .dropped
                    .entry(DropReason::MissingImpression)
                    .or_default() += 1
            }
        }
    }
    summary.kept = reports.len();
    tracing::info!(
        path = %path.display(),
        reports = summary.reports,
        kept = summary.kept,
        dropped = summary.dropped_total(),
        skipped = summary.skipped_total(),
        "read MIMIC-CXR reports"
    );
    for line in summary.describe_skipped() {
        tracing::warn!(path = %path.display(), "skipped {line}");
    }
    Ok((reports, summary))
}

/// The files under the folder `root` to read: regular files, and links to regular files inside the folder.
/// Everything else is counted in `summary.skipped` (see [`SkipReason`]). The walk keeps its own stack, so no
/// nesting can overflow the thread's; a folder that cannot be listed is an error naming it.
fn walk(root: &Path, summary: &mut MimicSummary) -> Result<Vec<PathBuf>, DataError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let inside = std::fs::canonicalize(root).map_err(io(root))?;
    let report_named = |path: &Path| {
        let relative = path.strip_prefix(root).unwrap_or(path);
        ids_from_path(&relative.to_string_lossy()).is_some()
    };
    let mut files = Vec::new();
    // Folders still to list, with their depth below `root`.
    let mut folders = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = folders.pop() {
        let mut entries = std::fs::read_dir(&dir)
            .and_then(|listing| listing.collect::<Result<Vec<_>, _>>())
            .map_err(io(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        let mut below = Vec::new();
        for entry in entries {
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_file() {
                files.push(path);
            } else if kind.is_dir() {
                if report_named(&path) {
                    summary.skip(SkipReason::FolderNamedLikeReport, &path);
                }
                if depth + 1 > MAX_DEPTH {
                    summary.skip(SkipReason::TooDeep, &path);
                } else {
                    below.push(path);
                }
            } else if kind.is_symlink() {
                let reason = match std::fs::canonicalize(&path) {
                    Err(_) => Some(SkipReason::BrokenLink),
                    Ok(target) if !target.starts_with(&inside) => Some(SkipReason::LinkOutside),
                    Ok(target) => match std::fs::metadata(&target) {
                        Ok(m) if m.is_file() => None,
                        Ok(m) if m.is_dir() => Some(SkipReason::LinkToFolder),
                        Ok(_) => Some(SkipReason::SpecialFile),
                        Err(_) => Some(SkipReason::BrokenLink),
                    },
                };
                match reason {
                    None => files.push(path),
                    Some(reason) => summary.skip(reason, &path),
                }
            } else {
                summary.skip(SkipReason::SpecialFile, &path);
            }
        }
        // Listed last first: pushed in reverse so that folders are read in name order.
        folders.extend(below.into_iter().rev().map(|d| (d, depth + 1)));
    }
    Ok(files)
}

/// Writes the thesis's CSV: subject_id, study_id, findings, impression.
pub fn write_csv(reports: &[MimicReport], out: &Path) -> Result<(), DataError> {
    let error = |e: csv::Error| DataError::Io {
        path: out.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut writer = csv::Writer::from_path(out).map_err(error)?;
    writer
        .write_record(["subject_id", "study_id", "findings", "impression"])
        .map_err(error)?;
    for report in reports {
        writer
            .write_record([
                &report.subject_id,
                &report.study_id,
                &report.findings,
                &report.impression,
            ])
            .map_err(error)?;
    }
    writer.flush().map_err(|source| DataError::Io {
        path: out.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const CLASSIC: &str = "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___ with cough\n \n FINDINGS: \n \n The lungs are clear.   No pleural\n effusion.\n \n IMPRESSION: \n \n No acute cardiopulmonary process.\n";

    #[test]
    fn classic_headers_with_colons() {
        let s = extract_sections(CLASSIC);
        assert_eq!(
            s.findings.as_deref(),
            Some("The lungs are clear. No pleural effusion.")
        );
        assert_eq!(
            s.impression.as_deref(),
            Some("No acute cardiopulmonary process.")
        );
    }

    #[test]
    fn header_variants_case_colon_plural_and_inline_text() {
        let s = extract_sections("Findings\nHeart size normal.\nimpression: Normal chest.\n");
        assert_eq!(s.findings.as_deref(), Some("Heart size normal."));
        assert_eq!(s.impression.as_deref(), Some("Normal chest."));
        let s = extract_sections(
            "FINDINGS: Small left effusion.\nIMPRESSIONS:\n1. Effusion.\n2. No pneumonia.\n",
        );
        assert_eq!(s.findings.as_deref(), Some("Small left effusion."));
        assert_eq!(
            s.impression.as_deref(),
            Some("1. Effusion. 2. No pneumonia.")
        );
    }

    #[test]
    fn conclusion_stands_in_only_when_there_is_no_impression() {
        let s = extract_sections("FINDINGS: a.\nCONCLUSION: b.\n");
        assert_eq!(s.impression.as_deref(), Some("b."));
        let s = extract_sections("FINDINGS: a.\nCONCLUSION: b.\nIMPRESSION: c.\n");
        assert_eq!(s.impression.as_deref(), Some("c."));
    }

    #[test]
    fn sections_end_at_the_next_caps_header_and_caps_text_stays_text() {
        let s = extract_sections(
            "FINDINGS: Lungs clear.\nNOTIFICATION: called Dr. ___.\nIMPRESSION:\nNO ACUTE DISEASE.\nRECOMMENDATION(S): follow-up.\n",
        );
        assert_eq!(s.findings.as_deref(), Some("Lungs clear."));
        assert_eq!(s.impression.as_deref(), Some("NO ACUTE DISEASE."));
        let s = extract_sections("FINDINGS: Lungs clear.\nPA AND LATERAL VIEWS: unchanged.\n");
        assert_eq!(s.findings.as_deref(), Some("Lungs clear."));
    }

    #[test]
    fn empty_sections_count_as_missing() {
        let s = extract_sections("FINDINGS:\n\nIMPRESSION: ok.\n");
        assert_eq!(s.findings, None);
    }

    #[test]
    fn ids_come_from_the_layout() {
        assert_eq!(
            ids_from_path("files/p10/p10000032/s50414267.txt"),
            Some(("10000032".into(), "50414267".into()))
        );
        assert_eq!(
            ids_from_path("mimic/files/p10/p10000032/s50414267.txt").map(|x| x.1),
            Some("50414267".into())
        );
        assert_eq!(ids_from_path("files/p10/p1000003/s50414267.txt"), None);
        assert_eq!(ids_from_path("files/p10/p10000032/index.html"), None);
    }

    fn tree() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("files/p10/p10000032/s50414267.txt", CLASSIC.as_bytes()),
            (
                "files/p10/p10000032/s50000001.txt",
                b"Findings\nHeart normal.\nImpressions\nNormal.\n",
            ),
            (
                "files/p11/p11000001/s51000001.txt",
                b"FINDINGS: only findings.\n",
            ),
            (
                "files/p11/p11000001/s51000002.txt",
                b"IMPRESSION: only impression.\n",
            ),
            (
                "files/p11/p11000002/s52000001.txt",
                b"EXAMINATION: chest.\n",
            ),
            (
                "files/p12/p12000001/s53000001.txt",
                b"findings: a\nconclusion: b\n",
            ),
            (
                "files/p12/p12000001/s53000002.txt",
                b"FINDINGS: \xff\nIMPRESSION: x\n",
            ),
            ("files/p12/p12000001/notes.csv", b"x"),
        ]
    }

    fn check(reports: &[MimicReport], summary: &MimicSummary) {
        let ids: Vec<_> = reports
            .iter()
            .map(|r| format!("{}/{}", r.subject_id, r.study_id))
            .collect();
        assert_eq!(
            ids,
            [
                "10000032/50000001",
                "10000032/50414267",
                "12000001/53000001"
            ]
        );
        assert_eq!(reports[2].impression, "b");
        assert_eq!(summary.reports, 7);
        assert_eq!(summary.kept, 3);
        assert_eq!(summary.other_files, 1);
        let dropped: Vec<_> = summary.dropped.iter().map(|(r, n)| (*r, *n)).collect();
        assert_eq!(
            dropped,
            [
                (DropReason::MissingFindings, 1),
                (DropReason::MissingImpression, 1),
                (DropReason::MissingBoth, 1),
                (DropReason::NotUtf8, 1)
            ]
        );
    }

    #[test]
    fn reads_a_folder_tree_and_writes_the_csv() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in tree() {
            let path = dir.path().join("mimic").join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let (reports, summary) = read_reports(&dir.path().join("mimic")).unwrap();
        check(&reports, &summary);
        let out = dir.path().join("out.csv");
        write_csv(&reports, &out).unwrap();
        let text = std::fs::read_to_string(out).unwrap();
        assert!(
            text.starts_with(
                "subject_id,study_id,findings,impression\n10000032,50000001,Heart normal.,Normal.\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn reads_the_same_tree_inside_a_zip() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("mimic-cxr-reports.zip");
        let mut writer = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        for (name, bytes) in tree() {
            writer
                .start_file(
                    format!("mimic-cxr-reports/{name}"),
                    zip::write::SimpleFileOptions::default(),
                )
                .unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap();
        let (reports, summary) = read_reports(&zip_path).unwrap();
        check(&reports, &summary);
    }

    #[test]
    fn a_tree_without_reports_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = read_reports(dir.path()).unwrap_err().to_string();
        assert!(error.contains("no reports found"), "{error}");
        let error = read_reports(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no such file"), "{error}");
    }
}
