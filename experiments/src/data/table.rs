//! The generic CSV loader: named input/target columns, an optional group column, and bad rows (missing column,
//! empty text) either rejected with an error naming the line and data row or dropped and counted.
//! Row numbers are 0-based data-row indices (the header is not a row), the indices splits print.

use std::path::Path;

use serde::Serialize;

use super::error::DataError;
use crate::manifest::{BadRows, DatasetSpec};

/// Which columns to read and what to do with bad rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    pub input_column: String,
    pub target_column: String,
    pub group_column: Option<String>,
    pub bad_rows: BadRows,
}

impl CsvOptions {
    pub fn from_spec(spec: &DatasetSpec) -> Self {
        CsvOptions {
            input_column: spec.input_column.clone(),
            target_column: spec.target_column.clone(),
            group_column: spec.group_column.clone(),
            bad_rows: spec.bad_rows,
        }
    }
}

/// One usable row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    /// 0-based data-row index in the file.
    pub row: usize,
    pub input: String,
    pub target: String,
    pub group: Option<String>,
}

/// Rows dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DropCounts {
    /// Fewer (or more) fields than the header.
    pub wrong_field_count: usize,
    pub empty_input: usize,
    pub empty_target: usize,
    pub empty_group: usize,
}

impl DropCounts {
    pub fn total(&self) -> usize {
        self.wrong_field_count + self.empty_input + self.empty_target + self.empty_group
    }
}

/// The usable rows of a CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub columns: Vec<String>,
    /// Data rows in the file, usable or not.
    pub total_rows: usize,
    pub examples: Vec<Example>,
    pub dropped: DropCounts,
}

impl Dataset {
    /// Keeps the first `max_rows` usable rows (file order), when given.
    pub fn truncate(&mut self, max_rows: Option<usize>) {
        if let Some(max_rows) = max_rows {
            self.examples.truncate(max_rows);
        }
    }
}

/// Reads `path` and returns its usable rows.
pub fn load_csv(path: &Path, options: &CsvOptions) -> Result<Dataset, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_csv(&bytes, path, options)
}

/// The header row of a CSV file.
pub fn read_header(path: &Path) -> Result<Vec<String>, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| DataError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let header = reader.headers().map_err(|e| csv_error(path, e))?;
    Ok(header.iter().map(str::to_owned).collect())
}

/// Parses CSV `bytes` as if read from `path` (which names it in errors).
pub fn parse_csv(bytes: &[u8], path: &Path, options: &CsvOptions) -> Result<Dataset, DataError> {
    if let Some(line) = unterminated_quote(bytes) {
        return Err(DataError::UnterminatedQuote {
            path: path.to_path_buf(),
            line,
        });
    }
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let columns: Vec<String> = match reader.headers() {
        Ok(header) if !(header.is_empty() || header.len() == 1 && header[0].is_empty()) => {
            header.iter().map(str::to_owned).collect()
        }
        Ok(_) => {
            return Err(DataError::NoHeader {
                path: path.to_path_buf(),
            });
        }
        Err(error) => return Err(csv_error(path, error)),
    };
    let find = |column: &str, role: &'static str| {
        columns
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| DataError::MissingColumn {
                path: path.to_path_buf(),
                column: column.to_owned(),
                role,
                available: columns.clone(),
            })
    };
    let input_at = find(&options.input_column, "the input")?;
    let target_at = find(&options.target_column, "the target")?;
    let group_at = options
        .group_column
        .as_deref()
        .map(|g| find(g, "the group"))
        .transpose()?;

    let mut examples = Vec::new();
    let mut dropped = DropCounts::default();
    let mut total_rows = 0;
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|error| csv_error(path, error))?;
        total_rows += 1;
        let line = record.position().map_or(0, |p| p.line());
        let problem = if record.len() != columns.len() {
            Some((
                format!(
                    "has {} fields, the header has {}",
                    record.len(),
                    columns.len()
                ),
                "missing column",
                0,
            ))
        } else if record[input_at].trim().is_empty() {
            Some((format!("empty {:?}", options.input_column), "input", 1))
        } else if record[target_at].trim().is_empty() {
            Some((format!("empty {:?}", options.target_column), "target", 2))
        } else if group_at.is_some_and(|g| record[g].trim().is_empty()) {
            Some((
                format!(
                    "empty {:?}",
                    options.group_column.as_deref().unwrap_or_default()
                ),
                "group",
                3,
            ))
        } else {
            None
        };
        if let Some((reason, _, which)) = problem {
            if options.bad_rows == BadRows::Error {
                let what = match &options.group_column {
                    Some(group) => format!(
                        "{}, {} and {}",
                        options.input_column, options.target_column, group
                    ),
                    None => format!("{} and {}", options.input_column, options.target_column),
                };
                return Err(DataError::BadRow {
                    path: path.to_path_buf(),
                    line,
                    row,
                    reason,
                    what,
                });
            }
            match which {
                0 => dropped.wrong_field_count += 1,
                1 => dropped.empty_input += 1,
                2 => dropped.empty_target += 1,
                _ => dropped.empty_group += 1,
            }
            continue;
        }
        examples.push(Example {
            row,
            input: record[input_at].to_owned(),
            target: record[target_at].to_owned(),
            group: group_at.map(|g| record[g].to_owned()),
        });
    }
    Ok(Dataset {
        columns,
        total_rows,
        examples,
        dropped,
    })
}

fn csv_error(path: &Path, error: csv::Error) -> DataError {
    let line = error.position().map_or(0, |p| p.line());
    let message = match error.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8 (accepted: a UTF-8 CSV file)".to_owned(),
        _ => error.to_string(),
    };
    DataError::Csv {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// The 1-based line of a quoted field that is still open at the end of the file, if any (RFC 4180 quoting:
/// a field that starts with `"` runs to the next lone `"`; `""` inside it is a literal quote).
fn unterminated_quote(bytes: &[u8]) -> Option<u64> {
    let mut line = 1u64;
    let mut in_quotes = false;
    let mut opened_at = 0u64;
    let mut field_start = true;
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if in_quotes {
            if byte == b'"' {
                if bytes.get(index + 1) == Some(&b'"') {
                    index += 1;
                } else {
                    in_quotes = false;
                }
            } else if byte == b'\n' {
                line += 1;
            }
        } else {
            match byte {
                b'"' if field_start => {
                    in_quotes = true;
                    opened_at = line;
                }
                b'\n' => line += 1,
                _ => {}
            }
            field_start = matches!(byte, b',' | b'\n' | b'\r');
        }
        index += 1;
    }
    in_quotes.then_some(opened_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(bad_rows: BadRows, group: Option<&str>) -> CsvOptions {
        CsvOptions {
            input_column: "findings".into(),
            target_column: "impression".into(),
            group_column: group.map(str::to_owned),
            bad_rows,
        }
    }

    fn parse(text: &str, options: &CsvOptions) -> Result<Dataset, DataError> {
        parse_csv(text.as_bytes(), Path::new("d.csv"), options)
    }

    #[test]
    fn reads_named_columns_with_quotes_and_newlines() {
        let text = "id,findings,impression,patient\n1,\"Heart, normal.\nLungs clear.\",\"No \"\"acute\"\" disease.\",p1\n2,b,c,p2\n";
        let data = parse(text, &options(BadRows::Error, Some("patient"))).unwrap();
        assert_eq!(data.examples.len(), 2);
        assert_eq!(data.examples[0].input, "Heart, normal.\nLungs clear.");
        assert_eq!(data.examples[0].target, "No \"acute\" disease.");
        assert_eq!(data.examples[1].row, 1);
        assert_eq!(data.examples[1].group.as_deref(), Some("p2"));
    }

    #[test]
    fn a_missing_header_column_is_named_with_the_columns_there_are() {
        let error = parse("id,findings\n1,a\n", &options(BadRows::Drop, None))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "d.csv: has no column \"impression\" for the target (its columns: id, findings)"
        );
    }

    #[test]
    fn a_short_row_is_an_error_naming_line_and_row() {
        let error = parse(
            "id,findings,impression\n1,a,b\n2,a\n",
            &options(BadRows::Error, None),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("d.csv:3: data row 1: has 2 fields, the header has 3"),
            "{error}"
        );
        assert!(
            error.contains("accepted: a row with every column"),
            "{error}"
        );
    }

    #[test]
    fn empty_text_is_an_error_or_dropped_and_counted() {
        let text = "id,findings,impression\n1,a,b\n2,  ,b\n3,a,\n4,x\n5,c,d\n";
        let error = parse(text, &options(BadRows::Error, None))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("d.csv:3: data row 1: empty \"findings\""),
            "{error}"
        );
        let data = parse(text, &options(BadRows::Drop, None)).unwrap();
        assert_eq!(
            data.examples.iter().map(|e| e.row).collect::<Vec<_>>(),
            vec![0, 4]
        );
        assert_eq!(data.total_rows, 5);
        assert_eq!(
            data.dropped,
            DropCounts {
                wrong_field_count: 1,
                empty_input: 1,
                empty_target: 1,
                empty_group: 0
            }
        );
    }

    #[test]
    fn an_empty_group_is_a_bad_row() {
        let text = "findings,impression,g\na,b,\n";
        let error = parse(text, &options(BadRows::Error, Some("g")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("data row 0: empty \"g\""), "{error}");
    }

    #[test]
    fn an_unterminated_quote_names_the_line_it_opened_on() {
        let text = "id,findings,impression\n1,a,b\n2,\"never closed,b\n3,c,d\n";
        for bad_rows in [BadRows::Error, BadRows::Drop] {
            let error = parse(text, &options(bad_rows, None))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("d.csv:3: unterminated quote"), "{error}");
        }
        // Quotes inside an unquoted field are literal and fine.
        assert!(
            parse(
                "findings,impression\n5\" nodule,b\n",
                &options(BadRows::Error, None)
            )
            .is_ok()
        );
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let error = parse_csv(
            b"findings,impression\na,b\n\xff,c\n",
            Path::new("d.csv"),
            &options(BadRows::Error, None),
        );
        let error = error.unwrap_err().to_string();
        assert!(error.starts_with("d.csv:3: not valid UTF-8"), "{error}");
    }

    #[test]
    fn the_committed_iu_xray_csv_loads_with_bad_rows_dropped() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/iu-xray/indiana_reports.csv");
        let data = load_csv(&path, &options(BadRows::Drop, None)).unwrap();
        assert_eq!(data.total_rows, 3851);
        assert_eq!(data.examples.len(), 3331);
        let error = load_csv(&path, &options(BadRows::Error, None))
            .unwrap_err()
            .to_string();
        assert!(error.contains("data row"), "{error}");
    }
}
