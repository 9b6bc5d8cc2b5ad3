//! `--set KEY=VALUE`: manifest values overridden on the command line. Each is written into the manifest's
//! text (formatting and comments kept), so the result is parsed, typed and validated exactly like the file,
//! and is what gets submitted, stored and hashed: an override is part of the experiment's record.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table, Value};

use super::diagnostic::ManifestError;

/// Why an override could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OverrideError {
    #[error("--set {0:?}: expected KEY=VALUE, e.g. --set stage1.training.lr=2e-5")]
    Syntax(String),
    #[error("--set {key}: {message}")]
    Key { key: String, message: String },
    #[error("{path}: not TOML, so --set cannot edit it: {message}")]
    Document { path: String, message: String },
}

/// One parsed `KEY=VALUE`.
#[derive(Debug, Clone)]
pub struct Override {
    /// The dotted path, split (`["stage1", "training", "lr"]`).
    pub key: Vec<String>,
    pub value: Value,
}

impl Override {
    /// Parses `KEY=VALUE`. The value is read as TOML (`2e-5`, `true`, `"text"`, `["q_proj", "v_proj"]`); a value
    /// that is not TOML is taken as a string, so `--set model.path=/models/llama` needs no quotes.
    pub fn parse(text: &str) -> Result<Override, OverrideError> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| OverrideError::Syntax(text.to_string()))?;
        let key: Vec<String> = key
            .trim()
            .split('.')
            .map(|p| p.trim().to_string())
            .collect();
        let valid_part = |p: &String| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !key.iter().all(valid_part) {
            return Err(OverrideError::Syntax(text.to_string()));
        }
        let raw = value.trim();
        let value = raw
            .parse::<Value>()
            .unwrap_or_else(|_| Value::from(raw.to_string()));
        Ok(Override { key, value })
    }

    fn name(&self) -> String {
        self.key.join(".")
    }
}

/// `text` with every override written in, in order (a later one wins).
pub fn apply(text: &str, path: &Path, overrides: &[Override]) -> Result<String, OverrideError> {
    if overrides.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| OverrideError::Document {
                path: path.display().to_string(),
                message: e.message().to_string(),
            })?;
    for o in overrides {
        let mut table: &mut Table = doc.as_table_mut();
        let (last, parents) = o.key.split_last().expect("a key has at least one part");
        for (depth, part) in parents.iter().enumerate() {
            let item = table.entry(part).or_insert_with(|| {
                let mut t = Table::new();
                t.set_implicit(true);
                Item::Table(t)
            });
            if let Some(inline) = item.as_inline_table() {
                *item = Item::Table(inline.clone().into_table());
            }
            table = item.as_table_mut().ok_or_else(|| OverrideError::Key {
                key: o.name(),
                message: format!("{} is a value, not a table", o.key[..=depth].join(".")),
            })?;
        }
        if table
            .get(last)
            .is_some_and(|i| i.is_table() || i.is_array_of_tables())
        {
            return Err(OverrideError::Key {
                key: o.name(),
                message: "names a table; set one of its fields".into(),
            });
        }
        table.insert(last, Item::Value(o.value.clone()));
    }
    Ok(doc.to_string())
}

/// Reads the manifest at `path` and applies `sets` (`KEY=VALUE` each); the text to parse and submit.
pub fn read_with(path: &Path, sets: &[String]) -> Result<String, ManifestOverrideError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        ManifestOverrideError::Manifest(ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })
    })?;
    let overrides = sets
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(apply(&text, path, &overrides)?)
}

/// A manifest that could not be read, or an override that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ManifestOverrideError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Override(#[from] OverrideError),
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "name = \"x\"\n\n# the model\n[model]\nfamily = \"llama\"\n\n[stage1.training]\nlr = 1e-4 # thesis\n";

    fn set(text: &str, sets: &[&str]) -> Result<String, OverrideError> {
        let overrides: Vec<Override> = sets
            .iter()
            .map(|s| Override::parse(s))
            .collect::<Result<_, _>>()?;
        apply(text, Path::new("m.toml"), &overrides)
    }

    #[test]
    fn values_are_typed_as_toml_and_the_rest_of_the_file_is_kept() {
        let out = set(
            MANIFEST,
            &[
                "stage1.training.lr=2e-5",
                "lora.target_modules=[\"q_proj\", \"k_proj\"]",
            ],
        )
        .unwrap();
        let parsed: toml::Table = out.parse().unwrap();
        assert_eq!(parsed["stage1"]["training"]["lr"].as_float(), Some(2e-5));
        assert_eq!(
            parsed["lora"]["target_modules"].as_array().unwrap().len(),
            2
        );
        assert!(
            out.contains("# the model") && out.contains("family = \"llama\""),
            "{out}"
        );
        // The overridden line keeps its place.
        assert_eq!(
            out.lines().position(|l| l.starts_with("lr =")),
            Some(7),
            "{out}"
        );
    }

    #[test]
    fn a_bare_value_is_a_string_and_the_last_override_wins() {
        let out = set(
            MANIFEST,
            &["model.path=/models/llama 3", "seed=1", "seed=9"],
        )
        .unwrap();
        let parsed: toml::Table = out.parse().unwrap();
        assert_eq!(parsed["model"]["path"].as_str(), Some("/models/llama 3"));
        assert_eq!(parsed["seed"].as_integer(), Some(9));
    }

    #[test]
    fn bad_overrides_name_the_key() {
        assert_eq!(
            set(MANIFEST, &["stage1.training.lr"]).unwrap_err(),
            OverrideError::Syntax("stage1.training.lr".into())
        );
        assert!(matches!(
            set(MANIFEST, &["a..b=1"]),
            Err(OverrideError::Syntax(_))
        ));
        let err = set(MANIFEST, &["name.first=1"]).unwrap_err().to_string();
        assert_eq!(err, "--set name.first: name is a value, not a table");
        let err = set(MANIFEST, &["model=1"]).unwrap_err().to_string();
        assert_eq!(err, "--set model: names a table; set one of its fields");
        let err = set("not [ toml", &["seed=1"]).unwrap_err().to_string();
        assert!(err.starts_with("m.toml: not TOML"), "{err}");
    }

    #[test]
    fn no_override_leaves_the_text_byte_for_byte() {
        assert_eq!(set(MANIFEST, &[]).unwrap(), MANIFEST);
    }
}
