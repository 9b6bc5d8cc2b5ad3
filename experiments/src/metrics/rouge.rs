//! ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum exactly as Google's rouge-score 0.1.2 (`RougeScorer(...).score(target,
//! prediction)`): its tokenizer (lower-case, every run of non-`[a-z0-9]` is a separator), optional Porter stemming
//! of tokens longer than 3 characters, clipped n-gram overlap, LCS, and summary-level LCS over "\n"-separated
//! sentences.

use std::collections::HashMap;

use super::bleu::clipped_matches;
use super::porter;

/// Precision, recall and F1 of one ROUGE variant for one pair.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RougeScore {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl RougeScore {
    fn new(precision: f64, recall: f64) -> RougeScore {
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        RougeScore {
            precision,
            recall,
            fmeasure,
        }
    }
}

/// The four ROUGE variants of one pair.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RougeScores {
    pub rouge1: RougeScore,
    pub rouge2: RougeScore,
    pub rouge_l: RougeScore,
    pub rouge_lsum: RougeScore,
}

/// rouge-score's `tokenize.tokenize(text, stemmer)`.
pub fn tokenize(text: &str, use_stemmer: bool) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, tokens: &mut Vec<String>| {
        if !current.is_empty() {
            let token = std::mem::take(current);
            tokens.push(if use_stemmer && token.len() > 3 {
                porter::stem(&token)
            } else {
                token
            });
        }
    };
    for c in text.chars() {
        for lc in c.to_lowercase() {
            if lc.is_ascii_lowercase() || lc.is_ascii_digit() {
                current.push(lc);
            } else {
                flush(&mut current, &mut tokens);
            }
        }
    }
    flush(&mut current, &mut tokens);
    tokens
}

/// rouge-score's character rule: lower-case, then everything outside `[a-z0-9]` becomes a space.
fn clean(text: &str, out: &mut String) {
    out.clear();
    if text.is_ascii() {
        out.extend(text.bytes().map(|b| {
            let c = b.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c as char
            } else {
                ' '
            }
        }));
    } else {
        for c in text.chars() {
            for lc in c.to_lowercase() {
                out.push(if lc.is_ascii_lowercase() || lc.is_ascii_digit() {
                    lc
                } else {
                    ' '
                });
            }
        }
    }
}

/// Token ids of each non-empty "\n"-separated sentence of `text` (the whole text's tokens are their
/// concatenation, since "\n" is a separator for the tokenizer too). Ids are shared through `ids`.
fn sentence_ids(text: &str, use_stemmer: bool, ids: &mut HashMap<String, u32>) -> Vec<Vec<u32>> {
    let mut cleaned = String::new();
    let mut sentences = Vec::new();
    for line in text.split('\n').filter(|s| !s.is_empty()) {
        clean(line, &mut cleaned);
        let mut sentence = Vec::new();
        for token in cleaned.split(' ').filter(|t| !t.is_empty()) {
            let stemmed;
            let token = if use_stemmer && token.len() > 3 {
                stemmed = porter::stem_cached(token);
                stemmed.as_str()
            } else {
                token
            };
            let id = match ids.get(token) {
                Some(&id) => id,
                None => {
                    let id = ids.len() as u32;
                    ids.insert(token.to_string(), id);
                    id
                }
            };
            sentence.push(id);
        }
        sentences.push(sentence);
    }
    sentences
}

fn score_ngrams(target: &[u32], prediction: &[u32], n: usize) -> RougeScore {
    let mut t: Vec<&[u32]> = target.windows(n).collect();
    let mut p: Vec<&[u32]> = prediction.windows(n).collect();
    let (t_count, p_count) = (t.len(), p.len());
    let overlap = clipped_matches(&mut t, &mut p) as f64;
    RougeScore::new(
        overlap / p_count.max(1) as f64,
        overlap / t_count.max(1) as f64,
    )
}

/// Length of the longest common subsequence (two-row dynamic programme).
fn lcs_length(a: &[u32], b: &[u32]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for &x in a {
        for (j, &y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn score_lcs(target: &[u32], prediction: &[u32]) -> RougeScore {
    if target.is_empty() || prediction.is_empty() {
        return RougeScore::default();
    }
    let lcs = lcs_length(target, prediction) as f64;
    RougeScore::new(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

/// Indices into `r` of one LCS of `r` and `c`, chosen by rouge-score's `_backtrack_norec`.
fn lcs_indices(r: &[u32], c: &[u32], out: &mut Vec<usize>) {
    let cols = c.len() + 1;
    let mut table = vec![0u32; (r.len() + 1) * cols];
    for i in 1..=r.len() {
        for j in 1..=c.len() {
            table[i * cols + j] = if r[i - 1] == c[j - 1] {
                table[(i - 1) * cols + j - 1] + 1
            } else {
                table[(i - 1) * cols + j].max(table[i * cols + j - 1])
            };
        }
    }
    let (mut i, mut j) = (r.len(), c.len());
    while i > 0 && j > 0 {
        if r[i - 1] == c[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if table[i * cols + j - 1] > table[(i - 1) * cols + j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
}

fn score_summary_lcs(ref_sents: &[Vec<u32>], can_sents: &[Vec<u32>], vocab: usize) -> RougeScore {
    if ref_sents.is_empty() || can_sents.is_empty() {
        return RougeScore::default();
    }
    let m: usize = ref_sents.iter().map(Vec::len).sum();
    let n: usize = can_sents.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return RougeScore::default();
    }
    let mut count_r = vec![0i64; vocab];
    let mut count_c = vec![0i64; vocab];
    for &t in ref_sents.iter().flatten() {
        count_r[t as usize] += 1;
    }
    for &t in can_sents.iter().flatten() {
        count_c[t as usize] += 1;
    }
    let mut hits = 0usize;
    let mut union = Vec::new();
    for r in ref_sents {
        union.clear();
        for c in can_sents {
            lcs_indices(r, c, &mut union);
        }
        union.sort_unstable();
        union.dedup();
        for &i in &union {
            let t = r[i] as usize;
            if count_c[t] > 0 && count_r[t] > 0 {
                hits += 1;
                count_c[t] -= 1;
                count_r[t] -= 1;
            }
        }
    }
    RougeScore::new(hits as f64 / n as f64, hits as f64 / m as f64)
}

/// All four ROUGE variants for one pair (`target` is the reference, `prediction` the candidate).
pub fn score(target: &str, prediction: &str, use_stemmer: bool) -> RougeScores {
    let mut ids = HashMap::new();
    let t_s = sentence_ids(target, use_stemmer, &mut ids);
    let p_s = sentence_ids(prediction, use_stemmer, &mut ids);
    let t: Vec<u32> = t_s.concat();
    let p: Vec<u32> = p_s.concat();
    RougeScores {
        rouge1: score_ngrams(&t, &p, 1),
        rouge2: score_ngrams(&t, &p, 2),
        rouge_l: score_lcs(&t, &p),
        rouge_lsum: score_summary_lcs(&t_s, &p_s, ids.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_matches_rouge_score() {
        assert_eq!(
            tokenize("No acute, cardio-pulmonary ABNORMALITY 2.5cm", false),
            [
                "no",
                "acute",
                "cardio",
                "pulmonary",
                "abnormality",
                "2",
                "5cm"
            ]
        );
        assert_eq!(
            tokenize("Effusions are seen", true),
            ["effus", "are", "seen"]
        );
    }

    #[test]
    fn rouge_on_a_known_pair() {
        // rouge-score 0.1.2: score("the cat was found under the bed", "the cat was under the bed")
        let s = score(
            "the cat was found under the bed",
            "the cat was under the bed",
            false,
        );
        assert!((s.rouge1.fmeasure - 0.923076923076923).abs() < 1e-12);
        assert!((s.rouge2.fmeasure - 0.7272727272727272).abs() < 1e-12);
        assert!((s.rouge_l.fmeasure - 0.923076923076923).abs() < 1e-12);
        let empty = score("", "the cat", true);
        assert_eq!(empty, RougeScores::default());
    }
}
