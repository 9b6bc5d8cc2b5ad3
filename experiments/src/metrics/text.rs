//! Text helpers shared by the metrics: Python-compatible whitespace and the thesis preprocessing.

/// Whether `c` is whitespace for Python's `str.isspace` / `str.split()`: Unicode White_Space plus the ASCII
/// information separators U+001C..U+001F, which Python also treats as whitespace.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `text.split()`: runs of whitespace separate tokens, no empty tokens.
pub fn py_split(text: &str) -> impl Iterator<Item = &str> {
    text.split(is_py_space).filter(|t| !t.is_empty())
}

/// Python's `text.strip()`.
pub fn py_strip(text: &str) -> &str {
    text.trim_matches(is_py_space)
}

/// Python's `text.rstrip()`.
pub fn py_rstrip(text: &str) -> &str {
    text.trim_end_matches(is_py_space)
}

/// The thesis preprocessing: lower-case, then normalise whitespace. Line breaks ("\n") are kept as sentence
/// boundaries (ROUGE-Lsum splits on them); within a line every run of whitespace becomes one space, lines are
/// trimmed and empty lines dropped. In Python: `"\n".join(l for l in (" ".join(x.split()) for x in
/// text.lower().split("\n")) if l)`.
pub fn normalize(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut out = String::with_capacity(lower.len());
    for line in lower.split('\n') {
        let mut first_in_line = true;
        for token in py_split(line) {
            if first_in_line {
                if !out.is_empty() {
                    out.push('\n');
                }
                first_in_line = false;
            } else {
                out.push(' ');
            }
            out.push_str(token);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_includes_information_separators() {
        assert!(is_py_space('\u{1f}'));
        assert!(is_py_space('\u{a0}'));
        assert!(!is_py_space('\u{200b}'));
        let tokens: Vec<&str> = py_split(" a\u{1c}b\t\u{3000}c ").collect();
        assert_eq!(tokens, ["a", "b", "c"]);
    }

    #[test]
    fn normalize_lowercases_and_keeps_line_breaks() {
        assert_eq!(
            normalize("  No  ACUTE\tDisease.\n\n  Stable \r\n"),
            "no acute disease.\nstable"
        );
        assert_eq!(normalize(" \n \t"), "");
        assert_eq!(normalize("ÉCHO Σ"), "écho σ");
    }
}
