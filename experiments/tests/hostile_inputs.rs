//! Hostile user files: manifests, CSV datasets and MIMIC-CXR reports made of arbitrary or damaged bytes must be
//! refused with an error (or read), never a panic. Property tests over random bytes and over seeded damage of
//! the real fixtures.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use common::Project;
use proptest::prelude::*;
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
