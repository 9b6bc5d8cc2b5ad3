//! Candidate/reference pairs and the input formats of `tandem score`: JSON lines
//! (`{"candidate": "...", "reference": "..."}`, other fields kept as ids) and two CSV files with a named column.

use std::path::Path;

use serde_json::{Map, Value};

use super::MetricsError;

/// One candidate with its reference, and any extra fields of its input line.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub candidate: String,
    pub reference: String,
    pub ids: Map<String, Value>,
}

impl Pair {
    pub fn new(candidate: impl Into<String>, reference: impl Into<String>) -> Pair {
        Pair {
            candidate: candidate.into(),
            reference: reference.into(),
            ids: Map::new(),
        }
    }
}

fn read_text(path: &Path) -> Result<String, MetricsError> {
    let bytes = std::fs::read(path).map_err(|e| MetricsError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    String::from_utf8(bytes).map_err(|e| MetricsError::Io {
        path: path.to_path_buf(),
        message: format!("not UTF-8 text: {e}"),
    })
}

/// Parses JSON-lines text (blank lines skipped). `path` only names the source in errors.
pub fn parse_jsonl_pairs(text: &str, path: &Path) -> Result<Vec<Pair>, MetricsError> {
    let bad = |line: usize, message: String| MetricsError::Input {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| bad(line_no, format!("not valid JSON: {e}")))?;
        let Value::Object(mut object) = value else {
            return Err(bad(
                line_no,
                "expected an object {\"candidate\": ..., \"reference\": ...}".to_string(),
            ));
        };
        let mut field = |name: &str| -> Result<String, MetricsError> {
            match object.remove(name) {
                Some(Value::String(s)) => Ok(s),
                Some(Value::Null) | None => {
                    Err(bad(line_no, format!("missing string field \"{name}\"")))
                }
                Some(other) => Err(bad(
                    line_no,
                    format!("field \"{name}\" must be a string, found {other}"),
                )),
            }
        };
        let candidate = field("candidate")?;
        let reference = field("reference")?;
        pairs.push(Pair {
            candidate,
            reference,
            ids: object,
        });
    }
    if pairs.is_empty() {
        return Err(MetricsError::Input {
            path: path.to_path_buf(),
            line: 0,
            message: "no pairs (empty file)".into(),
        });
    }
    Ok(pairs)
}

/// Reads a JSON-lines pairs file.
pub fn read_jsonl_pairs(path: &Path) -> Result<Vec<Pair>, MetricsError> {
    parse_jsonl_pairs(&read_text(path)?, path)
}

fn read_csv_column(path: &Path, column: &str) -> Result<Vec<String>, MetricsError> {
    let text = read_text(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| MetricsError::Input {
            path: path.to_path_buf(),
            line: 1,
            message: e.to_string(),
        })?
        .clone();
    let Some(index) = headers
        .iter()
        .position(|h| h.trim_start_matches('\u{feff}') == column)
    else {
        let names: Vec<&str> = headers.iter().collect();
        return Err(MetricsError::Input {
            path: path.to_path_buf(),
            line: 1,
            message: format!("no column {column:?} (columns: {})", names.join(", ")),
        });
    };
    let mut values = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| MetricsError::Input {
            path: path.to_path_buf(),
            line: e.position().map_or(0, |p| p.line() as usize),
            message: e.to_string(),
        })?;
        values.push(record.get(index).unwrap_or_default().to_string());
    }
    if values.is_empty() {
        return Err(MetricsError::Input {
            path: path.to_path_buf(),
            line: 0,
            message: "no rows (empty file)".into(),
        });
    }
    Ok(values)
}

/// Pairs row i of `candidates` with row i of `references`, both read from column `column`; ids are the row
/// numbers (`{"row": i}`, from 1).
pub fn read_csv_pairs(
    candidates: &Path,
    references: &Path,
    column: &str,
) -> Result<Vec<Pair>, MetricsError> {
    let cands = read_csv_column(candidates, column)?;
    let refs = read_csv_column(references, column)?;
    if cands.len() != refs.len() {
        return Err(MetricsError::Mismatch {
            candidates: cands.len(),
            references: refs.len(),
        });
    }
    Ok(cands
        .into_iter()
        .zip(refs)
        .enumerate()
        .map(|(i, (c, r))| {
            let mut ids = Map::new();
            ids.insert("row".to_string(), Value::from(i + 1));
            Pair {
                candidate: c,
                reference: r,
                ids,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_errors_name_the_line() {
        let p = Path::new("p.jsonl");
        let ok = parse_jsonl_pairs(
            "{\"candidate\": \"a\", \"reference\": \"b\", \"id\": 7}\n\n",
            p,
        )
        .expect("ok");
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].ids["id"], 7);
        let err = parse_jsonl_pairs(
            "{\"candidate\": \"a\", \"reference\": \"b\"}\n{\"candidate\": 1}\n",
            p,
        )
        .expect_err("bad line")
        .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = parse_jsonl_pairs("{\"candidate\": \"a\"\n", p)
            .expect_err("bad json")
            .to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(parse_jsonl_pairs("\n \n", p).is_err());
    }
}
