//! F1-RadGraph scoring over RadGraph-format graphs, exactly as the `radgraph` package's reward (0.1.18,
//! `rewards.compute_reward`) defines its "simple" (entities), "partial" (entities and whether they have a
//! relation) and "complete" (relation tuples) levels; plus the extractor interface that turns report text into
//! graphs, with one implementation that runs an external command speaking JSON lines. Without an extractor
//! F1-RadGraph is not available: it is never estimated.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde::{Deserialize, Serialize};

use super::MetricsError;

/// One RadGraph entity: its text, label (e.g. "ANAT-DP", "OBS-DA") and relations `[type, target entity id]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    pub tokens: String,
    pub label: String,
    #[serde(default)]
    pub relations: Vec<(String, String)>,
}

/// A RadGraph annotation of one report: entities keyed by id (other fields of the official format are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RadGraph {
    pub entities: BTreeMap<String, Entity>,
}

/// The three reward levels of one pair.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RadGraphScores {
    pub simple: f64,
    pub partial: f64,
    pub complete: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    Entity(String, String),
    EntityWithRelation(String, String),
    Relation(String, String, String, String),
}

fn f1(hyp: &HashSet<Item>, rf: &HashSet<Item>) -> f64 {
    let precision = if hyp.is_empty() {
        0.0
    } else {
        hyp.iter().filter(|x| rf.contains(x)).count() as f64 / hyp.len() as f64
    };
    let recall = if rf.is_empty() {
        0.0
    } else {
        rf.iter().filter(|x| hyp.contains(x)).count() as f64 / rf.len() as f64
    };
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

fn simple_items(g: &RadGraph) -> HashSet<Item> {
    g.entities
        .values()
        .map(|e| Item::Entity(e.tokens.clone(), e.label.clone()))
        .collect()
}

fn partial_items(g: &RadGraph) -> HashSet<Item> {
    g.entities
        .values()
        .map(|e| {
            if e.relations.is_empty() {
                Item::Entity(e.tokens.clone(), e.label.clone())
            } else {
                Item::EntityWithRelation(e.tokens.clone(), e.label.clone())
            }
        })
        .collect()
}

fn complete_items(g: &RadGraph) -> Result<HashSet<Item>, MetricsError> {
    let mut items = HashSet::new();
    for (id, e) in &g.entities {
        if e.relations.is_empty() {
            items.insert(Item::Entity(e.tokens.clone(), e.label.clone()));
        }
        for (kind, target) in &e.relations {
            let target_entity = g.entities.get(target).ok_or_else(|| MetricsError::RadGraph {
                message: format!("entity {id} has a {kind:?} relation to entity {target:?}, which the graph lacks"),
            })?;
            items.insert(Item::Relation(
                e.tokens.to_lowercase(),
                e.label.clone(),
                kind.clone(),
                target_entity.tokens.to_lowercase(),
            ));
        }
    }
    Ok(items)
}

/// `compute_reward(hypothesis, reference, "all")`: 0 for all levels when either graph has no entities.
pub fn reward(hypothesis: &RadGraph, reference: &RadGraph) -> Result<RadGraphScores, MetricsError> {
    if hypothesis.entities.is_empty() || reference.entities.is_empty() {
        return Ok(RadGraphScores::default());
    }
    Ok(RadGraphScores {
        simple: f1(&simple_items(hypothesis), &simple_items(reference)),
        partial: f1(&partial_items(hypothesis), &partial_items(reference)),
        complete: f1(&complete_items(hypothesis)?, &complete_items(reference)?),
    })
}

/// Turns report texts into RadGraph graphs (one per text, same order).
pub trait GraphExtractor {
    fn extract(&mut self, texts: &[&str]) -> Result<Vec<RadGraph>, MetricsError>;
}

/// `F1RadGraph(reward_level="all")` per pair: a pair whose candidate or reference is empty scores 0 without
/// extraction; the others are extracted (candidates then references) and rewarded.
pub fn score_pairs(
    extractor: &mut dyn GraphExtractor,
    candidates: &[&str],
    references: &[&str],
) -> Result<Vec<RadGraphScores>, MetricsError> {
    if candidates.len() != references.len() {
        return Err(MetricsError::Mismatch {
            candidates: candidates.len(),
            references: references.len(),
        });
    }
    let keep: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[i].is_empty() && !references[i].is_empty())
        .collect();
    let mut texts: Vec<&str> = keep.iter().map(|&i| candidates[i]).collect();
    texts.extend(keep.iter().map(|&i| references[i]));
    let graphs = extractor.extract(&texts)?;
    if graphs.len() != texts.len() {
        return Err(MetricsError::RadGraph {
            message: format!(
                "extractor returned {} graphs for {} texts",
                graphs.len(),
                texts.len()
            ),
        });
    }
    let mut out = vec![RadGraphScores::default(); candidates.len()];
    for (k, &i) in keep.iter().enumerate() {
        out[i] = reward(&graphs[k], &graphs[k + keep.len()])?;
    }
    Ok(out)
}

/// An extractor that runs an external command once and talks JSON lines with it: for each text it writes
/// `{"text": "..."}` and a newline to the command's stdin and reads one line from its stdout, a RadGraph graph
/// `{"entities": {"1": {"tokens": ..., "label": ..., "relations": [[type, id], ...]}, ...}}`. The command's stderr
/// passes through. A lab plugs in the official `radgraph` package with a small wrapper script.
pub struct CommandExtractor {
    program: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    lines_read: usize,
}

impl std::fmt::Debug for CommandExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandExtractor")
            .field("program", &self.program)
            .finish()
    }
}

impl CommandExtractor {
    /// Starts `program args...`.
    pub fn spawn(program: &str, args: &[String]) -> Result<CommandExtractor, MetricsError> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| MetricsError::RadGraph {
                message: format!("cannot start extractor {program:?}: {e}"),
            })?;
        let stdin = child.stdin.take();
        let stdout =
            child
                .stdout
                .take()
                .map(BufReader::new)
                .ok_or_else(|| MetricsError::RadGraph {
                    message: format!("extractor {program:?} has no stdout"),
                })?;
        Ok(CommandExtractor {
            program: program.to_string(),
            child,
            stdin,
            stdout,
            lines_read: 0,
        })
    }

    fn exited(&mut self, what: &str) -> MetricsError {
        drop(self.stdin.take());
        let status = match self.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown status ({e})"),
        };
        MetricsError::RadGraph {
            message: format!(
                "extractor {:?} {what} after {} output lines ({status})",
                self.program, self.lines_read
            ),
        }
    }
}

impl GraphExtractor for CommandExtractor {
    fn extract(&mut self, texts: &[&str]) -> Result<Vec<RadGraph>, MetricsError> {
        let mut graphs = Vec::with_capacity(texts.len());
        let mut line = String::new();
        for text in texts {
            let request = serde_json::json!({ "text": text }).to_string();
            let Some(stdin) = self.stdin.as_mut() else {
                return Err(self.exited("is closed"));
            };
            if writeln!(stdin, "{request}")
                .and_then(|_| stdin.flush())
                .is_err()
            {
                return Err(self.exited("stopped reading its input"));
            }
            line.clear();
            match self.stdout.read_line(&mut line) {
                Ok(0) => return Err(self.exited("closed its output")),
                Ok(_) => {}
                Err(e) => {
                    return Err(MetricsError::RadGraph {
                        message: format!("reading from extractor {:?}: {e}", self.program),
                    });
                }
            }
            self.lines_read += 1;
            let graph: RadGraph = serde_json::from_str(line.trim_end()).map_err(|e| MetricsError::RadGraph {
                message: format!(
                    "extractor {:?} output line {} is not a RadGraph graph ({{\"entities\": {{...}}}}): {e}",
                    self.program, self.lines_read
                ),
            })?;
            graphs.push(graph);
        }
        Ok(graphs)
    }
}

impl Drop for CommandExtractor {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(json: &str) -> RadGraph {
        serde_json::from_str(json).expect("test graph")
    }

    #[test]
    fn reward_levels_follow_the_radgraph_package() {
        let hyp = graph(
            r#"{"entities": {"1": {"tokens": "effusion", "label": "OBS-DA", "relations": [["located_at", "2"]]},
                              "2": {"tokens": "pleural", "label": "ANAT-DP", "relations": []}}}"#,
        );
        let rf = graph(
            r#"{"entities": {"1": {"tokens": "effusion", "label": "OBS-DA", "relations": []},
                              "2": {"tokens": "pleural", "label": "ANAT-DP", "relations": []}}}"#,
        );
        let s = reward(&hyp, &rf).expect("reward");
        assert_eq!(s.simple, 1.0);
        assert!((s.partial - 0.5).abs() < 1e-12);
        assert!((s.complete - 0.5).abs() < 1e-12);
        assert_eq!(
            reward(&RadGraph::default(), &rf).expect("reward"),
            RadGraphScores::default()
        );
    }

    #[test]
    fn dangling_relation_is_an_error() {
        let g = graph(
            r#"{"entities": {"1": {"tokens": "a", "label": "OBS-DP", "relations": [["modify", "9"]]}}}"#,
        );
        assert!(reward(&g, &g).is_err());
    }
}
