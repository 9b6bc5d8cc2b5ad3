//! How read commands print what they show: `--format table` (columns sized to their contents), `json` (stable
//! keys, documented per command) or `csv` (RFC 4180 quoting). One [`Table`] serves all three.

use clap::ValueEnum;
use serde_json::{Map, Value};

/// The `--format` of a read command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for a terminal.
    #[value(alias = "text")]
    Table,
    Json,
    Csv,
}

/// Rows under named columns; JSON rows may carry more than the columns (nested objects).
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    json: Vec<Value>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            ..Table::default()
        }
    }

    /// Adds a row: its cells for the table and CSV, and its JSON object (`None`: the cells keyed by column).
    pub fn row(&mut self, cells: Vec<String>, json: Option<Value>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        let json = json.unwrap_or_else(|| {
            Value::Object(
                self.headers
                    .iter()
                    .zip(&cells)
                    .map(|(h, c)| (h.replace(' ', "_"), Value::String(c.clone())))
                    .collect::<Map<String, Value>>(),
            )
        });
        self.rows.push(cells);
        self.json.push(json);
    }

    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Table => self.aligned(),
            OutputFormat::Csv => self.csv(),
            OutputFormat::Json => {
                let mut text =
                    serde_json::to_string_pretty(&self.json).expect("JSON values serialise");
                text.push('\n');
                text
            }
        }
    }

    /// Columns as wide as their widest cell (in characters), two spaces apart; the last is not padded.
    fn aligned(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.headers[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut out = String::new();
            for (i, cell) in cells.enumerate() {
                if i + 1 == widths.len() {
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
                }
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
            out
        };
        let mut out = line(&mut self.headers.iter().copied());
        for row in &self.rows {
            out.push_str(&line(&mut row.iter().map(String::as_str)));
        }
        out
    }

    fn csv(&self) -> String {
        let field = |s: &str| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = String::new();
        for cells in std::iter::once(
            self.headers
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>(),
        )
        .chain(self.rows.iter().cloned())
        {
            out.push_str(&cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn table() -> Table {
        let mut t = Table::new(&["id", "name", "state"]);
        t.row(
            vec![
                "e1".into(),
                "a very long experiment name".into(),
                "running".into(),
            ],
            None,
        );
        t.row(
            vec!["e22".into(), "short, with \"quotes\"".into(), "ok".into()],
            Some(json!({"id": "e22", "n": 1})),
        );
        t
    }

    #[test]
    fn columns_are_as_wide_as_their_contents() {
        let text = table().render(OutputFormat::Table);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "id   name                         state");
        assert_eq!(lines[1], "e1   a very long experiment name  running");
        assert_eq!(lines[2], "e22  short, with \"quotes\"         ok");
    }

    #[test]
    fn csv_quotes_what_needs_it_and_json_keeps_given_objects() {
        assert_eq!(
            table().render(OutputFormat::Csv),
            "id,name,state\ne1,a very long experiment name,running\ne22,\"short, with \"\"quotes\"\"\",ok\n"
        );
        let json: Value = serde_json::from_str(&table().render(OutputFormat::Json)).unwrap();
        assert_eq!(
            json[0],
            json!({"id": "e1", "name": "a very long experiment name", "state": "running"})
        );
        assert_eq!(json[1], json!({"id": "e22", "n": 1}));
    }
}
