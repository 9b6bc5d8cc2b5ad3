//! Patient histories for `tandem summarize`: a CSV of reports (`subject_id`, `study_id`, `date`, `findings`,
//! `impression`; the impression may be empty when the findings are there) grouped by patient and put in date
//! order; and a generator of SYNTHETIC multi-visit histories made by chaining IU X-ray reports into made-up
//! patients. IU X-ray has no patient ids, so those chains (and their dates) are invented; nothing in them
//! follows a real patient over time.

use std::collections::BTreeMap;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;
use serde::{Deserialize, Serialize};

use super::error::DataError;
use super::table::Example;

/// The columns a history CSV must have (others are ignored).
pub const COLUMNS: [&str; 5] = ["subject_id", "study_id", "date", "findings", "impression"];

/// One report of a patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visit {
    pub study_id: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    pub findings: String,
    /// `None` when the CSV leaves it empty: stage 1 writes it from the findings.
    pub impression: Option<String>,
}

/// A patient's reports, oldest first (ties by study id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientHistory {
    pub subject_id: String,
    pub visits: Vec<Visit>,
}

fn bad(path: &Path, line: u64, message: String) -> DataError {
    DataError::Csv {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// Whether `text` is a valid `YYYY-MM-DD` calendar date.
pub fn is_date(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return false;
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return false;
    }
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i64>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return false;
    };
    (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Reads the histories in `path`.
pub fn load_histories(path: &Path) -> Result<Vec<PatientHistory>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_histories(&bytes, path)
}

/// Parses history CSV `bytes` as if read from `path`: patients in order of first appearance, visits by date.
/// A row without a subject or study id, with a date that is not `YYYY-MM-DD`, with neither findings nor
/// impression, or repeating a (subject, study) pair is an error naming its line.
pub fn parse_histories(bytes: &[u8], path: &Path) -> Result<Vec<PatientHistory>, DataError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_owned).collect(),
        Err(e) => return Err(bad(path, 1, e.to_string())),
    };
    let mut at = [0usize; 5];
    for (slot, column) in COLUMNS.iter().enumerate() {
        at[slot] =
            header
                .iter()
                .position(|c| c == column)
                .ok_or_else(|| DataError::MissingColumn {
                    path: path.to_path_buf(),
                    column: (*column).to_owned(),
                    role: "a patient history",
                    available: header.clone(),
                })?;
    }
    let mut order: Vec<String> = Vec::new();
    let mut by_subject: BTreeMap<String, Vec<Visit>> = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            bad(path, line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != header.len() {
            return Err(bad(
                path,
                line,
                format!(
                    "has {} fields, the header has {} (accepted: one field per column: {})",
                    record.len(),
                    header.len(),
                    COLUMNS.join(", ")
                ),
            ));
        }
        let field = |slot: usize| record[at[slot]].trim().to_owned();
        let (subject, study, date) = (field(0), field(1), field(2));
        let (findings, impression) = (field(3), field(4));
        if subject.is_empty() || study.is_empty() {
            return Err(bad(
                path,
                line,
                "empty subject_id or study_id (accepted: both non-empty)".into(),
            ));
        }
        if !is_date(&date) {
            return Err(bad(
                path,
                line,
                format!("date {date:?} (accepted: a calendar date written YYYY-MM-DD)"),
            ));
        }
        if findings.is_empty() && impression.is_empty() {
            return Err(bad(
                path,
                line,
                "neither findings nor impression (accepted: an impression, or findings for stage 1 to write one from)"
                    .into(),
            ));
        }
        let visits = by_subject.entry(subject.clone()).or_default();
        if visits.is_empty() {
            order.push(subject.clone());
        }
        if visits.iter().any(|v| v.study_id == study) {
            return Err(bad(
                path,
                line,
                format!(
                    "study {study:?} of subject {subject:?} appears twice (accepted: each study once)"
                ),
            ));
        }
        visits.push(Visit {
            study_id: study,
            date,
            findings,
            impression: (!impression.is_empty()).then_some(impression),
        });
    }
    if order.is_empty() {
        return Err(bad(
            path,
            1,
            "no reports (accepted: at least one data row)".into(),
        ));
    }
    Ok(order
        .into_iter()
        .map(|subject| {
            let mut visits = by_subject.remove(&subject).unwrap_or_default();
            visits.sort_by(|a, b| (&a.date, &a.study_id).cmp(&(&b.date, &b.study_id)));
            PatientHistory {
                subject_id: subject,
                visits,
            }
        })
        .collect())
}

/// How to chain reports into made-up patients.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainOptions {
    pub patients: usize,
    pub min_visits: usize,
    pub max_visits: usize,
    /// Fraction of visits (after each patient's first) whose impression is left empty for stage 1 to write.
    pub blank_impressions: f64,
    pub seed: u64,
}

/// The date `days` after 2015-01-01 (day 16436 since 1970-01-01), as `YYYY-MM-DD`.
fn date_after_2015(days: i64) -> String {
    let (y, m, d) = super::synth::civil(16436 + days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// SYNTHETIC histories: `options.patients` made-up patients, each given `min_visits..=max_visits` distinct
/// reports of `reports` (findings as input, impression as target) at increasing made-up dates. Subject and study
/// ids start with `SYN-`. The same options and reports give the same rows.
pub fn chain_reports(
    reports: &[Example],
    options: &ChainOptions,
) -> Result<Vec<PatientHistory>, String> {
    if options.min_visits == 0 || options.min_visits > options.max_visits {
        return Err(format!(
            "visits {}..{} (accepted: 1 <= min <= max)",
            options.min_visits, options.max_visits
        ));
    }
    if !(0.0..=1.0).contains(&options.blank_impressions) {
        return Err(format!(
            "blank fraction {} (accepted: a number in [0, 1])",
            options.blank_impressions
        ));
    }
    let needed = options.patients * options.max_visits;
    if reports.len() < needed {
        return Err(format!(
            "{} reports for {} patients of up to {} visits (accepted: at least {needed})",
            reports.len(),
            options.patients,
            options.max_visits
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut unit = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    // A seeded shuffle of the reports; patients take them in turn, so no report is used twice.
    let mut order: Vec<usize> = (0..reports.len()).collect();
    for i in (1..order.len()).rev() {
        let j = ((unit() * (i + 1) as f64) as usize).min(i);
        order.swap(i, j);
    }
    let mut next = order.into_iter();
    let mut study = 0usize;
    let mut out = Vec::with_capacity(options.patients);
    for p in 0..options.patients {
        let span = options.max_visits - options.min_visits + 1;
        let visits = options.min_visits + ((unit() * span as f64) as usize).min(span - 1);
        let mut day = (unit() * 1500.0) as i64;
        let mut history = PatientHistory {
            subject_id: format!("SYN-P{:04}", p + 1),
            visits: Vec::with_capacity(visits),
        };
        for v in 0..visits {
            let report = &reports[next.next().expect("enough reports checked above")];
            study += 1;
            let blank = v > 0 && unit() < options.blank_impressions;
            history.visits.push(Visit {
                study_id: format!("SYN-S{study:06}"),
                date: date_after_2015(day),
                findings: report.input.clone(),
                impression: (!blank).then(|| report.target.clone()),
            });
            day += 30 + (unit() * 365.0) as i64;
        }
        out.push(history);
    }
    Ok(out)
}

/// The histories as a CSV with [`COLUMNS`] and a `synthetic` column (`true` on every row).
pub fn histories_csv(histories: &[PatientHistory]) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<&str> = COLUMNS.to_vec();
    header.push("synthetic");
    writer.write_record(&header).expect("writing to memory");
    for h in histories {
        for v in &h.visits {
            writer
                .write_record([
                    h.subject_id.as_str(),
                    v.study_id.as_str(),
                    v.date.as_str(),
                    v.findings.as_str(),
                    v.impression.as_deref().unwrap_or(""),
                    "true",
                ])
                .expect("writing to memory");
        }
    }
    String::from_utf8(writer.into_inner().expect("in memory")).expect("UTF-8 in, UTF-8 out")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(i: usize) -> Example {
        Example {
            row: i,
            input: format!("Findings {i}."),
            target: format!("Impression {i}."),
            group: None,
        }
    }

    #[test]
    fn dates_are_checked_as_calendar_dates() {
        for ok in ["2020-02-29", "2019-12-31", "2000-02-29"] {
            assert!(is_date(ok), "{ok}");
        }
        for bad in [
            "2019-02-29",
            "1900-02-29",
            "2020-13-01",
            "2020-1-01",
            "20-01-01",
            "",
            "2020-04-31",
        ] {
            assert!(!is_date(bad), "{bad}");
        }
        assert_eq!(date_after_2015(0), "2015-01-01");
        assert_eq!(date_after_2015(365), "2016-01-01");
        assert_eq!(date_after_2015(365 + 59), "2016-02-29");
    }

    #[test]
    fn histories_are_grouped_and_put_in_date_order() {
        let csv = "subject_id,study_id,date,findings,impression,extra\n\
                   A,s2,2021-05-01,Lungs clear.,,x\n\
                   B,s9,2020-01-01,,No acute disease.,y\n\
                   A,s1,2020-03-01,Effusion.,Small effusion.,z\n";
        let h = parse_histories(csv.as_bytes(), Path::new("h.csv")).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].subject_id, "A");
        assert_eq!(h[0].visits[0].study_id, "s1");
        assert_eq!(h[0].visits[1].impression, None);
        assert_eq!(h[1].visits[0].findings, "");
    }

    #[test]
    fn bad_rows_are_named_by_line() {
        let cases = [
            (
                "subject_id,study_id,date,findings\nA,s1,2020-01-01,x\n",
                "has no column \"impression\"",
            ),
            (
                "subject_id,study_id,date,findings,impression\nA,s1,2020-1-1,x,y\n",
                "h.csv:2: date \"2020-1-1\"",
            ),
            (
                "subject_id,study_id,date,findings,impression\nA,s1,2020-01-01,,\n",
                "h.csv:2: neither findings nor impression",
            ),
            (
                "subject_id,study_id,date,findings,impression\nA,s1,2020-01-01,x,y\nA,s1,2020-02-01,x,y\n",
                "h.csv:3: study \"s1\" of subject \"A\" appears twice",
            ),
            (
                "subject_id,study_id,date,findings,impression\n,s1,2020-01-01,x,y\n",
                "h.csv:2: empty subject_id",
            ),
            (
                "subject_id,study_id,date,findings,impression\n",
                "no reports",
            ),
        ];
        for (csv, expected) in cases {
            let e = parse_histories(csv.as_bytes(), Path::new("h.csv"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{csv:?}: {e}");
        }
    }

    #[test]
    fn chains_are_seeded_distinct_and_round_trip_through_csv() {
        let reports: Vec<Example> = (0..40).map(example).collect();
        let options = ChainOptions {
            patients: 6,
            min_visits: 2,
            max_visits: 4,
            blank_impressions: 0.5,
            seed: 3,
        };
        let a = chain_reports(&reports, &options).unwrap();
        assert_eq!(a, chain_reports(&reports, &options).unwrap());
        let used: Vec<&str> = a
            .iter()
            .flat_map(|h| h.visits.iter().map(|v| v.findings.as_str()))
            .collect();
        let mut distinct = used.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(used.len(), distinct.len(), "no report used twice");
        for h in &a {
            assert!((2..=4).contains(&h.visits.len()));
            assert!(
                h.visits[0].impression.is_some(),
                "a first visit keeps its impression"
            );
            assert!(h.visits.windows(2).all(|w| w[0].date < w[1].date));
        }
        let back = parse_histories(histories_csv(&a).as_bytes(), Path::new("c.csv")).unwrap();
        assert_eq!(back, a);
        let too_many = ChainOptions {
            patients: 20,
            ..options
        };
        assert!(
            chain_reports(&reports, &too_many)
                .unwrap_err()
                .contains("at least 80")
        );
    }
}
