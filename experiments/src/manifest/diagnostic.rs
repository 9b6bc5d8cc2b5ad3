//! Manifest errors: one diagnostic per problem (file, line:col, field path, what is accepted), and the error
//! value that carries all of them so a lab sees every mistake at once.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column (in characters) of the offending text, when it has a place in the file.
    pub position: Option<(usize, usize)>,
    /// Dotted path of the field at fault, e.g. `stage2.training.lr` or `sweeps[0].values`.
    pub field: String,
    pub message: String,
    /// What would be accepted instead, when that can be said.
    pub accepted: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, "{line}:{col}:")?;
        }
        if !self.field.is_empty() {
            write!(f, " {}:", self.field)?;
        }
        write!(f, " {}", self.message)?;
        if let Some(accepted) = &self.accepted {
            write!(f, " (accepted: {accepted})")?;
        }
        Ok(())
    }
}

/// Every problem found in one manifest; its `Display` lists each on its own line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl Diagnostics {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: cannot read the manifest: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl ManifestError {
    /// The diagnostics of an invalid manifest (empty for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ManifestError::Invalid(diagnostics) => &diagnostics.0,
            ManifestError::Read { .. } => &[],
        }
    }
}

/// Maps byte offsets of a source text to 1-based line and character column.
#[derive(Debug, Clone)]
pub(crate) struct LineIndex {
    line_starts: Vec<usize>,
    text: String,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(offset, _)| offset + 1));
        LineIndex {
            line_starts,
            text: text.to_owned(),
        }
    }

    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(line) => line,
            Err(next) => next - 1,
        };
        let start = self.line_starts[line];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, column + 1)
    }
}

/// Collects diagnostics for one file.
#[derive(Debug)]
pub(crate) struct Collector {
    pub(crate) file: PathBuf,
    pub(crate) index: LineIndex,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl Collector {
    pub(crate) fn new(file: &Path, text: &str) -> Self {
        Collector {
            file: file.to_path_buf(),
            index: LineIndex::new(text),
            diagnostics: Vec::new(),
        }
    }

    pub(crate) fn push(
        &mut self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
        accepted: Option<String>,
    ) {
        let field = field.into();
        let message = message.into();
        // A field whose value was rejected by the schema is already reported; do not also call it missing.
        if message.starts_with("missing") && self.diagnostics.iter().any(|d| d.field == field) {
            return;
        }
        let position = span.map(|span| self.index.position(span.start));
        self.diagnostics.push(Diagnostic {
            file: self.file.clone(),
            position,
            field,
            message,
            accepted,
        });
    }

    /// Diagnostics in file order (those without a position last), or `Ok` when there are none.
    pub(crate) fn finish(mut self) -> Result<(), Diagnostics> {
        if self.diagnostics.is_empty() {
            return Ok(());
        }
        self.diagnostics
            .sort_by_key(|d| d.position.unwrap_or((usize::MAX, usize::MAX)));
        Err(Diagnostics(self.diagnostics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let index = LineIndex::new("a = 1\nbé = 2\n");
        assert_eq!(index.position(0), (1, 1));
        assert_eq!(index.position(4), (1, 5));
        assert_eq!(index.position(6), (2, 1));
        // "é" is two bytes but one column.
        assert_eq!(index.position(9), (2, 3));
    }

    #[test]
    fn display_lists_file_position_field_message_and_accepted() {
        let d = Diagnostic {
            file: PathBuf::from("m.toml"),
            position: Some((3, 7)),
            field: "lora.r".into(),
            message: "must be at least 1, got 0".into(),
            accepted: Some("an integer >= 1".into()),
        };
        assert_eq!(
            d.to_string(),
            "m.toml:3:7: lora.r: must be at least 1, got 0 (accepted: an integer >= 1)"
        );
    }
}
