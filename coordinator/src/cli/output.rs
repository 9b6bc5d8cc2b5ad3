//! How read commands print what they show: `--format table` (columns sized to their contents, by comfy-table),
//! `json` (stable keys, documented per command) or `csv` (RFC 4180 quoting). One [`Table`] serves all three;
//! [`aligned`] prints any rows as such columns.

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

    fn aligned(&self) -> String {
        aligned(&self.headers, &self.rows)
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

/// `rows` under `headers` in columns as wide as their widest cell (display width: a wide character counts
/// two), two spaces apart, without borders; the last column is not padded and no line ends in spaces. Plain
/// text: no colours or other terminal codes, whatever stdout is.
pub fn aligned<H: AsRef<str>>(headers: &[H], rows: &[Vec<String>]) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(headers.iter().map(AsRef::as_ref).collect::<Vec<&str>>());
    for row in rows {
        table.add_row(row);
    }
    let last = table.column_count().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    let mut out = table.trim_fmt();
    out.push('\n');
    out
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

    /// Display width of the test's strings: the CJK characters below take two columns.
    fn display_width(line: &str) -> usize {
        line.chars()
            .map(|c| {
                if ('\u{3000}'..='\u{9fff}').contains(&c) {
                    2
                } else {
                    1
                }
            })
            .sum()
    }

    #[test]
    fn long_and_wide_cells_keep_every_line_the_same_width() {
        let long = format!("train {}", "fold-0 lr=1e-4 ".repeat(4))
            .trim_end()
            .to_owned();
        assert_eq!(long.chars().count(), 65);
        let mut t = Table::new(&["id", "job", "state"]);
        for (id, job, state) in [
            ("e1", long.as_str(), "ready"),
            ("e000022", "評価ジョブ", "stale"),
            ("e3", "eval", "fails"),
        ] {
            t.row(vec![id.into(), job.into(), state.into()], None);
        }
        let text = t.render(OutputFormat::Table);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        // Every last cell is five columns wide, so aligned columns make every line equally wide.
        let widths: Vec<usize> = lines.iter().map(|l| display_width(l)).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{widths:?}\n{text}");
        assert_eq!(widths[0], 7 + 2 + 65 + 2 + 5);
        for (line, state) in lines.iter().zip(["state", "ready", "stale", "fails"]) {
            let at = line.find(state).expect("the last column");
            assert_eq!(display_width(&line[..at]), 7 + 2 + 65 + 2, "{text}");
        }
        assert!(!text.contains('\x1b'), "no terminal codes: {text:?}");
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
