//! SYNTHETIC longitudinal oncology impressions for stage 2 (the thesis's 174 real ones are private).
//!
//! A seeded generator of patients followed by serial CT / MR / PET-CT examinations. Each patient has a cancer
//! type, a set of lesion sites, lines of therapy and a disease course (response, stability, progression,
//! complete response, recurrence); each examination gets a radiologist-style impression ("Since March 3, 2021,
//! ...", measurements, new / enlarging / decreasing / resolved / stable lesions by organ, treatment changes,
//! boilerplate) and a concise target summary written by rules that keep the clinically relevant change and drop
//! the boilerplate, like Table 4.2 of the thesis. About a fifth of the examinations show no evidence of disease.
//!
//! Every row is labelled `synthetic = true`; nothing here describes a real patient. Randomness: ChaCha8 raw
//! `next_u64` draws only, so a seed gives the same rows on any machine.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;
use serde::Serialize;

use super::error::DataError;

/// Columns of the generated CSV.
pub const COLUMNS: [&str; 7] = [
    "patient_id",
    "exam_index",
    "exam_date",
    "modality",
    "impression",
    "summary",
    "synthetic",
];

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthOptions {
    pub patients: usize,
    pub seed: u64,
}

/// One generated examination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SynthRow {
    pub patient_id: String,
    /// 0-based position of the examination in the patient's series.
    pub exam_index: usize,
    /// ISO date, `YYYY-MM-DD`.
    pub exam_date: String,
    pub modality: String,
    pub impression: String,
    pub summary: String,
}

struct Dice(ChaCha8Rng);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

struct Cancer {
    name: &'static str,
    /// Lesion sites as noun phrases; the first is the primary.
    sites: &'static [&'static str],
    therapies: &'static [&'static str],
    pet: bool,
}

const CANCERS: &[Cancer] = &[
    Cancer {
        name: "lung adenocarcinoma",
        sites: &[
            "right upper lobe mass",
            "mediastinal lymph node",
            "left lower lobe nodule",
            "right adrenal nodule",
            "segment VII liver lesion",
            "T8 vertebral body lesion",
        ],
        therapies: &["carboplatin and pemetrexed", "pembrolizumab", "docetaxel"],
        pet: false,
    },
    Cancer {
        name: "breast carcinoma",
        sites: &[
            "left breast mass",
            "left axillary lymph node",
            "segment IVa liver lesion",
            "L2 vertebral body sclerotic lesion",
            "right lower lobe nodule",
        ],
        therapies: &[
            "letrozole and palbociclib",
            "capecitabine",
            "trastuzumab deruxtecan",
        ],
        pet: false,
    },
    Cancer {
        name: "colorectal adenocarcinoma",
        sites: &[
            "sigmoid colon mass",
            "segment VI liver lesion",
            "segment II liver lesion",
            "retroperitoneal lymph node",
            "left lower lobe nodule",
            "peritoneal implant",
        ],
        therapies: &["FOLFOX", "FOLFIRI with bevacizumab", "regorafenib"],
        pet: false,
    },
    Cancer {
        name: "diffuse large B-cell lymphoma",
        sites: &[
            "left cervical lymph node",
            "mediastinal lymph node",
            "retroperitoneal lymph node",
            "splenic lesion",
            "right inguinal lymph node",
        ],
        therapies: &["R-CHOP", "R-ICE", "CAR T-cell therapy"],
        pet: true,
    },
    Cancer {
        name: "melanoma",
        sites: &[
            "right axillary lymph node",
            "left upper lobe nodule",
            "segment VIII liver lesion",
            "subcutaneous left flank nodule",
            "right adrenal nodule",
        ],
        therapies: &[
            "nivolumab and ipilimumab",
            "nivolumab",
            "dabrafenib and trametinib",
        ],
        pet: true,
    },
    Cancer {
        name: "renal cell carcinoma",
        sites: &[
            "left renal mass",
            "right lower lobe nodule",
            "left adrenal nodule",
            "pancreatic tail lesion",
            "T11 vertebral body lesion",
        ],
        therapies: &["pembrolizumab and axitinib", "cabozantinib", "everolimus"],
        pet: false,
    },
];

const BOILERPLATE: &[&str] = &[
    "No pleural effusion.",
    "The visualized bowel is unremarkable.",
    "Mild degenerative changes of the thoracolumbar spine.",
    "Atherosclerotic calcification of the abdominal aorta.",
    "Cholelithiasis without evidence of acute cholecystitis.",
    "Small hiatal hernia.",
    "No acute intra-abdominal process.",
    "Stable subcentimeter hepatic hypodensity, too small to characterize, likely a cyst.",
    "Recommend continued follow-up as clinically indicated.",
    "Bilateral renal cortical cysts, unchanged.",
];

#[derive(Debug, Clone, Copy, PartialEq)]
struct Lesion {
    site: usize,
    long_mm: f64,
    short_mm: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Course {
    Response,
    Stable,
    Progression,
}

enum Change {
    New(Lesion),
    Enlarging(Lesion, Lesion),
    Decreasing(Lesion, Lesion),
    Resolved(Lesion),
    Stable(Lesion),
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// (year, month 1-12, day) of a day count since 1970-01-01 (proleptic Gregorian; Hinnant's algorithm).
pub(crate) fn civil(days: i64) -> (i64, usize, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as usize, day)
}

fn iso(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

fn long_date(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{} {d}, {y}", MONTHS[m - 1])
}

fn size(lesion: &Lesion) -> String {
    if lesion.long_mm < 10.0 {
        format!("{:.0} mm", lesion.long_mm)
    } else {
        format!(
            "{:.1} x {:.1} cm",
            lesion.long_mm / 10.0,
            lesion.short_mm / 10.0
        )
    }
}

fn short_size(lesion: &Lesion) -> String {
    if lesion.long_mm < 10.0 {
        format!("{:.0} mm", lesion.long_mm)
    } else {
        format!("{:.1} cm", lesion.long_mm / 10.0)
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().collect::<String>() + chars.as_str()
    })
}

/// Generates `patients` series of examinations.
pub fn generate(options: SynthOptions) -> Vec<SynthRow> {
    let mut dice = Dice(ChaCha8Rng::seed_from_u64(options.seed));
    let mut rows = Vec::new();
    for patient in 0..options.patients {
        generate_patient(&mut dice, patient, &mut rows);
    }
    rows
}

fn generate_patient(dice: &mut Dice, patient: usize, rows: &mut Vec<SynthRow>) {
    let cancer = dice.pick(CANCERS);
    let patient_id = format!("SYN-{:03}", patient + 1);
    let exams = 6 + dice.below(6);
    // 2019-01-01 is day 17897; first exams fall in 2019-2021.
    let mut date = 17_897 + dice.below(1_000) as i64;
    let adjuvant = dice.chance(0.3);
    let mut therapy = 0usize;
    let mut lesions: Vec<Lesion> = Vec::new();
    if !adjuvant {
        let count = 1 + dice.below(3);
        let mut sites = vec![0];
        while sites.len() < count {
            let site = 1 + dice.below(cancer.sites.len() - 1);
            if !sites.contains(&site) {
                sites.push(site);
            }
        }
        for site in sites {
            let long_mm = if site == 0 {
                dice.between(22.0, 55.0)
            } else {
                dice.between(8.0, 25.0)
            };
            lesions.push(Lesion {
                site,
                long_mm,
                short_mm: long_mm * dice.between(0.55, 0.85),
            });
        }
    }
    let mut course = Course::Response;
    let mut previous_date = date;
    for exam_index in 0..exams {
        let modality = if cancer.pet && dice.chance(0.6) || dice.chance(0.12) {
            "PET-CT"
        } else if cancer.sites.iter().any(|s| s.contains("liver")) && dice.chance(0.15) {
            "Whole-body MR"
        } else {
            "CT chest, abdomen and pelvis"
        };
        let mut boilerplate: Vec<&str> = Vec::new();
        for _ in 0..1 + dice.below(3) {
            let line = *dice.pick(BOILERPLATE);
            if !boilerplate.contains(&line) {
                boilerplate.push(line);
            }
        }
        let (impression, summary) = if exam_index == 0 {
            baseline(cancer, &lesions, adjuvant, &boilerplate)
        } else {
            let mut therapy_change = None;
            if lesions.is_empty() {
                if dice.chance(0.2) {
                    let site = dice.below(cancer.sites.len());
                    let long_mm = dice.between(7.0, 18.0);
                    let new = Lesion {
                        site,
                        long_mm,
                        short_mm: long_mm * dice.between(0.6, 0.9),
                    };
                    lesions.push(new);
                    course = Course::Progression;
                    let changes = vec![Change::New(new)];
                    follow_up(cancer, previous_date, &changes, None, &boilerplate)
                } else {
                    no_evidence(previous_date, &boilerplate)
                }
            } else {
                let last = course;
                if last == Course::Progression && therapy + 1 < cancer.therapies.len() {
                    therapy += 1;
                    therapy_change = Some(cancer.therapies[therapy]);
                }
                let roll = dice.unit();
                course = match last {
                    Course::Progression => {
                        if roll < 0.6 {
                            Course::Response
                        } else if roll < 0.9 {
                            Course::Stable
                        } else {
                            Course::Progression
                        }
                    }
                    Course::Response => {
                        if roll < 0.55 {
                            Course::Response
                        } else if roll < 0.85 {
                            Course::Stable
                        } else {
                            Course::Progression
                        }
                    }
                    Course::Stable => {
                        if roll < 0.45 {
                            Course::Stable
                        } else if roll < 0.7 {
                            Course::Response
                        } else {
                            Course::Progression
                        }
                    }
                };
                let changes = evolve(dice, cancer, &mut lesions, course);
                follow_up(
                    cancer,
                    previous_date,
                    &changes,
                    therapy_change,
                    &boilerplate,
                )
            }
        };
        rows.push(SynthRow {
            patient_id: patient_id.clone(),
            exam_index,
            exam_date: iso(date),
            modality: modality.to_owned(),
            impression,
            summary,
        });
        previous_date = date;
        date += 56 + dice.below(70) as i64;
    }
}

fn evolve(
    dice: &mut Dice,
    cancer: &Cancer,
    lesions: &mut Vec<Lesion>,
    course: Course,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut kept = Vec::new();
    for lesion in lesions.iter() {
        let factor = match course {
            Course::Response => dice.between(0.5, 0.85),
            Course::Stable => dice.between(0.94, 1.06),
            Course::Progression => dice.between(1.0, 1.5),
        };
        let now = Lesion {
            site: lesion.site,
            long_mm: lesion.long_mm * factor,
            short_mm: lesion.short_mm * factor,
        };
        if now.long_mm < 5.0 {
            changes.push(Change::Resolved(*lesion));
            continue;
        }
        let change = if factor >= 1.2 {
            Change::Enlarging(*lesion, now)
        } else if factor <= 0.8 {
            Change::Decreasing(*lesion, now)
        } else {
            Change::Stable(now)
        };
        changes.push(change);
        kept.push(now);
    }
    if course == Course::Progression
        && (dice.chance(0.5) || !changes.iter().any(|c| matches!(c, Change::Enlarging(..))))
    {
        let free: Vec<usize> = (0..cancer.sites.len())
            .filter(|s| !kept.iter().any(|l| l.site == *s))
            .collect();
        if !free.is_empty() {
            let site = *dice.pick(&free);
            let long_mm = dice.between(6.0, 16.0);
            let new = Lesion {
                site,
                long_mm,
                short_mm: long_mm * dice.between(0.6, 0.9),
            };
            changes.push(Change::New(new));
            kept.push(new);
        }
    }
    *lesions = kept;
    changes
}

fn baseline(
    cancer: &Cancer,
    lesions: &[Lesion],
    adjuvant: bool,
    boilerplate: &[&str],
) -> (String, String) {
    if adjuvant {
        let impression = format!(
            "Baseline examination following resection of {}. Expected postsurgical changes. No evidence of residual, recurrent or metastatic disease. {}",
            cancer.name,
            boilerplate.join(" ")
        );
        return (impression, "No evidence of disease.".to_owned());
    }
    let mut sentences = vec![format!(
        "Baseline staging examination for {}. No prior studies are available for comparison.",
        cancer.name
    )];
    let mut items = Vec::new();
    for lesion in lesions {
        let phrase = cancer.sites[lesion.site];
        let role = if lesion.site == 0 {
            "consistent with the known primary"
        } else {
            "consistent with metastatic disease"
        };
        sentences.push(format!(
            "{} measuring {}, {role}.",
            capitalise(phrase),
            size(lesion)
        ));
        items.push(format!("{phrase} {}", short_size(lesion)));
    }
    sentences.extend(boilerplate.iter().map(|s| s.to_string()));
    (
        sentences.join(" "),
        format!("Baseline {}: {}.", cancer.name, items.join("; ")),
    )
}

fn no_evidence(previous: i64, boilerplate: &[&str]) -> (String, String) {
    let impression = format!(
        "Since {}, no evidence of recurrent or metastatic disease. No new suspicious lesions in the chest, abdomen or pelvis. {}",
        long_date(previous),
        boilerplate.join(" ")
    );
    (impression, "No evidence of disease.".to_owned())
}

fn follow_up(
    cancer: &Cancer,
    previous: i64,
    changes: &[Change],
    therapy_change: Option<&str>,
    boilerplate: &[&str],
) -> (String, String) {
    let site = |l: &Lesion| cancer.sites[l.site];
    let mut clauses = Vec::new();
    let mut items = Vec::new();
    let order = |c: &Change| match c {
        Change::New(_) => 0,
        Change::Enlarging(..) => 1,
        Change::Decreasing(..) => 2,
        Change::Resolved(_) => 3,
        Change::Stable(_) => 4,
    };
    let mut sorted: Vec<&Change> = changes.iter().collect();
    sorted.sort_by_key(|c| order(c));
    let any_change = sorted.iter().any(|c| order(c) < 4);
    let mut stable_count = 0;
    for change in &sorted {
        match change {
            Change::New(l) => {
                clauses.push(format!(
                    "new {} measuring {}, concerning for metastatic disease",
                    site(l),
                    size(l)
                ));
                items.push(format!("new {} ({})", site(l), short_size(l)));
            }
            Change::Enlarging(before, now) => {
                clauses.push(format!(
                    "interval enlargement of the {}, now measuring {}, previously {}",
                    site(now),
                    size(now),
                    size(before)
                ));
                items.push(format!(
                    "enlarging {} ({}, was {})",
                    site(now),
                    short_size(now),
                    short_size(before)
                ));
            }
            Change::Decreasing(before, now) => {
                clauses.push(format!(
                    "decrease in size of the {}, now measuring {}, previously {}",
                    site(now),
                    size(now),
                    size(before)
                ));
                items.push(format!(
                    "decreasing {} ({}, was {})",
                    site(now),
                    short_size(now),
                    short_size(before)
                ));
            }
            Change::Resolved(before) => {
                clauses.push(format!(
                    "resolution of the previously seen {}",
                    site(before)
                ));
                items.push(format!("resolved {}", site(before)));
            }
            Change::Stable(now) => {
                clauses.push(format!("stable {} measuring {}", site(now), size(now)));
                if any_change {
                    stable_count += 1;
                } else {
                    items.push(format!("stable {} ({})", site(now), short_size(now)));
                }
            }
        }
    }
    if stable_count > 0 {
        items.push(if stable_count == 1 {
            "other lesion stable".to_owned()
        } else {
            "other lesions stable".to_owned()
        });
    }
    let progression = sorted
        .iter()
        .any(|c| matches!(c, Change::New(_) | Change::Enlarging(..)));
    let all_resolved =
        !sorted.is_empty() && sorted.iter().all(|c| matches!(c, Change::Resolved(_)));
    let response = sorted
        .iter()
        .any(|c| matches!(c, Change::Decreasing(..) | Change::Resolved(_)));
    let (verdict, label) = if progression {
        (
            "Findings are consistent with disease progression.",
            "Progression",
        )
    } else if all_resolved {
        (
            "No residual evidence of disease, consistent with complete response.",
            "Complete response",
        )
    } else if response {
        (
            "Findings are consistent with continued treatment response.",
            "Partial response",
        )
    } else {
        ("Overall stable disease.", "Stable disease")
    };
    let mut sentences = Vec::new();
    if let Some(therapy) = therapy_change {
        sentences.push(format!("Interval change of systemic therapy to {therapy}."));
    }
    let mut clauses = clauses.into_iter();
    if let Some(first) = clauses.next() {
        sentences.push(format!("Since {}, {first}.", long_date(previous)));
    }
    sentences.extend(clauses.map(|c| format!("{}.", capitalise(&c))));
    sentences.push(verdict.to_owned());
    sentences.extend(boilerplate.iter().map(|s| s.to_string()));
    let therapy = therapy_change.map_or_else(String::new, |t| format!(" after change to {t}"));
    let summary = format!("{label}{therapy}: {}.", items.join("; "));
    (sentences.join(" "), summary)
}

/// Writes rows with the [`COLUMNS`] header; the `synthetic` column is `true` on every row.
pub fn write_csv(rows: &[SynthRow], out: &Path) -> Result<(), DataError> {
    let error = |e: csv::Error| DataError::Io {
        path: out.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut writer = csv::Writer::from_path(out).map_err(error)?;
    writer.write_record(COLUMNS).map_err(error)?;
    for row in rows {
        let index = row.exam_index.to_string();
        writer
            .write_record([
                &row.patient_id,
                &index,
                &row.exam_date,
                &row.modality,
                &row.impression,
                &row.summary,
                "true",
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
    use super::*;

    #[test]
    fn dates_convert_from_day_counts() {
        assert_eq!(iso(0), "1970-01-01");
        assert_eq!(iso(18_324), "2020-03-03");
        assert_eq!(long_date(18_689), "March 3, 2021");
        assert_eq!(iso(19_417), "2023-03-01");
    }

    #[test]
    fn same_seed_same_rows_other_seed_other_rows() {
        let a = generate(SynthOptions {
            patients: 5,
            seed: 9,
        });
        assert_eq!(
            a,
            generate(SynthOptions {
                patients: 5,
                seed: 9
            })
        );
        assert_ne!(
            a,
            generate(SynthOptions {
                patients: 5,
                seed: 10
            })
        );
    }

    #[test]
    fn series_are_dated_in_order_and_summaries_are_concise() {
        let rows = generate(SynthOptions {
            patients: 20,
            seed: 1,
        });
        assert!((120..=220).contains(&rows.len()), "{} rows", rows.len());
        for pair in rows.windows(2) {
            if pair[0].patient_id == pair[1].patient_id {
                assert!(pair[0].exam_date < pair[1].exam_date);
                assert_eq!(pair[0].exam_index + 1, pair[1].exam_index);
            }
        }
        for row in &rows {
            assert!(row.summary.len() < row.impression.len(), "{row:?}");
            for line in BOILERPLATE {
                assert!(
                    !row.summary.contains(line.trim_end_matches('.')),
                    "boilerplate kept: {row:?}"
                );
            }
            if row.exam_index > 0 {
                assert!(
                    row.impression.contains("Since ")
                        || row.impression.starts_with("Interval change"),
                    "{row:?}"
                );
            }
        }
        let ned = rows
            .iter()
            .filter(|r| r.summary == "No evidence of disease.")
            .count() as f64
            / rows.len() as f64;
        assert!(
            (0.1..=0.35).contains(&ned),
            "no-evidence-of-disease share {ned}"
        );
        assert!(
            rows.iter()
                .any(|r| r.summary.starts_with("Progression after change to"))
                || rows
                    .iter()
                    .any(|r| r.impression.contains("change of systemic therapy"))
        );
        assert!(rows.iter().any(|r| r.summary.contains("new ")));
        assert!(rows.iter().any(|r| r.summary.contains("resolved ")));
        assert!(rows.iter().any(|r| r.modality == "PET-CT"));
    }

    #[test]
    fn the_committed_set_is_what_its_readme_command_makes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/synthetic-longitudinal");
        let committed =
            std::fs::read_to_string(dir.join("SYNTHETIC-oncology-impressions.csv")).unwrap();
        let out = tempfile::NamedTempFile::new().unwrap();
        write_csv(
            &generate(SynthOptions {
                patients: 20,
                seed: 2024,
            }),
            out.path(),
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(out.path()).unwrap(), committed);
    }
}
