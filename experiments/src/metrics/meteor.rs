//! METEOR exactly as NLTK 3.10.4's `meteor_score([reference.split()], candidate.split())`: lower-cased
//! whitespace tokens; exact, then Porter-stem, then WordNet-synonym alignment (each stage on what the previous
//! left unmatched, the synonym stage seeing the stemmed words as NLTK's does); alpha 0.9, beta 3, gamma 0.5.

use std::collections::HashMap;

use super::porter;
use super::text::py_split;
use super::wordnet::{WordNet, wordnet};

/// METEOR parameters (NLTK's defaults in [`MeteorParams::default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeteorParams {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
}

impl Default for MeteorParams {
    fn default() -> Self {
        MeteorParams {
            alpha: 0.9,
            beta: 3.0,
            gamma: 0.5,
        }
    }
}

type Enum = Vec<(usize, String)>;

/// NLTK's `_match_enums`: each hypothesis word, last first, takes the latest unused reference word equal to it.
fn match_enums(hyp: Enum, refs: Enum, matches: &mut Vec<(usize, usize)>) -> (Enum, Enum) {
    let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, (_, w)) in refs.iter().enumerate() {
        positions.entry(w.as_str()).or_default().push(j);
    }
    let mut hyp_used = vec![false; hyp.len()];
    let mut ref_used = vec![false; refs.len()];
    for i in (0..hyp.len()).rev() {
        if let Some(j) = positions.get_mut(hyp[i].1.as_str()).and_then(Vec::pop) {
            hyp_used[i] = true;
            ref_used[j] = true;
            matches.push((hyp[i].0, refs[j].0));
        }
    }
    drop(positions);
    (unmatched(hyp, &hyp_used), unmatched(refs, &ref_used))
}

fn unmatched(list: Enum, used: &[bool]) -> Enum {
    list.into_iter()
        .zip(used)
        .filter(|(_, u)| !**u)
        .map(|(p, _)| p)
        .collect()
}

/// NLTK's `_enum_wordnetsyn_match`: each hypothesis word, last first, takes the latest unused reference word that
/// is the word itself or one of its WordNet synonyms.
fn synonym_match(wn: &WordNet, hyp: Enum, refs: Enum, matches: &mut Vec<(usize, usize)>) {
    let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, (_, w)) in refs.iter().enumerate() {
        positions.entry(w.as_str()).or_default().push(j);
    }
    for i in (0..hyp.len()).rev() {
        if positions.values().all(Vec::is_empty) {
            break;
        }
        let word = hyp[i].1.as_str();
        let mut best: Option<usize> = None;
        let mut consider = |syn: &str| {
            if let Some(&j) = positions.get(syn).and_then(|list| list.last())
                && best.is_none_or(|b| j > b)
            {
                best = Some(j);
            }
        };
        consider(word);
        wn.with_synonyms(word, |synonyms| synonyms.iter().for_each(|s| consider(s)));
        if let Some(j) = best {
            // The best position is the last one left of its word's list.
            if let Some(list) = positions.get_mut(refs[j].1.as_str()) {
                list.pop();
            }
            matches.push((hyp[i].0, refs[j].0));
        }
    }
}

fn count_chunks(matches: &[(usize, usize)]) -> usize {
    let mut chunks = 1;
    for w in matches.windows(2) {
        if !(w[1].0 == w[0].0 + 1 && w[1].1 == w[0].1 + 1) {
            chunks += 1;
        }
    }
    chunks
}

/// NLTK's `single_meteor_score(reference.split(), candidate.split())`.
pub fn meteor(reference: &str, candidate: &str, params: MeteorParams) -> f64 {
    let hyp: Enum = py_split(candidate)
        .map(str::to_lowercase)
        .enumerate()
        .collect();
    let refs: Enum = py_split(reference)
        .map(str::to_lowercase)
        .enumerate()
        .collect();
    let (hyp_len, ref_len) = (hyp.len(), refs.len());
    if hyp_len == 0 || ref_len == 0 {
        return 0.0;
    }
    let mut matches = Vec::new();
    let (hyp, refs) = match_enums(hyp, refs, &mut matches);
    let stemmed = |list: Enum| -> Enum {
        list.into_iter()
            .map(|(i, w)| (i, porter::stem(&w)))
            .collect()
    };
    let (hyp, refs) = if hyp.is_empty() || refs.is_empty() {
        (hyp, refs)
    } else {
        match_enums(stemmed(hyp), stemmed(refs), &mut matches)
    };
    if !hyp.is_empty() && !refs.is_empty() {
        synonym_match(wordnet(), hyp, refs, &mut matches);
    }
    let matches_count = matches.len();
    if matches_count == 0 {
        return 0.0;
    }
    matches.sort_by_key(|m| m.0);
    let precision = matches_count as f64 / hyp_len as f64;
    let recall = matches_count as f64 / ref_len as f64;
    let fmean = (precision * recall) / (params.alpha * precision + (1.0 - params.alpha) * recall);
    let frag_frac = count_chunks(&matches) as f64 / matches_count as f64;
    let penalty = params.gamma * frag_frac.powf(params.beta);
    (1.0 - penalty) * fmean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nltk_doctest_values() {
        let hyp = "It is a guide to action which ensures that the military always obeys the commands of the party";
        let reference = "It is a guide to action that ensures that the military will forever heed Party commands";
        let score = meteor(reference, hyp, MeteorParams::default());
        assert!((score - 0.6944).abs() < 5e-5, "{score}");
        assert_eq!(
            meteor(
                "this is a cat",
                "non matching hypothesis",
                MeteorParams::default()
            ),
            0.0
        );
        assert_eq!(meteor("no acute disease", "", MeteorParams::default()), 0.0);
    }
}
