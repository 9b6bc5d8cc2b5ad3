//! The launches and cancels made from one state folder, one JSON line each in `launches.jsonl`: what
//! `tandem launch status` and `cancel` work from, and a log a cluster admin can read.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LaunchError;

/// One thing done to the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Event {
    /// An array job of `workers` elements was submitted.
    Launch {
        job: String,
        workers: u32,
        script: String,
        reason: String,
    },
    /// Elements (or whole arrays) were cancelled.
    Cancel { jobs: Vec<String>, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix time, ms.
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// `launches.jsonl` in a state folder.
#[derive(Clone, Debug)]
pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    pub fn new(state_dir: &Path) -> Ledger {
        Ledger {
            path: state_dir.join("launches.jsonl"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry (one line, written whole).
    pub fn append(&self, event: Event) -> Result<Entry, LaunchError> {
        let entry = Entry {
            at_ms: crate::store::now_ms(),
            event,
        };
        let mut line = serde_json::to_string(&entry).expect("ledger entries serialise");
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| LaunchError::io(&self.path, e))?;
        file.write_all(line.as_bytes())
            .and_then(|_| file.sync_data())
            .map_err(|e| LaunchError::io(&self.path, e))?;
        Ok(entry)
    }

    /// Every entry, oldest first; no file yet is no entries. A damaged line is an error naming it.
    pub fn read(&self) -> Result<Vec<Entry>, LaunchError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LaunchError::io(&self.path, e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| LaunchError::Ledger {
                    path: self.path.display().to_string(),
                    line: i + 1,
                    message: e.to_string(),
                })
            })
            .collect()
    }
}

/// Every array job the entries launched, with its element count, in launch order.
pub fn launches(entries: &[Entry]) -> impl Iterator<Item = (&str, u32)> {
    entries.iter().filter_map(|e| match &e.event {
        Event::Launch { job, workers, .. } => Some((job.as_str(), *workers)),
        Event::Cancel { .. } => None,
    })
}

/// Every array element the entries launched (`1234_0`, `1234_1`, ...), in launch order.
pub fn launched_elements(entries: &[Entry]) -> Vec<String> {
    launches(entries)
        .flat_map(|(job, workers)| (0..workers).map(move |i| format!("{job}_{i}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_name_their_elements() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path());
        assert!(ledger.read().unwrap().is_empty());
        ledger
            .append(Event::Launch {
                job: "12".into(),
                workers: 2,
                script: "/s/12.sh".into(),
                reason: "requested".into(),
            })
            .unwrap();
        ledger
            .append(Event::Cancel {
                jobs: vec!["12_1".into()],
                reason: "idle 300 s".into(),
            })
            .unwrap();
        ledger
            .append(Event::Launch {
                job: "15".into(),
                workers: 1,
                script: "/s/15.sh".into(),
                reason: "3 jobs wait".into(),
            })
            .unwrap();
        let entries = ledger.read().unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(launched_elements(&entries), ["12_0", "12_1", "15_0"]);
        let text = std::fs::read_to_string(ledger.path()).unwrap();
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .contains(r#""action":"cancel""#),
            "{text}"
        );
    }

    #[test]
    fn a_damaged_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path());
        std::fs::write(
            ledger.path(),
            "{\"at_ms\":1,\"action\":\"cancel\",\"jobs\":[],\"reason\":\"\"}\nnot json\n",
        )
        .unwrap();
        let err = ledger.read().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:2:", ledger.path().display())),
            "{err}"
        );
    }
}
